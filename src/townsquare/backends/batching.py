"""Continuous batching over one llama.cpp context: several generations share each decode step.

One engine thread owns the context (llama.cpp aborts when two threads use one). Each step it
builds one ``llama_batch`` holding the next token of every sequence that is generating and a
bounded chunk of the prompt of every sequence that is being read in, calls ``llama_decode``
once, and samples each sequence at its own batch index with its own sampler chain (sampling
settings, seed and JSON grammar are per request). A request joins at the next step after it
arrives and leaves the step it finishes, so a short answer never waits for a long one.

Slots keep the tokens their KV cache holds after a request ends. A new request takes the free
slot whose cache shares the longest prefix with its prompt (the same system prompt, the same
conversation one turn later) and only reads in the rest. With a unified KV cache the prefix can
also be copied from any other slot (``llama_memory_seq_cp``), so one system prompt read in once
serves every sequence.

Requests beyond the slots wait in FIFO order; beyond ``max_queue`` waiting, ``submit`` raises
``Busy``. A consumer that leaves (client disconnect) sets ``cancelled``; the engine drops the
request at the next step, whether it was running or still waiting, and frees its admission.
"""

from __future__ import annotations

import codecs
import ctypes
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from townsquare.admission import Admission
from townsquare.backends.base import Delta, TokenLogprob, Usage
from townsquare.errors import BackendError, BackendUnavailable, Busy

log = logging.getLogger("townsquare.engine")


@dataclass(eq=False)
class Request:
    """One generation. ``emit`` hands events (``Delta`` or an exception) to the consumer and
    must be safe to call from the engine thread."""

    prompt: list[int]
    max_tokens: int
    stops: tuple[str, ...]
    sampler: Any  # llama_cpp._internals.LlamaSampler, owned by the engine once submitted
    emit: Callable[[object], None]
    admitted_at: float = field(default_factory=time.perf_counter)
    cancelled: bool = False
    logprobs: int | None = None  # None: none; n: each token's logprob and its n best rivals


@dataclass(eq=False)
class _Slot:
    seq_id: int
    cached: list[int] = field(default_factory=list)  # tokens whose K/V this sequence holds
    request: Request | None = None
    pending: list[int] = field(default_factory=list)  # tokens still to feed
    i_batch: int = -1  # row of this step's batch whose logits belong to this slot
    generated: int = 0
    text: str = ""  # generated text not yet handed on (may be the start of a stop string)
    decoder: Any = None
    last_used: float = 0.0
    logprobs: list[TokenLogprob] = field(default_factory=list)  # not yet handed on


def common_prefix(a: list[int], b: list[int]) -> int:
    """The length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many characters at the end of ``text`` could be the start of a stop string."""
    keep = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), keep, -1):
            if text.endswith(stop[:n]):
                keep = n
                break
    return keep


