"""The review store's tables (SQLAlchemy Core). Changes here need a migration in migrations/versions/.

images       one row per image: where it is, what it shows, and its current description
revisions    every version of every description, never updated or deleted: text, where the text
             came from (VLM id / fallback / human), the validation rule that fired, who and when,
             and the status the description had after that revision; approvals are revisions too
assignments  which reviewer is to read which image, and whether independently (team review)
versions     independent readers' own versions of a description, outside its history until an
             admin adjudicates them (team review)
guidelines   every version of the labelling guidelines (Markdown); the newest is shown
settings     the team's settings every process opening the store shares (approvals_required)
"""

from __future__ import annotations

from sqlalchemy import JSON, Boolean, Column, DateTime, ForeignKey, Index, Integer, MetaData, String, Table, Text, UniqueConstraint

metadata = MetaData()

# partly-approved: approved by fewer distinct reviewers than --approvals-required
STATUSES = ("generated", "edited", "partly-approved", "approved", "flagged")

images = Table(
    "images", metadata,
    Column("id", Integer, primary_key=True),
    Column("key", String(1024), nullable=False, unique=True),  # "train/x.png", or "x.png" without splits
    Column("split", String(64), nullable=False, default=""),  # "" when the dataset has no split folders
    Column("file_name", String(1024), nullable=False),  # relative to the split folder, as in metadata.jsonl
    Column("path", Text, nullable=False),  # absolute path of the image file on the app's machine
    Column("content_hash", String(64), nullable=False),  # sha256 of the file's bytes
    Column("label", String(256)),
    Column("simple_caption", Text),
    Column("source_file", Text),  # de-identified reference of a converted DICOM/NIfTI volume
    Column("slice", Integer),
    Column("extra", JSON, nullable=False, default=dict),  # the other metadata columns (e.g. modality), kept on export
    # Denormalised from the latest revision, so lists and filters need no join; written in the
    # same transaction as that revision, guarded by current_revision (optimistic concurrency).
    Column("current_revision", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("text", Text, nullable=False),
    Column("source", String(256), nullable=False),
    Column("rule", String(256), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # The revision that wrote the current text (or saw the image file change): an approval made on
    # an earlier one read another text and is refused; approvals after it are counted.
    Column("text_revision", Integer, nullable=False, default=1),
    # Assigned for independent double reading and not yet adjudicated: the description stays the
    # readers' common draft (no edit, approval or flag) until an admin adjudicates.
    Column("independent_reading", Boolean, nullable=False, default=False),
)
Index("ix_images_status", images.c.status)
Index("ix_images_label", images.c.label)

revisions = Table(
    "revisions", metadata,
    Column("id", Integer, primary_key=True),
    Column("image_id", Integer, ForeignKey("images.id", ondelete="CASCADE"), nullable=False),
    Column("number", Integer, nullable=False),  # 1, 2, ... per image
    Column("action", String(16), nullable=False),  # import, describe, edit, approve, flag, revert, rehash
    Column("text", Text, nullable=False),
    Column("source", String(256), nullable=False),  # VLM model id, "fallback" or "human"
    Column("rule", String(256), nullable=False, default=""),
    Column("author", String(256), nullable=False),
    Column("status", String(16), nullable=False),
    Column("reason", Text, nullable=False, default=""),  # why it was flagged
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("image_id", "number", name="uq_revisions_image_number"),
)

assignments = Table(
    "assignments", metadata,
    Column("id", Integer, primary_key=True),
    Column("image_id", Integer, ForeignKey("images.id", ondelete="CASCADE"), nullable=False),
    Column("reviewer", String(256), nullable=False),
    Column("independent", Boolean, nullable=False, default=False),  # double reading: a version, not an edit
    Column("assigned_by", String(256), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("image_id", "reviewer", name="uq_assignments_image_reviewer"),
)

versions = Table(
    "versions", metadata,
    Column("id", Integer, primary_key=True),
    Column("image_id", Integer, ForeignKey("images.id", ondelete="CASCADE"), nullable=False),
    Column("author", String(256), nullable=False),
    Column("draft_revision", Integer, nullable=False),  # the revision whose text the reader started from
    Column("decision", String(16), nullable=False),  # accept (the draft unchanged), edit, flag
    Column("text", Text, nullable=False),
    Column("reason", Text, nullable=False, default=""),  # why it was flagged
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("adjudicated_revision", Integer),  # the description's revision that settled it; None while pending
)
Index("ix_versions_image", versions.c.image_id)

guidelines = Table(
    "guidelines", metadata,
    Column("id", Integer, primary_key=True),
    Column("text", Text, nullable=False),
    Column("author", String(256), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

settings = Table(
    "settings", metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)
