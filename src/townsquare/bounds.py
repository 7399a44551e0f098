"""Bounds every stored number and date must keep, checked where requests are parsed: a value
past them is a 422 that names it, never an overflow in the database driver (a 500)."""

from __future__ import annotations

from datetime import UTC, datetime

# The largest integer the databases store (a signed 64-bit column).
MAX_INT = 2**63 - 1
# Dates a community's content can carry: nothing before the Unix epoch, nothing after 2100.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)


def check_instant(value: datetime | None, field: str) -> datetime | None:
    """``value`` if it lies between EARLIEST and LATEST (naive values are UTC); ValueError
    naming ``field`` otherwise."""
    if value is None:
        return None
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if not EARLIEST <= aware < LATEST:
        raise ValueError(
            f"{field} is {value.isoformat()}; dates must lie between 1970-01-01 and 2100-01-01"
        )
    return value
