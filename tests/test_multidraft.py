"""Lossless sampling with several drafts: the emitted tokens follow the target at every depth.

A tiny Markov "model" on 6 tokens: the target's next-token law after token t is P[t], the
draft's is Q[t] (different). Each sample runs the speculative loop (draft, one verification by
`verify.sample`, commit) until 3 tokens are out, and the chi-square test compares depth 1, the
joint of depths 1-2, and depth 3 with the target's own laws. Drafts are built by the draft-model
drafter's own code (`_pick`, `_assemble`) where it has one. Negative controls: the same test
must reject rules that are not lossless.
"""

from __future__ import annotations

from typing import Callable

import pytest
import torch

from leapdecode import tree, verify
from leapdecode.drafters import Draft
from leapdecode.drafters.draft_lm import Level
from leapdecode.drafters.draft_model import DraftModelDrafter
from leapdecode.sampling import SamplingParams
from leapdecode.verify_multi import sample_without_replacement

VOCAB = 6
START = 0
DEPTH = 3
RUNS = 6000
CHI2_CRIT = {5: 20.52, 35: 66.62}  # alpha = 0.001, by degrees of freedom


def chi2(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    keep = expected > 0
    assert counts[~keep].sum() == 0, "sampled a token of probability zero"
    return float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())


def laws(seed: int, scale: float) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(VOCAB, VOCAB, generator=gen) * scale, dim=-1)  # [prev, next]


P = laws(11, 1.2)  # target
Q = laws(12, 1.0)  # draft: another law, every token possible, never too sure (siblings appear)
assert float(Q.max()) < 0.9

DraftFn = Callable[[int, torch.Generator], Draft]


def emitted_tokens(draft_fn: DraftFn, seed: int, runs: int = RUNS) -> torch.Tensor:
    """[runs, DEPTH] tokens emitted by the speculative loop from START."""
    gen = torch.Generator().manual_seed(seed)
    out = torch.zeros(runs, DEPTH, dtype=torch.long)
    for r in range(runs):
        tokens, last = [], START
        while len(tokens) < DEPTH:
            draft = draft_fn(last, gen)
            inputs = [last, *draft.tokens]
            probs = P[inputs]  # [n + 1, vocab]: Markov, the law after an input is P[its token]
            path, bonus = verify.sample(probs, inputs, tree.layout(draft).children, gen, draft.probs)
            tokens += [inputs[j] for j in path] + [bonus]
            last = tokens[-1]
        out[r] = torch.tensor(tokens[:DEPTH])
    return out


def depth_statistics(samples: torch.Tensor) -> dict[str, float]:
    """Chi-square of depth 1, of the joint of depths 1-2 and of depth 3 against the target."""
    first = P[START]  # [vocab]
    joint = first[:, None] * P  # [vocab, vocab]
    third = joint.sum(0) @ P  # [vocab]
    return {
        "depth 1": chi2(torch.bincount(samples[:, 0], minlength=VOCAB).float(), first),
        "depths 1-2": chi2(torch.bincount(samples[:, 0] * VOCAB + samples[:, 1], minlength=VOCAB**2).float(),
                           joint.flatten()),
        "depth 3": chi2(torch.bincount(samples[:, 2], minlength=VOCAB).float(), third),
    }


def passes(stats: dict[str, float]) -> bool:
    single = CHI2_CRIT[5]
    return stats["depth 1"] < single and stats["depths 1-2"] < CHI2_CRIT[35] and stats["depth 3"] < single


def drafter_fn(tree_width: int, levels: int = 2) -> DraftFn:
    """Drafts by the draft-model drafter's own sampling code, fed the draft law Q as logits."""
    drafter = DraftModelDrafter(tree_width=tree_width)
    drafter.configure(SamplingParams(temperature=1.0, seed=5))
    drafter.target_vocab = VOCAB

    def draft(last: int, gen: torch.Generator) -> Draft:
        drafter._generator = gen
        chain, token = [], last
        for _ in range(levels):
            level = drafter._pick(torch.log(Q[token]))
            chain.append(level)
            token = level.token
        drafter._chain_nodes, drafter._confidences = [], []
        return drafter._assemble(chain, budget=64)

    return draft


