"""Accounts: users, each session's owner, counts per owner, and the owners' turns in the queue.

Sessions made before this revision belong to no one (owner ""): only admins see them once
accounts exist. `session_counts` gains the owner in its key and is rebuilt from the sessions.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 02:00:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

STATUSES = ("queued", "generating", "completed", "failed", "cancelled")


def upgrade():
    op.create_table('users',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('is_admin', sa.Boolean(), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=True),
    sa.Column('password_hash', sa.String(length=256), nullable=True),
    sa.Column('sign_in_epoch', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('revoked_at', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_users')),
    sa.UniqueConstraint('name', name=op.f('uq_users_name')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_users_token_hash'))
    )
    turns = op.create_table('queue_turns',
    sa.Column('owner', sa.String(length=64), nullable=False),
    sa.Column('waiting', sa.Boolean(), nullable=False),
    sa.Column('last_turn_at', sa.Double(), nullable=False),
    sa.Column('joined_at', sa.Double(), nullable=False),
    sa.PrimaryKeyConstraint('owner', name=op.f('pk_queue_turns'))
    )
    with op.batch_alter_table('queue_turns', schema=None) as batch_op:
        batch_op.create_index('ix_queue_turns_order', ['waiting', 'last_turn_at', 'joined_at', 'owner'],
                              unique=False)
    # Everything queued so far is no one's, which joined the queue before anyone else.
    queued = op.get_bind().execute(sa.text("SELECT count(*) FROM sessions WHERE status = 'queued'")).scalar()
    op.bulk_insert(turns, [{"owner": "", "waiting": bool(queued), "last_turn_at": 0.0, "joined_at": 0.0}])

    with op.batch_alter_table('sessions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('owner', sa.String(length=64), server_default='', nullable=False))
        batch_op.create_index('ix_sessions_owner_newest', ['owner', 'created_at', 'id'], unique=False)
        batch_op.create_index('ix_sessions_status_owner_newest', ['status', 'owner', 'created_at', 'id'],
                              unique=False)

    op.drop_table('session_counts')
    counts = op.create_table('session_counts',
    sa.Column('owner', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('sessions', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('owner', 'status', name=op.f('pk_session_counts'))
    )
    found = dict(op.get_bind().execute(sa.text("SELECT status, count(*) FROM sessions GROUP BY status")).all())
    op.bulk_insert(counts, [{"owner": "", "status": status, "sessions": found.pop(status, 0)} for status in STATUSES]
                   + [{"owner": "", "status": status, "sessions": n} for status, n in found.items()])


def downgrade():
    op.drop_table('session_counts')
    counts = op.create_table('session_counts',
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('sessions', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('status', name=op.f('pk_session_counts'))
    )
    found = dict(op.get_bind().execute(sa.text("SELECT status, count(*) FROM sessions GROUP BY status")).all())
    op.bulk_insert(counts, [{"status": status, "sessions": found.pop(status, 0)} for status in STATUSES]
                   + [{"status": status, "sessions": n} for status, n in found.items()])
    with op.batch_alter_table('sessions', schema=None) as batch_op:
        batch_op.drop_index('ix_sessions_status_owner_newest')
        batch_op.drop_index('ix_sessions_owner_newest')
        batch_op.drop_column('owner')
    op.drop_table('queue_turns')
    op.drop_table('users')
