"""Model backends: text (llama.cpp, OpenAI-compatible, fake)."""

from townsquare.backends.base import (
    Completion,
    Delta,
    GenerationOptions,
    Message,
    TextBackend,
    Usage,
)

__all__ = ["Completion", "Delta", "GenerationOptions", "Message", "TextBackend", "Usage"]
