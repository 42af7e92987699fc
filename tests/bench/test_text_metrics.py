"""BLEU, self-BLEU, distinct-n on literal sentences."""

import math

import pytest

from leapdecode.bench.text_metrics import best_of_n_bleu, bleu, distinct_n, self_bleu, words


def test_words():
    assert words("Paris, France!") == ["paris", ",", "france", "!"]


def test_bleu_identity_and_disjoint():
    assert bleu("a b c d e", ["a b c d e"]) == pytest.approx(1.0)
    assert bleu("x y z w", ["a b c d"]) == 0.0
    assert bleu("", ["a"]) == 0.0


def test_bleu_clips_repeats_and_smooths():
    # unigrams: "the" x3 clipped to 2 matches of 3; bigrams "the the" x2 (0 match), smoothed (0+1)/(2+1)
    # trigram "the the the": (0+1)/(1+1); no 4-gram: (0+1)/(0+1); hyp 3 words vs ref 3: no penalty
    got = bleu("the the the", ["the cat the"])
    want = math.exp((math.log(2 / 3) + math.log(1 / 3) + math.log(1 / 2) + math.log(1)) / 4)
    assert got == pytest.approx(want)


def test_bleu_brevity_penalty_uses_closest_reference():
    short = bleu("a b", ["a b c d", "a b"])
    assert short == pytest.approx(1.0)  # the 2-word reference is closest: no penalty
    assert bleu("a b", ["a b c d"]) == pytest.approx(math.exp(1 - 4 / 2))


def test_distinct_and_self_bleu():
    assert distinct_n(["a b c", "a b d"], 2) == 0.75
    assert distinct_n(["a", "b"], 2) is None
    assert self_bleu(["a b c d", "a b c d"]) == pytest.approx(1.0)
    assert self_bleu(["a b c d", "w x y z"]) == 0.0
    assert self_bleu(["only one"]) is None


def test_best_of_n():
    assert best_of_n_bleu(["x y", "a b c d"], ["a b c d"]) == pytest.approx(1.0)
    assert best_of_n_bleu(["a"], []) is None
