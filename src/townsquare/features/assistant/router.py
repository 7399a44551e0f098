"""The deterministic router: which tool a member's request asks for, and with which arguments.

The bundled 135M model cannot choose tools, so a request is routed before any model runs:

1. **Intent** by nearest examples: the request is embedded with the bundled MiniLM and compared
   with the example requests of each tool and of "no tool" (``data/router_examples.jsonl``, the
   training two thirds of ``bench/data/assistant_requests.jsonl``; the held-out third never
   ships). A class scores the mean of its two most similar examples, plus a bonus when a rule
   cue for it is in the words ('for sale', 'catch me up', 'reels'...; for the marketplace also
   words whose nearest listings agree on a category, so 'digital piano' is a thing to buy in a
   town that sells pianos). The best class wins if it
   is a tool and scores at least ``assistant.router_threshold``; otherwise no tool runs and the
   model answers. Threshold and bonus were tuned on the training split (bench/assistant.py).
2. **Arguments** by rules: the marketplace filters are read by search's own parser
   (``features/search/query.py``: prices, a known place, the conditions accepted, a category
   from the town's listings), the one the search box uses; a group by its name among the
   member's groups (or the group the question was asked in); the search words are what is
   left of the request.

With a model that calls functions itself (``assistant.tool_mode = "model"``), the model chooses
instead, through the same tools.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from townsquare.backends.base import EmbeddingBackend
from townsquare.features.search.query import core_words, read_filters
from townsquare.features.search.query import fold as _fold

EXAMPLES = Path(__file__).parent / "data" / "router_examples.jsonl"
NONE = "none"

# words that point at one tool; each hit adds the rule bonus to that tool's score
CUES: dict[str, re.Pattern[str]] = {
    "search_listings": re.compile(
        r"\b(for sale|sell(s|ing)?|buy(ing)?|shopping|market(place)?|listed|second[- ]hand|"
        r"cheap|under \d+|below|less than|up to \d+|max \d+|over \d+|euros?|brand[- ]new|"
        r"like new|for parts|near)\b|€"
    ),
    "search_summary": re.compile(
        r"\b(summari[sz]e|sum up|overview|say(s|ing)? about|said about|word around|take on|"
        r"buzz|think (about|of)|recommend(s|ed|ations?)?|tips (on|from)|advice (on|from|about)|"
        r"opinions? (on|of|about)|talk about|posts? (about|on)|(posted|written) about|"
        r"has any(one|body)|any(one|body) (know|posted|written|tried)|"
        r"(everyone|people|neighbours|locals|folks) (think|say|like|recommend)|"
        r"where do (people|neighbours|locals|folks)|what (do|does|are|has|did) (the )?"
        r"(town|people|locals|neighbours|folks|community))\b"
    ),
    # 'reel' alone is also a thing ('hose reel'): only as 'a reel', 'reel about'
    "recommend_reels": re.compile(
        r"\b(watch|watching|videos?|reels|(a|the|this|that) reel|reel (about|of|on|with)|clips?|"
        r"film|tutorial)\b"
    ),
    "catch_up": re.compile(
        r"\b(miss(ed)?|catch (me )?up|recap|news|highlights|tl;?dr|up to speed|what happened|"
        r"latest in|been (talking|said)|up to lately|decide|summari[sz]e|fill me in|"
        r"since (yesterday|last \w+|this morning|(mon|tues|wednes|thurs|fri|satur|sun)day)|"
        r"while i was (away|out|gone|offline))\b"
    ),
    "suggest_topics": re.compile(
        r"\b(topics?|conversation starters?|opener|icebreakers?|discussion|discuss|get people "
        r"talking|chatting|bring up|talk about|ask the)\b"
    ),
    "suggest_comments": re.compile(r"\bcomments?\b"),
    "suggest_replies": re.compile(r"\b(dms?|inbox|fans?'?|direct message)\b"),
    "draft_description": re.compile(
        r"\b(description|describe|listing (copy|text)|blurb|write up my listing)\b"
    ),
    "imagine": re.compile(
        r"\b(draw|drawing|imagine|paint|painting|sketch|cartoon|watercolou?r|portrait|"
        r"illustrat(e|ion)|(picture|image|photo|art) of|an? (image|picture|poster|sticker|logo|"
        r"banner|wallpaper|flyer)|pixel art|render|visuali[sz]e|show me what .* looks? like)\b"
    ),
}
# What asks for a picture, taken off the front of an imagine request to leave what to picture
IMAGINE_ASK = re.compile(
    r"^(please |hey |ok |so )?((can|could|would) you |i('d| would)? (love|like|want) |"
    r"i need |let'?s )?(please )?(draw|paint|sketch|render|imagine|visuali[sz]e|picture|"
    r"create|make|generate|design|show)?( me| us)?( what)?\s*((an? |the |some )?(cute |nice )?"
    r"(image|picture|photo|drawing|illustration|painting|watercolou?r|sketch|portrait|"
    r"art|pixel art|3d model)s?( image)?"
    r"( of| for| with|:)?\s*)?",
    re.IGNORECASE,
)
STYLE_WORDS = {
    "watercolor": "watercolor",
    "watercolour": "watercolor",
    "pixel art": "pixel-art",
    "sticker": "sticker",
    "sketch": "sketch",
    "pencil": "sketch",
    "3d": "3d",
    "photo": "photo",
    "illustration": "illustration",
    "cartoon": "illustration",
}


def imagine_arguments(text: str) -> dict[str, Any]:
    """What to picture (the request without its "draw me a ..." front), and a style preset
    when the request names one."""
    prompt = IMAGINE_ASK.sub("", text.strip(), count=1).strip(" ?!.,:")
    prompt = re.sub(r",?\s*(please|would look like)$", "", prompt, flags=re.IGNORECASE)
    prompt = prompt.strip(" ?!.,") or text
    folded = text.lower()
    style = next((v for k, v in STYLE_WORDS.items() if re.search(rf"\b{k}\b", folded)), None)
    return {"prompt": prompt, **({"style": style} if style else {})}


# the asking in a description request: what is left names the listing ('my oak desk')
_DESCRIBE_WORDS = re.compile(
    r"\b(write( up)?|draft|re-?write|descriptions?|describe|listings?|copy|text|blurb|ad|"
    r"sell(ing)?|help|make|improve|better|nicer|item|post|title)\b"
)
# too common alone: 'what are neighbours saying' names no group
GROUP_WORDS = {
    "group",
    "chat",
    "the",
    "and",
    "street",
    "sunday",
    "club",
    "neighbours",
    "neighbors",
    "friends",
    "members",
    "people",
    "community",
    "town",
}
GROUP_TOOLS = ("catch_up", "suggest_topics")
ID = re.compile(r"\b([a-z]{1,3}-[\w.-]+)\b")


@dataclass(frozen=True)
class Route:
    """The router's decision: a tool and its arguments, or ``tool=None`` for a plain answer."""

    tool: str | None
    arguments: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)


