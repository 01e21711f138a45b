"""Virtual networks and the ports guests' NICs have on them.

A network's name is unique on the host (it names the network's bridge and its guests' DNS
domain), whatever its project. A port is one NIC of one VM on one network: its MAC is unique
on the host, its address (``NULL`` on a ``bridged`` network, whose addresses are not
corral's) unique within its network. Deleting a VM deletes its ports (``ON DELETE
CASCADE``); a network with ports cannot be deleted (the foreign key has no action).

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "networks",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("project_id", sa.String(36), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("spec", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name="fk_networks_project_id_projects"
        ),
        sa.UniqueConstraint("name", name="uq_networks_name"),
        sa.CheckConstraint("kind IN ('nat', 'isolated', 'bridged')", name="ck_networks_kind"),
    )
    op.create_table(
        "ports",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("vm_id", sa.String(36), nullable=False),
        sa.Column("nic", sa.String(63), nullable=False),
        sa.Column("network_id", sa.String(36), nullable=False),
        sa.Column("mac", sa.String(17), nullable=False),
        sa.Column("address", sa.String(15), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["vm_id"], ["vms.id"], name="fk_ports_vm_id_vms", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["network_id"], ["networks.id"], name="fk_ports_network_id_networks"
        ),
        sa.UniqueConstraint("mac", name="uq_ports_mac"),
        sa.UniqueConstraint("network_id", "address", name="uq_ports_network_id_address"),
        sa.UniqueConstraint("vm_id", "nic", name="uq_ports_vm_id_nic"),
    )
    op.create_index("ix_ports_network_id", "ports", ["network_id"])


def downgrade() -> None:
    op.drop_table("ports")
    op.drop_table("networks")
