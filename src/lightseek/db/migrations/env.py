"""Alembic's environment: migrations run on the connection `lightseek.db.upgrade` hands over."""

from alembic import context

from lightseek.label.tables import metadata as label_metadata
from lightseek.platform.tables import metadata as platform_metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=[platform_metadata, label_metadata], render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
