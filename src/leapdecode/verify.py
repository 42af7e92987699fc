"""Verification: which draft tokens does the target keep?

Pure functions over one pass's outputs. Notation of Leviathan et al. 2023 (arXiv 2211.17192):
p is the target's distribution, q the drafter's. The pass fed `inputs = [root] + draft`;
row j of the target's output is the distribution after input j along its tree path, and
`children[j]` lists the inputs whose parent is input j (see tree.py).

- accepted: draft tokens the target keeps, a path from the root down the tree;
- bonus: the one token the target contributes after the last accepted node, drawn from p
  there (greedy: its argmax);
- recovered: in sampling, the token drawn from the residual norm(max(p - q, 0)) when every
  child of a node was rejected; it takes the bonus's place.

Greedy keeps exactly the tokens plain greedy decoding would produce. Sampling keeps exactly the
target's distribution when, at each node, the children's tokens are independent draws from the
node's q (or the drafter is deterministic: q one-hot, so siblings are just distinct guesses):
each child is accepted with probability min(1, p(x) / q(x)), otherwise p is replaced by the
residual and the next child is tried (multi-draft speculative sampling, Miao et al. 2024,
SpecInfer, arXiv 2305.09781; with one child it is Leviathan et al.'s rule).
"""

from __future__ import annotations

from typing import Sequence

import torch


def greedy(
    argmax: Sequence[int], inputs: Sequence[int], children: Sequence[Sequence[int]]
) -> tuple[list[int], int]:
    """Walk down the tree while a child carries the target's argmax.

    Returns (accepted input indices, bonus token). Example: inputs [r, 5, 7, 6] as a chain and
    argmax [5, 7, 9, 1] accept inputs 1 and 2 (tokens 5, 7); the bonus is 9.
    """
    path: list[int] = []
    node = 0
    while True:
        want = argmax[node]
        nxt = next((c for c in children[node] if inputs[c] == want), None)
        if nxt is None:
            return path, want
        path.append(nxt)
        node = nxt


def sample(
    probs: torch.Tensor,
    inputs: Sequence[int],
    children: Sequence[Sequence[int]],
    generator: torch.Generator,
    draft_probs: torch.Tensor | None = None,
) -> tuple[list[int], int]:
    """Lossless speculative sampling over a chain or tree.

    probs: [n + 1, vocab] target distribution after each input.
    draft_probs: [n, vocab] q of each draft node's token (row i = node i = input i + 1), or
    None for a deterministic drafter (one-hot q).
    Returns (accepted input indices, bonus or recovered token).
    """
    path: list[int] = []
    node = 0
    while True:
        p = probs[node]  # [vocab]
        chosen = None
        for child in children[node]:
            token = inputs[child]
            if draft_probs is None:
                q_token = 1.0
            else:
                q = draft_probs[child - 1]  # [vocab]
                q_token = float(q[token])
            accept = min(1.0, float(p[token]) / q_token) if q_token > 0 else 0.0
            if torch.rand((), generator=generator).item() < accept:
                chosen = child
                break
            p = _residual(p, token if draft_probs is None else draft_probs[child - 1])
        if chosen is None:
            return path, int(torch.multinomial(p, 1, generator=generator))
        path.append(chosen)
        node = chosen


def _residual(p: torch.Tensor, q: torch.Tensor | int) -> torch.Tensor:
    """norm(max(p - q, 0)); q may be a token id (one-hot q)."""
    if isinstance(q, int):
        residual = p.clone()
        residual[q] = 0.0
    else:
        residual = torch.clamp(p - q, min=0.0)
    total = residual.sum()
    # Zero mass means p <= q everywhere, i.e. p == q: the child was accepted with
    # probability 1 and we only get here through rounding, so p itself is the right law.
    return residual / total if total > 0 else p
