"""Tasks: one row per long operation (``vm.start``, ``vm.delete``...), its status and times.

A task names its target and project by value, not by foreign key: it outlives the VM it
worked on (``vm.delete``) and stays in the "Recent Tasks" list. ``daemon_id`` is the corrald
instance that ran it, so that the next instance can tell the tasks it left unfinished.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tasks",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("target_kind", sa.String(32), nullable=False),
        sa.Column("target_name", sa.String(255), nullable=False),
        sa.Column("project_id", sa.String(36), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("progress", sa.Integer(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("initiated_by", sa.String(80), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancellable", sa.Boolean(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("daemon_id", sa.String(36), nullable=False),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'success', 'error', 'cancelled')",
            name="ck_tasks_status",
        ),
        sa.CheckConstraint("progress BETWEEN 0 AND 100", name="ck_tasks_progress"),
    )
    op.create_index("ix_tasks_requested_at", "tasks", ["requested_at"])
    op.create_index("ix_tasks_project_id", "tasks", ["project_id"])
    op.create_index("ix_tasks_status", "tasks", ["status"])


def downgrade() -> None:
    op.drop_table("tasks")
