"""Load benchmark: many members at once against one `townsquare serve` on the demo town.

    .venv/bin/python bench/load.py [--clients 50] [--streams 8] [--duration 60]

1. Mixed load: ``--clients`` members (distinct demo-town users, each with their own key) send
   a realistic mix of non-generating requests (listing searches with filters, search sources,
   group message pages, the feed, reel recommendations, their groups), each waiting a short
   think time (uniform 0.2-0.8 s) between requests, while ``--streams`` other clients keep
   streaming chat completions from the bundled model (128 tokens, one after another). A probe
   reads /healthz every 100 ms. Clients start over a 2 s ramp; the first ``--warmup`` seconds
   (cold caches, the thread pool growing) are reported apart, the figures cover the
   ``--duration`` after them. Per route: throughput, latency percentiles, status codes;
   timeouts (30 s) are counted apart; every 429 must carry Retry-After.
2. Image checks: ``--detect`` parallel uploads of a 4096 x 4096 all-black PNG (16 KB) to
   /api/provenance/detect; the server's resident memory before and after.

Figures go to stdout and bench/results/load.json. The server runs with its default settings
(one process, the bundled model, SQLite), on the same 2 cores as this client.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import _serve  # noqa: E402

TIMEOUT_S = 30.0
ITEMS = [
    "road bike",
    "kids bike",
    "bookshelf",
    "bluetooth speaker",
    "rain jacket",
    "novel",
    "stroller",
    "garden bench",
    "skateboard",
    "DJ controller",
    "espresso machine",
    "city bike",
    "oak dining table",
    "headphones",
    "summer dress",
    "grammar book",
    "running shoes",
    "tent",
    "cast iron pan",
    "guitar",
    "lamp",
    "desk chair",
    "winter coat",
    "board game",
]
ADJECTIVES = ["", "", "cheap", "used", "vintage", "good", "small", "sturdy"]
PLACES = ["Alfama", "Belém", "Graça", "Arroios", "Benfica", "Marvila"]


def query_pool(rng: random.Random, size: int = 300) -> list[tuple[str, dict[str, Any]]]:
    """Distinct searches members might type, some with filters; drawn with a Zipf-like skew
    (popular searches repeat, most are rare), as search logs are."""
    pool = []
    for _ in range(size):
        item = rng.choice(ITEMS)
        words = " ".join(w for w in (rng.choice(ADJECTIVES), item) if w)
        filters: dict[str, Any] = {}
        shape = rng.random()
        if shape < 0.3:
            filters["max_price"] = rng.choice([50, 100, 150, 300])
        elif shape < 0.5:
            filters["near"] = rng.choice(PLACES)
        elif shape < 0.6:
            filters["condition"] = rng.choice(["good", "like_new", "fair"])
        pool.append((words, filters))
    return pool


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return (
        ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")
    )


def prepare(data_dir: Path, clients: int) -> tuple[str, list[str], list[str]]:
    """Migrate, seed the demo town, index it; keys for the admin and for ``clients`` members."""
    admin = _serve.init(data_dir)
    for command in (["seed", "demo"], ["index", "rebuild"]):
        subprocess.run(
            [sys.executable, "-m", "townsquare", *command],
            env=_serve.environment(data_dir),
            capture_output=True,
            check=True,
        )

    from sqlalchemy import select

    from townsquare.identity import issue_key
    from townsquare.settings import Settings
    from townsquare.storage.db import make_engine, make_sessions
    from townsquare.storage.social_tables import Group, Membership
    from townsquare.storage.tables import User

    engine = make_engine(Settings(data_dir=data_dir).resolved_database_url)
    keys, groups = [], []
    with make_sessions(engine).begin() as db:
        members = list(
            db.scalars(
                select(User)
                .where(User.role == "member", User.id.in_(select(Membership.user_id)))
                .order_by(User.id)
            )
        )
        for n in range(clients):
            keys.append(issue_key(db, members[n % len(members)], label="load"))
            group = db.scalar(
                select(Group.external_id)
                .join(Membership, Membership.group_id == Group.id)
                .where(Membership.user_id == members[n % len(members)].id)
                .limit(1)
            )
            groups.append(group or "")
    engine.dispose()
    return admin, keys, groups


class Recorder:
    """Collects what happens; ``measuring`` is False during the warm-up."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.measuring = False
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.status: dict[str, Counter[int]] = defaultdict(Counter)
        self.timeouts: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.missing_retry_after = 0
        self.warmup_latency: list[float] = []
        self.tokens = 0

    def add(self, route: str, started: float, response: httpx.Response) -> None:
        elapsed = (time.perf_counter() - started) * 1000
        with self.lock:
            if not self.measuring:
                if route != "chat_stream":
                    self.warmup_latency.append(elapsed)
                return
            self.latency[route].append(elapsed)
            self.status[route][response.status_code] += 1
            if response.status_code == 429 and "retry-after" not in response.headers:
                self.missing_retry_after += 1