class BatchEngine:
    """The engine thread and its slot table (see the module docstring).

    ``llama`` is the ``llama_cpp`` module; ``model`` and ``ctx`` are llama-cpp-python's
    ``LlamaModel`` and ``LlamaContext`` built with ``n_seq_max == parallel``.
    """

    def __init__(
        self,
        llama: Any,
        model: Any,
        ctx: Any,
        *,
        parallel: int,
        n_ctx_seq: int,
        n_batch: int,
        max_queue: int,
        retry_after_s: int,
        unified_kv: bool,
        name: str = "model",
        nice: int = 0,
    ) -> None:
        self._ll = llama
        self._model = model
        self._ctx = ctx
        self._vocab = model.vocab
        self._mem = llama.llama_get_memory(ctx.ctx)
        self.parallel = parallel
        self.n_ctx_seq = n_ctx_seq
        self.n_batch = n_batch
        self.unified_kv = unified_kv
        self.nice = nice
        self.admission = Admission(
            f"The model {name}",
            capacity=parallel + max_queue,
            retry_after_s=retry_after_s,
            setting="text.parallel + text.max_queue",
        )
        self.on_wait: Callable[[float], None] | None = None
        # prompt tokens read in, and prompt tokens whose K/V were reused instead (a cached
        # prefix): the second grows when system prompts and conversations repeat
        self.prompt_tokens_read = 0
        self.prompt_tokens_reused = 0
        self._slots = [_Slot(seq_id=i) for i in range(parallel)]
        self._waiting: deque[Request] = deque()
        self._cv = threading.Condition()
        self._stopping = False
        self._pieces: dict[int, bytes] = {}
        self._piece_buffer = ctypes.create_string_buffer(64)
        self._batch = llama.llama_batch_init(max(n_batch, parallel), 0, 1)
        self._thread = threading.Thread(target=self._run, name=f"engine-{name}", daemon=True)
        self._thread.start()

    # --- called from other threads ----------------------------------------------------------

    @property
    def depth(self) -> int:
        """Requests admitted and not finished (generating + waiting)."""
        return self.admission.depth

    def alive(self) -> bool:
        """Whether the engine thread runs (it ends only when the backend is closed)."""
        return self._thread.is_alive()

    def active(self) -> int:
        """Sequences decoding right now (slots with a request)."""
        return sum(1 for s in self._slots if s.request is not None)

    def submit(self, request: Request) -> None:
        """Queue ``request``; raises ``Busy`` when every slot and the queue are taken."""
        if self._stopping:
            raise BackendUnavailable("The model is shutting down. Retry in a moment.")
        try:
            self.admission.acquire()
        except Busy as exc:
            waiting = self.admission.capacity - self.parallel
            raise Busy(
                f"The model is busy: all {self.parallel} generation slots (text.parallel) are in "
                f"use and {waiting} requests already wait (text.max_queue={waiting}). Retry in "
                f"{exc.retry_after} s.",
                retry_after=exc.retry_after,
            ) from None
        with self._cv:
            self._waiting.append(request)
            self._cv.notify()

    def cancel(self, request: Request) -> None:
        """The consumer left: stop at the next step (safe to call more than once)."""
        request.cancelled = True
        with self._cv:
            self._cv.notify()

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the engine thread, failing waiting and running requests; waits up to
        ``timeout_s``."""
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join(timeout=timeout_s)
        if not self._thread.is_alive():
            self._ll.llama_batch_free(self._batch)

    # --- the engine thread ------------------------------------------------------------------

    def _lower_priority(self) -> None:
        """Run decoding at a lower CPU priority than request handling. llama.cpp's worker
        threads are started by this thread and inherit it: when both cores are busy, a search
        or a page gets the CPU first and the streams slow a little, instead of the reverse."""
        if self.nice <= 0:
            return
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)
        except (OSError, AttributeError):  # not Linux, or not permitted: same priority
            log.info("could not lower the engine's CPU priority; it runs at normal priority")

    def _run(self) -> None:
        self._lower_priority()
        while True:
            with self._cv:
                while not self._stopping and not self._waiting and self.active() == 0:
                    self._cv.wait()
                if self._stopping:
                    break
                starting = self._take_waiting()
            try:
                for slot, request in starting:
                    self._start(slot, request)
                if self.active():
                    self._step()
            except Exception as exc:  # an engine fault must not leave consumers hanging
                log.exception("the decode step failed; failing the running requests")
                self._fail_all(BackendError(f"The model failed while generating ({exc}). Retry."))
        self._fail_all(BackendUnavailable("The model shut down. Retry in a moment."))
        with self._cv:
            while self._waiting:
                self._finish_waiting(
                    self._waiting.popleft(),
                    BackendUnavailable(
                        "The model shut down before this request started. Retry in a moment."
                    ),
                )

    def _take_waiting(self) -> list[tuple[_Slot, Request]]:
        """Under the lock: drop cancelled waiters, give free slots to the oldest others."""
        for request in [r for r in self._waiting if r.cancelled]:
            self._waiting.remove(request)
            self._finish_waiting(request, None)
        starting: list[tuple[_Slot, Request]] = []
        free = [s for s in self._slots if s.request is None]
        while self._waiting and free:
            request = self._waiting.popleft()
            slot = max(free, key=lambda s: (common_prefix(s.cached, request.prompt), -s.last_used))
            free.remove(slot)
            slot.request = request  # reserved now, read in by _start outside the lock
            starting.append((slot, request))
        return starting

    def _finish_waiting(self, request: Request, error: Exception | None) -> None:
        request.sampler.close()
        self.admission.release()
        if error is not None:
            request.emit(error)

    def _start(self, slot: _Slot, request: Request) -> None:
        if self.on_wait is not None:
            self.on_wait(time.perf_counter() - request.admitted_at)
        prompt = request.prompt
        keep = common_prefix(slot.cached, prompt)
        source = None
        if self.unified_kv:
            for other in self._slots:
                if other is slot:
                    continue
                shared = common_prefix(other.cached, prompt)
                if shared > keep:
                    keep, source = shared, other
        keep = min(keep, len(prompt) - 1)  # the last prompt token is read again for its logits
        if source is not None:
            self._ll.llama_memory_seq_rm(self._mem, slot.seq_id, -1, -1)
            self._ll.llama_memory_seq_cp(self._mem, source.seq_id, slot.seq_id, 0, keep)
        elif not self._ll.llama_memory_seq_rm(self._mem, slot.seq_id, keep, -1):
            self._ll.llama_memory_seq_rm(self._mem, slot.seq_id, -1, -1)  # cannot cut: start over
            keep = 0
        slot.cached = prompt[:keep]
        slot.pending = prompt[keep:]
        self.prompt_tokens_reused += keep
        self.prompt_tokens_read += len(prompt) - keep
        slot.generated = 0
        slot.text = ""
        slot.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        slot.i_batch = -1

    def _step(self) -> None:
        ll, batch = self._ll, self._batch
        for slot in self._slots:
            if slot.request is not None and slot.request.cancelled:
                self._end(slot, None)
        batch.n_tokens = 0
        budget = self.n_batch
        fed: list[tuple[_Slot, list[int]]] = []
        # sequences that are generating first: one token each keeps every stream moving
        for slot in self._slots:
            if slot.request is not None and slot.generated > 0:
                tokens = slot.pending
                self._add(slot, tokens, logits_last=True)
                fed.append((slot, tokens))
                budget -= len(tokens)
        for slot in self._slots:
            if slot.request is None or slot.generated > 0 or budget <= 0:
                continue
            chunk = slot.pending[:budget]
            self._add(slot, chunk, logits_last=len(chunk) == len(slot.pending))
            fed.append((slot, chunk))
            budget -= len(chunk)
        if batch.n_tokens == 0:
            return
        result = ll.llama_decode(self._ctx.ctx, batch)
        if result != 0:
            raise BackendError(f"llama_decode returned {result}")
        for slot, tokens in fed:
            slot.cached.extend(tokens)
            slot.pending = slot.pending[len(tokens) :]
        for slot in self._slots:
            if slot.request is not None and slot.i_batch >= 0 and not slot.pending:
                self._sample(slot)

    def _add(self, slot: _Slot, tokens: list[int], *, logits_last: bool) -> None:
        batch = self._batch
        position = len(slot.cached)
        slot.i_batch = -1
        for offset, token in enumerate(tokens):
            n = batch.n_tokens
            batch.token[n] = token
            batch.pos[n] = position + offset
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = slot.seq_id
            last = logits_last and offset == len(tokens) - 1
            batch.logits[n] = last
            if last:
                slot.i_batch = n
            batch.n_tokens = n + 1

    def _sample(self, slot: _Slot) -> None:
        request = slot.request
        assert request is not None
        ll = self._ll
        token = ll.llama_sampler_sample(request.sampler.sampler, self._ctx.ctx, slot.i_batch)
        if request.logprobs is not None and not ll.llama_vocab_is_eog(self._vocab, token):
            slot.logprobs.append(self._logprob(slot.i_batch, token, request.logprobs))
        slot.i_batch = -1
        if ll.llama_vocab_is_eog(self._vocab, token):
            self._end(slot, "stop")
            return
        slot.generated += 1  # the end-of-generation token is not part of the reply
        slot.pending = [token]
        slot.text += slot.decoder.decode(self._piece(token))
        for stop in request.stops:
            at = slot.text.find(stop)
            if at >= 0:
                slot.text = slot.text[:at]
                self._end(slot, "stop")
                return
        if slot.generated >= request.max_tokens or len(slot.cached) + 1 >= self.n_ctx_seq:
            self._end(slot, "length")
            return
        hold = held_back(slot.text, request.stops)
        ready = slot.text[: len(slot.text) - hold] if hold else slot.text
        if ready:
            slot.text = slot.text[len(ready) :]
            request.emit(Delta(text=ready, logprobs=tuple(slot.logprobs)))
            slot.logprobs = []

    def _logprob(self, row: int, token: int, top: int) -> TokenLogprob:
        """The sampled token's log probability under the model (before sampling settings),
        with the ``top`` most likely tokens."""
        n_vocab = self._ll.llama_vocab_n_tokens(self._vocab)
        pointer = self._ll.llama_get_logits_ith(self._ctx.ctx, row)
        logits = np.ctypeslib.as_array(pointer, shape=(n_vocab,)).astype(np.float64)  # (V,)
        shifted = logits - logits.max()
        logsumexp = np.log(np.exp(shifted).sum())
        logprobs = shifted - logsumexp
        best: tuple[tuple[str, float], ...] = ()
        if top > 0:
            picked = np.argpartition(-logprobs, top)[:top]
            picked = picked[np.argsort(-logprobs[picked])]
            best = tuple((self._token_text(int(t)), float(logprobs[t])) for t in picked)
        return TokenLogprob(self._token_text(token), float(logprobs[token]), best)

    def _token_text(self, token: int) -> str:
        return self._piece(token).decode("utf-8", errors="replace")

    def _piece(self, token: int) -> bytes:
        """The bytes a token stands for (cached: the vocabulary does not change)."""
        piece = self._pieces.get(token)
        if piece is None:
            size = self._ll.llama_token_to_piece(
                self._vocab, token, self._piece_buffer, len(self._piece_buffer), 0, False
            )
            if size < 0:  # longer than the buffer: ask again with the size it needs
                buffer = ctypes.create_string_buffer(-size)
                size = self._ll.llama_token_to_piece(self._vocab, token, buffer, -size, 0, False)
                piece = buffer.raw[:size]
            else:
                piece = self._piece_buffer.raw[:size]
            self._pieces[token] = piece
        return piece

    def _end(self, slot: _Slot, finish: str | None) -> None:
        """Finish the slot's request: the rest of its text and the final delta (``finish``), or
        nothing when the consumer left (``None``). The slot and the admission are freed before
        the consumer hears of the end, so a request sent right after it is never refused."""
        request = slot.request
        assert request is not None
        closing: list[Delta] = []
        if finish is not None:
            # held-back text whose stop string never completed is text after all
            rest = slot.text + slot.decoder.decode(b"", final=True)
            if rest or slot.logprobs:
                closing.append(Delta(text=rest, logprobs=tuple(slot.logprobs)))
            closing.append(
                Delta(finish_reason=finish, usage=Usage(len(request.prompt), slot.generated))
            )
        # the sampled-but-unfed token is not in the cache; everything else stays for reuse
        slot.pending = []
        slot.request = None
        slot.text = ""
        slot.logprobs = []
        slot.last_used = time.monotonic()
        request.sampler.close()
        self.admission.release()
        for delta in closing:
            request.emit(delta)

    def _fail_all(self, error: Exception) -> None:
        for slot in self._slots:
            if slot.request is not None:
                request = slot.request
                slot.request, slot.pending, slot.cached = None, [], []
                request.sampler.close()
                self.admission.release()
                request.emit(error)
        try:
            self._ll.llama_memory_clear(self._mem, True)
        except Exception:  # pragma: no cover - best effort after a fault
            log.exception("could not clear the KV cache")
