"""Provisioning: key pairs; the instance type, key pair, instance-id and login user of a VM;
the login user of an image.

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
    op.create_table(
        "keypairs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("public_key", sa.Text(), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("private_key_path", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_keypairs_name", "keypairs", ["name"], unique=True)
    with op.batch_alter_table("vms") as batch:
        batch.add_column(sa.Column("instance_type", sa.String(63), nullable=True))
        batch.add_column(sa.Column("keypair", sa.String(63), nullable=True))
        batch.add_column(sa.Column("instance_id", sa.String(32), nullable=True))
        batch.add_column(sa.Column("ssh_user", sa.String(32), nullable=True))
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("ssh_user", sa.String(32), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.drop_column("ssh_user")
    with op.batch_alter_table("vms") as batch:
        for column in ("ssh_user", "instance_id", "keypair", "instance_type"):
            batch.drop_column(column)
    op.drop_table("keypairs")
