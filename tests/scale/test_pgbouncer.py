"""PgBouncer (Debian's) in transaction-pooling mode between the app and PostgreSQL, as many
clusters run it to keep replicas x pools under max_connections: migrations, ingestion,
search with pgvector and chat work through it with prepared statements off
(``database_prepared_statements = false``)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from tests.conftest import auth, free_port, make_settings, missing
from tests.town import build_town
from townsquare.app import create_app
from townsquare.backends.fake import FakeText
from townsquare.services import Services

pytestmark = pytest.mark.scale

CONFIG = """\
[databases]
* = host={socket} port=5432 user=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {directory}/users.txt
pool_mode = transaction
default_pool_size = 20
max_client_conn = 400
ignore_startup_parameters = extra_float_digits,options
logfile = {directory}/pgbouncer.log
pidfile = {directory}/pgbouncer.pid
"""


@pytest.fixture
def bouncer(postgres: str, tmp_path: Path) -> Iterator[str]:
    """A database of its own behind PgBouncer; the URL to it through the bouncer."""
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(binary).exists():
        missing("pgbouncer", "`make test` installs Debian's pgbouncer")
    socket = parse_qs(urlparse(postgres).query)["host"][0]
    admin = create_engine(postgres.replace("postgresql://", "postgresql+psycopg://"))
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as db:
        db.execute(text("DROP DATABASE IF EXISTS bounced WITH (FORCE)"))
        db.execute(text("CREATE DATABASE bounced"))
    admin.dispose()
    # PgBouncer runs as the server's user (it refuses root), outside root's private tmp_path
    directory = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
    directory.chmod(0o777)
    (directory / "users.txt").write_text('"postgres" ""\n')
    (directory / "users.txt").chmod(0o644)
    port = free_port()
    config = directory / "pgbouncer.ini"
    config.write_text(CONFIG.format(socket=socket, port=port, directory=directory))
    config.chmod(0o644)
    owner = Path(socket).owner()
    process = subprocess.Popen([binary, "-u", owner, str(config)], stderr=subprocess.DEVNULL)
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/bounced"
    deadline = time.monotonic() + 20
    while True:
        try:
            psycopg.connect(url.replace("+psycopg", ""), connect_timeout=1).close()
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline or process.poll() is not None:
                log = directory / "pgbouncer.log"
                said = log.read_text()[-2000:] if log.exists() else ""
                raise RuntimeError(f"pgbouncer did not start: {said}") from None
            time.sleep(0.2)
    yield url
    process.terminate()
    process.wait(timeout=10)
    shutil.rmtree(directory, ignore_errors=True)


def _town(bouncer: str, tmp_path: Path, **overrides: Any) -> Services:
    plain = bouncer.replace("+psycopg", "")
    settings = make_settings(
        tmp_path,
        database_url=bouncer,
        search={"vector_index": f"pgvector:{plain}"},
        database_pool_size=24,
        **overrides,
    )
    return Services.build(settings, text=FakeText())


def test_the_app_works_through_pgbouncer_in_transaction_mode(bouncer: str, tmp_path: Path) -> None:
    services = _town(bouncer, tmp_path, database_prepared_statements=False)
    try:
        keys = build_town(services)
        with TestClient(create_app(services=services)) as client:
            member = auth(keys["member"])

            def search(query: str) -> int:
                found = client.get("/api/listings/search", params={"q": query}, headers=member)
                return found.status_code

            # the same statements many times, from 8 threads at once: psycopg would prepare
            # them on one server connection and PgBouncer hand the next transaction another
            queries = ["bike", "table", "jacket", "stroller"] * 20
            with ThreadPoolExecutor(8) as pool:
                codes = list(pool.map(search, queries))
            assert codes == [200] * len(queries)
            chat = client.post("/api/conversations", json={}, headers=member)
            assert chat.status_code == 201, chat.text
    finally:
        asyncio.run(services.aclose())
