"""Reader study: studies, their readers, images, trials and answers (one answer per trial).

Revision ID: 0003
Revises: 0002 (the team-review tables; this migration touches none of them)
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "studies",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(256), nullable=False, unique=True),
        sa.Column("seed", sa.Integer, nullable=False),
        sa.Column("classes", sa.JSON, nullable=False),
        sa.Column("ask_match", sa.Boolean, nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True)),
    )
    op.create_table(
        "study_readers",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("study_id", sa.Integer, sa.ForeignKey("studies.id", ondelete="CASCADE"), nullable=False),
        sa.Column("reader", sa.String(256), nullable=False),
        sa.Column("expert_level", sa.String(256)),
        sa.Column("role", sa.String(16)),
        sa.Column("blind", sa.Boolean, nullable=False),
        sa.UniqueConstraint("study_id", "reader", name="uq_study_readers_reader"),
    )
    op.create_table(
        "study_images",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("study_id", sa.Integer, sa.ForeignKey("studies.id", ondelete="CASCADE"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("label", sa.String(256), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("image_key", sa.String(1024)),
        sa.Column("seed", sa.Integer),
        sa.Column("modality", sa.String(256)),
    )
    op.create_table(
        "study_trials",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("reader_id", sa.Integer, sa.ForeignKey("study_readers.id", ondelete="CASCADE"), nullable=False),
        sa.Column("image_id", sa.Integer, sa.ForeignKey("study_images.id", ondelete="CASCADE"), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("token", sa.String(64), nullable=False, unique=True),
        sa.Column("copy_name", sa.String(64), nullable=False),
        sa.Column("served_at", sa.DateTime(timezone=True)),
        sa.Column("copy_path", sa.Text),
        sa.Column("cache_path", sa.Text),
        sa.UniqueConstraint("reader_id", "image_id", name="uq_study_trials_image"),
        sa.UniqueConstraint("reader_id", "position", name="uq_study_trials_position"),
    )
    op.create_table(
        "study_answers",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("trial_id", sa.Integer, sa.ForeignKey("study_trials.id", ondelete="CASCADE"), nullable=False),
        sa.Column("answer", sa.String(16), nullable=False),
        sa.Column("confidence", sa.Integer, nullable=False),
        sa.Column("realism", sa.Integer, nullable=False),
        sa.Column("matches", sa.Boolean),
        sa.Column("comment", sa.Text, nullable=False),
        sa.Column("seconds", sa.Float),
        sa.Column("answered_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("trial_id", name="uq_study_answers_trial"),
    )


def downgrade() -> None:
    for table in ("study_answers", "study_trials", "study_images", "study_readers", "studies"):
        op.drop_table(table)
