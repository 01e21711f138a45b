"""Security groups (named rule sets attached to ports) and floating IPs.

A group's name is unique within its project. A rule belongs to one group (deleted with it);
its peer is a CIDR or another group (which then cannot be deleted while a rule names it). A
port's groups are the rows of ``port_groups``: deleting the port (with its VM) detaches them;
a group attached to a port cannot be deleted. A floating IP is an address of the host's pool,
allocated to a project and associated with at most one port at a time; deleting the port
disassociates it (``SET NULL``), the address stays the project's.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "security_groups",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("project_id", sa.String(36), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name="fk_security_groups_project_id_projects"
        ),
        sa.UniqueConstraint("project_id", "name", name="uq_security_groups_project_id_name"),
    )
    op.create_table(
        "sg_rules",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("group_id", sa.String(36), nullable=False),
        sa.Column("direction", sa.String(3), nullable=False),
        sa.Column("protocol", sa.String(4), nullable=False),
        sa.Column("port_min", sa.Integer(), nullable=True),
        sa.Column("port_max", sa.Integer(), nullable=True),
        sa.Column("cidr", sa.String(18), nullable=True),
        sa.Column("remote_group_id", sa.String(36), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["group_id"],
            ["security_groups.id"],
            name="fk_sg_rules_group_id_security_groups",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["remote_group_id"],
            ["security_groups.id"],
            name="fk_sg_rules_remote_group_id_security_groups",
        ),
        sa.CheckConstraint("direction IN ('in', 'out')", name="ck_sg_rules_direction"),
        sa.CheckConstraint(
            "protocol IN ('tcp', 'udp', 'icmp', 'any')", name="ck_sg_rules_protocol"
        ),
        sa.CheckConstraint(
            "(port_min IS NULL AND port_max IS NULL) OR "
            "(port_min >= 1 AND port_max <= 65535 AND port_min <= port_max)",
            name="ck_sg_rules_ports",
        ),
        sa.CheckConstraint("cidr IS NULL OR remote_group_id IS NULL", name="ck_sg_rules_one_peer"),
    )
    op.create_index("ix_sg_rules_group_id", "sg_rules", ["group_id"])
    op.create_table(
        "port_groups",
        sa.Column("port_id", sa.String(36), primary_key=True),
        sa.Column("group_id", sa.String(36), primary_key=True),
        sa.ForeignKeyConstraint(
            ["port_id"], ["ports.id"], name="fk_port_groups_port_id_ports", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["group_id"], ["security_groups.id"], name="fk_port_groups_group_id_security_groups"
        ),
    )
    op.create_index("ix_port_groups_group_id", "port_groups", ["group_id"])
    op.create_table(
        "floating_ips",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("address", sa.String(15), nullable=False),
        sa.Column("project_id", sa.String(36), nullable=False),
        sa.Column("port_id", sa.String(36), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name="fk_floating_ips_project_id_projects"
        ),
        sa.ForeignKeyConstraint(
            ["port_id"], ["ports.id"], name="fk_floating_ips_port_id_ports", ondelete="SET NULL"
        ),
        sa.UniqueConstraint("address", name="uq_floating_ips_address"),
        sa.UniqueConstraint("port_id", name="uq_floating_ips_port_id"),
    )


def downgrade() -> None:
    op.drop_table("floating_ips")
    op.drop_index("ix_port_groups_group_id", "port_groups")
    op.drop_table("port_groups")
    op.drop_index("ix_sg_rules_group_id", "sg_rules")
    op.drop_table("sg_rules")
    op.drop_table("security_groups")
