"""Several sampled drafts at one node: drawing them so that `verify.sample` stays lossless.

`verify.sample` tries a node's children in order: child i is accepted with probability
min(1, p_i(x_i) / q_i(x_i)), otherwise p_{i+1} = norm(max(p_i - q_i, 0)) and the next child is
tried; when all are rejected the token comes from the last residual. Its rows `q_i` must be the
law child i was actually drawn from, given the earlier children:

- i.i.d. siblings (SpecInfer, Miao et al. 2024, arXiv 2305.09781): every row is q;
- siblings drawn from q *without replacement* (Recursive Speculative Decoding, RSD-S,
  Jeon et al. 2024, arXiv 2402.14160): row i is q with the earlier draws removed and
  renormalised. No duplicate guesses are wasted, and the rule is the same recursion, so the
  output is exactly p. Why: given the earlier draws and rejections, x_i is a draw from q_i, and
  Leviathan et al.'s lemma (x ~ q_i, accept with min(1, p_i/q_i), else a draw from
  norm(max(p_i - q_i, 0)) is a draw from p_i) applies at every sibling; the residual does not
  depend on which token was rejected, so induction from the last sibling backwards closes it.
  (A rejected draw x had p_i(x) <= q_i(x), so the residual gives it no mass: removing it from
  the next q loses nothing.)

Verifying without-replacement draws against the plain q rows is *not* lossless:
tests/test_multidraft.py shows that this wrong rule fails the same chi-square test.
"""

from __future__ import annotations

import torch


def sample_without_replacement(
    q: torch.Tensor, k: int, generator: torch.Generator | None = None
) -> tuple[list[int], torch.Tensor]:
    """Draw up to k distinct tokens from q [vocab], one after the other in law.

    Returns (tokens, rows): rows[i] [vocab] is the law tokens[i] was drawn from (q without the
    earlier draws, renormalised), the `draft_probs` rows `verify.sample` needs. Fewer than k
    tokens come back when q has fewer than k tokens of positive probability.

    One draw for all k: token t gets the key E_t / q_t with E_t ~ Exp(1) independent, and the
    tokens come in increasing key order. The smallest key falls on t with probability q_t / sum(q)
    (a race of exponential clocks of rates q_t), and by memorylessness the rest race again among the
    tokens left: the order is that of drawing one by one without replacement.
    """
    law = q.float()
    k = min(k, int((law > 0).sum()))
    if k <= 0:
        return [], q.new_zeros(0, q.shape[-1])
    keys = torch.empty_like(law).exponential_(generator=generator) / law  # q_t = 0: key inf
    tokens = torch.topk(keys, k, largest=False).indices.tolist()
    rows = law.expand(k, -1).clone()
    for i, token in enumerate(tokens[:-1]):
        rows[i + 1:, token] = 0.0  # later draws' laws lose the earlier tokens
    return tokens, rows / rows.sum(-1, keepdim=True)  # rows: [k, vocab]
