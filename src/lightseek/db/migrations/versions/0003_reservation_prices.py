"""A reservation keeps the prices it was made at, so that a price changed while the request runs
never bills it past what was reserved.

Revision ID: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("reservations") as batch:
        batch.add_column(sa.Column("prompt_micros_per_1k", sa.BigInteger))
        batch.add_column(sa.Column("completion_micros_per_1k", sa.BigInteger))


def downgrade() -> None:
    with op.batch_alter_table("reservations") as batch:
        batch.drop_column("completion_micros_per_1k")
        batch.drop_column("prompt_micros_per_1k")
