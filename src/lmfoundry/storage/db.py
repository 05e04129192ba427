"""Engine, sessions and migrations.

SQLite (the default) runs in WAL mode with `synchronous=NORMAL` and a busy timeout, so the
server, its job processes and a CLI can share one file; PostgreSQL works through the same code.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

MIGRATIONS = Path(__file__).parent / "migrations"


def _sqlite_pragmas(busy_seconds: float) -> Any:
    def pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")  # ~0.1 ms per small write, not ~15 ms
        # how long to wait on another writer before "database is locked" (then a 503)
        cursor.execute(f"PRAGMA busy_timeout={int(busy_seconds * 1000)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return pragmas


def make_engine(url: str, busy_seconds: float = 30.0) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": busy_seconds},
            poolclass=NullPool if path == ":memory:" else None,
        )
        event.listen(engine, "connect", _sqlite_pragmas(busy_seconds))
        return engine
    connect_args = {"options": "-c timezone=utc"} if url.startswith("postgresql") else {}
    return create_engine(
        url, pool_pre_ping=True, pool_size=10, max_overflow=20, connect_args=connect_args
    )


class Database:
    def __init__(self, url: str, busy_seconds: float = 30.0) -> None:
        self.url = url
        self.engine = make_engine(url, busy_seconds)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: committed when the block ends, rolled back if it raises."""
        session = self._sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def migrate(self) -> None:
        """Bring the schema to the newest migration (idempotent)."""
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
        with self.engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                # several processes starting at once (a supervisor and gateways) migrate
                # one after the other
                connection.execute(text("SELECT pg_advisory_xact_lock(724311)"))
            config.attributes["connection"] = connection
            command.upgrade(config, "heads")

    def dispose(self) -> None:
        self.engine.dispose()
