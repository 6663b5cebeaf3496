"""Initial schema: the source model and the append-only task list.

Revision ID: 0001
Revises:
Create Date: 2025-01-01 00:00:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

# Migrations are frozen history: they spell out the column types instead of importing the ORM models,
# which will change. snowhub.store.models.UTCDateTime stores naive UTC in a DateTime(timezone=True).


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "source",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("weights_origin", sa.String(), nullable=False),
        sa.Column("weights_file", sa.String(), nullable=False),
        sa.Column("weights_file_sha256", sa.String(), nullable=False),
        sa.Column("weights_sha256", sa.String(), nullable=False),
        sa.Column("parameter_count", sa.Integer(), nullable=False),
        sa.Column("taps", sa.JSON(), nullable=False),
        sa.Column("preprocessing", sa.JSON(), nullable=False),
        sa.Column("head_classes", sa.JSON(), nullable=True),
        sa.Column("library_versions", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_source_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_source")),
    )
    op.create_table(
        "task",
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("class_names", sa.JSON(), nullable=False),
        sa.Column("hyperparams", sa.JSON(), nullable=False),
        sa.Column("cp_indices", sa.JSON(), nullable=False),
        sa.Column("delta_params", sa.Integer(), nullable=False),
        sa.Column("cp_params", sa.Integer(), nullable=False),
        sa.Column("val_top1", sa.Double(), nullable=False),
        sa.Column("val_top5", sa.Double(), nullable=False),
        sa.Column("val_loss", sa.Double(), nullable=False),
        sa.Column("train_seconds", sa.Double(), nullable=False),
        sa.Column("train_images_per_s", sa.Double(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("weights_file", sa.String(), nullable=False),
        sa.Column("weights_sha256", sa.String(), nullable=False),
        sa.Column("probe_file", sa.String(), nullable=False),
        sa.Column("probe_sha256", sa.String(), nullable=False),
        sa.Column("probe_size", sa.Integer(), nullable=False),
        sa.Column("probe_top1", sa.Double(), nullable=False),
        sa.Column("probe_logits_sha256", sa.String(), nullable=False),
        sa.Column("dataset_fingerprint", sa.String(), nullable=False),
        sa.Column("dataset_summary", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("seq >= 1", name=op.f("ck_task_seq_positive")),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_task")),
        sa.UniqueConstraint("name", name=op.f("uq_task_name")),
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table("task")
    op.drop_table("source")
