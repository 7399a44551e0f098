"""Filters over the metadata kept beside each indexed item (status, price, group, ...).

Visibility rules and hard search filters are written once as these small expressions; the
embedded vector index evaluates them as numpy masks over its metadata columns, pgvector as SQL
over a JSONB column. Either way a filter is applied inside the index, before ranking, and a
request never materialises the list of every id it may see.

Values are numbers (ints, floats, booleans) or strings; a missing value matches nothing but
``IsNull``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Scalar = int | float | str | bool
Mask = npt.NDArray[np.bool_]
EARTH_KM = 6371.0


class Filter:
    """Base of the expression tree; combine with ``&`` and ``|``."""

    def __and__(self, other: Filter) -> Filter:
        return And((self, other))

    def __or__(self, other: Filter) -> Filter:
        return Or((self, other))


@dataclass(frozen=True)
class Everything(Filter):
    """Matches every item (admins, no filter)."""


@dataclass(frozen=True)
class Eq(Filter):
    field: str
    value: Scalar


@dataclass(frozen=True)
class In(Filter):
    field: str
    values: tuple[Scalar, ...]


@dataclass(frozen=True)
class Range(Filter):
    """``low <= field <= high``; either bound may be None."""

    field: str
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class IsNull(Filter):
    field: str


@dataclass(frozen=True)
class Near(Filter):
    """Within ``radius_km`` (great-circle) of (lat, lon), on the ``lat`` and ``lon`` fields."""

    lat: float
    lon: float
    radius_km: float


@dataclass(frozen=True)
class And(Filter):
    parts: tuple[Filter, ...]


@dataclass(frozen=True)
class Or(Filter):
    parts: tuple[Filter, ...]


@dataclass(frozen=True)
class Not(Filter):
    part: Filter


def all_of(*parts: Filter | None) -> Filter:
    """The conjunction of the filters given (``None`` ones are skipped; none at all: everything)."""
    kept = tuple(p for p in parts if p is not None and not isinstance(p, Everything))
    if not kept:
        return Everything()
    return kept[0] if len(kept) == 1 else And(kept)


def haversine_km(
    lat1: Any, lon1: Any, lat2: float, lon2: float
) -> Any:  # floats or numpy arrays alike
    """Great-circle distance in km (numpy-friendly)."""
    p1, p2 = np.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, np.radians(lon2 - np.asarray(lon1))
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * math.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_KM * np.arcsin(np.sqrt(np.minimum(a, 1.0)))


# --- numpy evaluation (the embedded index) ---------------------------------------------------


class Columns:
    """Metadata columns of one collection: float64 arrays (NaN = missing); strings are stored
    as codes from a per-field dictionary."""

    def __init__(self) -> None:
        self.arrays: dict[str, npt.NDArray[np.float64]] = {}
        self.codes: dict[str, dict[str, float]] = {}
        self.capacity = 0

    def grow(self, capacity: int) -> None:
        """Make room for at least ``size`` rows."""
        for name, array in self.arrays.items():
            grown = np.full(capacity, np.nan)
            grown[: len(array)] = array
            self.arrays[name] = grown
        self.capacity = capacity

    def _code(self, name: str, value: str, *, create: bool) -> float | None:
        table = self.codes.setdefault(name, {})
        code = table.get(value)
        if code is None and create:
            code = float(len(table))
            table[value] = code
        return code

    def encode(self, name: str, value: Any, *, create: bool = False) -> float | None:
        """A value as the number stored in a column (strings get a code per column)."""
        if value is None:
            return None
        if isinstance(value, str):
            return self._code(name, value, create=create)
        return float(value)

    def set(self, row: int, attrs: Mapping[str, Any]) -> None:
        """Store an item's attributes in row ``row``."""
        for name in set(self.arrays) | set(attrs):
            array = self.arrays.get(name)
            if array is None:
                array = self.arrays[name] = np.full(self.capacity, np.nan)
            code = self.encode(name, attrs.get(name), create=True)
            array[row] = np.nan if code is None else code

    def move(self, source: int, target: int) -> None:
        """Copy row ``source`` to row ``target`` (when a deletion compacts the arrays)."""
        for array in self.arrays.values():
            array[target] = array[source]

    def values(self, name: str) -> list[str]:
        """The string values a field has taken (e.g. the categories)."""
        return sorted(self.codes.get(name, {}))

    def column(
        self, name: str, size: int, rows: npt.NDArray[np.int64] | None = None
    ) -> npt.NDArray[np.float64]:
        """The values of one attribute for the first ``size`` rows (NaN where unset)."""
        array = self.arrays.get(name)
        count = size if rows is None else len(rows)
        if array is None:
            return np.full(count, np.nan)
        return array[:size] if rows is None else array[rows]


