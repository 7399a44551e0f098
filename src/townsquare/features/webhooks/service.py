"""Webhooks: events delivered to the host app, signed, retried with backoff, dead-lettered.

An event (``group.message.created``: a message townsquare wrote into a group, such as the
assistant's reply to an @-mention) becomes one ``webhook_deliveries`` row per subscribed
webhook, in the same transaction as the message: a reply is never stored without its
deliveries. The ``Sender`` (one per process, started with the app) posts due deliveries with
the signature header

    X-Townsquare-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>

and marks each delivered on a 2xx; otherwise it waits ``backoff_s * 2**(attempt-1)`` (at most
``backoff_max_s``) and tries again, and after ``max_attempts`` the delivery is 'dead': listed
for admins, who can retry it. Several replicas share the table; a delivery is claimed just
before it is sent by moving its ``next_attempt_at`` forward in one conditional UPDATE (its
lease: twice ``timeout_s``), and the attempt is cut off after ``timeout_s`` whatever the
receiver does, so no replica sends it again while an attempt may still be running (at least
once, never twice within the timeout). A process sends up to ``webhooks.concurrency``
deliveries at once and at most ``webhooks.per_target`` to one webhook, so a slow receiver holds
only its own slots.

Webhook URLs must be http(s); a host that resolves to a loopback, private, link-local or
reserved address, in any IPv4 or IPv6 form (IPv4-mapped, 6to4, NAT64...), is refused unless
``webhooks.allow_private_targets`` is on: checked when the webhook is registered and again at
each delivery, which then connects to the very address that was checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import httpx
from pydantic import BaseModel, Field
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from townsquare.errors import InvalidField, NotFound
from townsquare.settings import WebhookSettings
from townsquare.storage.social_tables import Webhook, WebhookDelivery
from townsquare.storage.tables import User
from townsquare.threads import finish_in_thread

log = logging.getLogger("townsquare.webhooks")

EVENTS = ("group.message.created",)
SIGNATURE_HEADER = "X-Townsquare-Signature"


class WebhookIn(BaseModel):
    url: str = Field(min_length=1, max_length=2048, description="http(s) URL of the endpoint.")
    events: list[str] = Field(default_factory=lambda: list(EVENTS), min_length=1)
    secret: str | None = Field(
        None,
        min_length=16,
        max_length=128,
        description="Signing secret; generated (and shown once) when absent.",
    )


class WebhookOut(BaseModel):
    id: int
    url: str
    events: list[str]
    created_at: datetime
    secret: str | None = Field(None, description="Only in the answer that created it.")


class DeliveryOut(BaseModel):
    id: int
    webhook_id: int
    event: str
    status: str
    attempts: int
    next_attempt_at: datetime
    last_error: str
    last_status: int | None
    created_at: datetime
    delivered_at: datetime | None
    payload: dict[str, Any]


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header's value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(
        secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256
    ).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(secret: str, header: str, body: bytes, *, tolerance_s: int = 300) -> bool:
    """Whether ``header`` signs ``body`` with ``secret`` within ``tolerance_s`` (for receivers;
    docs/assistant.md shows the same check in a few lines)."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs(time.time() - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), header)