def member(url: str, key: str, group: str, stop: threading.Event, rec: Recorder, seed: int) -> None:
    rng = random.Random(seed)
    pool = query_pool(random.Random(0))
    weights_by_rank = [1 / (rank + 1) for rank in range(len(pool))]
    routes = [
        ("search", 35),
        ("sources", 10),
        ("group_messages", 25),
        ("feed", 10),
        ("reels", 10),
        ("groups", 10),
    ]
    names, weights = zip(*routes, strict=True)
    stop.wait(rng.uniform(0, 2.0))  # a ramp: members do not all arrive in the same instant
    with httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=TIMEOUT_S
    ) as http:
        while not stop.is_set():
            route = rng.choices(names, weights)[0]
            query, filters = rng.choices(pool, weights_by_rank)[0]
            if route == "group_messages" and not group:
                route = "feed"
            request: tuple[str, dict[str, Any]] = {
                "search": ("/api/listings/search", {"q": query, **filters}),
                "sources": ("/api/search/sources", {"q": query}),
                "group_messages": (f"/api/groups/{group}/messages", {"limit": 30}),
                "feed": ("/api/posts", {"limit": 20}),
                "reels": ("/api/reels/recommendations", {"context": query, "limit": 5}),
                "groups": ("/api/groups", {}),
            }[route]
            started = time.perf_counter()
            try:
                rec.add(route, started, http.get(request[0], params=request[1]))
            except httpx.TimeoutException:
                with rec.lock:
                    rec.timeouts[route] += 1  # counted in the warm-up too
            except httpx.HTTPError as exc:
                with rec.lock:
                    rec.errors[f"{route}: {type(exc).__name__}"] += 1
            stop.wait(rng.uniform(0.2, 0.8))


def streamer(url: str, key: str, model: str, stop: threading.Event, rec: Recorder, n: int) -> None:
    body = {
        "model": model,
        "messages": [
            {"role": "user", "content": f"Tell me story number {n} about our neighbourhood."}
        ],
        "max_tokens": 128,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120
    ) as http:
        while not stop.is_set():
            started = time.perf_counter()
            first = None
            tokens = 0
            try:
                with http.stream("POST", "/v1/chat/completions", json=body) as response:
                    if response.status_code != 200:
                        response.read()
                        rec.add("chat_stream", started, response)
                        stop.wait(float(response.headers.get("retry-after", "1")))
                        continue
                    for line in response.iter_lines():
                        if line.startswith("data: {"):
                            chunk = json.loads(line[6:])
                            if chunk.get("usage"):
                                tokens = chunk["usage"]["completion_tokens"]
                            elif (
                                first is None
                                and chunk["choices"]
                                and chunk["choices"][0]["delta"].get("content")
                            ):
                                first = time.perf_counter()
                    rec.add("chat_stream", started, response)
                with rec.lock:
                    if rec.measuring:
                        rec.latency["chat_ttft"].append(
                            ((first or time.perf_counter()) - started) * 1000
                        )
                        rec.tokens += tokens
            except httpx.HTTPError as exc:
                with rec.lock:
                    rec.errors[f"chat_stream: {type(exc).__name__}"] += 1


def prober(url: str, stop: threading.Event, out: list[float]) -> None:
    """Reads /healthz every 100 ms for the whole run, warm-up included."""
    with httpx.Client(base_url=url, timeout=TIMEOUT_S) as http:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                http.get("/healthz")
                out.append((time.perf_counter() - started) * 1000)
            except httpx.HTTPError:
                out.append(TIMEOUT_S * 1000)
            stop.wait(0.1)


