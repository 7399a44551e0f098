"""What every page shares: the templates, who is looking (``Viewer``), CSRF checks on form posts,
and HTML error pages.

Pages authenticate like the API (a bearer key, or the session cookie), run the same access rules
(a group a member is not in is a 404 here as there) and call the same feature functions; they
only render HTML instead of JSON. A form post made with the session cookie must carry the
session's CSRF token, as a ``csrf_token`` field or the ``X-Townsquare-CSRF`` header (htmx sends
the header from ``<body hx-headers>``).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from sqlalchemy.orm import Session

from townsquare import __version__
from townsquare.api.deps import CSRF_HEADER, SESSION_COOKIE, DbDep, ServicesDep, authenticate
from townsquare.errors import Forbidden
from townsquare.identity import csrf_matches, csrf_token
from townsquare.services import Services
from townsquare.settings import Settings
from townsquare.social import access
from townsquare.storage.tables import User

HERE = Path(__file__).parent
HTMX = "htmx-2.0.11.min.js"
templates = Jinja2Templates(directory=HERE / "templates")

# The navigation: (key, label, href, who sees it)
NAV = (
    ("home", "Home", "/", "all"),
    ("assistant", "Assistant", "/assistant", "all"),
    ("market", "Marketplace", "/market", "all"),
    ("reels", "Reels", "/reels", "all"),
    ("imagine", "Imagine", "/imagine", "all"),
    ("inbox", "Inbox", "/inbox", "all"),
    ("admin", "Admin", "/admin", "admin"),
)


def safe_url(value: object) -> str | None:
    """``value`` if it is an http(s) or same-site link, else None: a ``javascript:`` or
    ``data:`` address stored in a listing or reel is shown as text, never as a link."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text.startswith("/") and not text.startswith("//"):
        return text
    scheme = text.split(":", 1)[0].lower() if ":" in text else ""
    return text if scheme in {"http", "https"} and text[len(scheme) :].startswith("://") else None


def _json_attr(value: object) -> Markup:
    """A JSON value for an HTML attribute (escaped: quotes become entities)."""
    return Markup.escape(json.dumps(value))


templates.env.filters["safe_url"] = safe_url
templates.env.filters["json_attr"] = _json_attr
templates.env.globals["HTMX"] = HTMX
templates.env.globals["VERSION"] = __version__


class LoginRequired(Exception):
    """A page needs a signed-in member: answered with the login form (401)."""


@dataclass
class Viewer:
    """Who is looking at a page, and the token their forms must carry."""

    user: User
    csrf: str | None  # None for bearer-key callers (their requests cannot be forged)
    model: str
    creator: bool
    admin: bool

    @property
    def name(self) -> str:
        """The name pages greet the viewer by."""
        return self.user.display_name or self.user.name


def nav_for(who: Viewer) -> list[tuple[str, str, str]]:
    """The navigation links this viewer sees."""
    return [(k, label, href) for k, label, href, seen_by in NAV if seen_by == "all" or who.admin]


def _form_token(request: Request) -> str | None:
    token = request.headers.get(CSRF_HEADER)
    if token:
        return token
    form = request.scope.get("townsquare.form")
    return form.get("csrf_token") if form is not None else None


async def read_form(request: Request) -> None:
    """Parse a form post once (before the sync dependencies), so the CSRF field can be read."""
    if request.method == "POST":
        content_type = request.headers.get("content-type", "")
        if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            request.scope["townsquare.form"] = await request.form()


def viewer(request: Request, db: Session, services: Services) -> Viewer:
    """The signed-in member of a page (login form with a 401 otherwise); checks the CSRF token
    of cookie-authenticated posts."""
    token = None if request.headers.get("authorization") else request.cookies.get(SESSION_COOKIE)
    try:
        user = authenticate_page(request, db)
    finally:
        db.commit()
    if user is None:
        raise LoginRequired()
    if (
        token is not None
        and request.method == "POST"
        and not csrf_matches(token, _form_token(request))
    ):
        raise Forbidden(
            "This form is out of date or did not come from townsquare (its CSRF token is missing "
            "or wrong). Reload the page and try again."
        )
    services.quotas.request(user.id, user.role)
    return Viewer(
        user=user,
        csrf=csrf_token(token) if token else None,
        model=services.text.model_id,
        creator=access.is_creator(user),
        admin=access.is_admin(user),
    )


def authenticate_page(request: Request, db: Session) -> User | None:
    """``authenticate`` without its API CSRF rule: pages check their own token (above)."""
    if request.headers.get("authorization"):
        return authenticate(request, db)
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    from townsquare.identity import user_for_session

    return user_for_session(db, token)


def _viewer_with_form(
    request: Request, db: DbDep, services: ServicesDep, form: Annotated[None, Depends(read_form)]
) -> Viewer:
    return viewer(request, db, services)


ViewerDep = Annotated[Viewer, Depends(_viewer_with_form)]


def render(
    request: Request,
    template: str,
    who: Viewer | None,
    active: str = "",
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    """A page (or fragment) with the layout's context."""
    return templates.TemplateResponse(
        request,
        template,
        {
            "viewer": who,
            "nav": nav_for(who) if who else [],
            "active": active,
            **context,
        },
        status_code=status_code,
    )


def login_page(request: Request, error: str | None = None, status_code: int = 200) -> HTMLResponse:
    """The login form; after logging in the member comes back to the page they asked for."""
    wanted = request.url.path if request.url.path not in {"/login", "/logout"} else "/"
    if request.url.query and request.method == "GET":
        wanted += "?" + request.url.query
    next_url = request.query_params.get("next") if request.url.path == "/login" else wanted
    token = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)
    response = render(
        request,
        "login.html",
        None,
        status_code=status_code,
        error=error,
        next=safe_next(next_url),
        login_csrf=token,
    )
    # the login form's CSRF token: a cookie the form must echo (a cross-site page can read
    # neither), so no other site can log a visitor in under its own key
    response.set_cookie(
        LOGIN_COOKIE,
        token,
        max_age=3600,
        httponly=True,
        samesite="lax",
        secure=secure_cookies(request),
    )
    return response


def secure_cookies(request: Request, settings: Settings | None = None) -> bool:
    """Whether login cookies carry ``Secure``: always when ``server.secure_cookies`` says so,
    else when the request came over HTTPS (behind a balancer, as one of
    ``server.trusted_proxies`` reports it)."""
    settings = settings or request.app.state.services.settings
    return settings.server.secure_cookies == "always" or request.url.scheme == "https"


LOGIN_COOKIE = "townsquare_login"


def safe_next(value: str | None) -> str:
    """A same-site path to go to after logging in (anything else: home)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return quote(value, safe="/?=&-_.~%")


def html_error(request: Request, status: int, message: str) -> HTMLResponse | None:
    """The HTML answer to an error on a page or an htmx fragment (None: answer with JSON)."""
    path = request.url.path
    if path.startswith(("/api/", "/v1/", "/static/", "/openapi")) or path in {
        "/healthz",
        "/readyz",
        "/metrics",
    }:
        return None
    if status == 401:
        return login_page(request, status_code=401)
    fragment = request.headers.get("hx-request") == "true"
    return templates.TemplateResponse(
        request,
        "fragments/error.html" if fragment else "error.html",
        {"viewer": None, "nav": [], "active": "", "status": status, "message": message},
        status_code=status,
    )
