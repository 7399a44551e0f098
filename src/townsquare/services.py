"""Services: the built backends, stores and pipelines, one set per app (or CLI command)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from townsquare.backends.base import EmbeddingBackend, TextBackend, Usage
from townsquare.backends.embed_queue import QueuedEmbeddings
from townsquare.backends.images import ImageBackend, build_image_backend
from townsquare.backends.pools import build_pools
from townsquare.backends.registry import LazyText, build_embedding_backend, build_text_backend
from townsquare.errors import InvalidRequest
from townsquare.features.assistant.agent import Agent
from townsquare.features.assistant.groups import GroupChat
from townsquare.features.assistant.router import Router
from townsquare.features.assistant.tools import ToolEnv, build_tools
from townsquare.features.imagine.service import ImageService, sweep_orphans
from townsquare.features.safety.runs import RunWorker
from townsquare.features.search import service as search_service
from townsquare.features.search.indexer import Indexer
from townsquare.features.suggestions.style import examples_collection
from townsquare.features.webhooks.service import Sender
from townsquare.observability import Metrics
from townsquare.privacy import RetentionSweeper
from townsquare.quotas import Quotas, build_quota_store
from townsquare.safety.moderation import EmbeddedModerator, Moderator, build_moderator
from townsquare.safety.nsfw import NsfwCheck
from townsquare.safety.pipeline import (
    Context,
    GuardedText,
    LengthPolicy,
    ModerationPolicy,
    SafetyEvent,
    SafetyPipeline,
    SafetyPolicy,
)
from townsquare.safety.policy import PolicyStore
from townsquare.safety.provenance import Provenance
from townsquare.settings import Settings
from townsquare.social.ingest import Removal
from townsquare.storage.blobs import open_blobs
from townsquare.storage.db import (
    BackgroundWriter,
    make_engine,
    make_sessions,
    migrate,
    private_dir,
    wait_for_database,
)
from townsquare.storage.jobs import forget_finished
from townsquare.storage.tables import SafetyEventRow
from townsquare.storage.vectors import EmbeddedVectorIndex, VectorIndex

log = logging.getLogger("townsquare.services")


def forget_jobs(sessions: sessionmaker[Session], days: float) -> int:
    """``storage.jobs.forget_finished`` in a session of its own (the periodic sweep)."""
    with sessions() as db:
        return forget_finished(db, days)


@dataclass
class Services:
    """Everything a request may need. Adapters (API, web, CLI) hand pieces of it to services."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    metrics: Metrics
    text: TextBackend
    safety: SafetyPipeline
    guarded_text: GuardedText
    quotas: Quotas
    embed: EmbeddingBackend
    vectors: VectorIndex
    indexer: Indexer
    audit_writer: BackgroundWriter
    policies: PolicyStore
    moderator: Moderator | None  # the pipeline's (None: moderation off)
    endpoint_moderator: Moderator  # /v1/moderations'
    agent: Agent = field(init=False)  # the assistant's tools, router and grounding
    group_chat: GroupChat = field(init=False)  # @-mentions in groups, group event streams
    webhook_sender: Sender = field(init=False)
    retention: RetentionSweeper = field(init=False)
    redteam_runs: RunWorker = field(init=False)  # red-team runs claimed from the jobs table
    images: ImageService = field(init=False)  # Imagine, Reimagine: the one path for images
    owns_text: bool = True
    pool_backends: list[TextBackend] = field(default_factory=list)  # pools' own engines
    owns_images: bool = True
    # Called as hook(removal) after a delete commits: derived data (embeddings, caches)
    # registers here so that a removal reaches it too, and only what was removed.
    deletion_hooks: list[Callable[[Removal], None]] = field(default_factory=list)
    _provenance: Provenance | None = None
    closed: bool = field(default=False, init=False)
    # work a request started and left running (a red-team run); asked to stop (``stopping``)
    # when the app stops, then waited for, then cancelled
    background_tasks: set[asyncio.Task[None]] = field(default_factory=set, init=False)
    stopping: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    def provenance(self) -> Provenance:
        """The watermark registry (built on first use: it may create the key file)."""
        if self._provenance is None:
            self._provenance = Provenance(self.sessions, self.settings)
        return self._provenance

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        text: TextBackend | None = None,
        policies: Sequence[SafetyPolicy] | None = None,
        metrics: Metrics | None = None,
        embed: EmbeddingBackend | None = None,
        vectors: VectorIndex | None = None,
        lazy_text: bool = False,
        images: ImageBackend | Literal["configured"] | None = "configured",
    ) -> Services:
        """Migrate the database, load the text backend and wire the safety pipeline.

        ``text``, ``images`` and ``policies`` replace the configured ones (tests, embedding
        apps); a backend passed in stays the caller's to close. ``lazy_text`` loads the
        configured model on its first use instead (CLI commands that may never generate).
        """
        private_dir(settings.data_dir)  # the watermark key, blobs, the SQLite file
        engine = make_engine(
            settings.resolved_database_url,
            pool_size=settings.resolved_pool_size,
            pool_timeout_s=settings.database_pool_timeout_s,
            prepared_statements=settings.database_prepared_statements,
        )
        wait_for_database(engine, timeout_s=settings.database_connect_timeout_s)
        migrate(engine)
        sessions = make_sessions(engine)
        metrics = metrics or Metrics()
        backend = text or (
            LazyText(settings.text) if lazy_text else build_text_backend(settings.text)
        )
        backend.observe(on_wait=metrics.queue_wait.observe, on_busy=metrics.busy_rejections.inc)
        metrics.queue_depth.set_function(backend.queue_depth)
        metrics.active_sequences.set_function(backend.active_sequences)
        metrics.prompt_tokens_reused.set_function(backend.prompt_tokens_reused)

        audit_writer = BackgroundWriter(sessions, name="audit-writer")

        def audit(event: SafetyEvent) -> None:
            decision = event.decision
            if decision.allowed and not decision.warnings:
                return
            # handed to a writer thread: a request never waits for the audit write
            audit_writer.add(
                SafetyEventRow(
                    user_id=event.user_id,
                    group_id=event.group_id,
                    feature=event.feature,
                    stage=event.stage,
                    allowed=decision.allowed,
                    hazards=json.dumps(list(decision.hazards or decision.warnings)),
                    reason=event.decision.reason,
                    excerpt=event.excerpt,
                )
            )

        quotas = Quotas(settings.quotas, build_quota_store(settings.quotas, sessions))

        def admit(context: Context) -> None:
            quotas.before_generation(context.user_id, context.role, context.group_id)

        def count_usage(context: Context, model: str, usage: Usage) -> None:
            metrics.tokens.labels(model, "prompt").inc(usage.prompt_tokens)
            metrics.tokens.labels(model, "completion").inc(usage.completion_tokens)
            quotas.record_tokens(context.user_id, context.group_id, usage.total_tokens)

        safety = settings.safety
        policy_store = PolicyStore(
            sessions, default_threshold=safety.default_threshold, cache_s=safety.policy_cache_s
        )
        raw_embed = embed or build_embedding_backend(settings.embed)
        # the embedded moderator reads the same MiniLM as search when search uses it (one copy)
        moderator = build_moderator(safety, encoder=raw_embed)
        if policies is None:
            policies = [LengthPolicy(safety.max_input_chars, safety.max_output_chars)]
            if moderator is not None:
                policies.append(
                    ModerationPolicy(
                        moderator,
                        policy_store,
                        support_message=safety.support_message,
                        s11_threshold=safety.s11_support_threshold,
                        max_texts=safety.max_checked_texts,
                        fail_open=safety.guard_fail_open,
                    )
                )
        pipeline = SafetyPipeline(list(policies), audit=audit)
        embedder = QueuedEmbeddings(
            raw_embed,
            concurrency=settings.embed.concurrency,
            max_batch_tokens=settings.embed.max_batch_tokens,
            max_queued_texts=settings.embed.max_queued_texts,
            interactive_max_texts=settings.embed.interactive_max_texts,
            retry_after_s=settings.text.retry_after_s,
            cache_size=settings.embed.cache_size,
        )
        metrics.embed_queue_depth.set_function(lambda: embedder.depth)
        index = vectors or build_vector_index(settings, sessions, embedder.dimensions)
        indexer = Indexer(sessions, embedder, index)
        pools, pool_backends = build_pools(
            settings.routing,
            settings.text,
            backend,
            build_text_backend,
            on_busy=lambda pool: metrics.pool_generations.labels(pool, "busy").inc(),
        )

        def on_pool(pool: str, change: int) -> None:
            metrics.pool_active.labels(pool).inc(change)
            if change > 0:
                metrics.pool_generations.labels(pool, "admitted").inc()

        built = cls(
            settings=settings,
            engine=engine,
            sessions=sessions,
            metrics=metrics,
            text=backend,
            safety=pipeline,
            guarded_text=GuardedText(
                backend,
                pipeline,
                admit=admit,
                on_usage=count_usage,
                check_every_chars=safety.stream_check_chars,
                pools=pools,
                on_pool=on_pool,
            ),
            pool_backends=pool_backends,
            policies=policy_store,
            moderator=moderator,
            # /v1/moderations answers even when the pipeline's moderation is off (lazy: nothing
            # loads until a caller asks for scores)
            endpoint_moderator=moderator or EmbeddedModerator(encoder=raw_embed),
            quotas=quotas,
            owns_text=text is None,
            embed=embedder,
            vectors=index,
            indexer=indexer,
            audit_writer=audit_writer,
        )
        env = ToolEnv(
            sessions,
            built.guarded_text,
            embedder,
            index,
            settings,
            on_run=lambda tool, outcome: metrics.tool_runs.labels(tool, outcome).inc(),
        )
        built.agent = Agent(
            env,
            build_tools(env),
            Router(
                embedder,
                threshold=settings.assistant.router_threshold,
                rule_bonus=settings.assistant.router_rule_bonus,
                categorize=partial(search_service.category_of, embedder, index, settings.search),
                cue_similarity=settings.search.category_similarity,
            ),
        )
        built.retention = RetentionSweeper(
            sessions,
            settings.privacy,
            also=lambda: {
                "orphan_images": sweep_orphans(
                    sessions, built.images.blobs, settings.images.orphan_grace_s
                ),
                "finished_jobs": forget_jobs(sessions, settings.assistant.mention_jobs_kept_days),
            },
        )
        built.webhook_sender = Sender(
            sessions,
            settings.webhooks,
            on_outcome=lambda outcome: metrics.webhook_deliveries.labels(outcome).inc(),
        )
        built.group_chat = GroupChat(
            sessions, built.agent, built.guarded_text, settings, built.webhook_sender
        )
        metrics.mentions_waiting.set_function(built.group_chat.waiting)
        built.redteam_runs = RunWorker(built)
        built.owns_images = images == "configured"
        image_settings = settings.images
        built.images = ImageService(
            sessions,
            settings,
            build_image_backend(image_settings) if images == "configured" else images,
            provenance=built.provenance,
            guarded=built.guarded_text,
            quotas=quotas,
            blobs=open_blobs(image_settings, Path(settings.data_dir), sessions),
            nsfw=(
                NsfwCheck(image_settings.nsfw_threshold)
                if image_settings.nsfw_check == "block"
                else None
            ),
            on_outcome=lambda source, outcome: metrics.images.labels(source, outcome).inc(),
        )
        env.images = built.images

        def forget(removal: Removal) -> None:
            # exactly the indexed items the delete removed (cascades included)
            for collection, ids in removal.items.items():
                indexer.remove(collection, ids)
            for user_id in removal.users:  # a creator's reply examples
                index.drop_collection(examples_collection(user_id))

        built.deletion_hooks.append(forget)

        def forget_images(removal: Removal) -> None:
            if removal.blobs:
                with sessions() as db:
                    built.images.forget_blobs(db, removal.blobs)

        built.deletion_hooks.append(forget_images)
        return built

    def start_background(self, app: Any = None) -> None:
        """Start the work that runs beside requests (mention answers, webhook deliveries,
        red-team runs against ``app``) on the running event loop."""
        self.stopping = asyncio.Event()  # these services may serve one app after another
        self.webhook_sender.start()
        self.group_chat.start()
        self.retention.start()
        if app is not None:
            self.redteam_runs.start(app)

    async def stop_background(self) -> None:
        """Stop what ``start_background`` started, and work requests left running (red-team
        runs). A run sends nothing new once ``stopping`` is set and ends when what it has in
        flight is answered; one still running after ``server.shutdown_timeout_s`` is cancelled.
        (Cancelling at once would abandon the worker threads of its in-process requests with
        their database sessions open.)"""
        self.stopping.set()
        await self.redteam_runs.stop()
        await self.retention.stop()
        await self.group_chat.stop()
        await self.webhook_sender.stop()
        running = set(self.background_tasks)
        if running:
            _, late = await asyncio.wait(running, timeout=self.settings.server.shutdown_timeout_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    def database_ok(self) -> bool:
        """Whether the database answers ``SELECT 1`` (errors are logged, not raised)."""
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except Exception:  # any driver error means "not reachable"
            log.exception("database check failed")
            return False
        return True

    async def aclose(self) -> None:
        """Close everything these services own: the model (unless passed in), embeddings, indexes,
        writers, the engine. Closing twice does nothing more."""
        if self.closed:
            return
        self.closed = True
        if self.owns_text:
            await self.text.aclose()
        for backend in self.pool_backends:
            await backend.aclose()
        if self.owns_images and self.images.backend is not None:
            self.images.backend.close()
        await self.embed.aclose()
        self.vectors.close()
        self.audit_writer.close()
        self.quotas.store.close()
        self.endpoint_moderator.close()  # the pipeline's, or the endpoint's own
        self.engine.dispose()


def _same_database(one: str, other: str) -> bool:
    """Whether two URLs name the same database (the driver part aside)."""
    from sqlalchemy.engine import make_url

    a, b = make_url(one), make_url(other)
    return a.get_backend_name() == b.get_backend_name() and (
        a.host,
        a.port,
        a.database,
        a.username,
    ) == (b.host, b.port, b.database, b.username)


def build_vector_index(
    settings: Settings, sessions: sessionmaker[Session], dimensions: int
) -> VectorIndex:
    """The configured vector index: embedded (default) or pgvector."""
    spec = settings.search.vector_index
    if spec == "embedded":
        return EmbeddedVectorIndex(
            sessions,
            ivf_min_items=settings.search.ivf_min_items,
            nprobe=settings.search.nprobe,
            poll_s=settings.search.follow_s,
        )
    if spec.startswith("pgvector:"):
        from townsquare.storage.pgvector import PgVectorIndex

        url = spec.removeprefix("pgvector:")
        engine = sessions.kw["bind"]
        same = _same_database(url, settings.resolved_database_url)
        return PgVectorIndex(
            url,
            dimensions,
            pool_size=settings.resolved_pool_size,
            engine=engine if same else None,
            prepared_statements=settings.database_prepared_statements,
        )
    raise InvalidRequest(
        f"Unknown search.vector_index '{spec}'. Use 'embedded' or "
        "'pgvector:postgresql://user:pass@host/db'."
    )
