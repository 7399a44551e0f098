"""The OpenAPI document: FastAPI's, plus what FastAPI cannot see.

- Every error status a route can really return, with the error body's schema (``Error`` on
  ``/api``, ``OpenAIError`` on ``/v1``), derived from the route's access rule, its path
  parameters, its method and whether it waits for a model.
- The request bodies of the ingestion routes, which read their body themselves (a JSON array or
  JSON Lines): one schema per kind of row, from the models in ``social/schemas.py``.

``tests/api/test_fuzz.py`` runs schemathesis over this document: a status or a body it does not
describe is a test failure.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field, create_model
from pydantic.json_schema import models_json_schema

from townsquare.social.ingest import KINDS
from townsquare.storage.social_tables import EXTERNAL_ID

# tags of routes that wait for a model or a bounded pool of model work
MODEL_TAGS = {
    "assistant",
    "openai",
    "search",
    "suggestions",
    "groups",
    "shops",
    "provenance",
    "imagine",
}

_DESCRIPTIONS = {
    "400": "The request is malformed (the message says what to fix).",
    "401": "No API key or session, or an unknown key.",
    "403": "The key's user may not do this (or a cookie write without the CSRF header).",
    "404": "Nothing with that id is visible to this user.",
    "409": "Another one is already in progress (e.g. a red-team run): wait for it to end.",
    "413": "The body is over a size limit (the message names the setting).",
    "422": "A field breaks a rule (the body names it).",
    "429": "The model's queue or a quota is full: retry after Retry-After seconds.",
    "502": "The model failed to give a usable answer.",
    "503": "The model or the database is unavailable or busy: retry shortly.",
}


class ErrorDetail(BaseModel):
    code: str = Field(description="A stable machine-readable code, e.g. `not_found`.")
    message: str = Field(description="What went wrong and what to do next.")
    field: str | None = Field(None, description="The field to fix, when there is one.")
    hazards: list[str] | None = Field(None, description="Hazard codes of a safety refusal.")
    rows: list[dict[str, Any]] | None = Field(None, description="The bad rows of a batch.")


class Error(BaseModel):
    """The error body of every ``/api`` route."""

    error: ErrorDetail


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    """The error body of the OpenAI-compatible ``/v1`` routes."""

    error: OpenAIErrorDetail


def row_model(kind_name: str) -> type[BaseModel]:
    """The schema of one ingestion row: the kind's model plus its ``external_id``."""
    kind = KINDS[kind_name]
    title = "".join(part.title() for part in kind.name.split("-")) + "Row"
    return create_model(
        title,
        __base__=kind.model,
        __config__=None,
        external_id=(str, Field(min_length=1, max_length=EXTERNAL_ID)),
    )


def _statuses(path: str, method: str, operation: dict[str, Any]) -> list[str]:
    access = operation.get("x-access", "authenticated")
    statuses = {"400", "422", "503"}
    if access != "public":
        statuses |= {"401", "403"}
    elif path in {"/healthz", "/readyz", "/metrics"}:
        statuses = {"401", "403", "503"}  # only when the operator closes them (health.public)
    if "{" in path or (path.startswith("/v1") and method == "post") or operation.get("x-names"):
        statuses.add("404")  # an unknown id (in the path or, x-names, the body), or model name
    if method in {"post", "put", "patch"}:
        statuses.add("413")
    if operation.get("x-conflict"):
        statuses.add("409")
    if MODEL_TAGS & set(operation.get("tags", [])):
        statuses |= {"429", "502"}
    return sorted(statuses)


def _ingestion_bodies(schema: dict[str, Any], components: dict[str, Any]) -> None:
    rows = {name: row_model(name) for name in KINDS}
    models: list[tuple[type[BaseModel], Literal["validation"]]] = [
        (model, "validation") for model in rows.values()
    ]
    _, defs = models_json_schema(models, ref_template="#/components/schemas/{model}")
    components.update(defs.get("$defs", {}))
    for name, kind in KINDS.items():
        row = {"$ref": f"#/components/schemas/{rows[name].__name__}"}
        single = schema["paths"].get(f"/api/{name}/{{external_id}}", {}).get("put")
        if single is not None:
            created = dict(single["responses"]["200"], description="Created.")
            single["responses"]["201"] = created
            single["requestBody"] = {
                "required": True,
                "description": f"One {kind.label}; external_id may be left out (the URL's).",
                "content": {"application/json": {"schema": row}},
            }
        batch = schema["paths"].get(f"/api/{name}:batch", {}).get("post")
        if batch is not None:
            batch["requestBody"] = {
                "required": True,
                "description": "A JSON array of rows, or JSON Lines (application/x-ndjson).",
                "content": {"application/json": {"schema": {"type": "array", "items": row}}},
            }


def install(app: FastAPI) -> None:
    """Replace ``app.openapi`` with the completed document (built once, then cached)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (Error, OpenAIError):
            _, defs = models_json_schema(
                [(model, "serialization")], ref_template="#/components/schemas/{model}"
            )
            components.update(defs.get("$defs", {}))
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        _ingestion_bodies(schema, components)
        for path, item in schema["paths"].items():
            body = "OpenAIError" if path.startswith("/v1") else "Error"
            for method, operation in item.items():
                responses = operation.setdefault("responses", {})
                for status in _statuses(path, method, operation):
                    responses[status] = {
                        "description": _DESCRIPTIONS[status],
                        "content": {
                            "application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}
                        },
                    }
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
