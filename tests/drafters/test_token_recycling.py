"""Token Recycling on tiny literal vocabularies: the matrix, the tree, the budget, the options."""

from __future__ import annotations

import pytest
import torch

from leapdecode.drafters.base import EMPTY_DRAFT, Draft, StepResult
from leapdecode.drafters.token_recycling import (
    UNKNOWN,
    TokenRecyclingDrafter,
    build_tree,
    default_template,
    order_template,
    template_parents,
    truncate_template,
)

VOCAB = 10


def ranked_logits(rankings: list[list[int]], vocab: int = VOCAB) -> torch.Tensor:
    """[rows, vocab] logits whose top tokens, best first, are the given ones (rest far below)."""
    logits = torch.full((len(rankings), vocab), -100.0)
    for row, ranking in enumerate(rankings):
        for rank, token in enumerate(ranking):
            logits[row, token] = 10.0 - rank
    return logits


def step(
    draft: Draft, root: int, path: list[int], rankings: list[list[int]], context: list[int]
) -> StepResult:
    accepted = [draft.tokens[i] for i in path]
    bonus = rankings[path[-1] + 1 if path else 0][0]
    return StepResult(
        draft=draft,
        path=path,
        accepted=accepted,
        bonus=bonus,
        context=context + accepted + [bonus],
        inputs=[root, *draft.tokens],
        logits=ranked_logits(rankings),
    )


def test_nothing_before_the_vocabulary_is_known():
    drafter = TokenRecyclingDrafter(k=2)
    assert drafter.propose([1, 2, 3], 8) == EMPTY_DRAFT
    drafter.observe(step(EMPTY_DRAFT, 3, [], [[4, 5]], [1, 2, 3]))
    assert drafter.propose([], 8) == EMPTY_DRAFT


def test_observe_overwrites_rows_with_topk_of_every_input():
    drafter = TokenRecyclingDrafter(k=3)
    draft = Draft((4, 7), (-1, 0))
    drafter.observe(step(draft, 3, [0], [[4, 1, 2], [6, 7, 8], [9, 0, 5]], [1, 3]))
    matrix = drafter.matrix
    assert matrix.shape == (VOCAB, 3)
    assert matrix[3].tolist() == [4, 1, 2]
    assert matrix[4].tolist() == [6, 7, 8]
    assert matrix[7].tolist() == [9, 0, 5]  # rejected nodes are recycled too
    assert matrix[0].tolist() == [UNKNOWN] * 3
    # a later step overwrites
    drafter.observe(step(Draft((6,)), 4, [], [[2, 3, 9], [1, 1, 1]], [1, 3, 4]))
    assert matrix[4].tolist() == [2, 3, 9]


@pytest.mark.parametrize("path, winner", [([0], [1, 2]), ([0, 1], [3, 5])])
def test_a_repeated_input_token_takes_the_row_of_the_committed_path(path, winner):
    drafter = TokenRecyclingDrafter(k=2)
    # token 4 appears as node 0 and as its child node 1, so two rows describe its successors
    draft = Draft((4, 4), (-1, 0))
    drafter.observe(step(draft, 3, path, [[4, 9], [1, 2], [3, 5]], [1, 3]))
    assert drafter.matrix[4].tolist() == winner


def test_off_path_duplicates_keep_the_later_row():
    drafter = TokenRecyclingDrafter(k=2)
    draft = Draft((4, 6, 4), (-1, -1, 1))
    drafter.observe(step(draft, 3, [], [[8, 9], [1, 2], [7, 0], [3, 5]], [3]))
    assert drafter.matrix[4].tolist() == [3, 5]


def test_tree_follows_the_template_through_the_matrix():
    template = [(0,), (1,), (0, 0), (0, 1), (1, 0)]
    drafter = TokenRecyclingDrafter(k=2, template=template)
    # M[3] = [4, 6], M[4] = [7, 8], M[6] = [9, 1]
    draft = Draft((4, 6), (-1, -1))
    drafter.observe(step(draft, 3, [0], [[4, 6], [7, 8], [9, 1]], [3]))
    got = drafter.propose([5, 3], 10)
    # best-first order: (0,) (0,0) (1,) (0,1) (1,0)
    assert got.tokens == (4, 7, 6, 8, 9)
    assert got.parents == (-1, 0, -1, 0, 2)


def test_budget_keeps_the_most_promising_prefix():
    template = [(0,), (1,), (0, 0), (0, 1), (1, 0)]
    drafter = TokenRecyclingDrafter(k=2, template=template)
    drafter.observe(step(Draft((4, 6), (-1, -1)), 3, [0], [[4, 6], [7, 8], [9, 1]], [3]))
    got = drafter.propose([3], 2)
    assert got.tokens == (4, 7) and got.parents == (-1, 0)
    got = drafter.propose([3], 3)
    assert got.tokens == (4, 7, 6) and got.parents == (-1, 0, -1)


