"""`townsquare serve` as a real process: it answers health probes while streams run, and
SIGTERM stops it within server.shutdown_timeout_s even with streams still open."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.model


def test_sigterm_stops_a_busy_server_in_time(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "TOWNSQUARE_DATA_DIR": str(tmp_path),
        "TOWNSQUARE_LOG_LEVEL": "WARNING",
        "TOWNSQUARE_EMBED__BACKEND": "fake",
        "TOWNSQUARE_SERVER__SHUTDOWN_TIMEOUT_S": "2",
    }
    init = subprocess.run(
        [sys.executable, "-m", "townsquare", "init"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    key = next(w for w in init.stdout.split() if w.startswith("ts_"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "townsquare", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        headers = {"Authorization": f"Bearer {key}"}
        model = httpx.get(f"{url}/v1/models", headers=headers).json()["data"][0]["id"]
        started = threading.Barrier(5)

        def long_stream() -> None:
            body = {
                "model": model,
                "messages": [{"role": "user", "content": "Write a very long story."}],
                "max_tokens": 1000,
                "stream": True,
            }
            try:
                with httpx.stream(
                    "POST", f"{url}/v1/chat/completions", json=body, headers=headers, timeout=60
                ) as response:
                    for n, _ in enumerate(response.iter_lines()):
                        if n == 2:
                            started.wait(30)
            except httpx.HTTPError:
                pass  # the server closes the stream when it shuts down

        streams = [threading.Thread(target=long_stream, daemon=True) for _ in range(4)]
        for thread in streams:
            thread.start()
        started.wait(60)
        # busy generating: health still answers at once
        start = time.perf_counter()
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        assert time.perf_counter() - start < 1.0
        server.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        server.wait(timeout=30)
        assert time.monotonic() - stopped_at < 15  # 2 s of grace, then streams are closed
        assert server.returncode in (0, -signal.SIGTERM)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
