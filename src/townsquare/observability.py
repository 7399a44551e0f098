"""Structured logs with request ids, and Prometheus metrics (one registry per app)."""

from __future__ import annotations

import json
import logging
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from typing_extensions import override

request_id_var: ContextVar[str] = ContextVar("request_id", default="-")

# uvicorn adds ``color_message``: the message again, with terminal colour codes
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message"}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id and any extras."""

    @override
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": _ANSI.sub("", record.getMessage()),
            "request_id": request_id_var.get(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


class TextFormatter(logging.Formatter):
    @override
    def format(self, record: logging.LogRecord) -> str:
        record.request_id = request_id_var.get()
        return super().format(record)


def configure_logging(level: str, *, as_json: bool) -> None:
    """Send townsquare's and uvicorn's logs to stderr in one format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if as_json
        else TextFormatter("%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s")
    )
    for name in ("townsquare", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(level)
        logger.propagate = False
    # uvicorn's access log duplicates ours (which carries the request id).
    logging.getLogger("uvicorn.access").disabled = True


class Metrics:
    """The app's Prometheus metrics, in a registry of its own (several apps can share a process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "townsquare_http_requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "townsquare_http_request_duration_seconds",
            "Time to the end of the response, by route template.",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.tokens = Counter(
            "townsquare_tokens",
            "Tokens read (prompt) and generated (completion), by model.",
            ["model", "direction"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "townsquare_model_queue_depth",
            "Requests admitted to the local model and not finished (running + waiting).",
            registry=self.registry,
        )
        self.active_sequences = Gauge(
            "townsquare_model_active_sequences",
            "Generations the local model is decoding together right now (continuous batching).",
            registry=self.registry,
        )
        self.prompt_tokens_reused = Gauge(
            "townsquare_model_prompt_tokens_reused",
            "Prompt tokens whose KV cache was reused instead of read again (a cached prefix), "
            "since start.",
            registry=self.registry,
        )
        self.embed_queue_depth = Gauge(
            "townsquare_embed_queue_depth",
            "Texts admitted to the embedding model and not yet embedded.",
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "townsquare_model_queue_wait_seconds",
            "Time a request waited for the local model before it started.",
            buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.busy_rejections = Counter(
            "townsquare_model_busy_rejections",
            "Requests refused with 429 because the model queue was full.",
            registry=self.registry,
        )
        self.tool_runs = Counter(
            "townsquare_assistant_tool_runs",
            "Tools the assistant ran, by tool and outcome (ok, empty, error).",
            ["tool", "outcome"],
            registry=self.registry,
        )
        self.text_model_ready = Gauge(
            "townsquare_text_model_ready",
            "1 when the text model answered the last readiness check (/readyz), else 0.",
            registry=self.registry,
        )
        self.mentions_waiting = Gauge(
            "townsquare_assistant_mentions_waiting",
            "Group @-mentions queued and not yet answered.",
            registry=self.registry,
        )
        self.webhook_deliveries = Counter(
            "townsquare_webhook_deliveries",
            "Webhook delivery attempts by outcome (delivered, retry, dead).",
            ["outcome"],
            registry=self.registry,
        )
        self.pool_active = Gauge(
            "townsquare_pool_generations_active",
            "Generations admitted to each model pool and not finished (running or waiting).",
            ["pool"],
            registry=self.registry,
        )
        self.pool_generations = Counter(
            "townsquare_pool_generations",
            "Generations per model pool by outcome (admitted, busy: refused with 429).",
            ["pool", "outcome"],
            registry=self.registry,
        )
        self.images = Counter(
            "townsquare_images",
            "Image requests by source (imagine, reimagine, assistant, v1, cli) and outcome "
            "(made, or the error's name: ContentBlocked, Busy, QuotaExceeded...).",
            ["source", "outcome"],
            registry=self.registry,
        )
