"""monitoring: refused requests in the usage ledger; supervisors' heartbeats

Revision ID: 0009
Revises: 0008
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import lmfoundry.storage.models

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("usage_records") as batch_op:
        batch_op.add_column(
            sa.Column("refused", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.create_table(
        "supervisors",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column(
            "started_at", lmfoundry.storage.models.UTCDateTime(timezone=True), nullable=False
        ),
        sa.Column("seen_at", lmfoundry.storage.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("supervisors")
    with op.batch_alter_table("usage_records") as batch_op:
        batch_op.drop_column("refused")