def test_unknown_rows_drop_their_subtree_and_the_budget_refills():
    template = [(0,), (1,), (0, 0), (1, 0)]
    drafter = TokenRecyclingDrafter(k=2, template=template)
    drafter.observe(step(EMPTY_DRAFT, 3, [], [[4, 6]], [3]))  # only M[3] is known
    got = drafter.propose([3], 2)
    assert got.tokens == (4, 6) and got.parents == (-1, -1)
    assert drafter.propose([2], 5) == EMPTY_DRAFT  # root never seen


def test_build_tree_drops_repeated_siblings_with_their_subtrees():
    table = {5: [7, 7, 8], 7: [1, 2, 3], 8: [7, 2, 2]}
    paths = [(0,), (1,), (2,), (0, 0), (1, 0), (2, 0), (2, 1), (2, 2)]
    tokens, parents = build_tree(5, table.__getitem__, paths, template_parents(paths), budget=20)
    # (1,) repeats 7 under the root, so it and (1, 0) go; (2, 2) repeats 2 under node 8
    assert tokens == [7, 8, 1, 7, 2]
    assert parents == [-1, -1, 0, 1, 1]


def test_default_template_is_a_wide_then_deep_tree_with_parents_first():
    template = default_template()
    assert len(template) == 80 and len(set(template)) == 80
    widths = [sum(len(p) == d for p in template) for d in range(1, 5)]
    assert widths == [8, 20, 25, 17]
    assert max(len(p) for p in template) == 8 and (0,) * 8 in template
    assert template == order_template(template)
    for i, parent in enumerate(template_parents(template)):
        assert parent < i


def test_order_and_truncate_template():
    template = [(1, 0), (0, 0), (1,), (0,), (0, 0, 0), (2,)]
    assert order_template(template) == [(0,), (0, 0), (0, 0, 0), (1,), (2,), (1, 0)]
    assert truncate_template(template, 4) == [(0,), (0, 0), (0, 0, 0), (1,)]
    assert truncate_template(template, 0) == []


def test_full_size_draft_is_a_valid_tree_within_the_vocabulary():
    torch.manual_seed(0)
    drafter = TokenRecyclingDrafter()
    logits = torch.randn(1, 50)
    drafter.observe(StepResult(EMPTY_DRAFT, [], [], 0, [1, 0], [1], logits))
    drafter.matrix.copy_(torch.stack([torch.randperm(50)[:8] for _ in range(50)]))
    got = drafter.propose([1], 80)
    assert len(got) == 80
    siblings = set()
    for i, (token, parent) in enumerate(zip(got.tokens, got.parents)):
        assert -1 <= parent < i and 0 <= token < 50
        assert (parent, token) not in siblings
        siblings.add((parent, token))


def test_vocabulary_smaller_than_k_leaves_the_tail_unknown():
    drafter = TokenRecyclingDrafter(k=8)
    drafter.observe(StepResult(EMPTY_DRAFT, [], [], 2, [0, 2], [0], ranked_logits([[2, 1, 0]], vocab=3)))
    assert drafter.matrix[0].tolist() == [2, 1, 0] + [UNKNOWN] * 5


@pytest.mark.parametrize("keep, expected", [(True, [4, 6]), (False, [UNKNOWN, UNKNOWN])])
def test_keep_across_requests(keep, expected):
    drafter = TokenRecyclingDrafter(k=2, keep_across_requests=keep)
    drafter.observe(step(EMPTY_DRAFT, 3, [], [[4, 6]], [3]))
    drafter.reset([1, 2])
    assert drafter.matrix[3].tolist() == expected


def test_vocab_size_option_allocates_upfront():
    drafter = TokenRecyclingDrafter(k=2, vocab_size=VOCAB)
    assert drafter.matrix.shape == (VOCAB, 2)
    assert drafter.propose([3], 4) == EMPTY_DRAFT  # nothing learned yet


@pytest.mark.parametrize(
    "options, fix",
    [
        ({"k": 0}, "k must be"),
        ({"k": True}, "k must be"),
        ({"template": []}, "empty"),
        ({"template": [(0, 1)]}, "add (0,)"),
        ({"template": [(0,), (0,)]}, "twice"),
        ({"template": [(8,)]}, "raise k"),
        ({"template": [()]}, "non-empty"),
        ({"keep_across_requests": "yes"}, "True or False"),
        ({"vocab_size": 0}, "vocab_size"),
    ],
)
def test_bad_options_name_the_fix(options, fix):
    with pytest.raises(ValueError, match=fix.replace("(", r"\(").replace(")", r"\)")):
        TokenRecyclingDrafter(**options)
