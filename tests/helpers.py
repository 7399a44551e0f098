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


class SqlWork:
    """Counts what requests ask of SQLite: statements run and virtual-machine steps (a
    measure of rows visited that does not depend on timing). Attach before the work; the
    engine's pooled connections are replaced so every one carries the counter."""

    STEP = 100  # the progress handler fires every STEP VM instructions

    def __init__(self, engine: Any) -> None:
        from sqlalchemy import event

        self.statements: list[str] = []
        self.vm_steps = 0
        engine.dispose()

        @event.listens_for(engine, "connect")
        def _count_steps(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.set_progress_handler(self._step, self.STEP)

        @event.listens_for(engine, "before_cursor_execute")
        def _count_statements(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            self.statements.append(statement)

    def _step(self) -> int:
        self.vm_steps += self.STEP
        return 0  # go on

    def reset(self) -> None:
        self.statements.clear()
        self.vm_steps = 0
