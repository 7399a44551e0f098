"""Issue 25: the junk detector against outputs of the bundled model labelled by hand.

    .venv/bin/python bench/evals/junk.py collect   # ~5 min: the bundled model writes
    (label bench/data/junk_labels.jsonl by hand, reading only the texts)
    .venv/bin/python bench/evals/junk.py score     # seconds

``collect`` has the bundled SmolLM2-135M write, through the services' generative path
(``writing = "model"``), catch-up points and topics for reference windows 20-31 of each kind
(not the windows bench/models.py uses), comment suggestions for 12 demo posts and replies for
12 creator DM threads; every item the model wrote, before any check, goes to
bench/data/junk_outputs.jsonl with the texts it was made from. The labels were then written by
hand in bench/data/junk_labels.jsonl (junk: a member would read it as noise: placeholders,
tag-like tokens, non-words, repeats, a bare name or URL, an empty shell; not junk: readable words
about the thread, however dull or wrong), before ``score`` was run. ``score`` reports the
detector's precision and recall on them -> bench/results/evals.json ``junk_detector``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from models import Capture  # noqa: E402
from sqlalchemy import select  # noqa: E402

from townsquare.backends.llamacpp import LlamaCppText, bundled_model_path  # noqa: E402
from townsquare.backends.sentence_embed import (  # noqa: E402
    SentenceEmbeddings,
    bundled_embedding_path,
)
from townsquare.features.groups.service import TopicRequest, catch_up, suggest_topics  # noqa: E402
from townsquare.features.junk import junk_reasons  # noqa: E402
from townsquare.features.suggestions.schemas import CommentRequest  # noqa: E402
from townsquare.features.suggestions.service import suggest_comments  # noqa: E402
from townsquare.features.suggestions.style import suggest_replies  # noqa: E402
from townsquare.services import Services  # noqa: E402
from townsquare.settings import Settings  # noqa: E402
from townsquare.social.demo import CREATOR_A, CREATOR_B, seed  # noqa: E402
from townsquare.storage.social_tables import (  # noqa: E402
    DMThread,
    Group,
    GroupMessage,
    Membership,
    Post,
)
from townsquare.storage.tables import User  # noqa: E402

DATA = ROOT / "bench/data"
OUTPUTS = DATA / "junk_outputs.jsonl"
LABELS = DATA / "junk_labels.jsonl"
RESULTS = ROOT / "bench/results/evals.json"


def load(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def items_of(raw: str) -> list[tuple[str, str]]:
    """(part, text) of each item one raw answer holds: points, topics and their openers,
    comments, replies (an answer that is not JSON is one item)."""
    try:
        parsed = json.loads(raw)
    except ValueError:
        return [("answer", raw)]
    out: list[tuple[str, str]] = []
    for item in parsed.get("points", []):
        out.append(("point", str(item.get("text", ""))))
    for item in parsed.get("topics", []):
        out += [("topic", str(item.get("topic", ""))), ("opener", str(item.get("opener", "")))]
    out += [("comment", str(c)) for c in parsed.get("comments", [])]
    out += [("reply", str(r)) for r in parsed.get("replies", [])]
    return out


async def collect() -> None:
    embed = SentenceEmbeddings(bundled_embedding_path())
    model = LlamaCppText(bundled_model_path(), n_ctx=4096, seed=4321)
    capture = Capture(model)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            data_dir=Path(tmp), log_json=False, safety={"moderation": "off"}, writing="model"
        )
        services = Services.build(settings, text=capture, embed=embed)
        with services.sessions.begin() as db:
            seed(db, settings.ingest)
            judge = User(name="eval-member", external_id="u-eval-member", display_name="Eve")
            db.add(judge)
        services.indexer.sync_all()
        with services.sessions() as db:
            by_id = {m.external_id: (m.author_id, m.text) for m in db.scalars(select(GroupMessage))}
            judge = db.scalar(select(User).where(User.name == "eval-member"))
            assert judge is not None
            judge_id = judge.id
        start = datetime(2020, 1, 1, tzinfo=UTC)

        def note(feature: str, raw: list[str], sources: list[str], names: list[str]) -> None:
            for answer in raw:
                for part, text in items_of(answer):
                    rows.append(
                        {
                            "id": f"j{len(rows):03d}",
                            "feature": feature,
                            "part": part,
                            "text": text,
                            "sources": sources,
                            "names": names,
                        }
                    )

        for kind in ("catchup", "topic"):
            windows = [
                json.loads(line)
                for line in (DATA / f"{kind}_windows.jsonl").read_text().splitlines()
            ][20:32]
            for window in windows:
                with services.sessions.begin() as db:
                    group = Group(external_id=f"j-{window['id']}", name=f"Window {window['id']}")
                    db.add(group)
                    db.flush()
                    db.add(Membership(group_id=group.id, user_id=judge_id, role="member"))
                    for n, source in enumerate(window["messages"]):
                        author, text = by_id[source]
                        db.add(
                            GroupMessage(
                                external_id=f"j-{window['id']}-{source}",
                                group_id=group.id,
                                author_id=author,
                                text=text,
                                created_at=start + timedelta(minutes=n + 1),
                            )
                        )
                    group_id = group.id
                with services.sessions() as db:
                    group = db.get(Group, group_id)
                    user = db.get(User, judge_id)
                    assert group is not None and user is not None
                    names = [group.name]
                    before = len(capture.raw)
                    if kind == "catchup":
                        await catch_up(
                            db, services.sessions, user, group, start, text=services.guarded_text
                        )
                    else:
                        await suggest_topics(
                            db,
                            services.sessions,
                            user,
                            group,
                            TopicRequest(count=3),
                            text=services.guarded_text,
                            embedder=services.embed,
                            writing="model",
                        )
                    texts = [by_id[s][1] for s in window["messages"]]
                    note(kind, capture.raw[before:], texts, names)
        with services.sessions() as db:
            user = db.get(User, judge_id)
            assert user is not None
            for post in list(db.scalars(select(Post).where(Post.group_id.is_(None))))[:12]:
                before = len(capture.raw)
                try:
                    await suggest_comments(
                        db,
                        services.sessions,
                        user,
                        post,
                        CommentRequest(count=3, tone="supportive"),
                        text=services.guarded_text,
                    )
                except Exception as exc:
                    print("comments:", type(exc).__name__, exc)
                note("comments", capture.raw[before:], [post.text], [])
            for name in (CREATOR_A, CREATOR_B):
                creator = db.scalar(select(User).where(User.name == name))
                assert creator is not None
                threads = db.scalars(
                    select(DMThread)
                    .where(DMThread.external_id.like(f"dm-{name}-%"))
                    .order_by(DMThread.external_id)
                ).all()
                for thread in threads[:6]:
                    before = len(capture.raw)
                    await suggest_replies(
                        db,
                        services.sessions,
                        creator,
                        thread,
                        text=services.guarded_text,
                        embedder=services.embed,
                        vectors=services.vectors,
                        writing="model",
                    )
                    note("replies", capture.raw[before:], [], [])
        await services.aclose()
    await model.aclose()
    OUTPUTS.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"{len(rows)} outputs -> {OUTPUTS}")


def score() -> None:
    outputs = {r["id"]: r for r in load(OUTPUTS)}
    labels = {r["id"]: r for r in load(LABELS)}
    tp = fp = fn = tn = 0
    misses: list[dict[str, Any]] = []
    for item_id, label in labels.items():
        row = outputs[item_id]
        reasons = junk_reasons(
            row["text"],
            sources=row["sources"],
            names=row["names"],
            min_words=1 if row["part"] == "topic" else 2,
            opener=row["part"] == "opener",
        )
        flagged, junk = bool(reasons), bool(label["junk"])
        tp += flagged and junk
        fp += flagged and not junk
        fn += junk and not flagged
        tn += not junk and not flagged
        if flagged != junk:
            misses.append({"text": row["text"], "label": junk, "detector": reasons})
    result = {
        "model": "SmolLM2-135M-Instruct (bundled), writing = model, before any check",
        "labelled": len(labels),
        "junk_by_hand": tp + fn,
        "precision": round(tp / max(1, tp + fp), 4),
        "recall": round(tp / max(1, tp + fn), 4),
        "false_positives": fp,
        "false_negatives": fn,
        "disagreements": misses,
    }
    kept = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    kept["junk_detector"] = result
    RESULTS.write_text(json.dumps(kept, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "disagreements"}, indent=1))


def main() -> None:
    if sys.argv[1:] == ["collect"]:
        asyncio.run(collect())
    elif sys.argv[1:] == ["score"]:
        score()
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
