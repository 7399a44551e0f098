"""Builds a text backend from its settings string.

``llamacpp:bundled`` · ``llamacpp:/path/to/model.gguf`` · ``openai:http://host:port/v1#model`` ·
``fake``.
"""

from __future__ import annotations

from pathlib import Path

from townsquare.backends.base import EmbeddingBackend, TextBackend
from townsquare.errors import InvalidRequest
from townsquare.settings import EmbedSettings, TextSettings

SPEC_HELP = (
    "Use 'llamacpp:bundled', 'llamacpp:/path/to/model.gguf', "
    "'openai:http://host:port/v1#model-name' or 'fake'."
)


def parse_spec(spec: str) -> tuple[str, str]:
    """Split ``kind:target``; ``fake`` has no target."""
    kind, _, target = spec.partition(":")
    if kind == "fake" and not target:
        return kind, ""
    if kind not in {"llamacpp", "openai"} or not target:
        raise InvalidRequest(f"Unknown text backend '{spec}'. {SPEC_HELP}")
    if kind == "openai" and "#" not in target:
        raise InvalidRequest(
            f"The OpenAI-compatible backend '{spec}' names no model. Add it after '#', "
            "e.g. 'openai:http://localhost:8001/v1#Qwen/Qwen2.5-7B-Instruct'."
        )
    return kind, target


def model_path_for(target: str) -> Path:
    """The GGUF file a ``llamacpp:`` spec points at."""
    from townsquare.backends.llamacpp import bundled_model_path

    return bundled_model_path() if target == "bundled" else Path(target).expanduser()


def build_text_backend(settings: TextSettings) -> TextBackend:
    """Construct (and, for local models, load) the configured text backend."""
    kind, target = parse_spec(settings.backend)
    if kind == "fake":
        from townsquare.backends.fake import FakeText

        return FakeText(model_id=settings.model_alias or "fake", context_window=settings.n_ctx)
    if kind == "openai":
        from townsquare.backends.openai_compat import OpenAICompatText

        base_url, _, model = target.partition("#")
        return OpenAICompatText(
            base_url,
            model,
            api_key=settings.api_key.get_secret_value() if settings.api_key else None,
            context_window=settings.n_ctx,
            timeout_s=settings.request_timeout_s,
            model_alias=settings.model_alias,
        )
    from townsquare.backends.llamacpp import LlamaCppText

    return LlamaCppText(
        model_path_for(target),
        n_ctx=settings.n_ctx,
        parallel=settings.parallel,
        n_batch=settings.n_batch,
        weights=settings.weights,
        unified_kv=settings.unified_kv,
        nice=settings.nice,
        n_threads=settings.n_threads,
        flash_attn=settings.flash_attn,
        max_queue=settings.max_queue,
        retry_after_s=settings.retry_after_s,
        model_alias=settings.model_alias,
        seed=settings.seed,
    )


def build_embedding_backend(settings: EmbedSettings) -> EmbeddingBackend:
    """Construct (and load) the configured embedding backend."""
    kind, _, target = settings.backend.partition(":")
    if kind == "fake" and not target:
        from townsquare.backends.fake import FakeEmbeddings

        return FakeEmbeddings()
    if kind == "sentence" and target:
        from townsquare.backends.sentence_embed import SentenceEmbeddings, bundled_embedding_path

        path = bundled_embedding_path() if target == "bundled" else Path(target).expanduser()
        return SentenceEmbeddings(path, batch_size=settings.batch_size)
    if kind == "openai" and "#" in target:
        from townsquare.backends.openai_compat import OpenAICompatEmbeddings

        base_url, _, model = target.partition("#")
        return OpenAICompatEmbeddings(
            base_url,
            model,
            dimensions=settings.dimensions,
            api_key=settings.api_key.get_secret_value() if settings.api_key else None,
            batch_size=settings.batch_size,
        )
    raise InvalidRequest(
        f"Unknown embedding backend '{settings.backend}'. Use 'sentence:bundled', "
        "'sentence:/path/to/model', 'openai:http://host:port/v1#model-name' or 'fake'."
    )
