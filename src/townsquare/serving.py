"""A model server: one text backend behind OpenAI's chat route, with townsquare's own /v1
handling (the same checks, tool calling, JSON and SSE) and no database. A town uses it through
its ``openai:`` backend (``text.backend`` or a pool in ``routing.pools``); safety, quotas and
grounding stay in the town.

Two ways to run it:

- ``ChatModel``, a Ray Serve deployment (``townsquare.serving:app_builder``,
  deploy/ray/serve.yaml): model replicas on a Ray cluster with Serve's autoscaling (replicas
  follow the requests in flight). On CPU it serves the bundled GGUF through llama.cpp; on GPU,
  vLLM's own OpenAI server is the better engine (docs/scaling.md has the config);
- ``create_model_app``: the same app for any ASGI server.
"""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import FastAPI, Request

from townsquare.api import errors
from townsquare.api.openai import ChatCompletionRequest, chat_answer
from townsquare.backends import tool_calls
from townsquare.backends.base import TextBackend
from townsquare.errors import Unauthorized
from townsquare.settings import Settings


def create_model_app(settings: Settings, backend: TextBackend, api_key: str | None) -> FastAPI:
    """``GET /v1/models`` and ``POST /v1/chat/completions`` for ``backend``; with ``api_key``,
    requests must send it as a bearer token."""
    app = FastAPI(title="townsquare model server", docs_url=None, redoc_url=None)
    errors.install(app)

    def check(request: Request) -> None:
        if api_key is None:
            return
        sent = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(sent.encode(), api_key.encode()):
            raise Unauthorized("Send this model server's key as 'Authorization: Bearer <key>'.")

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        check(request)
        entry = {"id": backend.model_id, "object": "model", "created": 0, "owned_by": "townsquare"}
        return {"object": "list", "data": [entry]}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest, request: Request) -> Any:
        check(request)
        return await chat_answer(
            body,
            request,
            settings,
            backend,
            lambda messages, options: tool_calls.complete(backend, messages, options),
            lambda messages, options: tool_calls.stream(backend, messages, options),
        )

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def _deployment() -> Any:
    from ray import serve

    @serve.deployment(name="ChatModel")
    @serve.ingress()
    class ChatModel:
        """One model replica: loads the backend once and answers OpenAI chat requests."""

        def __init__(self, settings: dict[str, Any], api_key: str | None) -> None:
            import ray

            from townsquare.backends.registry import build_text_backend

            town = Settings(**settings)
            if town.text.n_threads is None:
                # as many threads as the CPUs this replica reserved: llama.cpp would otherwise
                # take every core of the node and fight the replicas beside it
                cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)  # type: ignore[no-untyped-call]
                town.text.n_threads = max(1, int(cpus))
            self.threads = town.text.n_threads
            self.model_app = create_model_app(town, build_text_backend(town.text), api_key)

        def __serve_build_asgi_app__(self) -> FastAPI:
            return self.model_app

    return ChatModel


def app_builder(args: dict[str, Any]) -> Any:
    """The Ray Serve application (``serve run townsquare.serving:app_builder``, or the import
    path in deploy/ray/serve.yaml). ``args``: ``settings`` (townsquare settings for the replica,
    e.g. ``{"text": {"backend": "llamacpp:bundled", "parallel": 4}}``), ``api_key``,
    ``autoscaling_config`` (Serve's: min_replicas, max_replicas,
    target_ongoing_requests...), ``ray_actor_options`` (e.g. ``{"num_cpus": 2}`` or
    ``{"num_gpus": 1}``)."""
    options: dict[str, Any] = {}
    if "autoscaling_config" in args:
        options["autoscaling_config"] = args["autoscaling_config"]
    else:
        options["num_replicas"] = int(args.get("num_replicas", 1))
    if "ray_actor_options" in args:
        options["ray_actor_options"] = args["ray_actor_options"]
    if "max_ongoing_requests" in args:
        options["max_ongoing_requests"] = int(args["max_ongoing_requests"])
    return _deployment().options(**options).bind(args.get("settings", {}), args.get("api_key"))
