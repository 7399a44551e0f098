"""Moderators: score texts against the hazard codes (``safety/taxonomy.py``).

A moderator answers, for each text, a score in [0, 1] per code it knows. Policies
(``safety/policy.py``) turn scores into block / warn / allow per group.

- ``EmbeddedModerator`` (default, offline, CPU): rules (``safety/rules.py``), a first pass
  over static embeddings, and a second look over the bundled all-MiniLM-L6-v2 for the texts
  the first pass is unsure of (trained by ``bench/safety_train.py``; 0.5 is the tuned operating
  point), plus alt-profanity-check for X5.
- ``LlamaGuardModerator``: any guard model behind an OpenAI-compatible chat URL that answers
  Llama Guard's ``safe`` / ``unsafe\\nS2,S10``.
- ``OpenAIModerator``: an OpenAI-shaped ``/v1/moderations`` endpoint (OpenAI itself, or another
  townsquare).
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
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
from townsquare.safety import rules
from townsquare.safety.rules import attack_rules
from townsquare.safety.static import StaticEmbeddings
from townsquare.safety.taxonomy import HAZARDS, codes_from_openai, parse_llama_guard
from townsquare.settings import SafetySettings

log = logging.getLogger("townsquare.safety")

Role = Literal["user", "assistant"]
Scores = dict[str, float]


class Moderator(ABC):
    """Scores texts against the hazard codes."""

    name: ClassVar[str]

    def s11_bar(self) -> float:
        """The S11 score on the member's newest turn from which they get the support text (a
        moderator's own calibration; safety.s11_support_threshold overrides it)."""
        return 0.5

    @abstractmethod
    def score(self, texts: Sequence[str], *, role: Role = "user") -> list[Scores]:
        """One ``{code: score}`` per text (codes missing from it scored 0). ``role`` says whether
        the texts are requests (``user``) or replies (``assistant``)."""

    def close(self) -> None:
        """Release connections or models."""


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


class ModerationModel:
    """The trained model (``safety/data/moderation_model.npz``, written by
    bench/safety_train.py): a first pass over static embeddings, a gate over MiniLM + static
    embeddings (harmful or not; 0.5 is its operating point) and a code head (which hazard)."""

    def __init__(self, data: Any) -> None:
        def array(name: str) -> npt.NDArray[np.float64]:
            return np.asarray(data[name], dtype=np.float64)

        self.first = (array("first_w1"), array("first_b1"), array("first_w2"), array("first_b2"))
        self.first_cut = float(data["first_cut"])
        self.gate = (array("gate_w1"), array("gate_b1"), array("gate_w2"), array("gate_b2"))
        self.gate_shift = float(data["gate_shift"])
        # replies are judged at a stricter point: refusing what members read costs more
        self.reply_shift = float(data["reply_shift"])
        self.s11_bar = float(data["s11_bar"])  # tuned on the dev split (bench/safety_train.py)
        self.codes: list[str] = [str(c) for c in data["codes"]]
        self.codes_w = array("codes_w")  # (codes, 640)
        self.codes_b = array("codes_b")
        self.encoder = str(data["encoder"])
        self.static = str(data["static"])

    @classmethod
    @cache
    def bundled(cls) -> ModerationModel:
        """The model that ships with townsquare."""
        path = resources.files("townsquare.safety").joinpath("data", "moderation_model.npz")
        with resources.as_file(path) as file, np.load(file) as data:
            return cls(data)

    @staticmethod
    def _mlp(
        layers: tuple[npt.NDArray[np.float64], ...], x: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.float64]:
        w1, b1, w2, b2 = layers
        hidden = np.maximum(x @ w1 + b1, 0.0)  # (n, hidden), ReLU
        return np.asarray((hidden @ w2 + b2)[:, 0])  # (n,) logits

    def first_pass(self, static: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """(n,) probability that a text is harmful, from its static vector alone."""
        return _sigmoid(self._mlp(self.first, static.astype(np.float64)))

    def second_look(
        self, both: npt.NDArray[np.float32], *, replies: bool = False
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """(n,) harm scores (0.5 = the operating point for requests, or for ``replies``) and
        (n, codes) code probabilities."""
        x = both.astype(np.float64)
        shift = self.reply_shift if replies else self.gate_shift
        harm = _sigmoid(self._mlp(self.gate, x) - shift)
        logits = x @ self.codes_w.T + self.codes_b
        logits -= logits.max(axis=1, keepdims=True)
        probabilities = np.exp(logits)
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        return harm, probabilities


@cache
def _blas() -> Any:
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def one_blas_thread() -> Any:
    """numpy's BLAS on one thread while a batch is scored: on its own it starts threads for
    the 640 x 1280 gate, and their spinning starves MiniLM's (torch's own) threads
    (bench/RESULTS.md: ``second_look_every_text`` against ``..._blas_threads``)."""
    return _blas().limit(limits=1, user_api="blas")


def _sigmoid(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(x, -50, 50))))


_ENCODER_LOCK = threading.Lock()
_ENCODERS: dict[str, SentenceEmbeddings] = {}


def _encoder() -> SentenceEmbeddings:
    """The bundled MiniLM, loaded once per process (the model was trained on its vectors)."""
    with _ENCODER_LOCK:
        if "bundled" not in _ENCODERS:
            _ENCODERS["bundled"] = SentenceEmbeddings(bundled_embedding_path())
        return _ENCODERS["bundled"]


