"""The login page and the chat page. The page's script calls the same /api the host apps use,
authenticated by the session cookie (plus the CSRF header on writes)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from townsquare.api.deps import SESSION_COOKIE, DbDep, ServicesDep
from townsquare.identity import end_web_session, start_web_session, user_for_key, user_for_session

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter(include_in_schema=False)


@router.get("/login", openapi_extra={"x-access": "public"})
def login_page(request: Request) -> HTMLResponse:
    """The login form."""
    return templates.TemplateResponse(request, "login.html", {"error": None})


@router.post("/login", response_model=None, openapi_extra={"x-access": "public"})
def login(
    request: Request, key: Annotated[str, Form()], db: DbDep, services: ServicesDep
) -> Response:
    """Exchange an API key for a web session cookie (and a CSRF token for writes)."""
    user = user_for_key(db, key.strip())
    if user is None:
        return templates.TemplateResponse(
            request,
            "login.html",
            {
                "error": "That key is not valid. Paste the key `make run` printed, or ask an admin "
                "for one (`townsquare users create NAME`)."
            },
            status_code=401,
        )
    days = services.settings.server.session_days
    token = start_web_session(db, user, days=days)
    db.commit()
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=days * 86400,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout", openapi_extra={"x-access": "public"})
def logout(request: Request, db: DbDep) -> RedirectResponse:
    """End the web session and clear its cookie."""
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        end_web_session(db, token)
        db.commit()
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response


@router.get("/", response_model=None, openapi_extra={"x-access": "public"})
def chat_page(request: Request, db: DbDep, services: ServicesDep) -> Response:
    """The chat page for a signed-in member; others are sent to the login form."""
    token = request.cookies.get(SESSION_COOKIE)
    user = user_for_session(db, token) if token else None
    if user is None:
        return RedirectResponse("/login", status_code=303)
    return templates.TemplateResponse(
        request, "chat.html", {"user": user, "model": services.text.model_id}
    )


def mount(app: FastAPI) -> None:
    """Add the web pages and their static files to ``app``."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
