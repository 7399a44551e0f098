"""Webhook deliveries across replicas: each is posted once while an attempt may still be
running (per-delivery leases, attempts cut off at ``webhooks.timeout_s``), and a slow receiver
holds only its own slots (``webhooks.per_target``)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.conftest import _close, make_settings
from tests.features.assistant.test_group_chat import Receiver
from townsquare.backends.fake import FakeEmbeddings, FakeText
from townsquare.features.webhooks import service as webhooks
from townsquare.features.webhooks.service import Sender, WebhookIn
from townsquare.services import Services
from townsquare.storage.social_tables import WebhookDelivery
from townsquare.storage.tables import User


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    settings = make_settings(
        tmp_path,
        webhooks={
            "allow_private_targets": True,
            "timeout_s": 1.0,
            "poll_s": 0.05,
            "backoff_s": 0.05,
            "per_target": 2,
        },
    )
    built = Services.build(settings, text=FakeText(), embed=FakeEmbeddings())
    yield built
    _close(built)


def subscribe(services: Services, *urls: str) -> None:
    with services.sessions.begin() as db:
        admin = User(name="admin", role="admin")
        db.add(admin)
        db.flush()
        for url in urls:
            webhooks.create(db, admin, WebhookIn(url=url))


def events(services: Services, count: int) -> None:
    with services.sessions.begin() as db:
        for n in range(count):
            webhooks.enqueue(db, "group.message.created", {"n": n})


def delivery_ids(receiver: Receiver) -> list[int]:
    return [json.loads(body)["delivery_id"] for _, body in receiver.received]


async def until(check: object, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_two_replicas_post_each_delivery_once(services: Services) -> None:
    """A receiver that answers in 0.4 s: one sender posting 20 deliveries one after another
    under one lease let the lease lapse and the other replica post them again (16 of 20)."""
    receiver = Receiver()
    receiver.delay = 0.4
    subscribe(services, receiver.url)
    events(services, 20)
    replicas = [Sender(services.sessions, services.settings.webhooks) for _ in range(2)]
    for sender in replicas:
        sender.start()
    try:

        def all_delivered() -> bool:
            with services.sessions() as db:
                states = db.scalars(select(WebhookDelivery.status)).all()
            return len(states) == 20 and set(states) == {"delivered"}

        await until(all_delivered)
    finally:
        for sender in replicas:
            await sender.stop()
        receiver.close()
    posted = Counter(delivery_ids(receiver))
    assert len(posted) == 20 and max(posted.values()) == 1, posted


async def test_a_slow_receiver_holds_only_its_own_slots(services: Services) -> None:
    slow, fast = Receiver(), Receiver()
    slow.delay = 0.9  # within timeout_s, so each of its deliveries succeeds, slowly
    subscribe(services, slow.url, fast.url)
    events(services, 6)  # six deliveries for each
    sender = Sender(services.sessions, services.settings.webhooks)
    sender.start()
    try:
        await until(lambda: len(fast.received) == 6)
        # the fast receiver has everything while the slow one has had only its two slots
        assert len(slow.received) <= 2
        await until(lambda: len(slow.received) == 6)
    finally:
        await sender.stop()
        slow.close()
        fast.close()


async def test_an_attempt_past_its_timeout_is_cut_off_and_tried_again(
    services: Services,
) -> None:
    receiver = Receiver()
    receiver.delay = 3.0  # past timeout_s = 1
    subscribe(services, receiver.url)
    events(services, 1)
    sender = Sender(services.sessions, services.settings.webhooks)
    sender.start()
    try:

        def failed_once() -> bool:
            with services.sessions() as db:
                row = db.scalars(select(WebhookDelivery)).one()
                return row.attempts >= 1

        await until(failed_once)
        with services.sessions() as db:
            row = db.scalars(select(WebhookDelivery)).one()
            assert "webhooks.timeout_s" in row.last_error and row.status == "pending"
    finally:
        await sender.stop()
        receiver.close()