class EmbeddedModerator(Moderator):
    """Offline moderation in three steps (docs/safety.md):

    1. **rules** (``safety/rules.py``): short, precise patterns for what a sentence classifier
       is the wrong tool for (explosives, CBRN, sexual crimes, minors, self-harm, personal data,
       gore, prompt attacks); a hit scores 0.99;
    2. **first pass**: static embeddings (0.1 ms); a text the model is sure is benign, with no
       rule hit, stops here;
    3. **second look**: MiniLM + static embeddings; the gate says how harmful, the code head
       which code. Code scores are the gate's score times each code's probability relative to
       the likeliest code's.

    Profanity (X5) is alt-profanity-check's. Scores are cached per text (``cache_size``), so a
    conversation's earlier turns cost nothing when they are checked again.
    """

    name: ClassVar[str] = "embedded"
    RULE_SCORE: ClassVar[float] = 0.99
    # The learnt X3 knows jailbreak templates, which are long; on a short message its score
    # says little. Short attacks are the rules' job.
    MIN_LEARNT_ATTACK_CHARS: ClassVar[int] = 120

    def __init__(
        self,
        max_chars: int = 2000,
        *,
        encoder: EmbeddingBackend | None = None,
        cascade: bool = True,
        cache_size: int = 4096,
    ) -> None:
        """``encoder``: an embedding backend already loaded in this process (search's); used
        when it is the model the gate was trained on, so the model is not loaded twice.
        ``cascade=False`` gives every text the second look."""
        self.max_chars = max_chars
        self.cascade = cascade
        self.cache_size = cache_size
        self._given = encoder
        self._loaded: (
            tuple[ModerationModel, EmbeddingBackend, StaticEmbeddings, Profanity] | None
        ) = None
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, str], Scores] = OrderedDict()
        self._cache_lock = threading.Lock()
        self.second_looks = 0  # texts that needed MiniLM (for the benchmark and metrics)

    @override
    def s11_bar(self) -> float:
        return ModerationModel.bundled().s11_bar

    def _load(self) -> tuple[ModerationModel, EmbeddingBackend, StaticEmbeddings, Profanity]:
        with self._lock:
            if self._loaded is None:
                model = ModerationModel.bundled()
                same = self._given is not None and self._given.model_id == model.encoder
                encoder = self._given if same and self._given is not None else _encoder()
                self._loaded = (model, encoder, StaticEmbeddings(), Profanity())
            return self._loaded

    def warm(self) -> None:
        """Load the models now (the server does this at start-up)."""
        _, encoder, static, profanity = self._load()
        encoder.embed_sync(["warm up"])
        static.embed(["warm up"])
        profanity.score(["warm up"])

    @override
    def score(self, texts: Sequence[str], *, role: Role = "user") -> list[Scores]:
        if not texts:
            return []
        results: list[Scores | None] = []
        with self._cache_lock:
            for text in texts:
                hit = self._cache.get((role, text))
                if hit is not None:
                    self._cache.move_to_end((role, text))
                results.append(None if hit is None else dict(hit))
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:
            fresh = self._score([texts[i] for i in missing], role)
            with self._cache_lock:
                for i, scores in zip(missing, fresh, strict=True):
                    results[i] = scores
                    self._cache[(role, texts[i])] = dict(scores)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return [r if r is not None else {} for r in results]

    def score_thorough(self, texts: Sequence[str], *, role: Role = "user") -> list[Scores]:
        """``score`` with every text given the second look (no cascade, no cache): for text
        that will become training data."""
        return self._score(texts, role, thorough=True)

    def _clip(self, text: str) -> str:
        # long texts: the start and the end carry the request (the encoder reads 256 tokens)
        half = self.max_chars // 2
        return text if len(text) <= self.max_chars else text[:half] + " " + text[-half:]

    def _score(self, texts: Sequence[str], role: Role, *, thorough: bool = False) -> list[Scores]:
        with one_blas_thread():
            return self._score_batch(texts, role, thorough=thorough)

    def _score_batch(self, texts: Sequence[str], role: Role, *, thorough: bool) -> list[Scores]:
        model, encoder, static_model, profanity = self._load()
        clipped = [self._clip(t) for t in texts]
        static = static_model.embed(clipped)
        hits = [rules.request_codes(t) if role == "user" else {} for t in texts]
        attacks = [attack_rules(t, role=role) for t in texts]
        sure = model.first_pass(static) < model.first_cut
        skip = self.cascade and not thorough
        look = [i for i in range(len(texts)) if not (skip and sure[i] and not hits[i])]
        harm = np.zeros(len(texts))
        probabilities = np.zeros((len(texts), len(model.codes)))
        if look:
            self.second_looks += len(look)
            dense = encoder.embed_sync([clipped[i] for i in look])
            both = np.hstack([dense, static[look]]).astype(np.float32)
            harm[look], probabilities[look] = model.second_look(both, replies=role == "assistant")
        profane = profanity.score(list(texts))
        results: list[Scores] = []
        for row, text in enumerate(texts):
            scores: Scores = {}
            top = float(probabilities[row].max())
            if harm[row] > 0 and top > 0:
                for i, code in enumerate(model.codes):
                    scores[code] = float(harm[row] * probabilities[row, i] / top)
            if len(text) < self.MIN_LEARNT_ATTACK_CHARS or role == "assistant":
                scores.pop("X3", None)  # short attacks and reply markup: the rules' job
            if role == "user" and rules.contentless(text):
                # "Tell me more": nothing to judge alone (it is read with the turn before
                # it); S11 stays, a member's words are never kept from the support text
                scores = {c: v for c, v in scores.items() if c == "S11"}
            for code in hits[row]:
                scores[code] = max(scores.get(code, 0.0), self.RULE_SCORE)
            if attacks[row]:
                scores["X3"] = max(scores.get("X3", 0.0), self.RULE_SCORE)
            scores["X5"] = float(profane[row])
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
    return EmbeddedModerator(
        encoder=encoder, cascade=settings.cascade, cache_size=settings.score_cache_size
    )
