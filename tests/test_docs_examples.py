"""Every curl and CLI example in README.md and docs/ runs against a fresh demo town.

- ``sh`` code blocks run whole in bash (``set -e``) against a live server on loopback, with
  ``$KEY`` (mia), ``$CREATOR_KEY`` (sol.rivera) and ``$ADMIN_KEY`` set from the keys the CLI
  printed; every curl gets ``--fail-with-body``, so a 4xx or 5xx fails the example. Lines that
  set a placeholder key (``KEY=ts_...``) or run ``make`` are left out.
- inline CLI examples (```townsquare ...``` in backticks) run through the CLI on the same data
  directory, except usage lines with placeholders (``FILE``, ``NAME``, ``[--option]``), the
  long-running ``serve`` and ``chat``, and ``model assemble``, which needs the optional
  bigger-model wheels (``make bigger-model``); tests/backends/test_bigger_model.py runs it on
  local slices.

The text model is the fake one (answers are schema-valid examples): these tests check that the
examples are right for the town, not what a model writes.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import skimage.data
from PIL import Image
from typer.testing import CliRunner

from tests.conftest import LiveServer, commands_close_their_engines, make_settings
from townsquare.backends.fake import FakeText
from townsquare.cli import app
from townsquare.services import Services

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```(?:sh|bash)\n(.*?)^```", re.MULTILINE | re.DOTALL)
INLINE_CLI = re.compile(r"`(townsquare [^`]+)`")
INLINE_CURL = re.compile(r"`(curl [^`]+)`")
PLACEHOLDER = re.compile(r"\b[A-Z]{2,}\b|\[|\||\.\.\.")
runner = CliRunner()


def blocks() -> list[tuple[str, str]]:
    """Shell blocks with something to run, and inline curl examples, by where they are."""
    found = []
    for path in DOCS:
        text = path.read_text()
        for n, match in enumerate(BLOCK.finditer(text)):
            if re.search(r"\b(curl|townsquare)\b", match.group(1)):
                found.append((f"{path.name}#{n + 1}", match.group(1)))
        for n, command in enumerate(INLINE_CURL.findall(text.replace("\n", " "))):
            found.append((f"{path.name}#curl{n + 1}", command))
    return found


def cli_examples() -> list[str]:
    found: list[str] = []
    for path in DOCS:
        for command in INLINE_CLI.findall(path.read_text().replace("\n", " ")):
            words = shlex.split(command)
            if len(words) < 2 or words[1] in {"serve", "chat"} or PLACEHOLDER.search(command):
                continue
            if words[1:3] == ["model", "assemble"]:  # needs the optional wheels
                continue
            if command not in found:
                found.append(command)
    return found


def key_after(output: str, name: str) -> str:
    line = next(line for line in output.splitlines() if line.split()[:1] == [name])
    return line.split()[-1]


@pytest.fixture(scope="module")
def town(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str], Path]]:
    data = tmp_path_factory.mktemp("docs-town")
    env = {
        "TOWNSQUARE_DATA_DIR": str(data),
        "TOWNSQUARE_TEXT__BACKEND": "fake",
        "TOWNSQUARE_TEXT__MODEL_ALIAS": "SmolLM2-135M-Instruct.Q4_1",
        "TOWNSQUARE_EMBED__BACKEND": "fake",
        "TOWNSQUARE_LOG_JSON": "false",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with commands_close_their_engines():
            init = runner.invoke(app, ["init"])
            admin_key = next(w for w in init.output.split() if w.startswith("ts_"))
            seeded = runner.invoke(app, ["seed", "demo"])
            # as `make run` does: the extractive core finds similar posts through the index
            indexed = runner.invoke(app, ["index", "rebuild"])
        assert seeded.exit_code == 0, seeded.output
        assert indexed.exit_code == 0, indexed.output
        keys = {
            "KEY": key_after(seeded.output, "mia"),
            "CREATOR_KEY": key_after(seeded.output, "sol.rivera"),
            "ADMIN_KEY": admin_key,
            # the town's database when the suite runs on PostgreSQL (one of its own), so that
            # the examples' commands find it whatever database the test itself was given
            **{
                name: os.environ[name]
                for name in ("TOWNSQUARE_DATABASE_URL", "TOWNSQUARE_SEARCH__VECTOR_INDEX")
                if name in os.environ
            },
        }
        services = Services.build(
            make_settings(data, text={"backend": "fake"}),
            text=FakeText(model_id="SmolLM2-135M-Instruct.Q4_1"),
        )
        with LiveServer(services) as server:
            yield server.url, keys, data
        asyncio.run(services.aclose())
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.mark.parametrize(("where", "script"), blocks(), ids=[b[0] for b in blocks()])
def test_shell_example_runs(
    where: str, script: str, town: tuple[str, dict[str, str], Path], tmp_path: Path
) -> None:
    url, keys, _ = town
    if not shutil.which("curl"):
        pytest.fail("curl is needed to run the documented examples")
    lines = [
        line
        for line in script.splitlines()
        if not re.match(r"^\s*[A-Z_]+=\S*\s*(#.*)?$", line) and "make run" not in line
    ]
    body = "\n".join(lines)
    body = re.sub(r"https?://(?:127\.0\.0\.1|localhost):8000", url, body)
    body = re.sub(r"\blocalhost:8000", url, body)
    body = re.sub(r"\bcurl\b", "curl --fail-with-body -sS", body)
    (tmp_path / "messages.jsonl").write_text(
        '{"external_id": "m-doc-1", "group": "g-riverside-runners", "author": "u-mia", '
        '"text": "Running at seven tomorrow?"}\n'
    )
    Image.fromarray(skimage.data.coffee()).save(tmp_path / "photo.jpg")
    result = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + body],
        cwd=tmp_path,
        env={
            **os.environ,
            **keys,
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"{where} failed:\n{body}\n{result.stdout}\n{result.stderr}"


@pytest.mark.parametrize("command", cli_examples())
def test_cli_example_runs(
    command: str,
    town: tuple[str, dict[str, str], Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, keys, data = town
    monkeypatch.chdir(tmp_path)
    for name, value in keys.items():
        if name.startswith("TOWNSQUARE_"):
            monkeypatch.setenv(name, value)
    (tmp_path / "messages.jsonl").write_text(
        '{"external_id": "m-doc-2", "group": "g-riverside-runners", "author": "u-mia", '
        '"text": "See you at the bridge."}\n'
    )
    Image.fromarray(skimage.data.coffee()).save(tmp_path / "photo.png")
    monkeypatch.setenv("TOWNSQUARE_DATA_DIR", str(data))
    monkeypatch.setenv("TOWNSQUARE_TEXT__BACKEND", "fake")
    monkeypatch.setenv("TOWNSQUARE_EMBED__BACKEND", "fake")
    result = runner.invoke(app, shlex.split(command)[1:])
    assert result.exit_code == 0, f"`{command}` failed:\n{result.output}"
