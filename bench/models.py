"""Issue 25: the bundled model beside the bigger local one, on 2 cores -> bench/results/models.json.

    .venv/bin/python bench/models.py [--models bundled,qwen-0.5b] [--windows 12]

The bigger model is Qwen2.5-Coder-0.5B-Instruct (`make bigger-model`; docs/models.md). For each
model, one at a time (never two model processes at once):

1. speed: first-token latency and decode tokens/s of one stream (a ~40-token prompt that
   differs from the first word each run, so no cached prompt is reused; 64 new tokens; median
   of 5 after one warm-up), re-measured on a quiet machine with ``--only-speed``;
2. ``tool_mode=model``: the model chooses among the assistant's nine tools itself (constrained
   calls, tool_choice auto; in the call markup its chat template teaches, when it has one,
   and also in the generic JSON form for comparison) on issue 25's new request set (bench/data/assistant_requests_new.jsonl,
   110 requests; none of them ever tuned anything): tool-choice accuracy and no-tool false
   positives, beside the router's figures in assistant.json;
3. the writing features' generative path (``writing = "model"``): catch-up and topics on the
   first ``--windows`` reference windows of each kind, each window's messages copied into a
   group of their own; ``raw_junk_rate``: the model's points and topics the junk detector
   rejects (what members would have read without it), ``junk_rate``: those returned (goal 0),
   ``catchup_points_citing_real_messages``: points whose cited messages are in the window
   (the schema's numbers), ``catchup_reference_recall`` and ``topics_grounded`` as in
   bench/evals/group_core.py;
4. LangChain's two-step tool loop against ``townsquare serve`` with that model: the official
   ``langchain-openai`` client binds two tools and loops (call, run the tool, send its result)
   until the model answers in words; ``langchain_loop_terminates`` is the share of 8 requests
   answered in words within 4 rounds.

The extractive core's figures are bench/evals/group_core.py's (evals.json, extractive_core).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import _serve  # noqa: E402
import httpx  # noqa: E402
from sqlalchemy import select  # noqa: E402

from townsquare.backends.base import (  # noqa: E402
    Completion,
    Delta,
    GenerationOptions,
    Message,
    TextBackend,
)
from townsquare.backends.llamacpp import LlamaCppText  # noqa: E402
from townsquare.backends.registry import model_path_for  # noqa: E402
from townsquare.backends.sentence_embed import (  # noqa: E402
    SentenceEmbeddings,
    bundled_embedding_path,
)
from townsquare.errors import BackendError  # noqa: E402
from townsquare.features.assistant.tools import specs  # noqa: E402
from townsquare.features.groups.service import TopicRequest, catch_up, suggest_topics  # noqa: E402
from townsquare.features.junk import junk_reasons  # noqa: E402
from townsquare.safety.pipeline import Context  # noqa: E402
from townsquare.services import Services  # noqa: E402
from townsquare.settings import Settings  # noqa: E402
from townsquare.social.demo import seed  # noqa: E402
from townsquare.storage.social_tables import Group, GroupMessage, Membership  # noqa: E402
from townsquare.storage.tables import User  # noqa: E402

OUT = ROOT / "bench/results/models.json"
DATA = ROOT / "bench/data"
# six prompts of about 40 tokens that differ from their first words, so no run reuses the
# cached prompt of another (the first token is measured from a cold prompt)
PROMPTS = [
    f"{opening} In two sentences, suggest how a new member of a neighbourhood app can meet "
    "people in the running group and the bakers' group this week."
    for opening in (
        "Hello there.",
        "Good morning!",
        "Quick question for you.",
        "I just moved to Lisbon.",
        "My neighbour asked me this.",
        "Please help a newcomer.",
    )
]


class Capture(TextBackend):
    """The backend as it is, keeping every raw completion (the text before any check)."""

    backend_id = "capture"

    def __init__(self, inner: TextBackend) -> None:
        self.inner = inner
        self.raw: list[str] = []
        self.model_id = inner.model_id
        self.context_window = inner.context_window
        self.supports_schema = inner.supports_schema
        self.supports_logprobs = inner.supports_logprobs
        self.supports_tools = inner.supports_tools
        self.tool_markup = inner.tool_markup
        self.is_local = inner.is_local
        self.message_overhead_tokens = inner.message_overhead_tokens

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    async def ready(self) -> bool:
        return await self.inner.ready()

    def stream(
        self, messages: Sequence[Message], options: GenerationOptions
    ) -> AsyncIterator[Delta]:
        return self.inner.stream(messages, options)

    async def complete(self, messages: Sequence[Message], options: GenerationOptions) -> Completion:
        completion = await self.inner.complete(messages, options)
        self.raw.append(completion.text)
        return completion

    async def aclose(self) -> None:
        await self.inner.aclose()


def load(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines() if line.strip()]


async def speed(text: TextBackend) -> dict[str, float]:
    firsts, rates = [], []
    for run, prompt in enumerate(PROMPTS):
        start = time.perf_counter()
        first = None
        tokens = 0
        async for delta in text.stream(
            [Message("user", prompt)],
            GenerationOptions(max_tokens=64, temperature=0.0, stop=()),
        ):
            if delta.text:
                tokens += 1
                if first is None:
                    first = time.perf_counter()
        end = time.perf_counter()
        if run == 0 or first is None:
            continue  # warm-up
        firsts.append((first - start) * 1000)
        if tokens > 1:
            rates.append((tokens - 1) / (end - first))
    return {
        "first_token_ms_p50": round(statistics.median(firsts), 1),
        "decode_tokens_per_s_p50": round(statistics.median(rates), 1),
    }


async def tool_choice(services: Services) -> dict[str, Any]:
    rows = load("assistant_requests_new.jsonl")
    offered = specs(services.agent.tools)
    right = fp = nones = 0
    cut = 0
    for row in rows:
        try:
            completion = await services.guarded_text.complete(
                [
                    Message("system", "You are the assistant of a community app."),
                    Message("user", row["text"]),
                ],
                GenerationOptions(
                    max_tokens=160, temperature=0, tools=offered, parallel_tool_calls=False
                ),
                Context("bench", 0, "member"),
            )
            chosen = completion.tool_calls[0].name if completion.tool_calls else None
        except BackendError:  # a call cut at max_tokens: no usable choice
            cut += 1
            chosen = "(cut)"
        right += chosen == row["tool"]
        if row["tool"] is None:
            nones += 1
            fp += chosen is not None
    return {
        "requests": len(rows),
        "calls_cut_at_max_tokens": cut,
        "tool_choice_accuracy_new_set": round(right / len(rows), 4),
        "no_tool_false_positive_new_set": round(fp / max(1, nones), 4),
    }


async def writing(services: Services, capture: Capture, windows: int) -> dict[str, Any]:
    """Catch-up and topics written by the model (no core fallback) on copies of the windows."""
    with services.sessions() as db:
        by_id = {m.external_id: (m.author_id, m.text) for m in db.scalars(select(GroupMessage))}
        evaluator = db.scalar(select(User).where(User.name == "eval-member"))
        assert evaluator is not None
        user_id = evaluator.id
    points = cited_ok = recalled = references = junk_raw = junk_out = outputs = raw_outputs = 0
    topics = grounded = 0
    start = datetime(2020, 1, 1, tzinfo=UTC)
    for kind in ("catchup", "topic"):
        for window in load(f"{kind}_windows.jsonl")[:windows]:
            with services.sessions.begin() as db:
                group = Group(external_id=f"bench-{window['id']}", name=f"Window {window['id']}")
                db.add(group)
                db.flush()
                db.add(Membership(group_id=group.id, user_id=user_id, role="member"))
                copies = {}
                for n, source in enumerate(window["messages"]):
                    author, text = by_id[source]
                    row = GroupMessage(
                        external_id=f"{window['id']}-{source}",
                        group_id=group.id,
                        author_id=author,
                        text=text,
                        created_at=start + timedelta(minutes=n + 1),
                    )
                    db.add(row)
                    copies[row.external_id] = source
                group_id = group.id
            texts = [by_id[s][1] for s in window["messages"]]
            window_text = " ".join(texts).lower()
            with services.sessions() as db:
                group = db.get(Group, group_id)
                user = db.get(User, user_id)
                assert group is not None and user is not None
                before = len(capture.raw)
                if kind == "catchup":
                    result: Any = await catch_up(
                        db, services.sessions, user, group, start, text=services.guarded_text
                    )
                else:
                    result = await suggest_topics(
                        db,
                        services.sessions,
                        user,
                        group,
                        TopicRequest(count=3),
                        text=services.guarded_text,
                        embedder=services.embed,
                        writing="model",
                    )
                raw = capture.raw[before:]
            for text in raw:  # what the model wrote, before any check
                try:
                    parsed = json.loads(text)
                except ValueError:
                    raw_outputs += 1
                    junk_raw += 1
                    continue
                items = parsed.get("points") or parsed.get("topics") or []
                for item in items:
                    raw_outputs += 1
                    said = item.get("text") or f"{item.get('topic', '')}: {item.get('opener', '')}"
                    junk_raw += bool(junk_reasons(str(said), sources=texts, names=[group.name]))
            if kind == "catchup":
                cited: set[str] = set()
                for point in result.points:
                    points += 1
                    outputs += 1
                    junk_out += bool(junk_reasons(point.text, sources=texts))
                    sources = {copies.get(m) for m in point.message_ids}
                    cited_ok += None not in sources
                    cited |= {s for s in sources if s}
                for reference in window["reference_points"]:
                    references += 1
                    recalled += bool(set(reference["messages"]) & cited)
            else:
                for topic in result.topics:
                    topics += 1
                    outputs += 1
                    junk_out += bool(
                        junk_reasons(topic.topic, sources=texts, min_words=1)
                        or junk_reasons(topic.opener, sources=texts, opener=True)
                    )
                    grounded += all(w.lower() in window_text for w in topic.topic.split())
    return {
        "windows_each": windows,
        "raw_outputs": raw_outputs,
        "raw_junk_rate": round(junk_raw / max(1, raw_outputs), 4),
        "returned": outputs,
        "junk_rate": round(junk_out / max(1, outputs), 4),
        "catchup_points": points,
        "catchup_points_citing_real_messages": round(cited_ok / max(1, points), 4),
        "catchup_reference_recall": round(recalled / max(1, references), 4),
        "topics": topics,
        "topics_grounded": round(grounded / max(1, topics), 4),
    }


def langchain_loop(spec: str, models_dir: Path | None) -> dict[str, Any]:
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def search_listings(query: str, max_price: float) -> str:
        """Search the marketplace for listings under a price."""
        return json.dumps([{"title": f"{query} (demo)", "price": max_price * 0.8}])

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city today."""
        return f"Sunny, 21 °C in {city}."

    requests = [
        "Find me a kids bike under 150.",
        "What's the weather in Lisbon today?",
        "Is there a desk for sale under 80?",
        "Should I bring an umbrella in Porto today?",
        "Look for a guitar under 300 and tell me if it's a good deal.",
        "Check the weather in Faro, then tell me if it's a beach day.",
        "Any road bikes under 400?",
        "What's the weather like in Braga?",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        key = _serve.init(data)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = _serve.start(
            data,
            port,
            TOWNSQUARE_TEXT__BACKEND=spec,
            TOWNSQUARE_TEXT__MODELS_DIR=str(models_dir),
            TOWNSQUARE_TEXT__N_CTX="4096",
            TOWNSQUARE_SAFETY__MODERATION="off",
        )
        try:
            models = httpx.get(
                f"http://127.0.0.1:{port}/v1/models",
                headers={"Authorization": f"Bearer {key}"},
                timeout=30,
            ).json()["data"]
            llm = ChatOpenAI(
                model=models[0]["id"],
                base_url=f"http://127.0.0.1:{port}/v1",
                api_key=key,
                temperature=0,
                max_retries=0,
                timeout=300,
            ).bind_tools([search_listings, get_weather])
            tools = {"search_listings": search_listings, "get_weather": get_weather}
            ended, rounds = 0, []
            for request in requests:
                messages: list[Any] = [HumanMessage(request)]
                for step in range(1, 5):
                    reply = llm.invoke(messages)
                    messages.append(reply)
                    if not reply.tool_calls:
                        ended += bool(str(reply.content).strip())
                        rounds.append(step)
                        break
                    for call in reply.tool_calls:
                        output = tools[call["name"]].invoke(call["args"])
                        messages.append(ToolMessage(output, tool_call_id=call["id"]))
        finally:
            server.terminate()
            server.wait(30)
    return {
        "requests": len(requests),
        "langchain_loop_terminates": round(ended / len(requests), 4),
        "rounds_when_ended": rounds,
    }


def build_services(capture: Capture, embed: SentenceEmbeddings, data: Path) -> Services:
    """The demo town on ``data`` with ``tool_mode = "model"`` and the generative writing path."""
    settings = Settings(
        data_dir=data,
        log_json=False,
        safety={"moderation": "off"},
        assistant={"tool_mode": "model"},
        writing="model",
        # one evaluating member asks hundreds of times: no daily budget (a tool prompt of the
        # Hermes template is ~1,000 tokens)
        quotas={"user_tokens_per_day": 10**9, "user_requests_per_minute": 10**6},
    )
    services = Services.build(settings, text=capture, embed=embed)
    with services.sessions.begin() as db:
        seed(db, settings.ingest)
        evaluator = User(name="eval-member", external_id="u-eval-member", display_name="Eve")
        db.add(evaluator)
    services.indexer.sync_all()
    return services


async def tool_forms(capture: Capture, services: Services) -> dict[str, Any]:
    """Tool choice in the model's own call markup (read from its chat template, when it has
    one) and in the generic JSON form, on the same model."""
    out: dict[str, Any] = {"markup": capture.inner.tool_markup and capture.inner.tool_markup.name}
    out["tool_mode_model"] = await tool_choice(services)
    if capture.inner.tool_markup is not None:
        capture.tool_markup = None
        out["tool_mode_model_generic_form"] = await tool_choice(services)
        capture.tool_markup = capture.inner.tool_markup
    return out


async def one(spec: str, embed: SentenceEmbeddings, windows: int) -> dict[str, Any]:
    models_dir = Settings().text.models_dir  # where `make bigger-model` put it
    path = model_path_for(spec.split(":", 1)[1], models_dir)
    model = LlamaCppText(path, n_ctx=4096, seed=1234)
    capture = Capture(model)
    out: dict[str, Any] = {"model": path.name, "size_mb": round(path.stat().st_size / 1e6, 1)}
    print(f"{spec}: speed", flush=True)
    out["speed"] = await speed(model)
    with tempfile.TemporaryDirectory() as tmp:
        services = build_services(capture, embed, Path(tmp))
        print(f"{spec}: tool choice", flush=True)
        out |= await tool_forms(capture, services)
        print(f"{spec}: writing", flush=True)
        out["writing_model"] = await writing(services, capture, windows)
        await services.aclose()
    await model.aclose()
    print(f"{spec}: langchain", flush=True)
    out["langchain"] = langchain_loop(spec, models_dir)
    return out


async def only_tools(name: str, embed: SentenceEmbeddings) -> dict[str, Any]:
    path = model_path_for(name, Settings().text.models_dir)
    model = LlamaCppText(path, n_ctx=4096, seed=1234)
    capture = Capture(model)
    with tempfile.TemporaryDirectory() as tmp:
        services = build_services(capture, embed, Path(tmp))
        out = await tool_forms(capture, services)
        await services.aclose()
    await model.aclose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="bundled,qwen-0.5b")
    parser.add_argument("--windows", type=int, default=12)
    parser.add_argument(
        "--only-speed",
        action="store_true",
        help="re-measure only the speeds, on a quiet machine, into the existing results",
    )
    parser.add_argument(
        "--only-langchain",
        action="store_true",
        help="rerun only the LangChain loop, into the existing results",
    )
    parser.add_argument(
        "--only-tools",
        action="store_true",
        help="rerun only tool choice (both call forms) and the LangChain loop, into the results",
    )
    args = parser.parse_args()
    started = time.time()
    if args.only_tools:
        kept = json.loads(OUT.read_text())
        embed = SentenceEmbeddings(bundled_embedding_path())
        models_dir = Settings().text.models_dir
        for name in args.models.split(","):
            entry = kept["models"].setdefault(name, {})
            entry.pop("tool_mode_model_generic_form", None)
            entry |= asyncio.run(only_tools(name, embed))
            entry["langchain"] = langchain_loop(f"llamacpp:{name}", models_dir)
            OUT.write_text(json.dumps(kept, indent=2, ensure_ascii=False) + "\n")
        print(json.dumps(kept["models"], indent=1)[:3000])
        return
    if args.only_langchain:
        kept = json.loads(OUT.read_text())
        models_dir = Settings().text.models_dir
        for name in args.models.split(","):
            loop = langchain_loop(f"llamacpp:{name}", models_dir)
            kept["models"].setdefault(name, {})["langchain"] = loop
        OUT.write_text(json.dumps(kept, indent=2, ensure_ascii=False) + "\n")
        print(json.dumps({k: v.get("langchain") for k, v in kept["models"].items()}, indent=1))
        return
    if args.only_speed:
        kept = json.loads(OUT.read_text())
        models_dir = Settings().text.models_dir

        async def measure(name: str) -> dict[str, float]:
            model = LlamaCppText(model_path_for(name, models_dir), n_ctx=4096, seed=1234)
            try:
                return await speed(model)
            finally:
                await model.aclose()

        for name in args.models.split(","):
            kept["models"].setdefault(name, {})["speed"] = asyncio.run(measure(name))
        OUT.write_text(json.dumps(kept, indent=2, ensure_ascii=False) + "\n")
        print(json.dumps({k: v.get("speed") for k, v in kept["models"].items()}, indent=1))
        return
    embed = SentenceEmbeddings(bundled_embedding_path())
    result: dict[str, Any] = {"machine": {"cpus": os.cpu_count()}, "models": {}}
    for name in args.models.split(","):
        result["models"][name] = asyncio.run(one(f"llamacpp:{name}", embed, args.windows))
        OUT.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    result["seconds"] = round(time.time() - started, 1)
    OUT.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
