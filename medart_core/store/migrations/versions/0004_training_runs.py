"""Training runs launched from the app (issue 19): the runs and the description revisions each trained on.

Revision ID: 0004
Revises: 0003 (the reader study's, which follows the team review's 0002).
Creates its own tables only and alters none, so its place in the chain changes nothing in it.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "training_runs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("preset", sa.String(64), nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("descriptions", sa.String(16), nullable=False),
        sa.Column("settings", sa.JSON, nullable=False),
        sa.Column("folder", sa.Text, nullable=False),
        sa.Column("author", sa.String(256), nullable=False),
        sa.Column("pid", sa.Integer),
        sa.Column("process_started", sa.Float),
        sa.Column("stop_requested", sa.Boolean, nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("summary", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
    )
    op.create_table(
        "training_run_descriptions",
        sa.Column("run_id", sa.Integer, sa.ForeignKey("training_runs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("image_key", sa.String(1024), primary_key=True),
        sa.Column("revision", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("training_run_descriptions")
    op.drop_table("training_runs")
