"""Migration 0019 numbers the messages already stored, per group and in id order, and new
messages continue from there (on SQLite and on PostgreSQL)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from sqlalchemy import JSON, Boolean, DateTime, Float, Integer, MetaData, Table, insert, select

from townsquare.storage.db import _alembic_config, make_engine, make_sessions, migrate
from townsquare.storage.social_tables import Group, GroupMessage

_COUNT = itertools.count()


def _row(table: Table, **given: Any) -> dict[str, Any]:
    """``given`` and a plain value for every other required column without a default."""
    out = dict(given)
    for column in table.columns:
        if column.name in out or column.primary_key or column.nullable:
            continue
        if column.server_default is not None or column.default is not None:
            continue
        kind = column.type
        if isinstance(kind, DateTime):
            out[column.name] = datetime.now(UTC)
        elif isinstance(kind, Boolean):
            out[column.name] = False
        elif isinstance(kind, Integer | Float):
            out[column.name] = 0
        elif isinstance(kind, JSON):
            out[column.name] = {}
        else:  # short and unique (some are unique, some are short: role is 16 characters)
            out[column.name] = f"v{next(_COUNT)}"
    return out


def test_stored_messages_are_numbered_per_group_in_id_order(
    tmp_path: Path, empty_database: str | None
) -> None:
    url = empty_database or f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    command.upgrade(_alembic_config(engine), "0018")  # a database from before the numbers
    tables = MetaData()
    tables.reflect(engine)
    users, groups, messages = (tables.tables[n] for n in ("users", "groups", "group_messages"))
    with engine.begin() as db:
        author = db.execute(insert(users).values(_row(users, name="ana"))).inserted_primary_key[0]
        a, b = (
            db.execute(
                insert(groups).values(_row(groups, external_id=g, name=g))
            ).inserted_primary_key[0]
            for g in ("ga", "gb")
        )
        for n, group in enumerate([a, b, a, a, b]):  # interleaved groups
            db.execute(
                insert(messages).values(
                    _row(
                        messages, external_id=f"m{n}", group_id=group, author_id=author, text=f"{n}"
                    )
                )
            )
    migrate(engine)
    sessions = make_sessions(engine)
    with sessions() as db:
        numbered = db.execute(
            select(GroupMessage.external_id, GroupMessage.group_id, GroupMessage.seq).order_by(
                GroupMessage.id
            )
        ).all()
        assert [(e, s) for e, _, s in numbered] == [
            ("m0", 1),
            ("m1", 1),
            ("m2", 2),
            ("m3", 3),
            ("m4", 2),
        ]
        assert {g.external_id: g.message_seq for g in db.scalars(select(Group))} == {
            "ga": 3,
            "gb": 2,
        }
        new = GroupMessage(external_id="m5", group_id=b, author_id=author, text="new")
        db.add(new)
        db.commit()
        assert new.seq == 3
    engine.dispose()
