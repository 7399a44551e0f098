"""Processes started together on a fresh SQLite data directory all come up: the migration
runs once under a file lock, the watermark key is made once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import make_settings
from townsquare.storage.db import make_engine, migration_status

SCRIPT = """
import sys
from pathlib import Path
from townsquare.backends.fake import FakeText
from townsquare.services import Services
from townsquare.settings import Settings
settings = Settings(data_dir=Path(sys.argv[1]), text={"backend": "fake"},
                    embed={"backend": "fake"}, safety={"moderation": "off"})
services = Services.build(settings, text=FakeText())
print(services.provenance().key.hex())
"""


def test_six_processes_starting_together_on_a_fresh_directory_all_start(
    tmp_path: Path,
) -> None:
    data = tmp_path / "fresh"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", SCRIPT, str(data)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    outcomes = [(p.communicate(timeout=180), p.returncode) for p in processes]
    assert [err[-2000:] for (_, err), code in outcomes if code != 0] == []
    assert len({out.strip() for (out, _), _ in outcomes}) == 1  # one key, shared
    engine = make_engine(make_settings(data).resolved_database_url)
    current, head = migration_status(engine)
    assert current == head is not None
    engine.dispose()
