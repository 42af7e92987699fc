"""Lookahead on tiny literal vocabularies: the window, the Jacobi step, the pool, the options."""

from __future__ import annotations

import pytest
import torch

from leapdecode.drafters.base import EMPTY_DRAFT, Draft, StepResult
from leapdecode.drafters.lookahead import LookaheadDrafter, build_draft, diagonal_ngrams

VOCAB = 10


def argmax_logits(best: list[int], vocab: int = VOCAB) -> torch.Tensor:
    """[rows, vocab] logits whose argmax in row j is best[j]."""
    logits = torch.zeros(len(best), vocab)
    logits[torch.arange(len(best)), torch.tensor(best)] = 5.0
    return logits


def step(draft: Draft, context: list[int], path: list[int], best: list[int]) -> StepResult:
    """A greedy step: the bonus is the argmax after the last accepted node."""
    accepted = [draft.tokens[i] for i in path]
    bonus = best[path[-1] + 1 if path else 0]
    return StepResult(
        draft=draft,
        path=path,
        accepted=accepted,
        bonus=bonus,
        context=context + accepted + [bonus],
        inputs=[context[-1], *draft.tokens],
        logits=argmax_logits(best),
    )


def tail_drafter(prompt: list[int], **options) -> LookaheadDrafter:
    options = {"window": 3, "ngram": 2, "init": "tail", "vocab_size": VOCAB, **options}
    drafter = LookaheadDrafter(**options)
    drafter.reset(prompt)
    return drafter


def test_budget_zero_empty_context_and_unknown_vocabulary_give_empty_drafts():
    drafter = LookaheadDrafter()
    drafter.reset([1, 2, 3])
    assert drafter.propose([1, 2, 3], 10) == EMPTY_DRAFT  # vocabulary not known yet
    drafter = tail_drafter([1, 2, 3])
    assert drafter.propose([], 10) == EMPTY_DRAFT


def test_initial_window_tail_and_seeded_random():
    assert tail_drafter([1, 2, 3, 4]).window == [2, 3, 4]
    first = LookaheadDrafter(window=6, seed=3)
    first.reset([7, 8, 9])
    again = LookaheadDrafter(window=6, seed=3)
    again.reset([7, 8, 9])
    assert first.window == again.window and len(first.window) == 6
    assert set(first.window) <= {7, 8, 9}
    first.reset([7, 8, 9])  # reseeded per request
    assert first.window == again.window


def test_window_is_a_chain_under_the_root():
    drafter = tail_drafter([1, 2, 3, 4])
    draft = drafter.propose([1, 2, 3, 4], 10)
    assert draft.tokens == (2, 3, 4) and draft.parents == (-1, 0, 1)
    assert drafter.propose([1, 2, 3, 4], 2).tokens == (2, 3)


def test_jacobi_step_slides_by_one_when_only_the_bonus_commits():
    drafter = tail_drafter([1, 2, 3, 4])
    draft = drafter.propose([1, 2, 3, 4], 10)
    drafter.observe(step(draft, [1, 2, 3, 4], [], [5, 6, 7, 8]))
    # argmax after root/2/3/4 guesses positions 4/5/6/7; position 4 is now committed (5)
    assert drafter.anchor == 5
    assert drafter.window == [6, 7, 8]
    assert drafter.levels[-1] == {4: 5, 5: 6, 6: 7, 7: 8}


def test_jacobi_step_slides_past_accepted_window_tokens_and_pads_from_the_context():
    drafter = tail_drafter([1, 2, 5, 6])  # window [2, 5, 6] at positions 4, 5, 6
    draft = drafter.propose([1, 2, 5, 6], 10)
    # the target agrees with guess 2, then wants 9: two tokens commit
    drafter.observe(step(draft, [1, 2, 5, 6], [0], [2, 9, 3, 4]))
    assert drafter.anchor == 6
    assert drafter.window[:2] == [3, 4]  # guesses for positions 6 and 7
    assert drafter.window[2] in {1, 2, 5, 6, 9}  # fresh guess drawn from the context


def test_window_cut_by_the_budget_keeps_its_unfed_guesses():
    drafter = tail_drafter([1, 2, 3, 4, 5, 6], window=5)  # window [2..6] at positions 6..10
    draft = drafter.propose([1, 2, 3, 4, 5, 6], 2)
    assert draft.tokens == (2, 3)
    drafter.observe(step(draft, [1, 2, 3, 4, 5, 6], [], [7, 8, 9]))
    # new guesses for positions 7, 8 from the pass; 9, 10 keep the old guesses 5, 6; 11 is fresh
    assert drafter.window[:4] == [8, 9, 5, 6]
    assert drafter.anchor == 7


