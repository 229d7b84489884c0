"""Team review: approvals counted per text (images.text_revision), assignments, independent
versions, guidelines history, shared settings.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("images", sa.Column("text_revision", sa.Integer, nullable=False, server_default="1"))
    op.add_column("images", sa.Column("independent_reading", sa.Boolean, nullable=False, server_default=sa.false()))
    # The last revision that wrote text (every action but approve and flag does, or re-read the file).
    op.execute("UPDATE images SET text_revision = (SELECT max(r.number) FROM revisions r WHERE r.image_id = images.id "
               "AND r.action NOT IN ('approve', 'flag')) WHERE EXISTS (SELECT 1 FROM revisions r "
               "WHERE r.image_id = images.id AND r.action NOT IN ('approve', 'flag'))")
    op.create_table(
        "assignments",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id", ondelete="CASCADE"), nullable=False),
        sa.Column("reviewer", sa.String(256), nullable=False),
        sa.Column("independent", sa.Boolean, nullable=False),
        sa.Column("assigned_by", sa.String(256), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("image_id", "reviewer", name="uq_assignments_image_reviewer"),
    )
    op.create_table(
        "versions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id", ondelete="CASCADE"), nullable=False),
        sa.Column("author", sa.String(256), nullable=False),
        sa.Column("draft_revision", sa.Integer, nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("adjudicated_revision", sa.Integer),
    )
    op.create_index("ix_versions_image", "versions", ["image_id"])
    op.create_table(
        "guidelines",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("author", sa.String(256), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )

    op.create_table(
        "settings",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("settings")
    op.drop_table("guidelines")
    op.drop_index("ix_versions_image", "versions")
    op.drop_table("versions")
    op.drop_table("assignments")
    with op.batch_alter_table("images") as batch:
        batch.drop_column("independent_reading")
        batch.drop_column("text_revision")
