"""The engine, sessions and migrations.

SQLite runs in WAL mode with foreign keys on; migrations are applied by Alembic at start, so a
database is always at the code's schema before the first request.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"
MIGRATION_LOCK = 0x746F776E  # "town": the advisory lock id every replica takes to migrate
log = logging.getLogger("townsquare.storage")


def make_engine(
    url: str,
    *,
    pool_size: int = 20,
    pool_timeout_s: float = 30.0,
    prepared_statements: bool = True,
) -> Engine:
    """Create the engine; for SQLite, make the directory and switch on WAL and foreign keys.

    ``prepared_statements=False`` is for PgBouncer's transaction pooling (docs/scaling.md).
    The pool holds ``pool_size`` connections and never more: callers size it so that every
    thread that may use the database at once (each holds at most one connection) gets one
    without waiting (``Settings.resolved_pool_size``).
    """
    kwargs: dict[str, Any] = {"pool_timeout": pool_timeout_s}
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            _private_file(Path(path))
        # Sessions are used from worker threads, one thread at a time.
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    else:
        kwargs["pool_pre_ping"] = True
        if not prepared_statements and "psycopg" in url:
            # behind PgBouncer in transaction mode (before 1.21) a statement psycopg prepared
            # on one server connection is missing on the next: never prepare
            kwargs["connect_args"] = {"prepare_threshold": None}
    if ":memory:" not in url:
        kwargs.update(pool_size=pool_size, max_overflow=0)
    engine = create_engine(url, **kwargs)
    if url.startswith("sqlite"):

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

    return engine


def private_dir(path: Path) -> None:
    """Create ``path`` (and its parents) as a directory readable by its owner only."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)


def wait_for_database(engine: Engine, *, timeout_s: float, first_wait_s: float = 0.5) -> None:
    """Return once the database answers; while it does not (a PostgreSQL server still
    starting, a network partition), retry with exponential backoff, logging each failure, and
    raise ``ConfigurationError`` naming the server after ``timeout_s``."""
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    from townsquare.errors import ConfigurationError
    from townsquare.settings import redact

    deadline = time.monotonic() + timeout_s
    wait = first_wait_s
    where = redact(engine.url.render_as_string(hide_password=True))
    while True:
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            return
        except OperationalError as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            left = deadline - time.monotonic()
            if left <= 0:
                raise ConfigurationError(
                    f"The database at {where} is not reachable ({reason}); gave up after "
                    f"{timeout_s:.0f} s (database_connect_timeout_s). Check database_url and "
                    "that the server is running and accepts connections."
                ) from exc
            wait = min(wait, left)
            log.warning(
                "the database at %s is not reachable (%s); retrying in %.1f s", where, reason, wait
            )
            time.sleep(wait)
            wait = min(wait * 2, 10.0)


def _private_file(path: Path) -> None:
    """Create the database file (and its directory) readable by its owner only: it holds
    members' DMs. SQLite gives the -wal and -shm files the database file's permissions."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def make_sessions(engine: Engine) -> sessionmaker[Session]:
    """A session factory on ``engine`` (objects stay usable after commit)."""
    return sessionmaker(engine, expire_on_commit=False)


def _alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def migrate(engine: Engine) -> None:
    """Bring the database to the newest schema. Processes that start together migrate one at
    a time: on PostgreSQL under an advisory lock (migrations/env.py), on a SQLite file under
    an exclusive lock on ``<file>.migrate-lock`` (SQLite's own locking does not cover
    Alembic's read-then-create, and half of six processes started at once crashed)."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        command.upgrade(_alembic_config(engine), "head")
        return
    import fcntl

    lock = Path(database).with_name(Path(database).name + ".migrate-lock")
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        command.upgrade(_alembic_config(engine), "head")


def migration_status(engine: Engine) -> tuple[str | None, str | None]:
    """(current revision, newest revision) — equal when the database is up to date."""
    head = ScriptDirectory.from_config(_alembic_config(engine)).get_current_head()
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    return current, head


class BackgroundWriter:
    """Writes rows on a thread of its own, so a caller on the event loop (a safety refusal
    while a reply streams) never waits for the database. ``flush`` waits until everything
    handed over so far is committed; ``close`` flushes and stops."""

    def __init__(self, sessions: sessionmaker[Session], *, name: str = "writer") -> None:
        self.sessions = sessions
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def add(self, row: Any) -> None:
        """Queue a row to be written by the writer thread (never blocks the caller)."""
        self._queue.put(row)

    def _run(self) -> None:
        while True:
            row = self._queue.get()
            try:
                if row is None:
                    return
                with self.sessions.begin() as db:
                    db.add(row)
            except Exception:  # a failed write is logged, never fatal to the writer
                log.exception("background write failed")
            finally:
                self._queue.task_done()

    def flush(self) -> None:
        """Wait until every queued row is written."""
        self._queue.join()

    def close(self) -> None:
        """Write what is queued and stop the thread."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=10)
