"""Snapshots with memory: a snapshot may also hold the guest's RAM and device state.

``snapshots.kind`` admits ``memory`` beside ``disk``; ``snapshots.memory_file`` names the
file (inside the VM's directory) that holds the saved state of a ``memory`` snapshot.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("snapshots") as batch:
        batch.add_column(sa.Column("memory_file", sa.String(255), nullable=True))
        batch.drop_constraint("ck_snapshots_kind", type_="check")
        batch.create_check_constraint("ck_snapshots_kind", "kind IN ('disk', 'memory')")
        batch.create_check_constraint(
            "ck_snapshots_memory_file", "(kind = 'memory') = (memory_file IS NOT NULL)"
        )


def downgrade() -> None:
    # A memory snapshot stays as the disk snapshot it also is (its state file is left).
    with op.batch_alter_table("snapshots") as batch:
        batch.drop_constraint("ck_snapshots_memory_file", type_="check")
        batch.drop_constraint("ck_snapshots_kind", type_="check")
    op.execute("UPDATE snapshots SET kind = 'disk' WHERE kind = 'memory'")
    with op.batch_alter_table("snapshots") as batch:
        batch.create_check_constraint("ck_snapshots_kind", "kind IN ('disk')")
        batch.drop_column("memory_file")
