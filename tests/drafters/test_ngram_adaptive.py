import random

import pytest
import torch

from leapdecode.drafters.base import Draft, StepResult
from leapdecode.drafters.ngram_adaptive import NgramAdaptiveDrafter, NgramTable, build_tree


def assert_valid_tree(draft, budget, max_depth=None):
    assert len(draft) <= budget
    parents = draft.parent_list()
    seen = set()
    depth = []
    for i, (tok, p) in enumerate(zip(draft.tokens, parents)):
        assert -1 <= p < i
        assert (p, tok) not in seen, f"duplicate sibling {tok} under {p}"
        seen.add((p, tok))
        depth.append(1 if p == -1 else depth[p] + 1)
    if max_depth is not None:
        assert max(depth, default=0) <= max_depth


def paths(draft):
    """Every root-to-node token path of the draft."""
    parents = draft.parent_list()
    out = []
    for i in range(len(draft)):
        path, j = [], i
        while j != -1:
            path.append(draft.tokens[j])
            j = parents[j]
        out.append(path[::-1])
    return out


def test_table_counts_and_backoff():
    t = NgramTable()
    t.add_sequence([1, 2, 3, 1, 2, 3, 1, 2, 4])
    assert t.tri[(1, 2)] == {3: 2.0, 4: 1.0}
    assert t.top(1, 2) == [(3, 2 / 3), (4, 1 / 3)]
    assert t.top(9, 2) == [(3, 2 / 3), (4, 1 / 3)]  # unseen pair: bi-gram after 2
    assert t.top(None, 3) == [(1, 1.0)]
    assert t.top(7, 7) == []


def test_greedy_chain_follows_most_frequent_and_siblings_explore():
    prompt = [1, 2, 3, 1, 2, 3, 1, 2, 4, 5, 1, 2]
    d = NgramAdaptiveDrafter()
    d.reset(prompt)
    draft = d.propose(prompt, 8)
    assert draft.tokens[:3] == (3, 1, 2)  # the chain copies the most frequent continuation
    assert draft.parents[:3] == (-1, 0, 1)
    assert [4] in paths(draft)  # the less frequent sibling of 3 below the root
    assert_valid_tree(draft, 8)


def test_small_budgets():
    prompt = [1, 2, 3, 1, 2, 3, 1, 2]
    d = NgramAdaptiveDrafter()
    d.reset(prompt)
    assert d.propose(prompt, 1).tokens == (3,)
    assert NgramAdaptiveDrafter().propose([], 4) == Draft()
    assert NgramAdaptiveDrafter().propose([5, 6], 4) == Draft()  # nothing known after 6


def test_random_trees_are_valid():
    rng = random.Random(0)
    for trial in range(60):
        seq = [rng.randrange(5) for _ in range(rng.randrange(2, 80))]
        budget = rng.randrange(0, 30)
        d = NgramAdaptiveDrafter(
            max_children=rng.randrange(1, 5),
            max_depth=rng.randrange(1, 10),
            greedy_share=rng.random(),
        )
        d.reset(seq)
        draft = d.propose(seq, budget)
        assert_valid_tree(draft, budget, d.max_depth)
        for path in paths(draft):  # every drafted step was seen after its bi-gram context
            ext = seq[-1:] + path
            for a, b in zip(ext, ext[1:]):
                assert b in d.table.bi[a]


def test_build_tree_spends_greedy_share_then_best_first():
    table = {(None, 1): [(2, 0.9), (5, 0.1)], (1, 2): [(3, 0.9), (4, 0.1)], (2, 3): [(1, 0.9)]}

    def nxt(a, b):
        return table.get((a, b), [])

    assert build_tree(nxt, None, 1, 4, greedy_share=0.0) == ([2, 3, 1, 5], [-1, 0, 1, -1])
    assert build_tree(nxt, None, 1, 2, greedy_share=1.0, max_depth=1) == ([2, 5], [-1, -1])
    assert build_tree(nxt, None, 1, 0) == ([], [])


def step(draft, path, accepted, bonus, context, vocab=10, top=None):
    inputs = [context[len(context) - len(accepted) - 2]] + list(draft.tokens)
    logits = torch.zeros(len(inputs), vocab)  # [n + 1, vocab]
    for row, tok in (top or {}).items():
        logits[row, tok] = 5.0
    return StepResult(draft, path, accepted, bonus, context, inputs, logits)


def test_observe_learns_committed_tokens():
    d = NgramAdaptiveDrafter(target_topk=0)
    d.reset([1, 2])
    assert d.propose([1, 2], 3) == Draft()
    draft = Draft(tokens=(7,))
    d.observe(step(draft, [], [], 8, [1, 2, 8]))  # rejected 7, bonus 8
    d.observe(step(draft, [], [], 1, [1, 2, 8, 1]))
    d.observe(step(draft, [], [], 2, [1, 2, 8, 1, 2]))
    assert d.table.tri[(2, 8)] == {1: 1.0}
    assert d.propose([1, 2, 8, 1, 2], 3).tokens == (8, 1, 2)


def test_observe_learns_target_top_choice_on_rejected_nodes():
    d = NgramAdaptiveDrafter(target_topk=1, target_weight=0.5)
    d.reset([4, 1, 2])
    draft = Draft(tokens=(3, 5, 6), parents=(-1, 0, -1))
    # root 2 accepted 3, node 1 (5 after 3) rejected; target at row 2 (after 3 5) says 9,
    # at row 3 (after 2 6) says 7; the bonus after 3 is 8.
    d.observe(step(draft, [0], [3], 8, [4, 1, 2, 3, 8], top={0: 3, 1: 8, 2: 9, 3: 7}))
    assert d.table.tri[(3, 5)] == {9: 0.5}
    assert d.table.tri[(2, 6)] == {7: 0.5}
    assert d.table.tri[(1, 2)] == {3: 1.0}  # committed, not double counted
    assert d.table.tri[(2, 3)] == {8: 1.0}


def test_observe_rejects_mismatched_logits():
    d = NgramAdaptiveDrafter()
    d.reset([1, 2])
    bad = StepResult(Draft(tokens=(3,)), [], [], 4, [1, 2, 4], [2, 3], torch.zeros(1, 10))
    with pytest.raises(ValueError):
        d.observe(bad)


def test_reset_starts_over_unless_persist():
    d = NgramAdaptiveDrafter()
    d.reset([1, 2, 3])
    d.reset([5, 1, 2])
    assert d.propose([5, 1, 2], 2) == Draft()
    p = NgramAdaptiveDrafter(persist=True)
    p.reset([1, 2, 3])
    p.reset([5, 1, 2])
    assert p.propose([5, 1, 2], 2).tokens == (3,)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_children": 0},
        {"max_depth": 0},
        {"max_depth": 2.0},
        {"greedy_share": 1.5},
        {"greedy_share": "half"},
        {"target_topk": -1},
        {"target_weight": -0.1},
        {"persist": 1},
    ],
)
def test_bad_options_raise(kwargs):
    with pytest.raises(ValueError):
        NgramAdaptiveDrafter(**kwargs)


def test_name():
    assert NgramAdaptiveDrafter.name == "ngram-adaptive"
