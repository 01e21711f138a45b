"""Volumes: disks of their own in the state directory's pool, each in a project.

A volume's name is unique within its project (not across projects). ``attached_to`` names
the VM it is attached to by id; deleting that VM detaches it (``ON DELETE SET NULL``).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "volumes",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("project_id", sa.String(36), nullable=False),
        sa.Column("format", sa.String(8), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("attached_to", sa.String(36), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name="fk_volumes_project_id_projects"
        ),
        sa.ForeignKeyConstraint(
            ["attached_to"], ["vms.id"], name="fk_volumes_attached_to_vms", ondelete="SET NULL"
        ),
        sa.UniqueConstraint("project_id", "name", name="uq_volumes_project_id_name"),
        sa.CheckConstraint("format IN ('qcow2', 'raw')", name="ck_volumes_format"),
        sa.CheckConstraint("size > 0", name="ck_volumes_size"),
    )
    op.create_index("ix_volumes_name", "volumes", ["name"])
    op.create_index("ix_volumes_attached_to", "volumes", ["attached_to"])


def downgrade() -> None:
    op.drop_table("volumes")
