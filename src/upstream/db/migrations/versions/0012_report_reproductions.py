"""every reproduction of a report, with the output of each of its inputs

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "report_reproductions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("report_id", sa.Integer(), nullable=False),
        sa.Column("rate", sa.Float(), nullable=True),
        sa.Column("outputs", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["report_id"], ["reports.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("report_reproductions", schema=None) as batch_op:
        batch_op.create_index("ix_report_reproductions_report_id", ["report_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("report_reproductions", schema=None) as batch_op:
        batch_op.drop_index("ix_report_reproductions_report_id")
    op.drop_table("report_reproductions")
