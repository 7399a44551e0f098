"""``python -m townsquare``: the command line."""

from townsquare.cli import app

app(prog_name="townsquare")
