"""Disk snapshots: a tree of them per VM, and where each VM's disks stand in it.

``snapshots`` holds the nodes (``parent_id`` links them; deleting the VM deletes them);
``vms.disk_chain`` records each disk's files, top first, and the VM's current snapshot.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("vms") as batch:
        batch.add_column(sa.Column("disk_chain", sa.Text(), nullable=True))
    op.create_table(
        "snapshots",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("vm_id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("parent_id", sa.String(36), nullable=True),
        sa.Column("layers", sa.Text(), nullable=False),
        sa.Column("vm_state", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["vm_id"], ["vms.id"], name="fk_snapshots_vm_id_vms", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"], ["snapshots.id"], name="fk_snapshots_parent_id_snapshots"
        ),
        sa.UniqueConstraint("vm_id", "name", name="uq_snapshots_vm_id_name"),
        sa.CheckConstraint("kind IN ('disk')", name="ck_snapshots_kind"),
    )
    op.create_index("ix_snapshots_vm_id", "snapshots", ["vm_id"])


def downgrade() -> None:
    op.drop_table("snapshots")
    with op.batch_alter_table("vms") as batch:
        batch.drop_column("disk_chain")