def iid_fn(k: int, levels: int = 2) -> DraftFn:
    """k siblings drawn independently from Q at each depth; the chain goes on below the first."""

    def draft(last: int, gen: torch.Generator) -> Draft:
        chain, token = [], last
        for _ in range(levels):
            tokens = torch.multinomial(Q[token], k, replacement=True, generator=gen).tolist()
            chain.append(Level(tokens[0], 0.5, tuple(tokens[1:]), Q[token].expand(k, VOCAB)))
            token = tokens[0]
        return DraftModelDrafter()._assemble(chain, budget=64)

    return draft


def test_chain_sampled_from_q_matches_target_at_each_depth():
    stats = depth_statistics(emitted_tokens(drafter_fn(tree_width=1), seed=1))
    assert passes(stats), stats


@pytest.mark.parametrize("k", [2, 3])
def test_iid_siblings_match_target_at_each_depth(k):
    stats = depth_statistics(emitted_tokens(iid_fn(k), seed=2 + k))
    assert passes(stats), stats


@pytest.mark.parametrize("k", [2, 3])
def test_siblings_without_replacement_match_target_at_each_depth(k):
    draft = drafter_fn(tree_width=k)(START, torch.Generator().manual_seed(0))
    assert draft.parents == tuple([-1] * k + [0] * k)  # siblings really were drafted
    assert len(set(draft.tokens[:k])) == k  # distinct
    stats = depth_statistics(emitted_tokens(drafter_fn(tree_width=k), seed=4 + k))
    assert passes(stats), stats


def test_negative_control_without_replacement_against_plain_q_fails():
    """Siblings drawn without replacement but verified as if i.i.d. (every row q): biased."""
    good = drafter_fn(tree_width=3)

    def wrong(last: int, gen: torch.Generator) -> Draft:
        draft = good(last, gen)
        rows = torch.stack([Q[last if p == -1 else draft.tokens[p]] for p in draft.parents])
        return Draft(draft.tokens, draft.parents, rows)

    stats = depth_statistics(emitted_tokens(wrong, seed=9, runs=4 * RUNS))  # a subtler bias: more runs
    assert stats["depth 1"] > 2 * CHI2_CRIT[5] and not passes(stats), stats


def test_negative_control_top_k_with_q_fails():
    """Deterministic top-k siblings are not draws from q: verifying them with q is biased."""

    def wrong(last: int, gen: torch.Generator) -> Draft:
        tokens = torch.topk(Q[last], 3).indices.tolist()
        return Draft(tuple(tokens), (-1, -1, -1), Q[last].expand(3, VOCAB))

    stats = depth_statistics(emitted_tokens(wrong, seed=10))
    assert stats["depth 1"] > 10 * CHI2_CRIT[5], stats


def test_sample_without_replacement_rows():
    q = torch.tensor([0.5, 0.3, 0.2, 0.0])
    tokens, rows = sample_without_replacement(q, 3, torch.Generator().manual_seed(0))
    assert sorted(tokens) == [0, 1, 2]
    assert rows.shape == (3, 4)
    assert torch.allclose(rows.sum(-1), torch.ones(3))
    for i, token in enumerate(tokens):
        assert float(rows[i, token]) > 0
        assert all(float(rows[i, t]) == 0 for t in tokens[:i])  # earlier draws removed
    assert torch.allclose(rows[0], q)
    # fewer tokens of positive probability than asked for
    tokens, rows = sample_without_replacement(q, 6, torch.Generator().manual_seed(0))
    assert len(tokens) == 3 and rows.shape == (3, 4)
