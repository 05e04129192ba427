"""instances published for gateway processes

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import lmfoundry.storage.models

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "instances",
        sa.Column("id", sa.String(length=200), nullable=False),
        sa.Column("group_key", sa.String(length=100), nullable=False),
        sa.Column("address", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("supervisor", sa.String(length=64), nullable=False),
        sa.Column(
            "updated_at", lmfoundry.storage.models.UTCDateTime(timezone=True), nullable=False
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("instances") as batch_op:
        batch_op.create_index("ix_instances_group_key", ["group_key"])
        batch_op.create_index("ix_instances_supervisor", ["supervisor"])
    op.create_table(
        "instance_demand",
        sa.Column("group_key", sa.String(length=100), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column(
            "last_used_at", lmfoundry.storage.models.UTCDateTime(timezone=True), nullable=False
        ),
        sa.PrimaryKeyConstraint("group_key"),
    )


def downgrade() -> None:
    op.drop_table("instance_demand")
    op.drop_table("instances")
