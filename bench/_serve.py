"""Starting a real `townsquare serve` (or another server) for the benchmarks."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx


def wait_ready(url: str, path: str, process: subprocess.Popen[bytes], seconds: float = 180) -> None:
    """Poll ``url + path`` until it answers 200; fail if the process dies or time runs out."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server at {url} exited with {process.returncode}")
        try:
            if httpx.get(f"{url}{path}", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.kill()
    raise SystemExit(f"the server at {url} did not become ready in {seconds:.0f} s")


def environment(data_dir: Path, **settings: str) -> dict[str, str]:
    return {
        **os.environ,
        "TOWNSQUARE_DATA_DIR": str(data_dir),
        "TOWNSQUARE_LOG_LEVEL": "WARNING",
        **settings,
    }


def init(data_dir: Path) -> str:
    """Migrate a fresh data directory; returns the first admin's key."""
    done = subprocess.run(
        [sys.executable, "-m", "townsquare", "init"],
        env=environment(data_dir),
        capture_output=True,
        text=True,
        check=True,
    )
    return next(w for w in done.stdout.split() if w.startswith("ts_"))


def start(data_dir: Path, port: int, **settings: str) -> subprocess.Popen[bytes]:
    """`townsquare serve` on loopback with ``settings`` (environment names), once ready."""
    server = subprocess.Popen(
        [sys.executable, "-m", "townsquare", "serve", "--port", str(port)],
        env=environment(data_dir, **settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_ready(f"http://127.0.0.1:{port}", "/readyz", server)
    return server
