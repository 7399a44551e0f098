"""Issue 25: every writing feature's extractive core (``writing = "core"``), no text model.

    .venv/bin/python bench/evals/core.py      # ~2 min, embeddings only

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

And on the demo town, with the same services the API uses:

- ``description_invented_independent``: template drafts of every listing with attributes that
  assert something the listing does not state, by bench/evals/checks.py (its own word lists,
  independent of the service's filter); ``description_attribute_coverage`` by the same module;
- ``creator_style_accuracy``: run.py's split (odd DM threads leave the database and their
  replies train the character n-gram classifier); the core suggests three replies for every
  even thread's latest fan message, classified as their creator or not;
- ``summary_citations_within_filters``: for each marketplace request of issue 25's new set,
  the search box's reading of it (the one parser) filters a core summary; every listing it
  cites is checked against the filters by reading the listing row again (price, condition,
  category, distance to the place).

Results merge into bench/results/evals.json under ``extractive_core`` (the other sections are
left as bench/evals/run.py wrote them).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import checks  # noqa: E402
from sqlalchemy import select  # noqa: E402

from townsquare.backends.sentence_embed import (  # noqa: E402
    SentenceEmbeddings,
    bundled_embedding_path,
)
from townsquare.features.groups import extract  # noqa: E402
from townsquare.features.junk import junk_reasons  # noqa: E402
from townsquare.features.search.query import core_words, read_filters  # noqa: E402
from townsquare.features.search.schemas import ListingFilters  # noqa: E402
from townsquare.features.search.service import category_of, place_names  # noqa: E402
from townsquare.features.search.service import places as places_of  # noqa: E402
from townsquare.features.search.summary import summarize  # noqa: E402
from townsquare.features.shops.service import DescriptionRequest, template_draft  # noqa: E402
from townsquare.features.suggestions.style import suggest_replies  # noqa: E402
from townsquare.services import Services  # noqa: E402
from townsquare.settings import Settings  # noqa: E402
from townsquare.social.demo import CREATOR_A, CREATOR_B, seed  # noqa: E402
from townsquare.storage.filters import haversine_km  # noqa: E402
from townsquare.storage.social_tables import (  # noqa: E402
    DMMessage,
    DMThread,
    Group,
    GroupMessage,
    Listing,
)
from townsquare.storage.tables import User  # noqa: E402

DATA = ROOT / "bench/data"
OUT = ROOT / "bench/results/evals.json"


def load(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines() if line.strip()]


async def other_features(services: Services) -> dict[str, Any]:
    """Descriptions, creator replies and search summaries from the core (module docstring)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    services.indexer.sync_all()
    out: dict[str, Any] = {}
    # descriptions
    with services.sessions() as db:
        listings = [row for row in db.scalars(select(Listing)) if row.attributes]
        kinds_of: dict[str, set[str]] = {}
        for row in listings:
            kinds_of.setdefault(row.category, set()).add(row.title.split()[-1].lower())
        seller = db.get(User, listings[0].seller_id)
        assert seller is not None
        invented_drafts, coverage = 0, []
        for row in listings:
            draft = template_draft(row, DescriptionRequest(tone="friendly"))
            others = set().union(*(k for c, k in kinds_of.items() if c != row.category))
            parts = [draft["title"], draft["description"], *draft["highlights"], *draft["tags"]]
            invented_drafts += bool(checks.claims(row, parts, others - {row.title.split()[-1]}))
            coverage.append(checks.covers(row, draft["description"]))
    out["descriptions"] = len(listings)
    out["description_invented_independent"] = round(invented_drafts / len(listings), 4)
    out["description_attribute_coverage"] = round(statistics.mean(coverage), 4)
    # creator replies: run.py's split
    with services.sessions() as db:
        creators = {
            name: db.scalar(select(User).where(User.name == name))
            for name in (CREATOR_A, CREATOR_B)
        }
        threads_of = {
            name: list(
                db.scalars(
                    select(DMThread)
                    .where(DMThread.external_id.like(f"dm-{name}-%"))
                    .order_by(DMThread.external_id)
                )
            )
            for name in creators
        }
        train_texts, train_labels = [], []
        for name, creator in creators.items():
            assert creator is not None
            odd = {t.id for t in threads_of[name][1::2]}
            for reply in db.scalars(
                select(DMMessage.text).where(
                    DMMessage.thread_id.in_(odd), DMMessage.author_id == creator.id
                )
            ):
                train_texts.append(reply)
                train_labels.append(name)
    with services.sessions.begin() as cut:
        odd_ids = [t.id for name in creators for t in threads_of[name][1::2]]
        for message in cut.scalars(select(DMMessage).where(DMMessage.thread_id.in_(odd_ids))):
            cut.delete(message)
    classifier = make_pipeline(
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4)),
        LogisticRegression(max_iter=1000),
    )
    classifier.fit(train_texts, train_labels)
    hits = total = 0
    with services.sessions() as db:
        for name, creator in creators.items():
            assert creator is not None
            for thread in threads_of[name][0::2]:
                found = await suggest_replies(
                    db,
                    services.sessions,
                    creator,
                    thread,
                    text=services.guarded_text,
                    embedder=services.embed,
                    vectors=services.vectors,
                    writing="core",
                )
                predicted = classifier.predict(found.replies) if found.replies else []
                hits += sum(p == name for p in predicted)
                total += len(found.replies)
    out["creator_replies"] = total
    out["creator_style_accuracy"] = round(hits / max(1, total), 4)
    out["creator_style_95ci"] = checks.wilson(hits, total)
    # search summaries inside the box's filters
    rows = [r for r in load("assistant_requests_new.jsonl") if r["tool"] == "search_listings"]
    with services.sessions() as db:
        places = place_names(db)
        member = db.scalar(select(User).where(User.role == "member").limit(1))
        assert member is not None
        cited = inside = summaries = 0
        outside: list[dict[str, Any]] = []
        for row in rows:
            read = read_filters(row["text"], places)
            words = core_words(row["text"], places)
            category = category_of(
                services.embed, services.vectors, services.settings.search, words
            )
            if category:
                read["category"] = category
            if not words:
                continue
            filters = ListingFilters(**read)
            summary = await summarize(
                db,
                services.sessions,
                member,
                words,
                text=services.guarded_text,
                embedder=services.embed,
                vectors=services.vectors,
                tuning=services.settings.search,
                filters=filters,
                writing="core",
            )
            summaries += 1
            by_n = {s.n: s for s in summary.sources}
            centre = places_of(db).get(filters.near.lower()) if filters.near else None
            for sentence in summary.sentences:
                for n in sentence.citations:
                    source = by_n[n]
                    if source.kind != "listing":
                        continue
                    listing = db.scalar(select(Listing).where(Listing.external_id == source.id))
                    assert listing is not None
                    cited += 1
                    ok = within(listing, filters, centre)
                    inside += ok
                    if not ok:
                        outside.append({"request": row["text"], "listing": source.id})
    out["summaries"] = summaries
    out["summary_listing_citations"] = cited
    out["summary_citations_within_filters"] = round(inside / max(1, cited), 4)
    out["summary_citations_outside"] = outside[:10]
    return out


def within(listing: Listing, filters: ListingFilters, centre: Any) -> bool:
    """The listing meets the filters, read from its own row (not from the index)."""
    price = listing.price_cents / 100
    if filters.max_price is not None and price > filters.max_price:
        return False
    if filters.min_price is not None and price < filters.min_price:
        return False
    if filters.condition and listing.condition not in filters.condition:
        return False
    if filters.category is not None and listing.category != filters.category:
        return False
    if centre is not None and (listing.lat is None or listing.lon is None):
        return False
    if centre is not None:
        distance = haversine_km(listing.lat, listing.lon, centre.lat, centre.lon)
        return bool(distance <= filters.radius_km)
    return True


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
        others = asyncio.run(other_features(services))
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
        "model": "none: the extractive core (writing = core), all-MiniLM-L6-v2 for retrieval",
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
    result |= others
    kept = json.loads(OUT.read_text()) if OUT.exists() else {}
    kept["extractive_core"] = result
    OUT.write_text(json.dumps(kept, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "problems"}, indent=1))


if __name__ == "__main__":
    main()
