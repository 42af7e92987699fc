"""Beam search: bookkeeping on literal log-probabilities, then equality with transformers."""

import math

import pytest
import torch

from leapdecode.decoding import BeamConfig, beam_search, decode
from leapdecode.decoding.beam import BeamGroup

EOS = 3


def lp(*probs):
    return torch.log(torch.tensor([probs]))


def rows(*dists):
    return torch.log(torch.tensor(dists))


def run_literal(length_penalty=1.0, early_stopping=False):
    """Vocabulary 0..3 (3 = EOS), 2 beams, 3 new tokens at most; see the comments for the sums."""
    group = BeamGroup(2, 3, frozenset({EOS}), length_penalty, early_stopping)
    # step 1: one row; best two continuations 0 (log .5) and 1 (log .25), none ends
    assert group.step(lp(0.5, 0.25, 0.15, 0.1)).tolist() == [0, 0]
    assert group.tokens == [[0], [1]]
    # step 2: [0]+EOS = log .5 + log .7 is best and ends; [1, 0] and [0, 2] live on
    parents = group.step(rows([0.05, 0.1, 0.15, 0.7], [0.6, 0.22, 0.1, 0.08]))
    assert parents.tolist() == [1, 0]
    assert group.tokens == [[1, 0], [0, 2]]
    assert [h.tokens for h in group.finished] == [[0, 3]]
    assert not group.done
    # step 3 = max_new_tokens: everything ends; the top two by sum are [1, 0, 0] and [1, 0, 1]
    group.step(rows([0.4, 0.3, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25]))
    assert group.done
    return group


def test_literal_beam_scores_and_pool():
    group = run_literal()
    eos_sum = math.log(0.5) + math.log(0.7)
    best_len3 = math.log(0.25) + math.log(0.6) + math.log(0.4)
    assert [h.tokens for h in group.results()] == [[0, 3], [1, 0, 0]]
    assert [h.score for h in group.results()] == pytest.approx([eos_sum / 2, best_len3 / 3], abs=1e-6)
    assert [h.logprob for h in group.results()] == pytest.approx([eos_sum, best_len3], abs=1e-6)


def test_length_penalty_zero_ranks_by_sum():
    group = run_literal(length_penalty=0.0)
    assert [h.score for h in group.results()] == pytest.approx(
        [math.log(0.5) + math.log(0.7), math.log(0.25) + math.log(0.6) + math.log(0.4)], abs=1e-6)


def test_early_stopping_true_stops_when_pool_is_full():
    group = BeamGroup(2, 10, frozenset({EOS}), 1.0, True)
    group.step(lp(0.5, 0.3, 0.1, 0.1))
    # both top candidates end: the pool is full and early_stopping=True stops at once
    group.step(rows([0.05, 0.05, 0.1, 0.8], [0.05, 0.05, 0.1, 0.8]))
    assert group.done and len(group.finished) == 2


def test_heuristic_keeps_going_while_a_live_beam_can_win():
    # same as above with early_stopping=False: the best live beam (0, 2: log .5 + log .1)
    # at its current length scores -1.50, worse than the worst finished (1, EOS: -0.71),
    # so the search stops too; make the live beam strong and it continues
    group = BeamGroup(2, 10, frozenset({EOS}), 1.0, False)
    group.step(lp(0.5, 0.3, 0.1, 0.1))
    group.step(rows([0.05, 0.05, 0.1, 0.8], [0.05, 0.05, 0.1, 0.8]))
    assert group.done
    group = BeamGroup(2, 10, frozenset({EOS}), 2.0, "never")  # live beams judged at length 10
    group.step(lp(0.5, 0.3, 0.1, 0.1))
    group.step(rows([0.05, 0.05, 0.1, 0.8], [0.05, 0.05, 0.1, 0.8]))
    assert not group.done


@pytest.mark.parametrize("bad, fix", [
    (dict(num_beams=0), "--num-beams"),
    (dict(num_beams=2, num_return_sequences=3), "-n"),
    (dict(early_stopping="sometimes"), "early_stopping"),
    (dict(max_new_tokens=0), "--max-new-tokens"),
])
def test_bad_config(bad, fix):
    with pytest.raises(ValueError, match=fix):
        BeamConfig(**bad)


PROMPTS = ["Answer with one word: what is the capital of France?", "Write a haiku about rain."]


@pytest.mark.parametrize("num_beams, n, length_penalty, early_stopping, prompt", [
    (2, 2, 1.0, False, PROMPTS[0]),
    (4, 2, 0.5, True, PROMPTS[0]),
    (4, 3, 2.0, "never", PROMPTS[1]),
])
def test_equals_transformers_beam_search(engine, num_beams, n, length_penalty, early_stopping, prompt):
    ids = engine.encode(prompt)
    config = BeamConfig(num_beams, n, length_penalty, early_stopping, max_new_tokens=12)
    ours = beam_search(engine, ids, config)
    with torch.inference_mode():
        ref = engine.target.model.generate(
            torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            num_beams=num_beams, num_return_sequences=n, do_sample=False, length_penalty=length_penalty,
            early_stopping=early_stopping, max_new_tokens=12, output_scores=True,
            return_dict_in_generate=True, eos_token_id=sorted(engine.eos_ids), pad_token_id=min(engine.eos_ids),
        )
    assert len(ours) == n
    pad = min(engine.eos_ids)
    for out, seq, score in zip(ours, ref.sequences, ref.sequences_scores):
        theirs = seq[len(ids):].tolist()
        assert theirs[: len(out.token_ids)] == out.token_ids
        assert all(t == pad for t in theirs[len(out.token_ids):])  # transformers pads shorter ones
        assert out.score == pytest.approx(score.item(), abs=1e-4)
    if prompt == PROMPTS[0]:
        assert any(o.finish_reason == "stop" for o in ours)  # EOS handling was exercised


def test_one_beam_is_greedy(engine, reference):
    prompt = PROMPTS[1]
    out = decode(engine, prompt, "beam", num_beams=1, max_new_tokens=10)
    assert len(out) == 1 and out[0].token_ids == reference(prompt, 10)


def test_prompt_too_long(engine):
    with pytest.raises(ValueError, match="context window"):
        decode(engine, [1] * engine.target.context_window, "beam", num_beams=2, max_new_tokens=4)
