"""The reader study's tables (SQLAlchemy Core), beside the review tables in the same metadata.
Changes here need a migration in migrations/versions/ (0003_reader_study.py made these).

studies         one row per study: its name, seed, the questions asked, the size its copies are
                served at, and whether it is open
study_readers   who is invited, with an optional expert level and whether they are blind (a
                reviewer or admin can browse the real images and generate: not blind)
study_images    the images of a study: real (from the review store) or synthetic (a marked PNG
                kept under the app's home), the class and the description shown for a match
study_trials    one per reader and image: the reader's own position for it, a neutral random
                token (the only id the reader sees), and the served copy while it exists
study_answers   at most one per trial (a unique constraint): an answer once given is final
"""

from __future__ import annotations

from sqlalchemy import (JSON, Boolean, Column, DateTime, Float, ForeignKey, Integer, String, Table, Text,
                        UniqueConstraint)

from medart_core.store.schema import metadata

KINDS = ("real", "synthetic")

studies = Table(
    "studies", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(256), nullable=False, unique=True),
    Column("seed", Integer, nullable=False),
    Column("classes", JSON, nullable=False),
    Column("ask_match", Boolean, nullable=False),
    Column("size", Integer, nullable=False),  # every copy is served at size x size pixels
    Column("state", String(16), nullable=False),  # open | closed
    Column("created_by", String(256), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("closed_at", DateTime(timezone=True)),
)

study_readers = Table(
    "study_readers", metadata,
    Column("id", Integer, primary_key=True),
    Column("study_id", Integer, ForeignKey("studies.id", ondelete="CASCADE"), nullable=False),
    Column("reader", String(256), nullable=False),
    Column("expert_level", String(256)),
    Column("role", String(16)),  # the account's role when invited
    Column("blind", Boolean, nullable=False),
    UniqueConstraint("study_id", "reader", name="uq_study_readers_reader"),
)

study_images = Table(
    "study_images", metadata,
    Column("id", Integer, primary_key=True),
    Column("study_id", Integer, ForeignKey("studies.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(16), nullable=False),  # real | synthetic: the truth, never sent to a reader
    Column("label", String(256), nullable=False),
    Column("description", Text, nullable=False),
    Column("path", Text, nullable=False),  # the stored file (a synthetic one keeps its SYNTHETIC text chunks)
    Column("image_key", String(1024)),  # the review store's key of a real image
    Column("seed", Integer),  # a synthetic image's seed
    Column("modality", String(256)),
)

study_trials = Table(
    "study_trials", metadata,
    Column("id", Integer, primary_key=True),
    Column("reader_id", Integer, ForeignKey("study_readers.id", ondelete="CASCADE"), nullable=False),
    Column("image_id", Integer, ForeignKey("study_images.id", ondelete="CASCADE"), nullable=False),
    Column("position", Integer, nullable=False),  # 1.. in this reader's own seeded order
    Column("token", String(64), nullable=False, unique=True),
    Column("copy_name", String(64), nullable=False),  # the served copy's neutral random file name
    Column("served_at", DateTime(timezone=True)),  # first shown
    Column("copy_path", Text),  # the served copy and gradio's cached copy of it, while they exist
    Column("cache_path", Text),
    UniqueConstraint("reader_id", "image_id", name="uq_study_trials_image"),
    UniqueConstraint("reader_id", "position", name="uq_study_trials_position"),
)

study_answers = Table(
    "study_answers", metadata,
    Column("id", Integer, primary_key=True),
    Column("trial_id", Integer, ForeignKey("study_trials.id", ondelete="CASCADE"), nullable=False),
    Column("answer", String(16), nullable=False),  # real | synthetic
    Column("confidence", Integer, nullable=False),
    Column("realism", Integer, nullable=False),
    Column("matches", Boolean),
    Column("comment", Text, nullable=False),
    Column("seconds", Float),  # from first shown to answered
    Column("answered_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("trial_id", name="uq_study_answers_trial"),  # one answer per trial, also from two tabs
)
