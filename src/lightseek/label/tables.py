"""LabelHub's tables (SQLAlchemy Core), in the database layer the platform shares (db/, one
Alembic history). Names start with ``label_`` so that one database can hold both. Times are Unix
seconds (UTC); structured values (an item's content, an annotation's value, provenance) are JSON
text, which SQLite and PostgreSQL store alike.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

users = Table(
    "label_users", metadata,
    Column("id", Integer, primary_key=True),
    Column("username", String(80), nullable=False, unique=True),
    Column("password_hash", String(200), nullable=False),      # argon2id, with its parameters
    Column("role", String(16), nullable=False),                # admin | reviewer | annotator
    Column("active", Boolean, nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

sessions = Table(
    "label_sessions", metadata,
    Column("token_hash", String(64), primary_key=True),        # SHA-256 of the cookie's token
    Column("user_id", Integer, ForeignKey("label_users.id"), nullable=False),
    Column("csrf", String(64), nullable=False),                # sent back in forms and X-CSRF-Token
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
)

projects = Table(
    "label_projects", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("task", String(16), nullable=False),                # see tasks.TASKS
    Column("config", Text, nullable=False),                    # JSON: labels, multi, overlap, order, instructions
    Column("created_by", Integer, ForeignKey("label_users.id")),
    Column("created_at", BigInteger, nullable=False),
)

members = Table(
    "label_members", metadata,
    Column("project_id", Integer, ForeignKey("label_projects.id"), primary_key=True),
    Column("user_id", Integer, ForeignKey("label_users.id"), primary_key=True),
    Column("added_at", BigInteger, nullable=False),
)

items = Table(
    "label_items", metadata,
    Column("id", Integer, primary_key=True),
    Column("project_id", Integer, ForeignKey("label_projects.id"), nullable=False),
    Column("data", Text, nullable=False),                      # JSON: the task's fields (text, question, ...)
    Column("source", Text),                                    # JSON: provenance from the import
    Column("claims", Integer, nullable=False),                 # annotators it went to (<= the project's overlap)
    Column("done", Integer, nullable=False),                   # annotations submitted
    # active learning: 1 - the top pre-label score, and how much the models' pre-labels disagree
    Column("uncertainty", Float, nullable=False),
    Column("disagreement", Float, nullable=False),
    Column("agreement", Float),                                # between its annotators, once 2+ have answered
    Column("status", String(12), nullable=False),              # open | complete | review | reviewed | rejected
    Column("created_at", BigInteger, nullable=False),
    Index("ix_label_items_open", "project_id", "status", "id"),
)
# who gets which item next (store.next_item): a project's open items in each order's sequence, so
# that the first candidates are read off an index instead of sorting them all (claims, which changes
# at every hand-out, is checked on the row and kept out of the indexes); ix_label_items_open, in id
# order, also serves the sequential order, listings and the counts by status
Index("ix_label_items_uncertain", items.c.project_id, items.c.status, items.c.uncertainty.desc(), items.c.id)
Index("ix_label_items_disagreeing", items.c.project_id, items.c.status, items.c.disagreement.desc(),
      items.c.uncertainty.desc(), items.c.id)

prelabels = Table(
    "label_prelabels", metadata,
    Column("id", Integer, primary_key=True),
    Column("item_id", Integer, ForeignKey("label_items.id"), nullable=False, index=True),
    Column("model", String(200), nullable=False),
    Column("version", String(100), nullable=False),
    Column("value", Text, nullable=False),                     # JSON, the task's annotation value
    Column("score", Float),                                    # the model's confidence in it
    Column("created_at", BigInteger, nullable=False),
)

assignments = Table(
    "label_assignments", metadata,
    Column("item_id", Integer, ForeignKey("label_items.id"), primary_key=True),
    Column("user_id", Integer, ForeignKey("label_users.id"), primary_key=True),
    Column("project_id", Integer, ForeignKey("label_projects.id"), nullable=False),
    Column("state", String(8), nullable=False),                # open | done | skipped
    Column("at", BigInteger, nullable=False),
    Index("ix_label_assignments_user", "project_id", "user_id", "state"),
    Index("ix_label_assignments_open", "project_id", "state", "at"),
)

annotations = Table(
    "label_annotations", metadata,
    Column("id", Integer, primary_key=True),
    Column("item_id", Integer, ForeignKey("label_items.id"), nullable=False),
    Column("project_id", Integer, ForeignKey("label_projects.id"), nullable=False),
    Column("user_id", Integer, ForeignKey("label_users.id"), nullable=False),
    Column("value", Text, nullable=False),                     # JSON, checked by the task type
    Column("prelabel_id", Integer, ForeignKey("label_prelabels.id")),  # the pre-label shown, if any
    Column("seconds", Float),                                  # time the annotator spent, as the page measured
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    UniqueConstraint("item_id", "user_id", name="uq_label_annotation_item_user"),
    Index("ix_label_annotations_project", "project_id", "created_at"),
    Index("ix_label_annotations_user", "project_id", "user_id"),
)

reviews = Table(
    "label_reviews", metadata,
    Column("id", Integer, primary_key=True),
    Column("item_id", Integer, ForeignKey("label_items.id"), nullable=False, index=True),
    Column("project_id", Integer, ForeignKey("label_projects.id"), nullable=False),
    Column("reviewer_id", Integer, ForeignKey("label_users.id"), nullable=False),
    Column("decision", String(12), nullable=False),            # accept | reject | adjudicate
    Column("value", Text),                                     # JSON: the final value (accept, adjudicate)
    Column("note", Text),
    Column("created_at", BigInteger, nullable=False),
)
