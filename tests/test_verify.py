"""Verification: greedy walks and lossless sampling, checked against the target distribution."""

import itertools

import pytest
import torch

from leapdecode import tree, verify
from leapdecode.drafters import Draft

# chi-square critical values at alpha = 0.001, by degrees of freedom
CHI2_CRIT = {5: 20.52, 11: 31.26, 35: 66.62}


def chi2(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    keep = expected > 0
    assert counts[~keep].sum() == 0, "sampled a token of probability zero"
    return float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())


def test_greedy_chain_accepts_prefix_and_adds_bonus():
    layout = tree.layout(Draft((5, 7, 6)))
    path, bonus = verify.greedy([5, 7, 9, 1], [0, 5, 7, 6], layout.children)
    assert (path, bonus) == ([1, 2], 9)


def test_greedy_rejects_first_token():
    layout = tree.layout(Draft((5, 7)))
    assert verify.greedy([4, 7, 1], [0, 5, 7], layout.children) == ([], 4)


def test_greedy_tree_follows_matching_branch():
    # root -> a(3) -> b(4); root -> c(8) -> d(9)
    draft = Draft((3, 4, 8, 9), (-1, 0, -1, 2))
    layout = tree.layout(draft)
    inputs = [0, 3, 4, 8, 9]
    argmax = [8, 4, 0, 9, 2]  # after root: 8, after node c: 9, after node d: 2
    assert verify.greedy(argmax, inputs, layout.children) == ([3, 4], 2)


def _first_token_counts(p, draft: Draft, q, n, seed=0, depth_probs=None):
    """Sample the first emitted token n times."""
    layout = tree.layout(draft)
    inputs = [0, *draft.tokens]
    probs = torch.stack([p] * (len(draft) + 1)) if depth_probs is None else depth_probs
    gen = torch.Generator().manual_seed(seed)
    counts = torch.zeros(len(p))
    for _ in range(n):
        path, bonus = verify.sample(probs, inputs, layout.children, gen, q)
        counts[inputs[path[0]] if path else bonus] += 1
    return counts


@pytest.fixture
def target():
    gen = torch.Generator().manual_seed(1)
    return torch.softmax(torch.randn(6, generator=gen) * 1.5, dim=0)


def test_chain_with_draft_probs_matches_target(target):
    """Leviathan et al.: a token drawn from q, accepted with min(1, p/q), else residual."""
    q = torch.softmax(torch.randn(6, generator=torch.Generator().manual_seed(2)), dim=0)
    gen = torch.Generator().manual_seed(3)
    counts = torch.zeros(6)
    for _ in range(20000):
        x = int(torch.multinomial(q, 1, generator=gen))
        layout = tree.layout(Draft((x,)))
        path, bonus = verify.sample(torch.stack([target, target]), [0, x], layout.children, gen, q[None])
        counts[x if path else bonus] += 1
    assert chi2(counts, target) < CHI2_CRIT[5]


def test_deterministic_tree_matches_target(target):
    draft = Draft((1, 4, 2), (-1, -1, -1))  # three distinct guesses at the first position
    counts = _first_token_counts(target, draft, None, 20000)
    assert chi2(counts, target) < CHI2_CRIT[5]


def test_iid_multi_draft_matches_target(target):
    """Siblings drawn independently from q, verified one after the other with residuals."""
    q = torch.softmax(torch.randn(6, generator=torch.Generator().manual_seed(4)), dim=0)
    gen = torch.Generator().manual_seed(5)
    counts = torch.zeros(6)
    probs = torch.stack([target] * 4)
    for _ in range(20000):
        xs = [int(t) for t in torch.multinomial(q, 3, replacement=True, generator=gen)]
        parents = (-1, -1, -1)
        # duplicate siblings are legal for i.i.d. drafts; verify walks children in order
        layout = tree.build(parents, 3)
        path, bonus = verify.sample(probs, [0, *xs], layout.children, gen, torch.stack([q] * 3))
        counts[xs[path[0] - 1] if path else bonus] += 1
    assert chi2(counts, target) < CHI2_CRIT[5]


def test_two_levels_match_joint_distribution():
    """A two-level deterministic tree: the first two emitted tokens follow p(x1) p(x2 | x1)."""
    gen = torch.Generator().manual_seed(6)
    vocab = 6
    root_p = torch.softmax(torch.randn(vocab, generator=gen), 0)
    # draft: 2 guesses at depth 1 (tokens 0, 1), each with one child guess (tokens 2, 3)
    draft = Draft((0, 1, 2, 3), (-1, -1, 0, 1))
    cond = {x: torch.softmax(torch.randn(vocab, generator=gen), 0) for x in range(vocab)}
    # row j = distribution after input j: root, node0 (token 0), node1 (token 1), node2, node3
    probs = torch.stack([root_p, cond[0], cond[1], cond[2], cond[3]])
    layout = tree.layout(draft)
    inputs = [9, *draft.tokens]
    counts = torch.zeros(vocab, vocab)
    for _ in range(40000):
        path, bonus = verify.sample(probs, inputs, layout.children, gen)
        emitted = [inputs[j] for j in path] + [bonus]
        if len(emitted) >= 2:
            counts[emitted[0], emitted[1]] += 1
        else:  # first token was not a guess: the second comes from the next step, from cond
            counts[emitted[0], int(torch.multinomial(cond[emitted[0]], 1, generator=gen))] += 1
    joint = torch.stack([root_p[x] * cond[x] for x in range(vocab)])
    assert chi2(counts.flatten(), joint.flatten()) < CHI2_CRIT[35]


def test_wrong_rule_fails_the_same_test(target, monkeypatch):
    """Negative control: resampling from p instead of the residual after a rejection is biased."""
    monkeypatch.setattr(verify, "_residual", lambda p, q: p)
    draft = Draft((1, 4, 2), (-1, -1, -1))
    counts = _first_token_counts(target, draft, None, 20000)
    assert chi2(counts, target) > CHI2_CRIT[5]


def test_residual_is_normalised_difference():
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.2, 0.6, 0.2])
    assert torch.allclose(verify._residual(p, q), torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(verify._residual(p, 0), torch.tensor([0.0, 0.6, 0.4]))
    assert torch.equal(verify._residual(p, p.clone()), p)
