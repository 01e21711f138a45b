"""Access: projects, users, memberships, API tokens, quotas and the audit log; every VM, image
and key pair belongs to a project, the existing ones to ``default``.

The project ``default`` is inserted with a fixed id (``DEFAULT_PROJECT_ID`` in
``corral.store.models``; a test checks the two agree). ``project_id`` is added nullable,
filled with that id, then made NOT NULL with its foreign key and index: the same steps on
SQLite (a batch copy of the table) and PostgreSQL (``ALTER TABLE``).

Revision ID: 0003
Revises: 0002
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

#: Written out rather than imported: a migration must not change when the models do.
DEFAULT_PROJECT_ID = "00000000-0000-4000-8000-000000000001"

#: Tables whose rows belong to a project.
OWNED = ("vms", "images", "keypairs")


def _project_tables() -> None:
    projects = op.create_table(
        "projects",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_projects_name", "projects", ["name"], unique=True)
    assert projects is not None
    op.bulk_insert(
        projects,
        [
            {
                "id": DEFAULT_PROJECT_ID,
                "name": "default",
                "description": "Objects created without a project",
                "created_at": datetime.now(UTC),
            }
        ],
    )
    op.create_table(
        "quotas",
        sa.Column("project_id", sa.String(36), primary_key=True),
        sa.Column("instances", sa.Integer(), nullable=True),
        sa.Column("vcpus", sa.Integer(), nullable=True),
        sa.Column("memory", sa.BigInteger(), nullable=True),
        sa.Column("disk", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name="fk_quotas_project_id_projects",
            ondelete="CASCADE",
        ),
    )


def _user_tables() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("role IN ('admin', 'operator', 'viewer')", name="ck_users_role"),
    )
    op.create_index("ix_users_name", "users", ["name"], unique=True)
    op.create_table(
        "memberships",
        sa.Column("user_id", sa.String(36), nullable=False),
        sa.Column("project_id", sa.String(36), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "project_id", name="pk_memberships"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_memberships_user_id_users", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name="fk_memberships_project_id_projects",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_memberships_project_id", "memberships", ["project_id"])
    op.create_table(
        "tokens",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("user_id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_tokens_user_id_users", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_tokens_user_id", "tokens", ["user_id"])


def _audit_table() -> None:
    op.create_table(
        "audit_log",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(80), nullable=False),
        sa.Column("action", sa.String(63), nullable=False),
        sa.Column("target_kind", sa.String(32), nullable=False),
        sa.Column("target_name", sa.String(255), nullable=False),
        sa.Column("project", sa.String(63), nullable=True),
        sa.Column("outcome", sa.String(63), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])
    op.create_index("ix_audit_log_actor", "audit_log", ["actor"])
    op.create_index("ix_audit_log_project", "audit_log", ["project"])


def _own(table: str) -> None:
    """Give ``table`` a ``project_id``: every existing row goes to the project ``default``."""
    with op.batch_alter_table(table) as batch:
        batch.add_column(sa.Column("project_id", sa.String(36), nullable=True))
    rows = sa.table(table, sa.column("project_id", sa.String(36)))
    op.execute(rows.update().values(project_id=DEFAULT_PROJECT_ID))
    with op.batch_alter_table(table) as batch:
        batch.alter_column("project_id", existing_type=sa.String(36), nullable=False)
        batch.create_foreign_key(
            f"fk_{table}_project_id_projects", "projects", ["project_id"], ["id"]
        )
        batch.create_index(f"ix_{table}_project_id", ["project_id"])


def upgrade() -> None:
    _project_tables()
    _user_tables()
    _audit_table()
    for table in OWNED:
        _own(table)


def downgrade() -> None:
    for table in OWNED:
        with op.batch_alter_table(table) as batch:
            batch.drop_index(f"ix_{table}_project_id")
            batch.drop_constraint(f"fk_{table}_project_id_projects", type_="foreignkey")
            batch.drop_column("project_id")
    op.drop_table("audit_log")
    op.drop_table("tokens")
    op.drop_table("memberships")
    op.drop_table("users")
    op.drop_table("quotas")
    op.drop_table("projects")