def load_examples(path: Path = EXAMPLES) -> list[tuple[str, str]]:
    """(text, class) pairs: the router's labelled examples."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(row["text"], row["tool"] or NONE) for row in rows]


def _stem(word: str) -> str:
    """'bakers' and 'baking' -> 'bak', 'runners' and 'running' -> 'runn' ('bakery' stays)."""
    for suffix in ("ers", "ing", "er", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def _stems(name: str) -> list[str]:
    words = re.findall(r"\w+", _fold(name))
    return [_stem(w) for w in words if len(w) >= 4 and w not in GROUP_WORDS]


def match_group(text: str, groups: Sequence[str]) -> str | None:
    """The group among ``groups`` whose name the request names (whole or by a distinctive
    word: 'the bakers' finds 'Sunday Bakers'), the one with most words matched; None if none."""
    folded = _fold(text)
    # the name's own words, singular or plural ('runners', 'runner'), not what derives from
    # them ('running' is what anyone does)
    words = {_stem(w) for w in re.findall(r"\w+", folded) if not w.endswith("ing")}
    best, best_score = None, 0.0
    for group in groups:
        score = 0.0
        if _fold(group) in folded:
            score = 10.0
        else:
            stems = _stems(group)
            score = sum(1.0 for s in stems if s in words)
        if score > best_score:
            best, best_score = group, score
    return best


class Router:
    """Routes requests to tools (see the module docstring). Thread-safe; the examples are
    embedded once, on first use."""

    def __init__(
        self,
        embedder: EmbeddingBackend,
        *,
        threshold: float,
        rule_bonus: float,
        examples: Sequence[tuple[str, str]] | None = None,
        vectors: npt.NDArray[np.float32] | None = None,
        categorize: Callable[..., str | None] | None = None,
        cue_similarity: float = 0.5,
    ) -> None:
        """``examples`` default to the bundled ones; ``vectors`` are their embeddings when the
        caller has them (the benchmark's leave-one-out), else they are embedded on first use.
        ``categorize`` names the listing category of a search's core words (search's
        ``category_of`` over the town's listings, called with ``min_similarity``; none
        without it); words whose nearest listing is ``cue_similarity`` similar and whose
        neighbours agree are a marketplace cue."""
        self.embedder = embedder
        self.categorize = categorize
        self.cue_similarity = cue_similarity
        self.threshold = threshold
        self.rule_bonus = rule_bonus
        self._examples = list(examples) if examples is not None else None
        self._matrix = vectors
        self._rows: dict[str, npt.NDArray[np.intp]] = {}  # class -> its examples' rows
        self._lock = threading.Lock()

    def index(self) -> tuple[npt.NDArray[np.float32], dict[str, npt.NDArray[np.intp]]]:
        """The examples' embeddings (n, d) and, per class, its rows (built once)."""
        with self._lock:
            if not self._rows:
                examples = self._examples if self._examples is not None else load_examples()
                if self._matrix is None:
                    self._matrix = self.embedder.embed_sync([text for text, _ in examples])
                labels = np.array([label for _, label in examples])
                self._rows = {str(k): np.flatnonzero(labels == k) for k in dict.fromkeys(labels)}
            assert self._matrix is not None
            return self._matrix, self._rows

    def scores(self, text: str) -> dict[str, float]:
        """Each class's score for ``text``: mean of its two nearest examples + rule bonus."""
        matrix, rows_of = self.index()
        similarity = matrix @ self.embedder.embed_sync([text])[0]  # (n,)
        folded = _fold(text)
        out: dict[str, float] = {}
        for label, rows in rows_of.items():
            mine = np.sort(similarity[rows])[::-1]
            out[label] = float(mine[:2].mean())
            cue = CUES.get(label)
            if cue is not None and cue.search(folded):
                out[label] += self.rule_bonus
        return out

    def route(
        self,
        text: str,
        *,
        places: Sequence[str] = (),
        groups: Sequence[str] = (),
        here: str | None = None,
        allowed: Sequence[str] | None = None,
    ) -> Route:
        """The tool ``text`` asks for among ``allowed`` (all when None), with its arguments.

        ``groups`` are the names of the member's groups; ``here`` the group the request was
        made in (the default group of catch-up and topics)."""
        scores = self.scores(text)
        folded = _fold(text)
        if "search_listings" in scores and not CUES["search_listings"].search(folded):
            core = core_words(text, places)
            # words that most of the town's nearest listings share a category with are a
            # thing to buy: the marketplace cue, as if a cue word were there (never twice:
            # 'an image of a penguin selling lemonade' is no purchase)
            if self.categorize is not None and core:
                cue = self.categorize(core, min_similarity=self.cue_similarity, use_named=False)
                if cue is not None:
                    scores["search_listings"] += self.rule_bonus
            # a place the listings name points at the marketplace, half as much
            if read_filters(text, places).get("near"):
                scores["search_listings"] += self.rule_bonus / 2
        named = match_group(text, groups)
        if named is not None:
            for tool in GROUP_TOOLS:  # a named group points at the group tools, half as much
                if tool in scores:
                    scores[tool] += self.rule_bonus / 2
        candidates = {
            k: v for k, v in scores.items() if k == NONE or allowed is None or k in allowed
        }
        best = max(candidates, key=lambda k: candidates[k])
        if best == NONE or candidates[best] < self.threshold:
            return Route(None, {}, scores)
        arguments = self.arguments(best, text, places, named or here)
        return Route(best, arguments, scores)

    def arguments(
        self,
        tool: str,
        text: str,
        places: Sequence[str],
        group: str | None,
    ) -> dict[str, Any]:
        """The arguments of ``tool`` read from ``text`` by rules (search's own parser for the
        marketplace, with its category floor: the request is known to be a search now)."""
        ids = ID.findall(text)
        if tool == "search_listings":
            filters = read_filters(text, places)
            core = core_words(text, places)
            category = self.categorize(core) if self.categorize is not None and core else None
            if category:
                filters["category"] = category
            return {"query": core or text.strip(), **filters}
        if tool == "search_summary":
            return {"query": core_words(text, places) or text.strip()}
        if tool == "recommend_reels":
            return {"topic": core_words(text)}
        if tool == "imagine":
            return imagine_arguments(text)
        if tool in GROUP_TOOLS:
            return {"group": group} if group else {}
        prefix = {"suggest_comments": "p-", "suggest_replies": "dm-", "draft_description": "l-"}
        key = {"suggest_comments": "post", "suggest_replies": "thread"}.get(tool, "listing")
        for candidate in ids:
            if candidate.startswith(prefix.get(tool, "?")):
                return {key: candidate}
        if tool == "draft_description":  # no id: the listing in the member's words
            about = _DESCRIBE_WORDS.sub(" ", core_words(text, places))
            about = " ".join(about.split())
            return {"about": about} if about else {}
        return {}
