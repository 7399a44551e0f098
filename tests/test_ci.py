"""CI cannot pass by accident: a missing real component fails under CI and skips elsewhere, and
`make test` (what .ci/run calls) runs the linters and the type checker before the tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(tmp_path: Path, ci: bool) -> subprocess.CompletedProcess[str]:
    test = tmp_path / "test_needs_a_part.py"
    test.write_text(
        "from tests.conftest import missing\n\n"
        "def test_part():\n    missing('a real part', 'install it')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci:
        env["CI"] = "true"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test)],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("ci", [False, True])
def test_a_missing_component_skips_here_and_fails_under_ci(tmp_path: Path, ci: bool) -> None:
    result = _run(tmp_path, ci)
    if ci:
        assert result.returncode == 1 and "1 failed" in result.stdout, result.stdout
        assert "CI is set" in result.stdout
    else:
        assert result.returncode == 0 and "1 skipped" in result.stdout, result.stdout


def test_make_test_lints_and_type_checks_before_testing() -> None:
    makefile = (ROOT / "Makefile").read_text()
    test_rule = next(line for line in makefile.splitlines() if line.startswith("test:"))
    assert "lint" in test_rule.split(":", 1)[1].split()
    lint = makefile.split("\nlint:", 1)[1].split("\n\n", 1)[0]
    for tool in ("ruff check", "ruff format --check", "mypy"):
        assert tool in lint
    assert (ROOT / ".ci/run").read_text().strip().endswith("make test")
