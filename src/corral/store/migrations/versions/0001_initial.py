"""Initial schema: vms and images.

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
        "vms",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("spec", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("image", sa.String(63), nullable=True),
        sa.Column("ready_marker", sa.String(128), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("pid_start", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state_changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_vms_name", "vms", ["name"], unique=True)
    op.create_index("ix_vms_image", "vms", ["image"])
    op.create_table(
        "images",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("source_format", sa.String(8), nullable=False),
        sa.Column("virtual_size", sa.BigInteger(), nullable=False),
        sa.Column("actual_size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("os_hint", sa.String(63), nullable=False),
        sa.Column("kernel", sa.Text(), nullable=True),
        sa.Column("initrd", sa.Text(), nullable=True),
        sa.Column("cmdline", sa.Text(), nullable=False),
        sa.Column("ready_marker", sa.String(128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_images_name", "images", ["name"], unique=True)


def downgrade() -> None:
    op.drop_table("images")
    op.drop_table("vms")
