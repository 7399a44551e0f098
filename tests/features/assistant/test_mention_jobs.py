"""@-mentions are durable jobs (``storage/jobs.py``): queued in the database, answered once by
whichever replica leases them, taken over when a replica dies, shared fairly between groups and
members."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tests.conftest import _close, make_settings
from tests.town import build_town
from townsquare.backends.fake import FakeEmbeddings, FakeText
from townsquare.services import Services
from townsquare.storage import jobs
from townsquare.storage.jobs import Job
from townsquare.storage.social_tables import Group, GroupMessage
from townsquare.storage.tables import User


@pytest.fixture
def town(tmp_path: Path) -> Iterator[tuple[Services, FakeText]]:
    fake = FakeText()
    settings = make_settings(
        tmp_path,
        assistant={"tool_mode": "off", "mention_poll_s": 0.05, "mention_concurrency": 2},
    )
    services = Services.build(settings, text=fake, embed=FakeEmbeddings())
    build_town(services)
    yield services, fake
    _close(services)


def post(services: Services, text: str, external_id: str) -> int:
    """A member's message in g1, stored as the host app would (not yet announced)."""
    with services.sessions.begin() as db:
        group = db.scalar(select(Group.id).where(Group.external_id == "g1"))
        member = db.scalar(select(User.id).where(User.name == "member"))
        assert group and member
        message = GroupMessage(external_id=external_id, group_id=group, author_id=member, text=text)
        db.add(message)
        db.flush()
        return message.id


def replies(services: Services, message_id: int) -> list[str]:
    with services.sessions() as db:
        return list(
            db.scalars(select(GroupMessage.text).where(GroupMessage.answers_id == message_id))
        )


async def test_a_mention_queued_while_no_worker_ran_is_answered_when_one_starts(
    town: tuple[Services, FakeText],
) -> None:
    services, fake = town
    chat = services.group_chat
    asked = post(services, "@assistant when do we bake?", "m-durable")
    await chat.received(["m-durable"])  # no worker runs: the job waits in the table
    await chat.received(["m-durable"])  # the same batch again (another replica): one job
    with services.sessions() as db:
        assert db.scalar(select(func.count()).select_from(Job)) == 1
    assert replies(services, asked) == []
    fake.enqueue("Sunday at nine.")
    chat.start()  # a replica starting later finds it
    try:
        await chat.drain(30)
    finally:
        await chat.stop()
    assert replies(services, asked) == ["Sunday at nine."]
    with services.sessions() as db:
        assert db.scalars(select(Job.state)).all() == ["done"]


async def test_a_mention_whose_worker_died_is_taken_over_once_its_lease_lapses(
    town: tuple[Services, FakeText],
) -> None:
    services, fake = town
    chat = services.group_chat
    asked = post(services, "@assistant anyone have rye?", "m-orphan")
    with services.sessions() as db:
        jobs.enqueue(db, "mention", str(asked), payload={"message": asked})
        db.commit()
        job = db.scalars(select(Job)).one()
        # leased by a replica that was killed mid-answer
        job.state, job.owner, job.attempts = "running", "dead-replica", 1
        job.lease_until = datetime.now(UTC) - timedelta(seconds=1)
        db.commit()
    fake.enqueue("The mill shop has rye.")
    chat.start()
    try:
        await chat.drain(30)
    finally:
        await chat.stop()
    assert replies(services, asked) == ["The mill shop has rye."]


async def test_two_workers_answering_the_same_mention_store_one_reply(
    town: tuple[Services, FakeText],
) -> None:
    services, fake = town
    fake.delay_s = 0.2  # both read 'not answered yet' before either stores
    asked = post(services, "@assistant what's the recipe?", "m-race")
    fake.enqueue("Flour, water, salt.", "Flour, water, salt (again).")
    results = await asyncio.gather(
        services.group_chat.answer(asked), services.group_chat.answer(asked)
    )
    assert sorted(r is None for r in results) == [False, True]
    assert len(replies(services, asked)) == 1


def test_claims_share_the_workers_between_groups_and_members(
    town: tuple[Services, FakeText],
) -> None:
    """Member 1 floods group 1; group 2's one mention does not wait behind the flood."""
    services, _ = town
    with services.sessions() as db:
        for n in range(3):
            jobs.enqueue(db, "mention", f"a{n}", payload={"n": n}, group_id=1, user_id=1)
        jobs.enqueue(db, "mention", "b0", payload={}, group_id=2, user_id=2)
        db.commit()
        first = jobs.claim(db, "mention", 60)
        second = jobs.claim(db, "mention", 60)
        assert first is not None and first.key == "a0"
        assert second is not None and second.key == "b0"  # a1 waits: its group is busy
        assert jobs.claim(db, "mention", 60) is None  # both groups busy
        assert jobs.finish(db, first.id) == "done"
        third = jobs.claim(db, "mention", 60)
        assert third is not None and third.key == "a1"
        # a failure is tried again after a backoff, then dropped after its last try
        assert jobs.finish(db, third.id, error="boom", attempts=2) == "queued"
        assert jobs.claim(db, "mention", 60).key == "a2"  # type: ignore[union-attr]
        job = db.get(Job, third.id)
        assert job is not None and job.run_after > datetime.now(UTC)


def test_finished_jobs_are_forgotten_after_their_days(town: tuple[Services, FakeText]) -> None:
    """The jobs table does not grow for ever: done and dead jobs older than the setting go,
    queued and running ones stay whatever their age."""
    from townsquare.services import forget_jobs

    services, _ = town
    with services.sessions() as db:
        for key, state in [("old-done", "done"), ("old-dead", "dead"), ("old-queued", "queued")]:
            jobs.enqueue(db, "mention", key)
            db.commit()
            job = db.scalars(select(Job).where(Job.key == key)).one()
            job.state, job.created_at = state, datetime.now(UTC) - timedelta(days=10)
        jobs.enqueue(db, "mention", "new-done")
        db.commit()
        db.scalars(select(Job).where(Job.key == "new-done")).one().state = "done"
        db.commit()
    assert forget_jobs(services.sessions, days=7) == 2
    with services.sessions() as db:
        assert set(db.scalars(select(Job.key))) == {"old-queued", "new-done"}
