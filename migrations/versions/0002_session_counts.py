"""Session counts by status, so listings and 404s need not count a million rows.

Creates `session_counts` and fills it from the sessions already stored; from then on the store
moves the counts in the transaction of every insert, status change and delete.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 15:30:54.513749

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

STATUSES = ("queued", "generating", "completed", "failed", "cancelled")


def upgrade():
    counts = op.create_table(
        'session_counts',
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('sessions', sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint('status', name=op.f('pk_session_counts'))
    )
    found = dict(op.get_bind().execute(sa.text("SELECT status, count(*) FROM sessions GROUP BY status")).all())
    op.bulk_insert(counts, [{"status": status, "sessions": found.pop(status, 0)} for status in STATUSES]
                   + [{"status": status, "sessions": n} for status, n in found.items()])


def downgrade():
    op.drop_table('session_counts')
