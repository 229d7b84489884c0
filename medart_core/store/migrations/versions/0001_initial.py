"""Initial review-store schema: images and revisions.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "images",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("key", sa.String(1024), nullable=False, unique=True),
        sa.Column("split", sa.String(64), nullable=False),
        sa.Column("file_name", sa.String(1024), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("label", sa.String(256)),
        sa.Column("simple_caption", sa.Text),
        sa.Column("source_file", sa.Text),
        sa.Column("slice", sa.Integer),
        sa.Column("extra", sa.JSON, nullable=False),
        sa.Column("current_revision", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("source", sa.String(256), nullable=False),
        sa.Column("rule", sa.String(256), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_images_status", "images", ["status"])
    op.create_index("ix_images_label", "images", ["label"])
    op.create_table(
        "revisions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id", ondelete="CASCADE"), nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("source", sa.String(256), nullable=False),
        sa.Column("rule", sa.String(256), nullable=False),
        sa.Column("author", sa.String(256), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("image_id", "number", name="uq_revisions_image_number"),
    )


def downgrade() -> None:
    op.drop_table("revisions")
    op.drop_index("ix_images_label", "images")
    op.drop_index("ix_images_status", "images")
    op.drop_table("images")
