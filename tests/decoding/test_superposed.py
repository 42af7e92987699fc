"""Superposed decoding: the n-gram model on literal tokens, one batch-1 pass per step, and the
k = 1 / alpha = 0 case reducing to greedy decoding."""

import math

import pytest
import torch

from leapdecode.decoding import SuperposedConfig, decode
from leapdecode.decoding.superposed import NGramModel, candidate_scores


def test_ngram_interpolates_seen_contexts():
    lm = NGramModel([[1, 2, 3, 1, 2, 4]], order=3, floor=0.0)
    # after (1, 2): 3 and 4 once each, under both the bigram and the trigram context
    assert lm.probs([1, 2], [3, 4, 0]).tolist() == pytest.approx([0.5, 0.5, 0.0])
    # after (3, 2): trigram context unseen, bigram (2,) -> {3, 4}
    assert lm.probs([3, 2], [3, 4]).tolist() == pytest.approx([0.5, 0.5])
    # after 1: only 2 follows
    assert lm.probs([1], [2, 3]).tolist() == pytest.approx([1.0, 0.0])


def test_ngram_longer_context_weighs_more():
    lm = NGramModel([[5, 1, 2], [6, 1, 3], [7, 1, 3]], order=3, floor=0.0)
    # bigram (1,) says 3 (2 of 3); trigram (5, 1) says 2 (1 of 1), with twice the weight
    p2, p3 = lm.probs([5, 1], [2, 3]).tolist()
    assert p2 == pytest.approx((1 / 3 + 2 * 1) / 3) and p3 == pytest.approx((2 / 3) / 3)


def test_ngram_without_evidence_is_uniform():
    lm = NGramModel([[1, 2]], order=4)
    assert lm.probs([9, 9], [1, 2, 3, 4]).tolist() == [0.25] * 4
    assert lm.probs([], [1, 2]).tolist() == [0.5, 0.5]


def test_candidate_scores_are_geometric_interpolation():
    lm = torch.tensor([0.5, 0.5])
    ngram = torch.tensor([[0.9, 0.1], [0.5, 0.5]])
    out = candidate_scores(lm, ngram, alpha=0.25)
    assert out[0].tolist() == pytest.approx([0.75 * math.log(0.5) + 0.25 * math.log(0.9),
                                             0.75 * math.log(0.5) + 0.25 * math.log(0.1)])
    assert out[1, 0] == out[1, 1]  # no n-gram preference: the language model decides


@pytest.mark.parametrize("bad, fix", [
    (dict(num_drafts=0), "--num-beams"),
    (dict(num_drafts=2, num_return_sequences=3), "-n"),
    (dict(alpha=1.5), "alpha"),
    (dict(num_drafts=3, top_m=4), "candidates"),
])
def test_bad_config(bad, fix):
    with pytest.raises(ValueError, match=fix):
        SuperposedConfig(**bad)


def test_one_pass_of_batch_one_per_step(engine):
    batches = []
    hook = engine.target.model.register_forward_hook(
        lambda module, args, kwargs, out: batches.append(out.logits.shape[0]), with_kwargs=True)
    try:
        outs = decode(engine, "Name a fruit.", "superposed", num_beams=4, max_new_tokens=8)
    finally:
        hook.remove()
    assert len(outs) == 4
    assert [o.score for o in outs] == sorted((o.score for o in outs), reverse=True)
    assert all(1 <= len(o.token_ids) <= 8 for o in outs)
    assert set(batches) == {1}  # every pass runs one row, however many drafts
    assert len(batches) <= 8  # prefill + one pass per further token


def test_single_draft_without_ngram_is_greedy(engine, reference):
    prompt = "Write a haiku about rain."
    outs = decode(engine, prompt, "superposed", num_beams=1, alpha=0.0, max_new_tokens=10)
    assert outs[0].token_ids == reference(prompt, 10)
