"""Batch ingestion benchmark: rows/s for group messages and listings into SQLite.

    .venv/bin/python bench/ingest.py [--rows 20000] [--batch 1000]

For each kind, in one script on one machine:
- through the HTTP API (``POST /api/<kind>:batch`` on an in-process app, JSON bodies);
- through the ingestion service directly (what ``townsquare ingest`` does);
- the same rows re-sent (the idempotent no-op path);
- baseline: a raw SQLAlchemy Core ``executemany`` INSERT of the already-resolved rows (no
  validation, no reference lookups, no upsert), the floor any ingestion path stands on.
Also: the time to build the demo town. Figures go to stdout and bench/results/ingest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import insert

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from townsquare.app import create_app  # noqa: E402
from townsquare.backends.fake import FakeText  # noqa: E402
from townsquare.identity import create_user  # noqa: E402
from townsquare.services import Services  # noqa: E402
from townsquare.settings import Settings  # noqa: E402
from townsquare.social.demo import seed  # noqa: E402
from townsquare.social.ingest import KINDS, ingest  # noqa: E402
from townsquare.storage.social_tables import GroupMessage, Listing  # noqa: E402


def build(directory: Path) -> tuple[Services, str]:
    services = Services.build(
        Settings(data_dir=directory, log_level="WARNING", ingest={"max_batch_rows": 100_000}),
        text=FakeText(),
    )
    with services.sessions.begin() as db:
        _, key = create_user(db, "bench-admin", role="admin")
        base = [{"external_id": f"u-{n}", "name": f"user{n}"} for n in range(50)]
        ingest(db, KINDS["users"], base, settings=services.settings.ingest, actor=None)
        ingest(
            db,
            KINDS["groups"],
            [{"external_id": "g", "name": "G", "members": [{"user": f"u-{n}"} for n in range(50)]}],
            settings=services.settings.ingest,
            actor=None,
        )
    return services, key


def rows_for(kind: str, count: int, prefix: str) -> list[dict[str, Any]]:
    if kind == "messages":
        return [
            {
                "external_id": f"{prefix}-{n}",
                "group": "g",
                "author": f"u-{n % 50}",
                "text": f"Message number {n}: who is coming to the river run on Saturday?",
                "created_at": f"2026-10-{1 + n % 28:02d}T{n % 24:02d}:00:00Z",
            }
            for n in range(count)
        ]
    return [
        {
            "external_id": f"{prefix}-{n}",
            "seller": f"u-{n % 50}",
            "title": f"City bike {n}",
            "attributes": {"brand": "Btwin", "frame_size": "M", "gears": 7},
            "price": f"{50 + n % 400}.00",
            "category": "bikes",
            "condition": "good",
            "location": "Alfama",
            "lat": 38.71,
            "lon": -9.13,
            "images": [f"https://img/{n}.jpg"],
        }
        for n in range(count)
    ]


def raw_rows(
    kind: str, rows: list[dict[str, Any]], user_ids: dict[str, int], group_id: int
) -> list[Any]:
    if kind == "messages":
        return [
            {
                "external_id": r["external_id"] + "-raw",
                "group_id": group_id,
                "author_id": user_ids[r["author"]],
                "text": r["text"],
            }
            for r in rows
        ]
    return [
        {
            "external_id": r["external_id"] + "-raw",
            "seller_id": user_ids[r["seller"]],
            "title": r["title"],
            "attributes": r["attributes"],
            "price_cents": int(float(r["price"]) * 100),
            "currency": "EUR",
            "category": r["category"],
            "condition": r["condition"],
            "location": r["location"],
            "lat": r["lat"],
            "lon": r["lon"],
            "image_refs": r["images"],
            "status": "active",
        }
        for r in rows
    ]


def rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ingest.json")
    args = parser.parse_args()
    result: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "rows": args.rows,
        "batch": args.batch,
        "database": "SQLite (WAL) file",
    }
    with tempfile.TemporaryDirectory() as tmp:
        services, key = build(Path(tmp))
        from sqlalchemy import select

        from townsquare.storage.social_tables import Group
        from townsquare.storage.tables import User

        with services.sessions() as db:
            user_ids = {
                ext: id_ for ext, id_ in db.execute(select(User.external_id, User.id)) if ext
            }
            group_id = db.scalar(select(Group.id).where(Group.external_id == "g"))
        with TestClient(create_app(services=services)) as client:
            for kind, table in (("messages", GroupMessage), ("listings", Listing)):
                figures: dict[str, Any] = {}
                for label, prefix in (("http", "h"), ("service", "s")):
                    rows = rows_for(kind, args.rows, f"{kind}-{prefix}")
                    start = time.perf_counter()
                    for at in range(0, len(rows), args.batch):
                        chunk = rows[at : at + args.batch]
                        if label == "http":
                            response = client.post(
                                f"/api/{kind}:batch",
                                json=chunk,
                                headers={"Authorization": f"Bearer {key}"},
                            )
                            assert response.status_code == 200, response.text[:300]
                        else:
                            with services.sessions.begin() as db:
                                ingest(
                                    db,
                                    KINDS[kind],
                                    chunk,
                                    settings=services.settings.ingest,
                                    actor=None,
                                )
                    figures[f"{label}_rows_s"] = rate(len(rows), time.perf_counter() - start)
                    if label == "service":
                        start = time.perf_counter()
                        for at in range(0, len(rows), args.batch):
                            with services.sessions.begin() as db:
                                report = ingest(
                                    db,
                                    KINDS[kind],
                                    rows[at : at + args.batch],
                                    settings=services.settings.ingest,
                                    actor=None,
                                )
                                assert report.unchanged == len(rows[at : at + args.batch])
                        figures["resend_rows_s"] = rate(len(rows), time.perf_counter() - start)
                        raw = raw_rows(kind, rows, user_ids, group_id)
                        start = time.perf_counter()
                        for at in range(0, len(raw), args.batch):
                            with services.engine.begin() as connection:
                                connection.execute(insert(table), raw[at : at + args.batch])
                        figures["raw_insert_rows_s"] = rate(len(raw), time.perf_counter() - start)
                figures["http_vs_raw"] = round(
                    figures["http_rows_s"] / figures["raw_insert_rows_s"], 3
                )
                figures["service_vs_raw"] = round(
                    figures["service_rows_s"] / figures["raw_insert_rows_s"], 3
                )
                result[kind] = figures
        asyncio.run(services.aclose())
    with tempfile.TemporaryDirectory() as tmp:
        services = Services.build(
            Settings(data_dir=Path(tmp), log_level="WARNING"), text=FakeText()
        )
        start = time.perf_counter()
        with services.sessions.begin() as db:
            seed(db, services.settings.ingest)
        result["seed_demo_s"] = round(time.perf_counter() - start, 2)
        asyncio.run(services.aclose())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