def mask(
    expr: Filter, columns: Columns, size: int, rows: npt.NDArray[np.int64] | None = None
) -> Mask:
    """Which of the first ``size`` rows (or of ``rows``, when given) ``expr`` matches."""
    if rows is not None:
        size = len(rows)

    def column(name: str) -> npt.NDArray[np.float64]:
        return columns.column(name, size, rows)

    if isinstance(expr, Everything):
        return np.ones(size, dtype=bool)
    if isinstance(expr, Eq):
        code = columns.encode(expr.field, expr.value)
        if code is None:
            return np.zeros(size, dtype=bool)
        return np.asarray(column(expr.field) == code)
    if isinstance(expr, In):
        codes = [c for v in expr.values if (c := columns.encode(expr.field, v)) is not None]
        if not codes:
            return np.zeros(size, dtype=bool)
        return np.isin(column(expr.field), np.asarray(codes, dtype=np.float64))
    if isinstance(expr, Range):
        values = column(expr.field)
        out = ~np.isnan(values)
        if expr.low is not None:
            out &= values >= expr.low
        if expr.high is not None:
            out &= values <= expr.high
        return np.asarray(out)
    if isinstance(expr, IsNull):
        return np.isnan(column(expr.field))
    if isinstance(expr, Near):
        lat, lon = column("lat"), column("lon")
        # a bounding box first (cheap), the exact distance only inside it
        dlat = expr.radius_km / 111.0
        dlon = expr.radius_km / (111.0 * max(0.01, math.cos(math.radians(expr.lat))))
        box = (np.abs(lat - expr.lat) <= dlat) & (np.abs(lon - expr.lon) <= dlon)
        inside = np.flatnonzero(box)
        out = np.zeros(size, dtype=bool)
        if len(inside):
            out[inside] = haversine_km(lat[inside], lon[inside], expr.lat, expr.lon) <= (
                expr.radius_km
            )
        return out
    if isinstance(expr, And):
        out = np.ones(size, dtype=bool)
        for part in expr.parts:
            out &= mask(part, columns, size, rows)
        return out
    if isinstance(expr, Or):
        out = np.zeros(size, dtype=bool)
        for part in expr.parts:
            out |= mask(part, columns, size, rows)
        return out
    if isinstance(expr, Not):
        return ~mask(expr.part, columns, size, rows)
    raise TypeError(f"unknown filter {expr!r}")


def matches(expr: Filter, attrs: Mapping[str, Any]) -> bool:
    """Evaluate on one item's metadata (plain Python; for tests and single checks)."""
    columns = Columns()
    columns.grow(1)
    columns.set(0, attrs)
    return bool(mask(expr, columns, 1)[0])


# --- SQL over a JSONB column (pgvector) ------------------------------------------------------


def to_sql(expr: Filter, column: str, params: dict[str, Any]) -> str:
    """A PostgreSQL condition over the JSONB ``column``; fills ``params`` with bind values."""

    def bind(value: Any) -> str:
        name = f"f{len(params)}"
        params[name] = value
        return f":{name}"

    def text_of(field: str) -> str:
        return f"({column} ->> {bind(field)})"

    def number_of(field: str) -> str:
        return f"({column} ->> {bind(field)})::double precision"

    def value_sql(field: str, value: Scalar) -> str:
        if isinstance(value, str):
            return f"{text_of(field)} = {bind(value)}"
        return f"{number_of(field)} = {bind(float(value))}"

    def build(node: Filter) -> str:
        if isinstance(node, Everything):
            return "TRUE"
        if isinstance(node, Eq):
            return value_sql(node.field, node.value)
        if isinstance(node, In):
            if not node.values:
                return "FALSE"
            return "(" + " OR ".join(value_sql(node.field, v) for v in node.values) + ")"
        if isinstance(node, Range):
            parts = []
            if node.low is not None:
                parts.append(f"{number_of(node.field)} >= {bind(float(node.low))}")
            if node.high is not None:
                parts.append(f"{number_of(node.field)} <= {bind(float(node.high))}")
            return (
                "(" + " AND ".join(parts) + ")" if parts else f"{text_of(node.field)} IS NOT NULL"
            )
        if isinstance(node, IsNull):
            return f"{text_of(node.field)} IS NULL"
        if isinstance(node, Near):
            lat, lon = number_of("lat"), number_of("lon")
            return (
                f"(2 * {EARTH_KM} * asin(sqrt(least(1, power(sin(radians({lat} - "
                f"{bind(node.lat)}) / 2), 2) + cos(radians({bind(node.lat)})) * cos(radians("
                f"{lat})) * power(sin(radians({lon} - {bind(node.lon)}) / 2), 2)))) <= "
                f"{bind(node.radius_km)})"
            )
        if isinstance(node, And):
            return "(" + " AND ".join(build(p) for p in node.parts) + ")"
        if isinstance(node, Or):
            return "(" + " OR ".join(build(p) for p in node.parts) + ")"
        if isinstance(node, Not):
            return f"(NOT {build(node.part)})"
        raise TypeError(f"unknown filter {node!r}")

    return build(expr)
