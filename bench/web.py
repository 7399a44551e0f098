"""Web pages benchmark: time to first byte, bytes per page and axe-core violations.

    .venv/bin/python bench/web.py [--requests 40]

On the demo town (`townsquare seed demo`), served by uvicorn on loopback, logged in as its
personas (Mia, Sol Rivera, an admin) with the session cookie:

1. ``ttfb_ms``: for every non-generating page, ``--requests`` sequential GETs after 3 warm-ups;
   the time from sending the request to having the response's headers, p50 and p95. The
   baseline, measured in the same run and interleaved with the pages: ``/healthz`` (the
   framework's floor); ``ratio_p50`` is each page's p50 over it. The marketplace search runs
   the real hybrid search (the bundled MiniLM embeds the query). Goal: p95 <= 100 ms.
2. ``bytes``: the page's HTML plus every script and stylesheet it loads, as sent (no
   compression is configured), images excluded. Goal: <= 150 kB.
3. ``axe``: axe-core 4.11 (the npm package, as the tests inject it) violations per page in
   Debian's chromium at 1280 px, counted by impact.

The text model is never called (no generating page is timed); its backend is the fake.
Figures go to stdout and bench/results/web.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import LiveServer, _close, add_user, make_settings, web_login  # noqa: E402
from tests.web.test_browser import AXE, AXE_RUN, CHROMIUM, CHROMIUM_ARGS, _ids  # noqa: E402

from townsquare.backends.fake import FakeText  # noqa: E402
from townsquare.services import Services  # noqa: E402
from townsquare.social import demo  # noqa: E402


def pages(ids: dict[str, str]) -> list[tuple[str, str]]:
    """(persona, path) of every page that does not generate text."""
    return [
        ("mia", "/"),
        ("mia", "/assistant"),
        ("mia", f"/groups/{ids['group']}"),
        ("mia", f"/posts/{ids['post']}"),
        ("mia", "/inbox"),
        ("mia", "/market"),
        ("mia", "/market?q=kids+bike&max_price=300"),
        ("mia", f"/market/{ids['listing']}"),
        ("mia", "/reels"),
        ("mia", f"/reels/{ids['reel']}"),
        ("mia", "/imagine"),
        (demo.CREATOR_A, f"/inbox/{ids['thread']}"),
        (demo.CREATOR_A, "/inbox/style"),
        ("admin", "/admin/users"),
        ("admin", "/admin/moderation"),
        ("admin", "/admin/redteam"),
        ("admin", "/admin/feedback"),
        ("admin", "/admin/audit"),
        ("admin", "/admin/provenance"),
        ("admin", "/admin/settings"),
        ("admin", "/admin/health"),
    ]


def ttfb(client: httpx.Client, path: str) -> float:
    """Milliseconds from sending a GET to having its headers."""
    start = time.perf_counter()
    with client.stream("GET", path) as response:
        elapsed = (time.perf_counter() - start) * 1000
        response.read()
        assert response.status_code == 200, (path, response.status_code)
    return elapsed


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def page_bytes(client: httpx.Client, path: str) -> dict[str, int]:
    """The HTML and the scripts and stylesheets it links, in bytes as sent."""
    html = client.get(path)
    sizes = {"html": len(html.content)}
    for asset in sorted(set(re.findall(r'(?:src|href)="(/static/[^"]+\.(?:js|css))"', html.text))):
        sizes[asset] = len(client.get(asset).content)
    return sizes


def axe_counts(url: str, keys: dict[str, str], targets: list[tuple[str, str]]) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    counts: dict[str, Any] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        opened: dict[str, Any] = {}
        for persona, path in targets:
            if persona not in opened:
                context = browser.new_context(
                    viewport={"width": 1280, "height": 900}, bypass_csp=True
                )
                page = context.new_page()
                page.goto(f"{url}/login")
                page.fill("#key", keys[persona])
                page.click("button[type=submit]")
                page.wait_for_url(f"{url}/")
                opened[persona] = page
            page = opened[persona]
            page.goto(f"{url}{path}")
            page.wait_for_load_state("networkidle")
            page.add_script_tag(path=str(AXE))
            found = page.evaluate(AXE_RUN)
            tally = {"critical": 0, "serious": 0, "moderate": 0, "minor": 0}
            for violation in found:
                tally[violation["impact"] or "minor"] += 1
            counts[path] = {**tally, "ids": sorted({v["id"] for v in found})}
        browser.close()
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40)
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="bench-web-"))
    settings = make_settings(
        directory,
        embed={"backend": "sentence:bundled"},
        # the benchmark sends ~1,000 requests a minute per persona: above a member's quota
        quotas={"user_requests_per_minute": 1_000_000},
    )
    services = Services.build(settings, text=FakeText())
    with services.sessions.begin() as db:
        keys = demo.seed(db, settings.ingest)
    services.indexer.sync_all()
    keys["admin"] = add_user(services, "root", role="admin")
    ids = _ids(services)
    targets = pages(ids)
    results: dict[str, Any] = {"pages": {}}
    with LiveServer(services) as server:
        clients = {}
        for persona in {p for p, _ in targets}:
            client = httpx.Client(base_url=server.url, timeout=30)
            web_login(client, keys[persona])  # type: ignore[arg-type]
            clients[persona] = client
        base = clients["mia"]
        samples: dict[str, list[float]] = {path: [] for _, path in targets}
        samples["/healthz"] = []
        for _ in range(3):  # warm-up: templates compiled, caches filled
            for persona, path in targets:
                ttfb(clients[persona], path)
        for _ in range(args.requests):  # interleaved: every page and the baseline each round
            samples["/healthz"].append(ttfb(base, "/healthz"))
            for persona, path in targets:
                samples[path].append(ttfb(clients[persona], path))
        floor = statistics.median(samples["/healthz"])
        for persona, path in targets:
            p50, p95 = percentile(samples[path], 0.5), percentile(samples[path], 0.95)
            sizes = page_bytes(clients[persona], path)
            results["pages"][path] = {
                "persona": persona,
                "ttfb_p50_ms": round(p50, 2),
                "ttfb_p95_ms": round(p95, 2),
                "ratio_p50": round(p50 / floor, 2),
                "bytes": sum(sizes.values()),
                "bytes_by_part": sizes,
            }
        results["baseline_healthz_p50_ms"] = round(floor, 2)
        axe = axe_counts(server.url, keys, targets)
        for path, tally in axe.items():
            results["pages"][path]["axe"] = tally
        for client in clients.values():
            client.close()
    _close(services)
    worst95 = max(p["ttfb_p95_ms"] for p in results["pages"].values())
    most_bytes = max(p["bytes"] for p in results["pages"].values())
    serious = sum(p["axe"]["serious"] + p["axe"]["critical"] for p in results["pages"].values())
    results["summary"] = {
        "worst_ttfb_p95_ms": worst95,
        "goal_ttfb_p95_ms": 100,
        "most_bytes": most_bytes,
        "goal_bytes": 150_000,
        "axe_serious_or_critical": serious,
        "requests_per_page": args.requests,
    }
    results["machine"] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
    }
    for path, page in results["pages"].items():
        print(
            f"{path:45} p50 {page['ttfb_p50_ms']:7.1f} ms  p95 {page['ttfb_p95_ms']:7.1f} ms  "
            f"x{page['ratio_p50']:5.1f}  {page['bytes'] / 1000:6.1f} kB  "
            f"axe serious+critical {page['axe']['serious'] + page['axe']['critical']}"
        )
    print(json.dumps(results["summary"], indent=2))
    out = ROOT / "bench" / "results" / "web.json"
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
