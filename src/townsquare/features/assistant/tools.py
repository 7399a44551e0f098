"""Tools the assistant can use while answering.

A tool decides from the member's message whether it applies, runs, and returns cards (shown
with the reply) and a note for the model (so the answer can refer to them). The bundled 135M
model cannot choose tools itself, so ``wants`` is a cheap intent check; a model with function
calling can drive the same ``run`` later.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar, Protocol

import anyio
from sqlalchemy.orm import Session, sessionmaker

from townsquare.backends.base import EmbeddingBackend
from townsquare.features.reels.service import recommend_reels
from townsquare.storage.tables import User
from townsquare.storage.vectors import VectorIndex


@dataclass
class ToolResult:
    tool: str
    cards: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""


class Tool(Protocol):
    """Something the assistant can do with the town's content before it replies."""

    name: ClassVar[str]

    def wants(self, message: str) -> bool:
        """Whether this tool should run for the member's ``message`` (cheap: no I/O)."""
        ...

    async def run(self, db: Session, user: User, message: str) -> ToolResult:
        """Run the tool for ``user`` and return what the reply should know and show."""
        ...


WATCHABLE = re.compile(
    r"\b(watch|watching|video|videos|reel|reels|clip|clips|film|show me|something to see)\b",
    re.IGNORECASE,
)


class RecommendReels:
    """Suggests reels when the member asks for something to watch."""

    name: ClassVar[str] = "recommend_reels"

    def __init__(self, embedder: EmbeddingBackend, vectors: VectorIndex, *, limit: int = 3) -> None:
        self.embedder, self.vectors, self.limit = embedder, vectors, limit

    def wants(self, message: str) -> bool:
        """True when the message asks for something to watch."""
        return bool(WATCHABLE.search(message))

    async def run(self, db: Session, user: User, message: str) -> ToolResult:
        """Reels for the message and the member's interests, as cards and a note for the model."""
        found = await anyio.to_thread.run_sync(
            partial(
                recommend_reels,
                db,
                user,
                message,
                limit=self.limit,
                embedder=self.embedder,
                vectors=self.vectors,
            )
        )
        cards = [{"type": "reel", **card.model_dump()} for card in found.data]
        if not cards:
            return ToolResult(self.name)
        listing = "\n".join(f'- "{c["caption"]}" by {c["creator"]}' for c in cards)
        return ToolResult(
            self.name,
            cards,
            f"The member will see these reels below your answer:\n{listing}\n"
            "Introduce them in one short sentence.",
        )


async def run_tools(
    tools: list[Any], sessions: sessionmaker[Session], user_id: int, message: str
) -> list[ToolResult]:
    """Run every tool that wants ``message``, each with its own short-lived session."""
    results = []
    for tool in tools:
        if tool.wants(message):
            with sessions() as db:
                user = await anyio.to_thread.run_sync(db.get, User, user_id)
                assert user is not None
                results.append(await tool.run(db, user, message))
                await anyio.to_thread.run_sync(db.close)
    return results
