"""Alembic environment: runs on the connection `Database.migrate` hands over."""

from alembic import context
from sqlalchemy import create_engine

from lmfoundry.storage.models import Base

target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:  # `alembic` CLI use: connect from the configured URL
        url = context.config.get_main_option("sqlalchemy.url")
        if not url:
            raise SystemExit("Set sqlalchemy.url in alembic.ini (or run `lmfoundry up`).")
        engine = create_engine(url)
        with engine.begin() as connection:
            _run(connection)
        return
    _run(connection)


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations_online()
