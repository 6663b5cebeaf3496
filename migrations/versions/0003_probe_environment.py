"""Record the numerics environment of each task's probe logits (task.probe_environment), and re-seal.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 00:00:00.000000

Tasks registered before this revision get NULL (environment unknown): ``verify-forgetting`` then checks
them within tolerance rather than demanding bit-identical logits. A new column changes every row's seal,
so rows are re-sealed, but only those whose seal was valid before: a row edited behind snowhub's back
stays detectably edited.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

from snowhub_migrations._record_v1 import record_digest

# revision identifiers, used by Alembic.
revision: str = "0003"
down_revision: Union[str, Sequence[str], None] = "0002"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    conn = op.get_bind()
    rows = [dict(r) for r in conn.execute(sa.text('SELECT * FROM "task"')).mappings()]
    with op.batch_alter_table("task") as batch:
        batch.add_column(sa.Column("probe_environment", sa.JSON(), nullable=True))
    for row in rows:
        if row["record_sha256"] != record_digest("task", row):
            continue  # already broken: keep it so
        conn.execute(sa.text('UPDATE "task" SET record_sha256 = :d WHERE seq = :k'),
                     {"d": record_digest("task", row | {"probe_environment": None}), "k": row["seq"]})


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("task") as batch:
        batch.drop_column("probe_environment")
