"""The useful core of catch-up and topics, without generated prose (issue 25).

Early smart-reply and summarisation systems worked from what people actually wrote; so does
this. Nothing here invents a word:

- **catch-up**: the window's messages are grouped into threads by their reply links; maximal
  marginal relevance picks the key messages (central to the window, one per thread first,
  unlike those already picked); each point is a real sentence of the message, with who said it
  and who answered, citing the message and its replies.
- **topics**: the threads' keyphrases (1-3 word phrases of their own words, TF-IDF across the
  window's threads, stop words out), each with an opener built on a real message of the
  thread.

The vectors are the messages' embeddings (unit length), one row per message.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, TfidfVectorizer

Vectors = npt.NDArray[np.float32]
SENTENCE = re.compile(r"(?<=[.!?])\s+")
MENTION = re.compile(r"@\w+")


def threads(messages: Sequence[dict[str, Any]]) -> list[list[int]]:
    """Indices of ``messages`` grouped by reply links (``pk``, ``reply_to_pk``), in order of
    their first message; a reply to a message outside the window starts a thread."""
    root: dict[int, int] = {}
    index = {m["pk"]: i for i, m in enumerate(messages) if m.get("pk") is not None}
    for i, message in enumerate(messages):
        parent = message.get("reply_to_pk")
        root[i] = root[index[parent]] if parent in index and index[parent] < i else i
    grouped: dict[int, list[int]] = {}
    for i in range(len(messages)):
        grouped.setdefault(root[i], []).append(i)
    return list(grouped.values())


def sentence(text: str, limit: int = 200) -> str:
    """The first sentence of ``text`` (whole words, at most ``limit`` characters)."""
    clean = " ".join(MENTION.sub("", text).split())
    first = SENTENCE.split(clean, maxsplit=1)[0]
    if len(first) <= limit:
        return first
    cut = first[:limit].rsplit(" ", 1)[0]
    return cut.rstrip(",;:") + "…"


def _names(names: Sequence[str]) -> str:
    unique = list(dict.fromkeys(names))
    if len(unique) <= 1:
        return "".join(unique)
    return ", ".join(unique[:-1]) + " and " + unique[-1]


def catch_up_points(
    messages: Sequence[dict[str, Any]],
    vectors: Vectors,
    *,
    count: int,
    diversity: float = 0.3,
) -> list[dict[str, Any]]:
    """Up to ``count`` points, each {"text", "message_ids"}: a real sentence of a key message,
    who said it and who replied (see the module docstring). ``diversity`` is MMR's weight
    on unlikeness to the points already picked."""
    if not messages:
        return []
    groups = threads(messages)
    thread_of = {i: t for t, members in enumerate(groups) for i in members}
    similarity = vectors @ vectors.T
    n = len(messages)
    # central: like the rest of the window; a message with replies or words carries more
    centrality = (similarity.sum(axis=1) - 1) / max(1, n - 1)
    words = np.array([min(len(str(m["text"]).split()), 25) / 25 for m in messages])
    replies = np.array(
        [len(groups[thread_of[i]]) - 1 if groups[thread_of[i]][0] == i else 0 for i in range(n)]
    )
    relevance = centrality + 0.3 * words + 0.1 * np.minimum(replies, 4) / 4
    picked: list[int] = []
    used_threads: set[int] = set()
    while len(picked) < min(count, n):
        best, best_score = -1, -np.inf
        for i in range(n):
            if i in picked or not sentence(str(messages[i]["text"])):
                continue
            if thread_of[i] in used_threads and len(used_threads) < len(groups):
                continue  # one point per thread until every thread has one
            unlike = max((similarity[i, j] for j in picked), default=0.0)
            score = (1 - diversity) * relevance[i] - diversity * unlike
            if score > best_score:
                best, best_score = i, score
        if best < 0:
            break
        picked.append(best)
        used_threads.add(thread_of[best])
    points = []
    for i in sorted(picked):
        message = messages[i]
        thread = groups[thread_of[i]]
        answers = [j for j in thread if j > i][:3] if thread[0] == i else []
        text = f"{message['author']}: “{sentence(str(message['text']))}”"
        if answers:
            text += f" (replies from {_names([str(messages[j]['author']) for j in answers])})"
        points.append(
            {
                "text": text,
                "message_ids": [str(message["id"])] + [str(messages[j]["id"]) for j in answers],
            }
        )
    return points


# words that make poor topic names on their own (chat filler beyond the English stop words)
FILLER = frozenset(
    [
        "anyone",
        "someone",
        "thanks",
        "thank",
        "yes",
        "yeah",
        "ok",
        "okay",
        "great",
        "good",
        "nice",
        "just",
        "really",
        "know",
        "think",
        "going",
        "got",
        "get",
        "like",
        "lol",
        "haha",
        "sure",
        "maybe",
        "today",
        "tomorrow",
        "tonight",
        "week",
        "weekend",
        "time",
        "people",
        "guys",
        "everyone",
        "let",
        "lets",
        "need",
        "want",
        "does",
        "did",
        "don",
        "didn",
        "doesn",
        "isn",
        "ll",
        "ve",
        "re",
    ]
)


def keyphrases(documents: Sequence[str], *, per_document: int = 1) -> list[list[str]]:
    """For each document, its best 1-3 word phrases by TF-IDF across ``documents`` (its own
    words, as written, stop words and chat filler out)."""
    if not documents:
        return []
    vectorizer = TfidfVectorizer(
        ngram_range=(1, 3),
        stop_words=list(ENGLISH_STOP_WORDS | FILLER),
        token_pattern=r"(?u)\b[^\W\d_][\w'-]*[^\W_]\b",
        sublinear_tf=True,
    )
    try:
        matrix = vectorizer.fit_transform(documents)
    except ValueError:  # only stop words
        return [[] for _ in documents]
    vocabulary = vectorizer.get_feature_names_out()
    out = []
    for row, document in zip(matrix, documents, strict=True):
        weights = row.toarray()[0]
        # a longer phrase wins a tie with its own words: 'night run' over 'run'
        order = np.argsort(-(weights + 0.01 * np.char.count(vocabulary.astype(str), " ")))
        chosen: list[str] = []
        for k in order:
            if weights[k] <= 0 or len(chosen) == per_document:
                break
            phrase = _as_written(str(vocabulary[k]), document)
            if phrase and not any(
                phrase.lower() in c.lower() or c.lower() in phrase.lower() for c in chosen
            ):
                chosen.append(phrase)
        out.append(chosen)
    return out


def _as_written(phrase: str, document: str) -> str | None:
    """``phrase`` as the document spells it ('belém night run' -> 'Belém Night Run')."""
    pattern = r"\b" + r"\W+".join(re.escape(w) for w in phrase.split()) + r"\b"
    found = re.search(pattern, document, flags=re.IGNORECASE)
    return found.group(0) if found else None


def topic_suggestions(
    messages: Sequence[dict[str, Any]], vectors: Vectors, *, count: int
) -> list[dict[str, str]]:
    """Up to ``count`` topics, each {"topic", "opener", "message_id"}: a thread's keyphrase and
    an opener that quotes the thread's message the phrase comes from."""
    groups = [g for g in threads(messages) if g]
    documents = [" \n".join(str(messages[i]["text"]) for i in g) for g in groups]
    phrases = keyphrases(documents, per_document=1)
    # the threads most like the rest of the window first: what the group keeps coming back to
    weight = []
    for g in groups:
        centre = vectors[g].mean(axis=0)
        weight.append(float(centre @ vectors.mean(axis=0)) + 0.05 * len(g))
    out: list[dict[str, str]] = []
    seen: set[str] = set()
    for t in np.argsort(-np.array(weight)):
        if not phrases[t]:
            continue
        phrase = phrases[t][0]
        if phrase.lower() in seen:
            continue
        source = next(
            (i for i in groups[t] if phrase.lower() in str(messages[i]["text"]).lower()),
            groups[t][0],
        )
        quote = sentence(str(messages[source]["text"]), 140)
        opener = (
            f"{messages[source]['author']} brought up {phrase}: “{quote}” What do you all think?"
        )
        out.append({"topic": phrase, "opener": opener, "message_id": str(messages[source]["id"])})
        seen.add(phrase.lower())
        if len(out) == count:
            break
    return out