_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def _embedded(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries: mapped (::ffff:a.b.c.d), compatible
    (::a.b.c.d), 6to4, Teredo and NAT64 forms all reach the IPv4 address inside."""
    found = [a for a in (ip.ipv4_mapped, ip.sixtofour) if a is not None]
    if ip.teredo is not None:
        found += list(ip.teredo)
    packed = ip.packed
    if packed[:12] == bytes(12) and packed[12:] != bytes(4):  # ::a.b.c.d (deprecated form)
        found.append(ipaddress.IPv4Address(packed[12:]))
    if any(ip in net for net in _NAT64):
        found.append(ipaddress.IPv4Address(packed[12:]))
    return found


def private_address(address: str) -> bool:
    """Whether ``address`` (any IPv4 or IPv6 form) is loopback, private, link-local, shared,
    reserved or multicast, or carries such an IPv4 address inside an IPv6 one."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if not ip.is_global or ip.is_multicast:
        return True
    if isinstance(ip, ipaddress.IPv6Address):
        return any(not v4.is_global or v4.is_multicast for v4 in _embedded(ip))
    return False


@dataclass(frozen=True)
class Pinned:
    """Where a delivery connects: the URL with the checked address in place of the host, and
    the Host header and TLS name of the original, so the connection goes to the address that
    was checked (a DNS answer that changes between the check and the connection is never
    followed)."""

    url: str
    headers: dict[str, str]
    extensions: dict[str, Any]


async def check_url(url: str, *, allow_private: bool, field: str = "url") -> Pinned:
    """Where ``url`` may be delivered to (the resolved address, checked in every form); a 422
    naming the problem otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise InvalidField(f"{field} must be an http:// or https:// URL with a host.", field)
    if allow_private:
        return Pinned(url, {}, {})
    default_port = 443 if parts.scheme == "https" else 80
    try:
        port = parts.port or default_port
        infos = await anyio.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (OSError, ValueError) as exc:
        raise InvalidField(
            f"{field}: the host {parts.hostname} does not resolve ({exc}).", field
        ) from None
    addresses = sorted({str(info[4][0]) for info in infos})
    if not addresses or any(private_address(a) for a in addresses):
        raise InvalidField(
            f"{field} points at a loopback, private or link-local address "
            f"({', '.join(addresses)}). Use a public address, or set "
            "TOWNSQUARE_WEBHOOKS__ALLOW_PRIVATE_TARGETS=true for a host app on this network.",
            field,
        )
    address = addresses[0]
    host = f"[{address}]" if ":" in address else address
    netloc = host + (f":{parts.port}" if parts.port else "")
    pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    original = parts.hostname + (f":{parts.port}" if parts.port else "")
    extensions = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
    return Pinned(pinned, {"Host": original}, extensions)


def create(db: Session, admin: User, body: WebhookIn) -> WebhookOut:
    """Register a webhook (the URL already checked); the answer shows the secret once."""
    unknown = sorted(set(body.events) - set(EVENTS))
    if unknown:
        raise InvalidField(
            f"Unknown events: {', '.join(unknown)}. Known: {', '.join(EVENTS)}.", "events"
        )
    secret = body.secret or secrets.token_urlsafe(32)
    row = Webhook(url=body.url, secret=secret, events=sorted(set(body.events)), created_by=admin.id)
    db.add(row)
    db.flush()
    return WebhookOut(
        id=row.id, url=row.url, events=row.events, created_at=row.created_at, secret=secret
    )


def list_webhooks(db: Session) -> list[WebhookOut]:
    """Every webhook (secrets left out)."""
    rows = db.scalars(select(Webhook).order_by(Webhook.id))
    return [WebhookOut(id=r.id, url=r.url, events=r.events, created_at=r.created_at) for r in rows]


def delete(db: Session, webhook_id: int) -> None:
    """Remove a webhook and its deliveries."""
    row = db.get(Webhook, webhook_id)
    if row is None:
        raise NotFound(f"There is no webhook {webhook_id}. GET /api/webhooks lists them.")
    db.delete(row)


def enqueue(db: Session, event: str, payload: dict[str, Any]) -> int:
    """One pending delivery per webhook subscribed to ``event``, in the caller's transaction."""
    count = 0
    for hook in db.scalars(select(Webhook)):
        if event in hook.events:
            db.add(
                WebhookDelivery(
                    webhook_id=hook.id,
                    event=event,
                    payload={"event": event, **payload},
                    status="pending",
                    attempts=0,
                    next_attempt_at=datetime.now(UTC),
                    last_error="",
                )
            )
            count += 1
    return count


def deliveries(db: Session, *, status: str | None, limit: int, offset: int) -> list[DeliveryOut]:
    """Deliveries, newest first, optionally only one status (pending, delivered, dead)."""
    query = select(WebhookDelivery).order_by(WebhookDelivery.id.desc())
    if status is not None:
        query = query.where(WebhookDelivery.status == status)
    rows = db.scalars(query.limit(limit).offset(offset))
    return [DeliveryOut.model_validate(r, from_attributes=True) for r in rows]


def retry(db: Session, delivery_id: int) -> DeliveryOut:
    """Send a dead (or pending) delivery again now, with a fresh count of attempts."""
    row = db.get(WebhookDelivery, delivery_id)
    if row is None:
        raise NotFound(f"There is no delivery {delivery_id}.")
    row.status, row.attempts, row.next_attempt_at = "pending", 0, datetime.now(UTC)
    db.flush()
    return DeliveryOut.model_validate(row, from_attributes=True)


def _receipt(payload: dict[str, Any]) -> dict[str, Any]:
    """What a delivered event keeps: its name and the ids of its message, no text."""
    message = payload.get("message") or {}
    return {
        "event": payload.get("event"),
        "message": {k: message.get(k) for k in ("id", "group", "reply_to") if k in message},
    }


def backoff(settings: WebhookSettings, attempts: int) -> float:
    """Seconds to wait after ``attempts`` failed tries."""
    return float(min(settings.backoff_max_s, settings.backoff_s * 2 ** max(0, attempts - 1)))


class Sender:
    """Posts due deliveries (see the module docstring); ``wake()`` sends new ones at once."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: WebhookSettings,
        *,
        on_outcome: Callable[[str], None] | None = None,
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.on_outcome = on_outcome  # metrics: delivered | retry | dead
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop_ref: asyncio.AbstractEventLoop | None = None
        self._stopping = False

    def start(self) -> None:
        """Start the sending loop on the running event loop (once: an app started again on
        another loop while this one runs shares it)."""
        if self._task is not None and not self._task.done():
            return
        self._loop_ref = asyncio.get_running_loop()
        self._wake = asyncio.Event()  # bound to this loop
        self._stopping = False
        self._task = self._loop_ref.create_task(self._loop(), name="webhooks")

    async def stop(self) -> None:
        """Stop the loop, from the loop that started it: the delivery in flight finishes
        (for up to ``stop_grace_s``, then it is cut off and tried again later); deliveries left
        pending are sent by the next start or another replica."""
        task = self._task
        if task is None or asyncio.get_running_loop() is not self._loop_ref:
            return
        self._stopping = True
        self._wake.set()
        # a request cancelled mid-connect can leave its socket to the garbage collector
        # (httpcore closes a half-made TLS stream on errors only): let it end on its own
        await asyncio.wait({task}, timeout=self.settings.stop_grace_s)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self._task = None
        self._loop_ref = None

    def wake_soon(self) -> None:
        """Look for due deliveries now; safe from any thread."""
        loop = self._loop_ref
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake.set)

    async def _loop(self) -> None:
        async with httpx.AsyncClient(timeout=self.settings.timeout_s) as client:
            inflight: dict[asyncio.Task[None], int] = {}  # task -> its webhook
            try:
                while not self._stopping:
                    try:
                        await self._fill(client, inflight)
                    except Exception:  # a broken database must not end the loop for good
                        log.exception("webhook sending failed; trying again shortly")
                    # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a cancel
                    # that lands as the event is set, and stop() then waited for ever
                    waker = asyncio.ensure_future(self._wake.wait())
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.settings.poll_s):
                            await asyncio.wait(
                                {waker, *inflight}, return_when=asyncio.FIRST_COMPLETED
                            )
                    waker.cancel()
                    self._wake.clear()
                    for task in [t for t in inflight if t.done()]:
                        del inflight[task]
            finally:
                if inflight:  # stopping: the attempts in flight finish (stop() bounds it)
                    try:
                        await asyncio.wait(set(inflight))
                    except asyncio.CancelledError:  # cut off: their leases lapse, sent later
                        for task in inflight:
                            task.cancel()
                        raise

    async def _fill(
        self, client: httpx.AsyncClient, inflight: dict[asyncio.Task[None], int]
    ) -> None:
        """Claim due deliveries for the free slots (``webhooks.concurrency`` in all,
        ``webhooks.per_target`` per webhook) and start sending each."""
        while not self._stopping:
            busy: dict[int, int] = {}
            for hook_id in inflight.values():
                busy[hook_id] = busy.get(hook_id, 0) + 1
            free = self.settings.concurrency - len(inflight)
            if free <= 0:
                return
            claimed = await finish_in_thread(self._claim, free, busy)
            if not claimed:
                return
            for delivery in claimed:
                task = asyncio.get_running_loop().create_task(self._send(client, *delivery[:4]))
                inflight[task] = delivery[4]

    def _claim(
        self, limit: int = 20, busy: dict[int, int] | None = None
    ) -> list[tuple[int, str, str, dict[str, Any], int]]:
        """Due deliveries for the free slots, each claimed for twice ``timeout_s`` (another
        replica skips it): (delivery, url, secret, payload, webhook), at most
        ``webhooks.per_target`` per webhook counting ``busy`` (its deliveries in flight)."""
        now = datetime.now(UTC)
        lease = now + timedelta(seconds=self.settings.timeout_s * 2)
        taken = dict(busy or {})
        full = [h for h, n in taken.items() if n >= self.settings.per_target]
        claimed: list[tuple[int, str, str, dict[str, Any], int]] = []
        with self.sessions.begin() as db:
            rows = db.execute(
                select(WebhookDelivery, Webhook)
                .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
                .where(
                    WebhookDelivery.status == "pending",
                    WebhookDelivery.next_attempt_at <= now,
                    Webhook.id.not_in(full),
                )
                .order_by(WebhookDelivery.next_attempt_at)
                .limit(limit * 4)  # some belong to webhooks whose slots fill on the way
            ).all()
            for delivery, hook in rows:
                if len(claimed) >= limit or taken.get(hook.id, 0) >= self.settings.per_target:
                    continue
                won = db.execute(  # type: ignore[attr-defined]
                    update(WebhookDelivery)
                    .where(
                        WebhookDelivery.id == delivery.id,
                        WebhookDelivery.next_attempt_at == delivery.next_attempt_at,
                    )
                    .values(next_attempt_at=lease)
                ).rowcount
                if won:
                    taken[hook.id] = taken.get(hook.id, 0) + 1
                    claimed.append((delivery.id, hook.url, hook.secret, delivery.payload, hook.id))
        return claimed

    def _record(self, delivery_id: int, ok: bool, status: int | None, error: str) -> None:
        with self.sessions.begin() as db:
            row = db.get(WebhookDelivery, delivery_id)
            if row is None:  # its webhook was deleted meanwhile
                return
            row.attempts += 1
            row.last_status, row.last_error = status, error[:2000]
            now = datetime.now(UTC)
            outcome = (
                "delivered"
                if ok
                else "dead"
                if row.attempts >= self.settings.max_attempts
                else "retry"
            )
            if self.on_outcome is not None:
                self.on_outcome(outcome)
            if ok:
                row.status, row.delivered_at = "delivered", now
                # the host app has it now: keep which message it was, not a second copy of it
                row.payload = _receipt(row.payload)
            elif row.attempts >= self.settings.max_attempts:
                row.status = "dead"
                log.warning(
                    "webhook delivery %s is dead after %s tries: %s", row.id, row.attempts, error
                )
            else:
                row.next_attempt_at = now + timedelta(seconds=backoff(self.settings, row.attempts))

    async def send_due(self, client: httpx.AsyncClient) -> int:
        """Send every delivery that is due now, as the loop would, and wait for them; the
        number sent (delivered or not). For tests and one-off runs."""
        inflight: dict[asyncio.Task[None], int] = {}
        sent = 0
        while True:
            await self._fill(client, inflight)
            if not inflight:
                return sent
            done, _ = await asyncio.wait(set(inflight), return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                del inflight[task]
                sent += 1

    async def _send(
        self,
        client: httpx.AsyncClient,
        delivery_id: int,
        url: str,
        secret: str,
        payload: dict[str, Any],
    ) -> None:
        """One attempt, cut off after ``timeout_s`` in all, and its outcome recorded."""
        body = json.dumps({**payload, "delivery_id": delivery_id}, separators=(",", ":"))
        data = body.encode()
        ok, status, error = False, None, ""
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                # checked again now and connected to the address that was checked
                target = await check_url(url, allow_private=self.settings.allow_private_targets)
                response = await client.post(
                    target.url,
                    content=data,
                    headers={
                        **target.headers,
                        "Content-Type": "application/json",
                        SIGNATURE_HEADER: sign(secret, int(time.time()), data),
                        "X-Townsquare-Event": str(payload.get("event", "")),
                        "X-Townsquare-Delivery": str(delivery_id),
                    },
                    extensions=target.extensions,
                )
            status = response.status_code
            ok = 200 <= status < 300
            error = "" if ok else f"HTTP {status}"
        except InvalidField as exc:
            error = exc.message
        except TimeoutError:
            error = f"no answer within webhooks.timeout_s ({self.settings.timeout_s:g} s)"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        await finish_in_thread(self._record, delivery_id, ok, status, error)