def black_png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side)).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def detect_phase(url: str, key: str, pid: int, uploads: int) -> dict[str, Any]:
    data = black_png(4096)
    before = rss_mb(pid)
    statuses: Counter[int] = Counter()

    def one() -> None:
        with httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120
        ) as http:
            response = http.post(
                "/api/provenance/detect", files={"file": ("black.png", data, "image/png")}
            )
            statuses[response.status_code] += 1

    threads = [threading.Thread(target=one) for _ in range(uploads)]
    for thread in threads:
        thread.start()
    peak = before
    while any(t.is_alive() for t in threads):
        peak = max(peak, rss_mb(pid))
        time.sleep(0.05)
    time.sleep(1.0)
    after = rss_mb(pid)
    return {
        "uploads": uploads,
        "upload_bytes": len(data),
        "statuses": dict(statuses),
        "rss_before_mb": round(before, 1),
        "rss_peak_mb": round(peak, 1),
        "rss_after_mb": round(after, 1),
        "rss_growth_mb": round(after - before, 1),
        "rss_peak_growth_mb": round(peak - before, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--detect", type=int, default=20)
    parser.add_argument("--port", type=int, default=8790)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "load.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        admin, keys, groups = prepare(data_dir, args.clients + args.streams)
        # many members behind one benchmark machine: per-user minute quotas are not under test
        server = _serve.start(data_dir, args.port, TOWNSQUARE_QUOTAS__USER_REQUESTS_PER_MINUTE="0")
        url = f"http://127.0.0.1:{args.port}"
        try:
            model = httpx.get(
                f"{url}/v1/models", headers={"Authorization": f"Bearer {admin}"}
            ).json()["data"][0]["id"]
            rec, health = Recorder(), []
            stop = threading.Event()
            threads = [threading.Thread(target=prober, args=(url, stop, health))]
            threads += [
                threading.Thread(target=member, args=(url, keys[n], groups[n], stop, rec, n))
                for n in range(args.clients)
            ]
            threads += [
                threading.Thread(
                    target=streamer, args=(url, keys[args.clients + n], model, stop, rec, n)
                )
                for n in range(args.streams)
            ]
            rss_start = rss_mb(server.pid)
            for thread in threads:
                thread.start()
            time.sleep(args.warmup)
            with rec.lock:
                rec.measuring = True
            started = time.perf_counter()
            time.sleep(args.duration)
            with rec.lock:
                rec.measuring = False
            elapsed = time.perf_counter() - started
            stop.set()
            for thread in threads:
                thread.join()
            detect = detect_phase(url, keys[0], server.pid, args.detect)
        finally:
            server.terminate()
            server.wait(timeout=60)

    generating = {"chat_stream", "chat_ttft"}
    routes = {}
    non_generating: list[float] = []
    five_xx = 0
    for route, latencies in sorted(rec.latency.items()):
        statuses = dict(rec.status.get(route, {}))
        five_xx += sum(n for s, n in statuses.items() if s >= 500)
        routes[route] = {
            "requests": len(latencies),
            "per_s": round(len(latencies) / elapsed, 1),
            "p50_ms": round(percentile(latencies, 0.5), 1),
            "p95_ms": round(percentile(latencies, 0.95), 1),
            "p99_ms": round(percentile(latencies, 0.99), 1),
            "statuses": statuses,
        }
        if route not in generating:
            non_generating.extend(latencies)
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "clients": args.clients,
        "streams": args.streams,
        "duration_s": round(elapsed, 1),
        "five_xx": five_xx,
        "timeouts": sum(rec.timeouts.values()),
        "transport_errors": dict(rec.errors),
        "non_generating_requests": len(non_generating),
        "non_generating_per_s": round(len(non_generating) / elapsed, 1),
        "non_generating_p50_ms": round(percentile(non_generating, 0.5), 1),
        "non_generating_p95_ms": round(percentile(non_generating, 0.95), 1),
        "non_generating_p99_ms": round(percentile(non_generating, 0.99), 1),
        "rejected_429": sum(s.get(429, 0) for s in rec.status.values()),
        "missing_retry_after": rec.missing_retry_after,
        "stream_tokens_per_s": round(rec.tokens / elapsed, 1),
        "warmup_s": args.warmup,
        "warmup_requests": len(rec.warmup_latency),
        "warmup_p99_ms": round(percentile(rec.warmup_latency, 0.99), 1),
        "healthz_max_ms": round(max(health), 1),
        "healthz_p99_ms": round(percentile(health, 0.99), 1),
        "rss_start_mb": round(rss_start, 1),
        "routes": routes,
        "detect": detect,
        "rss_growth_mb_detect20": detect["rss_growth_mb"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
