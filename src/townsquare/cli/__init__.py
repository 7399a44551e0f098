"""The ``townsquare`` command line, one module per topic:

- ``server``: serve, init, settings, doctor
- ``town``: users, seed, ingest, index
- ``features``: search, suggest, catch-up, describe, summarize, chat
- ``watermark``: watermark embed / detect
- ``safety``: safety fetch / check, redteam run
- ``batch``: batch reindex / watermark-scan / redteam, in-process or on Ray (--ray)

``common`` holds the Typer apps, the consoles and the settings every command resolves once.
"""

from townsquare.cli import batch, features, safety, server, town, watermark
from townsquare.cli.common import app
from townsquare.cli.server import settings_reference

__all__ = [
    "app",
    "batch",
    "features",
    "safety",
    "server",
    "settings_reference",
    "town",
    "watermark",
]
