"""Alembic environment of the review store: runs on the connection the store opened (see
medart_core/store/database.py), inside the transaction that holds the migration lock."""

from alembic import context

from medart_core.store.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, transactional_ddl=True,
                  render_as_batch=connection.dialect.name == "sqlite")  # SQLite alters tables by copying them
with context.begin_transaction():
    context.run_migrations()
