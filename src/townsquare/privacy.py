"""What townsquare keeps of members' words, and for how long (docs/features.md, "What is kept").

- **Erasure**: deleting a member redacts every stored prompt, answer and output of a
  generation whose prompt held their words (``generation_contributors``), removes the
  excerpts of their moderation decisions, and so keeps them out of every later export.
- **Retention**: ``privacy.moderation_log_days`` bounds the moderation log (decisions and
  excerpts), ``privacy.prompt_days`` the prompts and answers stored with generations (the
  feedback on them stays, without the text it was about). ``RetentionSweeper`` enforces both on
  every replica every ``privacy.sweep_every_s``; the deletes are idempotent, in batches, so
  replicas sweeping at once only repeat each other's work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, null, select, update
from sqlalchemy.orm import Session, sessionmaker

from townsquare.settings import PrivacySettings
from townsquare.storage.social_tables import Generation, GenerationContributor
from townsquare.storage.tables import SafetyEventRow
from townsquare.threads import finish_in_thread

log = logging.getLogger("townsquare.privacy")

REDACTED = {"redacted": True}
BATCH = 1000


def erase_member_words(db: Session, user_id: int) -> int:
    """Redact what is stored of a member's words outside their own rows (which the delete
    removes): generations whose prompt held them, and their moderation excerpts. The caller
    commits; the number of generations redacted."""
    held = select(GenerationContributor.generation_id).where(
        GenerationContributor.user_id == user_id
    )
    ids = list(db.scalars(held))  # indexed by member: as many as their words reached
    if ids:
        _redact(db, ids)
    db.execute(delete(GenerationContributor).where(GenerationContributor.user_id == user_id))
    db.execute(
        update(SafetyEventRow)
        .where(SafetyEventRow.user_id == user_id)
        .values(excerpt="", user_id=None)
        .execution_options(synchronize_session=False)
    )
    return len(ids)


def _redact(db: Session, ids: list[int]) -> None:
    """Drop what the generations ``ids`` stored of anyone's words (SQL NULL, not JSON null)."""
    db.execute(
        update(Generation)
        .where(Generation.id.in_(ids))
        .values(prompt=null(), answer=None, inputs=REDACTED, output=REDACTED)
        .execution_options(synchronize_session=False)
    )


def sweep(
    sessions: sessionmaker[Session], settings: PrivacySettings, now: datetime | None = None
) -> dict[str, int]:
    """Apply the retention settings once: ``{"moderation_events": deleted, "prompts":
    redacted}``. Batches of ``BATCH`` rows, each its own transaction."""
    now = now or datetime.now(UTC)
    done = {"moderation_events": 0, "prompts": 0}
    if settings.moderation_log_days:
        cutoff = now - timedelta(days=settings.moderation_log_days)
        done["moderation_events"] = _batches(
            sessions,
            lambda db: list(
                db.scalars(
                    select(SafetyEventRow.id).where(SafetyEventRow.created_at < cutoff).limit(BATCH)
                )
            ),
            lambda db, ids: db.execute(delete(SafetyEventRow).where(SafetyEventRow.id.in_(ids))),
        )
    if settings.prompt_days:
        cutoff = now - timedelta(days=settings.prompt_days)
        done["prompts"] = _batches(
            sessions,
            lambda db: list(
                db.scalars(
                    select(Generation.id)
                    .where(Generation.created_at < cutoff, Generation.prompt.is_not(None))
                    .limit(BATCH)
                )
            ),
            _redact,
        )
    return done


def _batches(
    sessions: sessionmaker[Session],
    find: Callable[[Session], list[int]],
    act: Callable[[Session, list[int]], object],
) -> int:
    total = 0
    while True:
        with sessions.begin() as db:
            ids = find(db)
            if ids:
                act(db, ids)
        total += len(ids)
        if len(ids) < BATCH:
            return total


class RetentionSweeper:
    """Runs ``sweep`` every ``privacy.sweep_every_s`` beside requests (off the event loop); the
    first sweep comes one interval after the start."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: PrivacySettings,
        *,
        also: Callable[[], dict[str, int]] | None = None,
    ) -> None:
        """``also``: more housekeeping run with each sweep (the image files no row uses)."""
        self.sessions = sessions
        self.settings = settings
        self.also = also
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Start sweeping on the running event loop (once: an app started again on another
        loop while this one runs shares it)."""
        if self.settings.sweep_every_s <= 0 or (self._task is not None and not self._task.done()):
            return
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run(), name="retention")

    async def stop(self) -> None:
        """Stop sweeping, from the loop that started it; a sweep in flight finishes its batch
        first (its worker thread is waited for)."""
        task = self._task
        if task is None or asyncio.get_running_loop() is not self._loop:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self._task = None
        self._loop = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_every_s)
            try:
                done = await finish_in_thread(sweep, self.sessions, self.settings)
                if self.also is not None:
                    done |= await finish_in_thread(self.also)
                if any(done.values()):
                    log.info("retention sweep", extra=done)
            except Exception:  # a database hiccup: the next sweep tries again
                log.exception("retention sweep failed")
