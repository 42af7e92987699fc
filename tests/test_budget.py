import json

import pytest

from leapdecode.budget import AutoBudget, cached_pass_costs, interpolate, sized_default
from leapdecode.drafters import Draft, merge


def test_interpolate_and_extrapolate():
    costs = {1: 1.0, 3: 2.0, 5: 6.0}
    assert interpolate(costs, 1) == 1.0
    assert interpolate(costs, 2) == 1.5
    assert interpolate(costs, 4) == 4.0
    assert interpolate(costs, 7) == 10.0


def test_flat_cost_and_perfect_drafts_choose_largest():
    auto = AutoBudget({1: 1.0, 200: 1.0}, max_budget=32)
    for _ in range(50):
        auto.update(32, list(range(32)))
    assert auto.choose() == 32


def test_useless_drafts_choose_zero():
    auto = AutoBudget({1: 1.0, 2: 1.1, 200: 20.0}, max_budget=64)
    for _ in range(200):
        auto.update(64, [])
    assert auto.choose() == 0


def test_nodes_a_drafter_leaves_out_count_as_rejected():
    # the drafter fills 4 nodes whatever it is asked for, all accepted; larger passes cost more
    auto = AutoBudget({1: 1.0, 129: 1.0 + 0.01 * 128}, max_budget=128)
    chosen = []
    for _ in range(300):
        chosen.append(auto.choose())
        auto.update(chosen[-1], list(range(min(chosen[-1], 4))))
    assert chosen[-100:].count(4) >= 90  # exploring a larger budget now and then, no more


def test_tradeoff_matches_hand_computation():
    # node 0 always accepted, node 1 half the time, the rest never; cost 1 + 0.25 per extra input
    costs = {1: 1.0, 129: 1.0 + 0.25 * 128}
    auto = AutoBudget(costs, max_budget=16)
    for step in range(400):
        auto.update(16, [0, 1] if step % 2 else [0])
    # b=1: 2/1.25 = 1.6; b=2: 2.5/1.5 = 1.67; b=3: 2.5/1.75 = 1.43
    assert auto.choose() == 2


def test_a_shared_pass_drafts_less_the_more_it_carries():
    # node 0 always accepted, node 1 half the time; the pass is flat up to 8 rows, then linear
    costs = {1: 1.0, 8: 1.0, 136: 1.0 + 128 * 0.1}
    auto = AutoBudget(costs, max_budget=16)
    for step in range(400):
        auto.update(16, [0, 1] if step % 2 else [0])
    assert auto.choose() == 7  # alone: every free row is worth a node
    # beside 7 others (7 rows, 14 tokens): b=0 15/1.0, b=1 16/1.1, b=2 16.5/1.2 ... b=0 wins
    assert auto.choose(rows=7, tokens=14) == 0
    # beside one other in the flat part (2 rows, 2 tokens): b=2 keeps the pass at 5 rows, free
    assert auto.choose(rows=2, tokens=2) >= 2


def test_sized_default_keeps_the_default_where_wide_passes_are_cheap():
    # a pass of 17 at 1.35x one (the AVX-512 machine's w8a8 curve, rounded)
    costs = {1: 1.0, 4: 1.0, 8: 1.08, 16: 1.35, 17: 1.38}
    assert sized_default(costs, 16) == 16
    assert sized_default(costs, 10) == 10
    assert sized_default(costs, 1) == 1


def test_sized_default_shrinks_where_passes_grow_with_their_rows():
    # the AVX2-only machine's w8a8 curve (rounded): cheap up to 4 inputs, then about 0.3x a row
    costs = {1: 1.0, 2: 0.95, 3: 1.13, 4: 1.25, 5: 1.75, 6: 1.89, 8: 2.34, 16: 4.78, 17: 5.1}
    # by hand: b = 2 gives (1 + 0.5 + 0.45) / c(3) = 1.726, b = 3 (1 + 1.355) / 1.25 = 1.884,
    # b = 4 (1 + 1.7195) / 1.75 = 1.554, b = 16 (1 + 4.073) / 5.1 = 0.995
    assert sized_default(costs, 16) == 3
    assert sized_default(costs, 80) == 3  # past the measured sizes, extrapolated
    # b = 2 is best, (1.95 / 1.1 = 1.773), but within 10% of the default's 2.355 / 1.4 = 1.682
    assert sized_default({1: 1.0, 2: 1.0, 3: 1.1, 4: 1.4}, 3) == 3
    assert sized_default({1: 1.0, 2: 1.0, 3: 1.1, 4: 1.6}, 3) == 2


def test_cached_pass_costs_reads_without_measuring(tmp_path):
    path = tmp_path / "costs.json"
    path.write_text(json.dumps({"k": {"1": 0.02, "8": 0.03}}))

    class NoTarget:
        def __getattr__(self, name):
            raise AssertionError("must not measure when cached")

    assert cached_pass_costs(NoTarget(), "k", path) == {1: 0.02, 8: 0.03}


def test_merge_shares_prefixes_and_respects_budget():
    chain = Draft((5, 6, 7))
    tree = Draft((5, 9, 6, 8), (-1, -1, 0, 0))  # 5 -> 6 duplicates the chain's prefix
    merged = merge([chain, tree], 10)
    assert merged.tokens == (5, 6, 7, 9, 8)
    assert merged.parents == (-1, 0, 1, -1, 0)
    assert merge([chain, tree], 2).tokens == (5, 6)


def test_merge_drops_subtree_of_dropped_node():
    tree = Draft((1, 2, 3), (-1, 0, 1))
    assert merge([Draft((4, 5)), tree], 3).tokens == (4, 5, 1)


@pytest.mark.parametrize("budget", [0, -1, "big", 1.5])
def test_bad_budget(budget):
    from leapdecode import GenerationConfig

    with pytest.raises(ValueError, match="budget"):
        GenerationConfig(budget=budget)
