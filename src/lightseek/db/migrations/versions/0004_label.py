"""LabelHub: annotators and their sessions, projects and members, items with their pre-labels,
assignments, annotations and reviews (tables prefixed ``label_``).

Revision ID: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

BIG, INT, STR, TEXT, BOOL, FLOAT = sa.BigInteger, sa.Integer, sa.String, sa.Text, sa.Boolean, sa.Float


def _fk(name: str, target: str, nullable: bool = False, **kw) -> sa.Column:
    return sa.Column(name, INT, sa.ForeignKey(target), nullable=nullable, **kw)


def upgrade() -> None:
    op.create_table(
        "label_users", sa.Column("id", INT, primary_key=True),
        sa.Column("username", STR(80), nullable=False, unique=True),
        sa.Column("password_hash", STR(200), nullable=False), sa.Column("role", STR(16), nullable=False),
        sa.Column("active", BOOL, nullable=False), sa.Column("created_at", BIG, nullable=False))
    op.create_table(
        "label_sessions", sa.Column("token_hash", STR(64), primary_key=True), _fk("user_id", "label_users.id"),
        sa.Column("csrf", STR(64), nullable=False), sa.Column("created_at", BIG, nullable=False),
        sa.Column("expires_at", BIG, nullable=False))
    op.create_table(
        "label_projects", sa.Column("id", INT, primary_key=True),
        sa.Column("name", STR(100), nullable=False, unique=True), sa.Column("task", STR(16), nullable=False),
        sa.Column("config", TEXT, nullable=False), _fk("created_by", "label_users.id", nullable=True),
        sa.Column("created_at", BIG, nullable=False))
    op.create_table(
        "label_members", _fk("project_id", "label_projects.id", primary_key=True),
        _fk("user_id", "label_users.id", primary_key=True), sa.Column("added_at", BIG, nullable=False))
    op.create_table(
        "label_items", sa.Column("id", INT, primary_key=True), _fk("project_id", "label_projects.id"),
        sa.Column("data", TEXT, nullable=False), sa.Column("source", TEXT),
        sa.Column("claims", INT, nullable=False), sa.Column("done", INT, nullable=False),
        sa.Column("uncertainty", FLOAT, nullable=False), sa.Column("disagreement", FLOAT, nullable=False),
        sa.Column("agreement", FLOAT), sa.Column("status", STR(12), nullable=False),
        sa.Column("created_at", BIG, nullable=False))
    # the next item in each order, read off an index (see tables.items)
    op.create_index("ix_label_items_open", "label_items", ["project_id", "status", "id"])
    op.create_index("ix_label_items_uncertain", "label_items",
                    ["project_id", "status", sa.text("uncertainty DESC"), "id"])
    op.create_index("ix_label_items_disagreeing", "label_items",
                    ["project_id", "status", sa.text("disagreement DESC"), sa.text("uncertainty DESC"), "id"])
    op.create_table(
        "label_prelabels", sa.Column("id", INT, primary_key=True), _fk("item_id", "label_items.id"),
        sa.Column("model", STR(200), nullable=False), sa.Column("version", STR(100), nullable=False),
        sa.Column("value", TEXT, nullable=False), sa.Column("score", FLOAT),
        sa.Column("created_at", BIG, nullable=False))
    op.create_index("ix_label_prelabels_item_id", "label_prelabels", ["item_id"])
    op.create_table(
        "label_assignments", _fk("item_id", "label_items.id", primary_key=True),
        _fk("user_id", "label_users.id", primary_key=True), _fk("project_id", "label_projects.id"),
        sa.Column("state", STR(8), nullable=False), sa.Column("at", BIG, nullable=False))
    op.create_index("ix_label_assignments_user", "label_assignments", ["project_id", "user_id", "state"])
    op.create_index("ix_label_assignments_open", "label_assignments", ["project_id", "state", "at"])
    op.create_table(
        "label_annotations", sa.Column("id", INT, primary_key=True), _fk("item_id", "label_items.id"),
        _fk("project_id", "label_projects.id"), _fk("user_id", "label_users.id"),
        sa.Column("value", TEXT, nullable=False), _fk("prelabel_id", "label_prelabels.id", nullable=True),
        sa.Column("seconds", FLOAT), sa.Column("created_at", BIG, nullable=False),
        sa.Column("updated_at", BIG, nullable=False),
        sa.UniqueConstraint("item_id", "user_id", name="uq_label_annotation_item_user"))
    op.create_index("ix_label_annotations_project", "label_annotations", ["project_id", "created_at"])
    op.create_index("ix_label_annotations_user", "label_annotations", ["project_id", "user_id"])
    op.create_table(
        "label_reviews", sa.Column("id", INT, primary_key=True), _fk("item_id", "label_items.id"),
        _fk("project_id", "label_projects.id"), _fk("reviewer_id", "label_users.id"),
        sa.Column("decision", STR(12), nullable=False), sa.Column("value", TEXT), sa.Column("note", TEXT),
        sa.Column("created_at", BIG, nullable=False))
    op.create_index("ix_label_reviews_item_id", "label_reviews", ["item_id"])


def downgrade() -> None:
    for name in ("label_reviews", "label_annotations", "label_assignments", "label_prelabels", "label_items",
                 "label_members", "label_projects", "label_sessions", "label_users"):
        op.drop_table(name)
