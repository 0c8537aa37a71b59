"""accounts: users, per-model roles, API tokens; who queued a job and who cancelled it

Revision ID: 0008
Revises: 0007
"""

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    secrets_table = op.create_table(
        "hub_secrets",
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column("value", sa.String(length=100), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    # The held-out split is keyed by this secret. A hub that has suites already keeps the
    # unkeyed split its cases were measured on (an empty secret); a new hub gets its own.
    has_suites = op.get_bind().execute(sa.text("SELECT COUNT(*) FROM suites")).scalar()
    split = "" if has_suites else secrets.token_hex(32)
    op.bulk_insert(secrets_table, [{"name": "split", "value": split}])
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("role", sa.String(length=20), nullable=False),
        sa.Column("owner", sa.Boolean(), server_default="0", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "model_roles",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(length=20), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"]),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("user_id", "model_id"),
    )
    with op.batch_alter_table("model_roles", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_model_roles_model_id"), ["model_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_model_roles_user_id"), ["user_id"], unique=False)
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("last_chars", sa.String(length=8), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("note", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("digest"),
    )
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_tokens_user_id"), ["user_id"], unique=False)
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("owner", sa.String(100), server_default="", nullable=False))
        batch_op.add_column(
            sa.Column("cancelled_by", sa.String(100), server_default="", nullable=False)
        )


def downgrade() -> None:
    op.drop_table("hub_secrets")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("cancelled_by")
        batch_op.drop_column("owner")
    op.drop_table("api_tokens")
    op.drop_table("model_roles")
    op.drop_table("users")
