"""trusted_key: the public keys whose signed task bundles a hub imports (``snowhub trust add``).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 15:30:00.000000

A new table, sealed and append-only like the others; no existing row changes, so nothing is re-sealed.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

# revision identifiers, used by Alembic.
revision: str = "0006"
down_revision: Union[str, Sequence[str], None] = "0005"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "trusted_key",
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("public_key", sa.String(), nullable=False),
        sa.Column("fingerprint", sa.String(), nullable=False),
        sa.Column("comment", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("record_sha256", sa.String(), nullable=True),
        sa.CheckConstraint("seq >= 1", name=op.f("ck_trusted_key_seq_positive")),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_trusted_key")),
        sa.UniqueConstraint("public_key", name=op.f("uq_trusted_key_public_key")),
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table("trusted_key")
