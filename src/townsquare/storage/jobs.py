"""Durable background work: one table of jobs with leases, shared by every replica.

A job is a row (``kind``, ``key``) in ``jobs``: the key is its idempotency key, so the same work
queued by two replicas (a batch re-sent to both) is one job. A worker claims a job with one
conditional UPDATE that leases it (``lease_until``, ``owner``), renews the lease while it works
(``renew``), and marks it done, or queued again after a backoff, or dead after its last try. A
job whose worker died (stopped, crashed, redeployed) is taken over by any replica once its lease
lapses; a job queued while no worker ran is found by the first that starts. Claims are fair:
``claim`` skips groups and members that already have a job of that kind running, so one busy
group or member cannot hold every worker.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    and_,
    delete,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from townsquare.storage.tables import Base, UTCDateTime, utcnow

OWNER = f"{uuid.uuid4().hex[:12]}"  # this process, in the rows it leases


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("kind", "key", name="uq_jobs_kind_key"),
        Index("ix_jobs_due", "kind", "state", "run_after"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    key: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16), default="queued")  # queued running done dead
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    group_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    user_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    run_after: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


def enqueue(
    db: Session,
    kind: str,
    key: str,
    *,
    payload: dict[str, Any] | None = None,
    group_id: int | None = None,
    user_id: int | None = None,
) -> bool:
    """Queue a job in the caller's transaction; False when (``kind``, ``key``) was queued
    before (by this replica or another)."""
    found = db.scalar(select(Job.id).where(Job.kind == kind, Job.key == key))
    if found is not None:
        return False
    try:
        with db.begin_nested():
            db.add(
                Job(
                    kind=kind,
                    key=key,
                    payload=payload or {},
                    group_id=group_id,
                    user_id=user_id,
                    run_after=datetime.now(UTC),
                )
            )
    except IntegrityError:  # another replica queued it a moment ago
        return False
    return True


def pending(db: Session, kind: str, *, group_id: int | None = None) -> int:
    """Jobs of ``kind`` queued or running (in one group when given)."""
    query = (
        select(func.count())
        .select_from(Job)
        .where(Job.kind == kind, Job.state.in_(("queued", "running")))
    )
    if group_id is not None:
        query = query.where(Job.group_id == group_id)
    return int(db.scalar(query) or 0)


def claim(db: Session, kind: str, lease_s: float) -> Job | None:
    """Lease the oldest due job of ``kind`` whose group and member have none running (a lapsed
    lease counts as not running), or None. Commits."""
    now = datetime.now(UTC)
    running = and_(Job.kind == kind, Job.state == "running", Job.lease_until > now)
    busy_groups = select(Job.group_id).where(running, Job.group_id.is_not(None))
    busy_users = select(Job.user_id).where(running, Job.user_id.is_not(None))
    due = or_(
        and_(Job.state == "queued", Job.run_after <= now),
        and_(Job.state == "running", Job.lease_until <= now),  # its worker died
    )
    candidates = db.scalars(
        select(Job)
        .where(
            Job.kind == kind,
            due,
            or_(Job.group_id.is_(None), Job.group_id.not_in(busy_groups)),
            or_(Job.user_id.is_(None), Job.user_id.not_in(busy_users)),
        )
        .order_by(Job.run_after, Job.id)
        .limit(8)
    ).all()
    for job in candidates:
        won = db.execute(
            update(Job)
            .where(Job.id == job.id, Job.state == job.state, Job.attempts == job.attempts)
            .values(
                state="running",
                attempts=Job.attempts + 1,
                lease_until=now + timedelta(seconds=lease_s),
                owner=OWNER,
            )
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
        if won:
            db.commit()
            db.refresh(job)
            return job
    db.commit()
    return None


def renew(db: Session, job_id: int, lease_s: float) -> bool:
    """Extend this process's lease on a running job; False when it is no longer ours."""
    renewed = db.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == "running", Job.owner == OWNER)
        .values(lease_until=datetime.now(UTC) + timedelta(seconds=lease_s))
    ).rowcount  # type: ignore[attr-defined]
    db.commit()
    return bool(renewed)


def release(db: Session, job_id: int) -> bool:
    """Hand a job this process holds back to the queue at once, its try not counted (the
    process is stopping, the job did not fail); False when it is not ours any more."""
    released = db.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == "running", Job.owner == OWNER)
        .values(
            state="queued",
            lease_until=None,
            owner=None,
            attempts=Job.attempts - 1,  # claiming counted one: a running job has had a try
            run_after=datetime.now(UTC),
        )
    ).rowcount  # type: ignore[attr-defined]
    db.commit()
    return bool(released)


def finish(db: Session, job_id: int, *, error: str = "", attempts: int = 3) -> str:
    """Record a job's outcome: done; or, after a failure, queued again after a backoff
    (2, 4, 8... seconds) or dead once it has had ``attempts`` tries. The new state."""
    job = db.get(Job, job_id)
    if job is None:
        return "gone"
    if not error:
        job.state, job.lease_until, job.last_error = "done", None, ""
    elif job.attempts >= attempts:
        job.state, job.lease_until, job.last_error = "dead", None, error[:2000]
    else:
        job.state, job.lease_until, job.last_error = "queued", None, error[:2000]
        job.run_after = datetime.now(UTC) + timedelta(seconds=2**job.attempts)
    state = job.state
    db.commit()
    return state


def forget_finished(db: Session, days: float, batch: int = 1000) -> int:
    """Delete done and dead jobs queued more than ``days`` ago (the table would otherwise
    grow for ever; a re-sent mention is still answered once: its reply's key stays); the
    number deleted. Batches of ``batch`` rows, each committed."""
    cutoff = datetime.now(UTC) - timedelta(days=days)
    deleted = 0
    while True:
        ids = list(
            db.scalars(
                select(Job.id)
                .where(Job.state.in_(("done", "dead")), Job.created_at < cutoff)
                .limit(batch)
            )
        )
        if not ids:
            return deleted
        db.execute(delete(Job).where(Job.id.in_(ids)))
        db.commit()
        deleted += len(ids)
