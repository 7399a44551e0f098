"""FastAPI dependencies as ``Annotated`` aliases, so route signatures read like prose."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Path, Query, Request
from sqlalchemy.orm import Session

from townsquare.bounds import MAX_INT
from townsquare.errors import Forbidden, Unauthorized
from townsquare.identity import csrf_matches, user_for_key, user_for_session
from townsquare.services import Services
from townsquare.social import access
from townsquare.storage.tables import User

SESSION_COOKIE = "townsquare_session"
CSRF_HEADER = "x-townsquare-csrf"
_SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def get_services(request: Request) -> Services:
    """The app's ``Services`` (built at start-up, or passed to ``create_app``)."""
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_db(services: ServicesDep) -> Iterator[Session]:
    """The request's session. Use it only from worker threads (plain ``def`` routes, or
    ``run_in_threadpool`` in async ones), never on the event loop."""
    with services.sessions() as db:
        yield db


DbDep = Annotated[Session, Depends(get_db)]

# ids and offsets beyond the databases' largest integer are refused with a 422
RowId = Annotated[int, Path(ge=1, le=MAX_INT, description="The id the API returned.")]
Limit = Annotated[int, Query(ge=1, le=200, description="Page size.")]
Offset = Annotated[int, Query(ge=0, le=MAX_INT, description="Items to skip.")]


def authenticate(request: Request, db: Session) -> User | None:
    """The user behind the request's bearer key or web session cookie, if any.

    A bad key is an error (401), never a silent fall-back to the cookie. Cookie-authenticated
    writes must carry the session's CSRF token in the ``X-Townsquare-CSRF`` header (the pages
    hold it in ``<meta name="csrf-token">``); a cross-site page can neither read nor send it.
    """
    header = request.headers.get("authorization")
    if header:
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthorized("Send the API key as 'Authorization: Bearer <key>'.")
        user = user_for_key(db, key.strip())
        if user is None:
            raise Unauthorized(
                "The API key is not valid or was revoked. An admin can issue a new one with "
                "`townsquare users key NAME`."
            )
        return user
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        user = user_for_session(db, token)
        if user is not None:
            if request.method not in _SAFE_METHODS and not csrf_matches(
                token, request.headers.get(CSRF_HEADER)
            ):
                raise Forbidden(
                    "Browser requests that change data must send the page's CSRF token (its "
                    "<meta name='csrf-token'>) in the header 'X-Townsquare-CSRF'; reload the "
                    "page if it is old. API clients should use a bearer key instead."
                )
            return user
    return None


def current_user(request: Request, db: DbDep, services: ServicesDep) -> User:
    """The authenticated user; counts the request against their per-minute quota.

    A plain ``def``: FastAPI runs it on a worker thread. It ends its read transaction, so a
    request holds no database connection while it waits for a model or streams a reply.
    """
    user = authenticate(request, db)
    db.commit()
    if user is None:
        raise Unauthorized(
            "This endpoint needs an API key: send 'Authorization: Bearer <key>'. An admin creates "
            "users and keys with `townsquare users create NAME`."
        )
    services.quotas.request(user.id, user.role)
    return user


CurrentUser = Annotated[User, Depends(current_user)]


def require_admin(user: CurrentUser) -> User:
    """The request's user, who must be an admin (``access.require_admin``)."""
    return access.require_admin(user)


AdminUser = Annotated[User, Depends(require_admin)]


def require_creator(user: CurrentUser) -> User:
    """The request's user, who must be a creator or an admin (``access.require_creator``)."""
    return access.require_creator(user, "A style profile")


CreatorUser = Annotated[User, Depends(require_creator)]
