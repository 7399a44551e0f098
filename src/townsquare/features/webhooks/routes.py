"""Webhook routes (admins): register endpoints, read deliveries, retry dead ones."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response
from starlette.concurrency import run_in_threadpool

from townsquare.api.deps import AdminUser, DbDep, Limit, Offset, RowId, ServicesDep
from townsquare.features.webhooks import service
from townsquare.features.webhooks.service import DeliveryOut, WebhookIn, WebhookOut
from townsquare.social.views import Page

router = APIRouter(prefix="/api/webhooks", tags=["webhooks"])


@router.post("", status_code=201, openapi_extra={"x-access": "admin"})
async def create_webhook(
    body: WebhookIn, admin: AdminUser, db: DbDep, services: ServicesDep
) -> WebhookOut:
    """Register an endpoint for events (``group.message.created``); the answer holds the
    signing secret, shown only here."""
    await service.check_url(
        body.url, allow_private=services.settings.webhooks.allow_private_targets
    )

    def store() -> WebhookOut:
        out = service.create(db, admin, body)
        db.commit()
        return out

    return await run_in_threadpool(store)


@router.get("", openapi_extra={"x-access": "admin"})
def list_webhooks(admin: AdminUser, db: DbDep) -> Page[WebhookOut]:
    """Every registered webhook (secrets left out)."""
    return Page(data=service.list_webhooks(db))


@router.delete("/{webhook_id}", status_code=204, openapi_extra={"x-access": "admin"})
def delete_webhook(webhook_id: RowId, admin: AdminUser, db: DbDep) -> Response:
    """Remove a webhook and its deliveries."""
    service.delete(db, webhook_id)
    db.commit()
    return Response(status_code=204)


@router.get("/deliveries", openapi_extra={"x-access": "admin"})
def list_deliveries(
    admin: AdminUser,
    db: DbDep,
    status: Annotated[
        Literal["pending", "delivered", "dead"] | None,
        Query(description="Only this status; 'dead' is the dead-letter list."),
    ] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[DeliveryOut]:
    """Deliveries, newest first: what was sent, what is waiting, what gave up."""
    rows = service.deliveries(db, status=status, limit=limit, offset=offset)
    return Page(data=rows)


@router.post("/deliveries/{delivery_id}/retry", openapi_extra={"x-access": "admin"})
def retry_delivery(
    delivery_id: RowId, admin: AdminUser, db: DbDep, services: ServicesDep
) -> DeliveryOut:
    """Send a dead delivery again, now."""
    out = service.retry(db, delivery_id)
    db.commit()
    services.webhook_sender.wake_soon()
    return out
