"""tenant isolation: token expiry, disabled users, per-project flow switch and quotas

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import lmfoundry.storage.models

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch_op:
        batch_op.add_column(
            sa.Column("disabled_at", lmfoundry.storage.models.UTCDateTime(), nullable=True)
        )
    with op.batch_alter_table("tokens") as batch_op:
        batch_op.add_column(
            sa.Column("expires_at", lmfoundry.storage.models.UTCDateTime(), nullable=True)
        )
    with op.batch_alter_table("projects") as batch_op:
        batch_op.add_column(
            sa.Column("flows_enabled", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(sa.Column("quotas", sa.JSON(), nullable=False, server_default="{}"))
    # Projects that already hold flows keep running them after the upgrade.
    op.execute(
        "UPDATE projects SET flows_enabled = TRUE "
        "WHERE id IN (SELECT DISTINCT project_id FROM flows)"
    )


def downgrade() -> None:
    with op.batch_alter_table("projects") as batch_op:
        batch_op.drop_column("quotas")
        batch_op.drop_column("flows_enabled")
    with op.batch_alter_table("tokens") as batch_op:
        batch_op.drop_column("expires_at")
    with op.batch_alter_table("users") as batch_op:
        batch_op.drop_column("disabled_at")
