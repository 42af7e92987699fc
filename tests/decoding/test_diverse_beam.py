"""Diverse beam search: the penalties on literal tokens, lambda = 0 against independent beam
searches, and lambda > 0 giving more distinct outputs than beam search."""

import pytest
import torch

from leapdecode.decoding import BeamConfig, DiverseBeamConfig, beam_search, decode, diverse_beam_search
from leapdecode.decoding.beam import BeamGroup
from leapdecode.decoding.diverse_beam import hamming_penalty, ngram_penalty
from leapdecode.bench.text_metrics import distinct_n


def test_hamming_counts_earlier_choices():
    penalty = hamming_penalty([[5, 7], [1, 7], [2, 3]], vocab=8, strength=0.5)
    assert penalty.tolist() == [0.0, 0.0, 0.0, 0.5, 0.0, 0.0, 0.0, 1.0]


def test_ngram_penalty_matches_context():
    # row [1, 2] continues with 3 or 5 to repeat a bigram (2, x) an earlier group just made
    penalty = ngram_penalty([[1, 2], [9, 9]], [[4, 2, 3], [2, 5], [7, 4]], n=2, vocab=6, strength=1.0)
    assert penalty.tolist() == [[0, 0, 0, 1, 0, 1], [0, 0, 0, 0, 0, 0]]
    # trigrams: only the earlier row ending with (1, 2, x) counts
    penalty = ngram_penalty([[1, 2]], [[1, 2, 3], [0, 2, 5]], n=3, vocab=6, strength=2.0)
    assert penalty.tolist() == [[0, 0, 0, 2, 0, 0]]
    # an empty row compares nothing but the token: Hamming
    assert ngram_penalty([[]], [[4, 2]], n=3, vocab=3, strength=1.0).tolist() == [[0, 0, 1]]



def steer(strength):
    """Two groups of one beam, one step, over p = [.6, .3, .1]: group 1 sees token 0 penalised."""
    groups = [BeamGroup(1, 1, frozenset()), BeamGroup(1, 1, frozenset())]
    log_probs = torch.log(torch.tensor([[0.6, 0.3, 0.1]]))
    chosen = []
    for group in groups:
        group.step(log_probs, hamming_penalty(chosen, 3, strength) if chosen else None)
        chosen += [h.tokens for h in group.finished]
    return [g.finished[0] for g in groups]


def test_penalty_steers_second_group_away():
    first, second = steer(1.0)  # log .6 - 1 < log .3
    assert (first.tokens, second.tokens) == ([0], [1])
    first, second = steer(0.1)  # log .6 - 0.1 > log .3: same token, but the score pays
    assert (first.tokens, second.tokens) == ([0], [0])
    log_06 = torch.log(torch.tensor(0.6)).item()
    assert second.logprob == pytest.approx(log_06)  # the model's own log-probability, kept apart
    assert second.score == pytest.approx(log_06 - 0.1)


@pytest.mark.parametrize("bad, fix", [
    (dict(num_beams=4, beam_groups=3), "--beam-groups 1 or 2 or 4"),
    (dict(num_beams=4, diversity=-0.5), ">= 0"),
    (dict(num_beams=0), "--num-beams"),
    (dict(num_beams=4, num_return_sequences=5), "-n"),
    (dict(num_beams=4, diversity_ngram=0), "Hamming"),
])
def test_bad_config(bad, fix):
    with pytest.raises(ValueError, match=fix):
        DiverseBeamConfig(**bad)


def test_lambda_zero_equals_independent_beam_searches(engine):
    ids = engine.encode("Answer with one word: what is the capital of France?")
    diverse = diverse_beam_search(engine, ids, DiverseBeamConfig(4, 4, max_new_tokens=10, beam_groups=2,
                                                                 diversity=0.0))
    single = beam_search(engine, ids, BeamConfig(2, 2, max_new_tokens=10))
    # G = 2 identical groups: every hypothesis of the 2-beam search, twice
    assert [o.token_ids for o in diverse] == [o.token_ids for o in single for _ in range(2)]
    for d, s in zip(diverse, [s for s in single for _ in range(2)]):
        assert d.score == pytest.approx(s.score, abs=1e-4)


def test_lambda_positive_gives_distinct_outputs(engine):
    prompt = "Answer with one word: what is the capital of France?"
    plain = decode(engine, prompt, "beam", num_beams=4, max_new_tokens=10)
    diverse = decode(engine, prompt, "diverse-beam", num_beams=4, diversity=1.0, max_new_tokens=10)
    # plain beams all say "The capital of France is Paris..."; the groups open differently
    assert len({o.token_ids[0] for o in diverse}) > len({o.token_ids[0] for o in plain})
    assert distinct_n([o.text for o in diverse], 2) > distinct_n([o.text for o in plain], 2)
    assert [o.score for o in diverse] == sorted((o.score for o in diverse), reverse=True)
