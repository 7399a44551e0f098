"""A small real cluster on loopback: PostgreSQL (given), Redis (given), N ``townsquare serve``
processes and Debian's HAProxy in front of them. Used by tests/scale/test_replicas.py and
bench/scale.py."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

HAPROXY_CONFIG = """\
global
    maxconn 2000
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    retries 3
    option redispatch
    # a request that failed to connect is sent to the other replica
    retry-on conn-failure empty-response response-timeout
frontend town
    bind 127.0.0.1:{port}
    default_backend replicas
backend replicas
    balance roundrobin
    option httpchk GET /readyz
    default-server inter 500ms fall 2 rise 2
{servers}
"""


def stop_process(process: subprocess.Popen[bytes] | None, timeout_s: float = 15) -> None:
    """Terminate ``process`` if it runs, and kill it if it has not exited in ``timeout_s``."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, process: subprocess.Popen[bytes] | None, seconds: float = 90) -> None:
    """Poll ``url``/readyz until it answers 200."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the process for {url} exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not become ready in {seconds:.0f} s")


class Cluster:
    """Replicas of ``townsquare serve`` sharing one database and one Redis, behind HAProxy."""

    def __init__(
        self,
        directory: Path,
        database_url: str,
        redis_url: str,
        *,
        replicas: int = 2,
        settings: dict[str, str] | None = None,
        own_data_dirs: bool = False,
    ) -> None:
        """``own_data_dirs``: each replica gets a data directory of its own (a pod's disk), so
        nothing may be shared through it (the watermark key comes from the settings, image
        files from the database or an object store)."""
        self.own_data_dirs = own_data_dirs
        self.directory = directory
        self.env = {
            **os.environ,
            # one data directory: the replicas share the watermark key and image files (on
            # a cluster: a shared volume or object storage, and the key from a Secret)
            "TOWNSQUARE_DATA_DIR": str(directory / "data"),
            "TOWNSQUARE_DATABASE_URL": database_url,
            "TOWNSQUARE_SEARCH__VECTOR_INDEX": "pgvector:" + database_url,
            "TOWNSQUARE_QUOTAS__STORE": "redis",
            "TOWNSQUARE_QUOTAS__REDIS_URL": redis_url,
            "TOWNSQUARE_TEXT__BACKEND": "fake:0.02",
            "TOWNSQUARE_EMBED__BACKEND": "fake",
            "TOWNSQUARE_SAFETY__MODERATION": "off",
            "TOWNSQUARE_LOG_LEVEL": "WARNING",
            "TOWNSQUARE_SERVER__SHUTDOWN_TIMEOUT_S": "3",
            "TOWNSQUARE_DATABASE_POOL_SIZE": "20",
            **(settings or {}),
        }
        self.ports = [free_port() for _ in range(replicas)]
        self.processes: list[subprocess.Popen[bytes] | None] = [None] * replicas
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.haproxy: subprocess.Popen[bytes] | None = None
        self.logs: list[Any] = []

    def replica_url(self, index: int) -> str:
        """The URL of replica ``index``, bypassing the balancer."""
        return f"http://127.0.0.1:{self.ports[index]}"

    def command(self, *args: str) -> str:
        """Run ``townsquare ARGS`` against the cluster's database; its standard output."""
        done = subprocess.run(
            [sys.executable, "-m", "townsquare", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise RuntimeError(f"townsquare {' '.join(args)} failed: {done.stderr}")
        return done.stdout

    def start_replica(self, index: int) -> None:
        """Start replica ``index`` and wait until it is ready."""
        log = open(self.directory / f"replica{index}.log", "ab")  # noqa: SIM115 (kept open)
        self.logs.append(log)
        env = dict(self.env)
        if self.own_data_dirs:
            env["TOWNSQUARE_DATA_DIR"] = str(self.directory / f"data{index}")
        process = subprocess.Popen(
            [sys.executable, "-m", "townsquare", "serve", "--port", str(self.ports[index])],
            env=env,
            stdout=log,
            stderr=log,
        )
        self.processes[index] = process
        wait_ready(self.replica_url(index), process)

    def start(self, replicas: int | None = None) -> Cluster:
        """Start ``replicas`` (all by default) and the balancer in front of them."""
        haproxy = shutil.which("haproxy")
        if haproxy is None:
            raise FileNotFoundError("haproxy")
        self.command("init")  # migrate once, before the replicas start
        count = len(self.ports) if replicas is None else replicas
        for index in range(count):
            self.start_replica(index)
        servers = "\n".join(
            f"    server r{i} 127.0.0.1:{self.ports[i]} check" for i in range(count)
        )
        config = self.directory / "haproxy.cfg"
        config.write_text(HAPROXY_CONFIG.format(port=self.port, servers=servers))
        check = subprocess.run([haproxy, "-c", "-f", str(config)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy rejected its configuration: {check.stdout}{check.stderr}")
        self.haproxy = subprocess.Popen(
            [haproxy, "-f", str(config), "-db"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_ready(self.url, self.haproxy)
        return self

    def kill(self, index: int, sig: int = signal.SIGKILL) -> None:
        """Stop replica ``index`` with ``sig`` (SIGKILL: a crash; SIGTERM: a rolling update)
        and wait for it to exit."""
        process = self.processes[index]
        if process is not None:
            process.send_signal(sig)
            process.wait(timeout=30)

    def stop(self) -> None:
        """Stop everything."""
        for process in [*self.processes, self.haproxy]:
            stop_process(process)
        for log in self.logs:
            log.close()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
