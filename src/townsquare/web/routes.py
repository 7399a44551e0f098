"""The web app: login and logout here; the members' pages in ``pages``, the admin pages in
``admin``. Pages render on the server (Jinja); htmx (vendored, no CDN) sends their actions and
swaps the fragments they answer with; the assistant chat and the group's live updates use a
little JavaScript of our own. The API docs page serves Swagger UI from the installed
``swagger-ui-bundle`` package, so it works offline and under the Content-Security-Policy."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

from townsquare.api.deps import SESSION_COOKIE, DbDep, ServicesDep
from townsquare.identity import csrf_matches, end_web_session, key_row, start_web_session
from townsquare.web import admin, pages
from townsquare.web.common import (
    HERE,
    LOGIN_COOKIE,
    LoginRequired,
    html_error,
    login_page,
    safe_next,
    secure_cookies,
    templates,
)

router = APIRouter(include_in_schema=False)


@router.get("/login", openapi_extra={"x-access": "public"})
def login_form(request: Request) -> HTMLResponse:
    """The login form."""
    return login_page(request)


@router.post("/login", response_model=None, openapi_extra={"x-access": "public"})
def login(
    request: Request,
    key: Annotated[str, Form()],
    db: DbDep,
    services: ServicesDep,
    csrf_token: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/",
) -> Response:
    """Exchange an API key for a web session cookie; back to the page asked for."""
    expected = request.cookies.get(LOGIN_COOKIE)
    if not expected or not csrf_matches_login(expected, csrf_token):
        return login_page(
            request,
            "This login form is out of date (or came from another site). Try again.",
            status_code=403,
        )
    row = key_row(db, key.strip())
    if row is None:
        return login_page(
            request,
            "That key is not valid. Paste the key `make run` printed, or ask an admin "
            "for one (`townsquare users create NAME`).",
            status_code=401,
        )
    days = services.settings.server.session_days
    token = start_web_session(db, row, days=days)
    db.commit()
    response = RedirectResponse(safe_next(next), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=days * 86400,
        httponly=True,
        samesite="lax",
        secure=secure_cookies(request, services.settings),
    )
    response.delete_cookie(LOGIN_COOKIE)
    return response


def csrf_matches_login(expected: str, sent: str) -> bool:
    """The login form's token is the random value of its cookie (double submit)."""
    import hmac

    return bool(sent) and hmac.compare_digest(expected, sent)


@router.post("/logout", openapi_extra={"x-access": "public"})
def logout(
    request: Request, db: DbDep, csrf_token: Annotated[str, Form()] = ""
) -> RedirectResponse:
    """End the web session and clear its cookie (a forged logout is ignored)."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token or not csrf_matches(token, csrf_token):
        return RedirectResponse("/", status_code=303)
    end_web_session(db, token)
    db.commit()
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response


@router.get("/docs", openapi_extra={"x-access": "public"})
def api_docs(request: Request) -> HTMLResponse:
    """The OpenAPI page (Swagger UI), served from this server: no CDN, no inline script."""
    return templates.TemplateResponse(request, "api_docs.html", {})


def mount(app: FastAPI) -> None:
    """Add the web pages, their static files and their HTML error pages to ``app``."""
    app.include_router(router)
    app.include_router(pages.router)
    app.include_router(admin.router)
    # the more specific mount first: /static would answer for it otherwise
    app.mount("/static/swagger-ui", StaticFiles(directory=str(swagger_ui_path)), name="swagger")
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.state.html_error = html_error

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: LoginRequired) -> HTMLResponse:
        return login_page(request, status_code=401)
