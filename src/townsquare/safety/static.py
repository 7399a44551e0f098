"""Static word embeddings for moderation's first pass: WordLlama's 256-dimension token table
(MIT; the weights ship inside the ``wordllama`` wheel, nothing is downloaded). A text's vector
is a weighted average of its tokens' rows: about 0.1 ms a message on one core, against about
13 ms for MiniLM, so every message gets a first look and only the uncertain ones a second.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from townsquare.errors import BackendUnavailable

_LOCK = threading.Lock()
_LOADED: dict[str, Any] = {}


class StaticEmbeddings:
    """WordLlama ``l2_supercat`` at 256 dimensions, loaded once per process."""

    model_id: ClassVar[str] = "wordllama-l2_supercat-256"
    dimensions: ClassVar[int] = 256

    def __init__(self) -> None:
        with _LOCK:
            if "model" not in _LOADED:
                _LOADED["model"] = _load()
        self._model = _LOADED["model"]

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """(len(texts), 256) unit vectors."""
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        raw = np.asarray(self._model.embed(list(texts), norm=False), dtype=np.float32)
        raw = raw.reshape(len(texts), self.dimensions)  # (n, 256)
        # normalised here: a text with no known token (empty, only emoji) is the zero vector,
        # not the NaNs of 0 / 0
        norms = np.linalg.norm(raw, axis=1, keepdims=True)
        return np.asarray(raw / np.maximum(norms, 1e-12), dtype=np.float32)


def _load() -> Any:
    try:
        import wordllama
        from wordllama import WordLlama
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise BackendUnavailable(
            "wordllama is not installed (moderation's first pass). Run `make run` or "
            "`pip install wordllama`."
        ) from exc
    # the weights and tokenizer config are inside the package: never reach for a hub
    return WordLlama.load(
        config="l2_supercat",
        dim=256,
        cache_dir=Path(wordllama.__file__).parent,
        disable_download=True,
    )
