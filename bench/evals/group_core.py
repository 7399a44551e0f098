"""Issue 25: catch-up and topics from the extractive core, on the hand-referenced windows.

    .venv/bin/python bench/evals/group_core.py      # ~1 min, embeddings only

The windows (bench/data/catchup_windows.jsonl, topic_windows.jsonl: 66 + 66, written before
any issue-25 change, with hand-written reference points and keyphrases) are read on the demo
town; every window runs through ``features/groups/extract.py`` with the bundled MiniLM, as the
service runs it. Scored by checks independent of the code under test:

- ``catchup_points_citing_real_messages``: every cited id is a message of the window and the
  quoted sentence is word for word in the first message it cites, said by the named author;
- ``catchup_reference_recall``: the share of reference points one of whose messages a point
  cites;
- ``topics_grounded``: every topic's words occur in the window; ``topic_reference_recall``:
  the share of reference keyphrases one of the topics contains or is contained in;
- ``junk_rate``: outputs the shared junk detector rejects (points and topics together).

Results merge into bench/results/evals.json under ``extractive_core`` (the other sections are
left as bench/evals/run.py wrote them).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sqlalchemy import select  # noqa: E402

from townsquare.backends.sentence_embed import (  # noqa: E402
    SentenceEmbeddings,
    bundled_embedding_path,
)
from townsquare.features.groups import extract  # noqa: E402
from townsquare.features.junk import junk_reasons  # noqa: E402
from townsquare.services import Services  # noqa: E402
from townsquare.settings import Settings  # noqa: E402
from townsquare.social.demo import seed  # noqa: E402
from townsquare.storage.social_tables import Group, GroupMessage  # noqa: E402
from townsquare.storage.tables import User  # noqa: E402

DATA = ROOT / "bench/data"
OUT = ROOT / "bench/results/evals.json"


def load(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines() if line.strip()]


def main() -> None:
    started = time.time()
    embed = SentenceEmbeddings(bundled_embedding_path())
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), log_json=False, safety={"moderation": "off"})
        services = Services.build(settings, text=None, embed=embed)
        sessions = services.sessions
        with sessions.begin() as db:
            seed(db, settings.ingest)
        with sessions() as db:
            rows = db.execute(
                select(GroupMessage, User.display_name, User.name, Group.name)
                .join(User, User.id == GroupMessage.author_id)
                .join(Group, Group.id == GroupMessage.group_id)
            ).all()
            messages = {
                m.external_id: {
                    "id": m.external_id,
                    "pk": m.id,
                    "reply_to_pk": m.reply_to_id,
                    "author": display or name,
                    "text": m.text,
                    "group": group,
                }
                for m, display, name, group in rows
            }
        asyncio.run(services.aclose())
    cited_ok = points_total = recalled = references = junk = outputs = 0
    problems: list[dict[str, Any]] = []
    for window in load("catchup_windows.jsonl"):
        chosen = [messages[i] for i in window["messages"]]
        vectors = embed.embed_sync([m["text"] for m in chosen])
        points = extract.catch_up_points(chosen, vectors, count=5)
        names = [chosen[0]["group"], *{m["author"] for m in chosen}]
        ids = {m["id"] for m in chosen}
        cited: set[str] = set()
        for point in points:
            points_total += 1
            outputs += 1
            first = messages.get(point["message_ids"][0])
            author, _, rest = point["text"].partition(": “")
            quote = rest.split("”", 1)[0]
            ok = (
                set(point["message_ids"]) <= ids
                and first is not None
                and quote
                and quote.rstrip("…") in first["text"]
                and author == first["author"]
            )
            cited_ok += bool(ok)
            reasons = junk_reasons(point["text"], sources=[m["text"] for m in chosen], names=names)
            junk += bool(reasons)
            if not ok or reasons:
                problems.append({"window": window["id"], "point": point, "junk": reasons})
            cited |= set(point["message_ids"])
        for reference in window["reference_points"]:
            references += 1
            recalled += bool(set(reference["messages"]) & cited)
    grounded = topics_total = phrase_hits = phrases = 0
    for window in load("topic_windows.jsonl"):
        chosen = [messages[i] for i in window["messages"]]
        vectors = embed.embed_sync([m["text"] for m in chosen])
        topics = extract.topic_suggestions(chosen, vectors, count=3)
        text = " ".join(m["text"] for m in chosen).lower()
        names = [chosen[0]["group"], *{m["author"] for m in chosen}]
        for topic in topics:
            topics_total += 1
            outputs += 2
            grounded += all(w.lower() in text for w in topic["topic"].split())
            sources = [m["text"] for m in chosen]
            bad = junk_reasons(topic["topic"], sources=sources, names=names, min_words=1)
            bad += junk_reasons(topic["opener"], sources=sources, names=names, opener=True)
            junk += bool(junk_reasons(topic["topic"], sources=sources, names=names, min_words=1))
            junk += bool(junk_reasons(topic["opener"], sources=sources, names=names, opener=True))
            if bad:
                problems.append({"window": window["id"], "topic": topic, "junk": bad})
        for phrase in window["reference_keyphrases"]:
            phrases += 1
            phrase_hits += any(
                phrase.lower() in t["topic"].lower() or t["topic"].lower() in phrase.lower()
                for t in topics
            )
    result = {
        "model": "none: extractive core (features/groups/extract.py), all-MiniLM-L6-v2",
        "catchup_windows": len(load("catchup_windows.jsonl")),
        "topic_windows": len(load("topic_windows.jsonl")),
        "catchup_points": points_total,
        "catchup_points_citing_real_messages": round(cited_ok / max(1, points_total), 4),
        "catchup_reference_recall": round(recalled / max(1, references), 4),
        "topics": topics_total,
        "topics_grounded": round(grounded / max(1, topics_total), 4),
        "topic_reference_recall": round(phrase_hits / max(1, phrases), 4),
        "junk_rate": round(junk / max(1, outputs), 4),
        "problems": problems[:20],
        "seconds": round(time.time() - started, 1),
    }
    kept = json.loads(OUT.read_text()) if OUT.exists() else {}
    kept["extractive_core"] = result
    OUT.write_text(json.dumps(kept, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "problems"}, indent=1))


if __name__ == "__main__":
    main()