def test_pool_collects_bigrams_along_the_trajectory_and_drafts_them():
    drafter = tail_drafter([1, 2, 3, 4])
    context = [1, 2, 3, 4]
    draft = drafter.propose(context, 10)
    result = step(draft, context, [], [5, 6, 7, 8])
    drafter.observe(result)
    assert drafter.pool == {}  # one iterate is not a trajectory yet
    context = list(result.context)  # [1, 2, 3, 4, 5]; window [6, 7, 8]
    draft = drafter.propose(context, 10)
    assert draft.tokens == (6, 7, 8)
    result = step(draft, context, [0], [6, 7, 0, 1])
    drafter.observe(result)
    # level 1 {4: 5, 5: 6, 6: 7, 7: 8}, level 2 {5: 6, 6: 7, 7: 0, 8: 1}
    assert drafter.pool == {5: [(6,)], 6: [(7,)], 7: [(0,)], 8: [(1,)]}
    assert drafter.window[:2] == [0, 1] and drafter.anchor == 7


def test_trigrams_run_along_diagonals():
    levels = [{3: 1, 4: 2, 5: 3}, {4: 4, 5: 5, 6: 6}]
    predicted = {5: 7, 6: 8, 7: 9, 8: 0}
    assert diagonal_ngrams(levels, predicted, n=3) == [(1, 4, 7), (2, 5, 8), (3, 6, 9)]
    assert diagonal_ngrams(levels[1:], predicted, n=3) == []  # too few levels
    assert diagonal_ngrams(levels, predicted, n=2) == [(4, 7), (5, 8), (6, 9)]  # newest level only


def test_pool_keeps_the_latest_g_per_key_and_refreshes_repeats():
    drafter = LookaheadDrafter(guesses=2, ngram=3)
    drafter.add_ngram((1, 2, 3))
    drafter.add_ngram((1, 4, 5))
    drafter.add_ngram((1, 2, 3))  # seen again: now the most recent
    drafter.add_ngram((1, 6, 7))
    assert drafter.pool == {1: [(2, 3), (6, 7)]}


def test_verification_branches_share_a_trie_with_the_window():
    drafter = tail_drafter([1, 2, 3, 9], ngram=3)  # window [2, 3, 9]
    drafter.pool = {9: [(2, 8), (4, 5), (4, 6)]}  # oldest first
    draft = drafter.propose([1, 2, 3, 9], 20)
    # window chain, then (4, 6), (4, 5) sharing their 4, then (2, 8) hanging from the window's 2
    assert draft.tokens == (2, 3, 9, 4, 6, 5, 8)
    assert draft.parents == (-1, 0, 1, -1, 3, 3, 0)
    siblings = {(p, t) for p, t in zip(draft.parents, draft.tokens)}
    assert len(siblings) == len(draft)


def test_small_budget_gives_the_pool_up_to_half():
    drafter = tail_drafter([1, 2, 3, 9], ngram=3)
    drafter.pool = {9: [(4, 5), (6, 7)]}
    draft = drafter.propose([1, 2, 3, 9], 4)
    assert draft.tokens == (2, 3, 6, 7)
    assert draft.parents == (-1, 0, -1, 2)


def test_build_draft_cuts_an_ngram_that_does_not_fit():
    tokens, parents, window_nodes = build_draft([1, 2], [(3, 4, 5)], budget=4)
    assert tokens == [1, 2, 3, 4] and parents == [-1, 0, -1, 2] and window_nodes == [0, 1]


def test_a_step_with_a_foreign_draft_only_slides():
    drafter = tail_drafter([1, 2, 3, 4])
    drafter.propose([1, 2, 3, 4], 10)
    drafter.observe(step(Draft((7,)), [1, 2, 3, 4], [], [5, 6]))
    assert drafter.window[:2] == [3, 4] and drafter.anchor == 5
    assert len(drafter.levels) == 0 and drafter.pool == {}


def test_out_of_vocabulary_prompt_tokens_are_never_drafted():
    drafter = tail_drafter([1, 42, 3])
    assert drafter.propose([1, 42, 3], 10).tokens == (1, 0, 3)


def test_pool_is_per_request_unless_kept():
    for keep, expected in ((False, {}), (True, {1: [(2, 3)]})):
        drafter = LookaheadDrafter(keep_across_requests=keep)
        drafter.add_ngram((1, 2, 3))
        drafter.reset([5])
        assert drafter.pool == expected


@pytest.mark.parametrize(
    "options, fix",
    [
        ({"window": 0}, "window must be an integer >= 1"),
        ({"ngram": 1}, "ngram must be an integer >= 2"),
        ({"guesses": -1}, "guesses must be an integer >= 0"),
        ({"window": 2.5}, "window must be"),
        ({"ngram": True}, "ngram must be"),
        ({"init": "zeros"}, "'random' or 'tail'"),
        ({"seed": -1}, "seed must be"),
        ({"keep_across_requests": 1}, "True or False"),
        ({"vocab_size": 0}, "vocab_size must be"),
    ],
)
def test_bad_options_name_the_fix(options, fix):
    with pytest.raises(ValueError, match=fix):
        LookaheadDrafter(**options)
