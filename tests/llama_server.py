"""llama.cpp's own ``llama-server`` on loopback, built from the llama.cpp that
llama-cpp-python vendors (scripts/llama-server.sh; `make test` builds and caches it), serving
the bundled GGUF: the OpenAI-compatible server the ``openai:`` backend is tested against."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.scale.cluster import free_port, stop_process

ROOT = Path(__file__).resolve().parents[1]
ALIAS = "SmolLM2-135M-Instruct"
KEY = "llama-server-test-key"


def llama_server_binary(*, build: bool = False) -> str | None:
    """The cached llama-server; None when it was not built, or (``build``) built now."""
    done = subprocess.run(
        [str(ROOT / "scripts" / "llama-server.sh"), sys.executable]
        + ([] if build else ["--cached-only"]),
        capture_output=True,
        text=True,
        check=build,
    )
    return done.stdout.strip() if done.returncode == 0 else None


class LlamaServer:
    """``llama-server -m MODEL --jinja -a ALIAS --api-key KEY`` (or ``--embeddings``)."""

    def __init__(
        self,
        binary: str,
        model: Path,
        directory: Path,
        *,
        embeddings: bool = False,
        template: str | None = None,
    ) -> None:
        """``template``: a chat template to serve the model with (``--chat-template-file``),
        as operators do for a model whose own template shows no tools."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [
            binary,
            "-m",
            str(model),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "-a",
            ALIAS,
            "--api-key",
            KEY,
            "-c",
            "2048",
            "-np",
            "2",
            "-t",
            "2",
            "--no-webui",
            # the chat template renders tools and tool results (tool_choice auto/required/named)
            "--jinja",
            *(["--embeddings", "--pooling", "mean"] if embeddings else []),
        ]
        if template is not None:
            path = directory / f"template-{self.port}.jinja"
            path.write_text(template)
            self.args += ["--chat-template-file", str(path)]
        self.log = directory / f"llama-server-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LlamaServer:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(self.args, stdout=log, stderr=log)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama-server exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("llama-server did not become ready in 120 s")

    def __exit__(self, *exc: object) -> None:
        stop_process(self.process)
