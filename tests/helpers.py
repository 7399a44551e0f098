"""Small helpers shared by tests."""

from __future__ import annotations

import json
from typing import Any


def sse_data(body: str) -> list[Any]:
    """The ``data:`` payloads of an SSE body, JSON-decoded ('[DONE]' kept as a string)."""
    payloads: list[Any] = []
    for event in body.replace("\r\n", "\n").split("\n\n"):
        for line in event.split("\n"):
            if line.startswith("data:"):
                raw = line[5:].strip()
                payloads.append(raw if raw == "[DONE]" else json.loads(raw))
    return payloads


def streamed_text(payloads: list[Any]) -> str:
    return "".join(
        p["choices"][0]["delta"].get("content", "")
        for p in payloads
        if isinstance(p, dict) and p.get("choices")
    )
