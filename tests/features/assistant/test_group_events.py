"""A group's event stream delivers every committed message once, in commit order, on SQLite and
PostgreSQL alike: messages are numbered per group at commit time (``GroupMessage.seq``), a
stream resumes by that number, one watcher per group reads for all its streams, and one member
cannot hold more than ``assistant.events_per_member`` streams."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from tests.conftest import LiveServer, _close, make_settings
from tests.town import build_town
from townsquare.backends.fake import FakeEmbeddings, FakeText
from townsquare.services import Services
from townsquare.storage.social_tables import Group, GroupMessage
from townsquare.storage.tables import User


@pytest.fixture
def town(tmp_path: Path) -> Iterator[tuple[Services, dict[str, str]]]:
    settings = make_settings(
        tmp_path, assistant={"tool_mode": "off", "events_poll_s": 0.05, "events_per_member": 2}
    )
    services = Services.build(settings, text=FakeText(), embed=FakeEmbeddings())
    keys = build_town(services)
    yield services, keys
    _close(services)


def ids(services: Services) -> tuple[int, int, int]:
    """The group g1, its member and its moderator (row ids)."""
    with services.sessions() as db:
        group = db.scalar(select(Group.id).where(Group.external_id == "g1"))
        member = db.scalar(select(User.id).where(User.name == "member"))
        moderator = db.scalar(select(User.id).where(User.name == "moderator"))
    assert group and member and moderator
    return group, member, moderator


def message(group: int, author: int, text: str) -> GroupMessage:
    return GroupMessage(
        external_id=f"t-{uuid.uuid4().hex}", group_id=group, author_id=author, text=text
    )


def test_a_message_numbered_first_is_committed_first(town: tuple[Services, dict[str, str]]) -> None:
    """The PostgreSQL case that lost messages: A takes its number, B writes to the same group
    meanwhile. B waits for A's commit, so a stream never sees B before A."""
    services, _ = town
    group, member, moderator = ids(services)
    chat = services.group_chat
    start = chat.latest_seq(group)
    first = services.sessions()
    a = message(group, member, "first")
    first.add(a)
    first.flush()
    assert a.seq == start + 1
    done: dict[str, Any] = {}

    def write_b() -> None:
        with services.sessions() as db:
            b = message(group, moderator, "second")
            db.add(b)
            db.commit()
            done["seq"] = b.seq

    writer = threading.Thread(target=write_b)
    writer.start()
    writer.join(0.5)
    assert writer.is_alive() and "seq" not in done  # B waits on A's number
    assert chat._since(member, group, start) == []  # nothing committed yet: nothing to see
    first.commit()
    first.close()
    writer.join(30)
    assert done["seq"] == start + 2
    seen = chat._since(member, group, start)
    assert [(seq, view["text"]) for seq, view in seen or []] == [
        (start + 1, "first"),
        (start + 2, "second"),
    ]
    assert chat.latest_seq(group) == start + 2


def test_a_failed_transaction_leaves_no_gap(town: tuple[Services, dict[str, str]]) -> None:
    services, _ = town
    group, member, _ = ids(services)
    start = services.group_chat.latest_seq(group)
    with services.sessions() as db:
        db.add(message(group, member, "rolled back"))
        db.flush()
        db.rollback()
    with services.sessions() as db:
        kept = message(group, member, "kept")
        db.add_all([kept, message(group, member, "and this")])
        db.commit()
        assert kept.seq == start + 1
    assert services.group_chat.latest_seq(group) == start + 2


def read_events(server: LiveServer, key: str, *, last: str | None = None) -> list[str]:
    headers = {"Authorization": f"Bearer {key}"} | ({"Last-Event-ID": last} if last else {})
    with (
        httpx.Client(base_url=server.url, timeout=20) as client,
        client.stream(
            "GET", "/api/groups/g1/events", params={"max_s": 0.5}, headers=headers
        ) as stream,
    ):
        return [line[4:] for line in stream.iter_lines() if line.startswith("id: ")]


def test_a_stream_resumes_after_its_last_event_id(town: tuple[Services, dict[str, str]]) -> None:
    services, keys = town
    group, _, _ = ids(services)
    with LiveServer(services) as server:
        client = httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {keys['member']}"}
        )
        start = services.group_chat.latest_seq(group)
        for text in ("one", "two", "three"):
            assert client.post("/api/groups/g1/messages", json={"text": text}).status_code == 201
        # from the first one: the two after it, numbered as the group numbered them
        assert read_events(server, keys["member"], last=str(start + 1)) == [
            str(start + 2),
            str(start + 3),
        ]
        assert read_events(server, keys["member"], last=str(start + 3)) == []
        assert read_events(server, keys["member"]) == []  # a new stream starts after the last
        client.close()


def test_one_member_holds_at_most_the_streams_a_replica_allows(
    town: tuple[Services, dict[str, str]],
) -> None:
    services, keys = town
    group, member, _ = ids(services)
    chat = services.group_chat
    with LiveServer(services) as server:

        async def hold() -> None:  # two streams of this member, as if open elsewhere
            chat._open(member, group)
            chat._open(member, group)

        asyncio.run(hold())
        refused = httpx.get(
            f"{server.url}/api/groups/g1/events",
            params={"max_s": 0},
            headers={"Authorization": f"Bearer {keys['member']}"},
        )
        assert refused.status_code == 429
        body = refused.json()["error"]
        assert body["code"] == "too_many_streams" and "events_per_member" in body["message"]
        # someone else is not counted against them
        other = httpx.get(
            f"{server.url}/api/groups/g1/events",
            params={"max_s": 0},
            headers={"Authorization": f"Bearer {keys['moderator']}"},
        )
        assert other.status_code == 200

        chat._close(member, group)
        chat._close(member, group)
        assert chat.open_streams(member) == 0 and chat.open_streams(0) == 0


async def test_one_watcher_reads_for_every_stream_of_a_group(
    town: tuple[Services, dict[str, str]],
) -> None:
    """Three open streams, one watcher; a message committed by another replica (no
    notification here) reaches all three; when they close, the watcher ends."""
    services, _ = town
    group, member, moderator = ids(services)
    chat = services.group_chat
    start = chat.latest_seq(group)
    got: list[list[str]] = [[], [], []]

    async def listen(n: int, user: int) -> None:
        async for line in chat.events(user, group, start, max_s=5):
            if line.startswith("id: "):
                got[n].append(line.split("\n")[0][4:])
                return

    listeners = [
        asyncio.create_task(listen(n, user)) for n, user in enumerate((member, moderator, member))
    ]
    for _ in range(200):  # until the three streams are open
        if chat._streams.get(group) == 3:
            break
        await asyncio.sleep(0.01)
    assert chat._streams.get(group) == 3
    assert len([t for t in chat._watchers.values() if not t.done()]) == 1

    def other_replica() -> None:
        with services.sessions() as db:
            db.add(message(group, moderator, "from elsewhere"))
            db.commit()

    await asyncio.to_thread(other_replica)
    await asyncio.wait_for(asyncio.gather(*listeners), 10)
    assert got == [[str(start + 1)]] * 3
    for _ in range(100):
        if not chat._watchers:
            break
        await asyncio.sleep(0.05)
    assert chat._watchers == {} and chat._streams == {}
