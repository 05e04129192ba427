"""stored responses of the Responses API

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import lmfoundry.storage.models

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "stored_responses",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("serverless_id", sa.Integer(), nullable=True),
        sa.Column("endpoint_id", sa.Integer(), nullable=True),
        sa.Column("response", sa.JSON(), nullable=False),
        sa.Column("input_items", sa.JSON(), nullable=False),
        sa.Column("conversation", sa.JSON(), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column(
            "created_at", lmfoundry.storage.models.UTCDateTime(timezone=True), nullable=False
        ),
        sa.Column(
            "expires_at", lmfoundry.storage.models.UTCDateTime(timezone=True), nullable=False
        ),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["serverless_id"], ["serverless_deployments.id"], ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["endpoint_id"], ["online_endpoints.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("stored_responses") as batch_op:
        batch_op.create_index("ix_stored_responses_serverless_id", ["serverless_id"])
        batch_op.create_index("ix_stored_responses_endpoint_id", ["endpoint_id"])
        batch_op.create_index("ix_stored_responses_expires_at", ["expires_at"])


def downgrade() -> None:
    op.drop_table("stored_responses")
