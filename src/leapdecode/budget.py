"""`--budget auto`: size each draft for the machine it runs on.

A verification pass over k inputs costs c(k); on a CPU c grows slowly for small k (the weights
are read once whatever k is) and then linearly (compute-bound). A draft of b nodes, ordered best
first, is expected to add sum_{i<b} a_i accepted tokens, where a_i is how often node i ends up on
the accepted path. Each step picks the b that maximises expected tokens per second,
(1 + sum_{i<b} a_i) / c(b + 1), from c measured once per model, dtype, device and thread count
(cached on disk) and a_i learned online from the steps so far.

In a shared pass (several requests batched, models/native/batch.py) the others' rows R and
expected tokens T come on top: the b chosen maximises the pass's tokens per second,
(T + 1 + sum_{i<b} a_i) / c(R + b + 1), so a node is worth its row only while its acceptance
beats the whole pass's tokens per row at the margin; with many requests, each drafts less.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import torch

CANDIDATES = (*range(33), 40, 48, 64, 80, 96, 128)
# Pass sizes measured: every size up to 33, where the cost need not be monotonic (a BLAS library
# picks its GEMM kernel by shape, so a pass of 3 inputs can cost more than one of 5), then sparser,
# interpolated in between.
MEASURED = (*range(1, 34), 41, 49, 65, 97, 129)
DECAY = 0.98  # per step: recent steps weigh more, so the estimate follows the text
IDLE_DECAY = 0.995  # per step, for nodes not drafted in it


def measure_pass_costs(target, ks: Sequence[int] = MEASURED,
                       context: int = 256, rounds: int = 5) -> dict[int, float]:
    """Seconds per pass of k inputs over a `context`-token cache: the best of `rounds` rounds,
    each over all sizes, so a burst of load from other processes does not skew one size."""
    target.reset()
    target.prefill([1 + (i * 7919) % 1000 for i in range(context)])
    costs = {k: float("inf") for k in ks}
    for _ in range(rounds):
        for k in ks:
            start = time.perf_counter()
            target.forward(list(range(100, 100 + k)), torch.arange(k), None)
            costs[k] = min(costs[k], time.perf_counter() - start)
            target.commit([])
    target.reset()
    return costs


def cached_pass_costs(target, key: str, path: Path, ks: Sequence[int] = MEASURED,
                      rounds: int = 5) -> dict[int, float]:
    """Pass costs for `key` from the JSON file at `path`, measured (measure_pass_costs) and stored
    when missing."""
    table = json.loads(path.read_text()) if path.exists() else {}
    if key not in table:
        table[key] = {str(k): v for k, v in measure_pass_costs(target, ks, rounds=rounds).items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(table, indent=1))
    return {int(k): v for k, v in table[key].items()}


def interpolate(costs: dict[int, float], k: int) -> float:
    """Piecewise-linear c(k), extrapolated linearly past the last measurement."""
    ks = sorted(costs)
    if k <= ks[0]:
        return costs[ks[0]]
    for lo, hi in zip(ks, ks[1:]):
        if k <= hi:
            return costs[lo] + (costs[hi] - costs[lo]) * (k - lo) / (hi - lo)
    lo, hi = ks[-2], ks[-1]
    return costs[hi] + (costs[hi] - costs[lo]) * (k - hi) / (hi - lo)


DEFAULT_SIZES = tuple(range(1, 18))  # the pass sizes sized_default's costs are measured at
PRIOR_FIRST, PRIOR_DECAY = 0.5, 0.9  # node i accepted with probability 0.5 * 0.9**i a priori


def sized_default(costs: dict[int, float], default: int, margin: float = 1.1) -> int:
    """A drafter's default budget on this machine. The defaults suit CPUs whose passes cost little
    more for 16 inputs than for one (AVX-512 with VNNI or BF16: 1.25-1.35x; docs/runtime.md); on an
    AVX2-only CPU a pass is bound by arithmetic from about 4 inputs on (5 inputs: 1.5-1.75x one),
    and drafting 8-16 tokens costs more than it brings. Under AutoBudget's prior acceptance (node i
    taken with probability 0.5 * 0.9**i), the budget b <= `default` that maximises expected tokens
    per second, (1 + sum of the first b probabilities) / c(b + 1), replaces the default if it is
    expected to be at least `margin` times faster; else the default stays."""
    if default <= 1:
        return default
    gain = [0.0] + torch.cumsum(PRIOR_FIRST * PRIOR_DECAY ** torch.arange(default, dtype=torch.float64), 0).tolist()
    rate = {b: (1 + gain[b]) / interpolate(costs, b + 1) for b in range(1, default + 1)}
    best = max(rate, key=rate.__getitem__)
    return best if rate[best] >= margin * rate[default] else default


class AutoBudget:
    """Chooses the draft budget each step from pass costs and per-node acceptance rates."""

    def __init__(self, costs: dict[int, float], max_budget: int = 128):
        self.max_budget = max_budget
        self.candidates = [b for b in CANDIDATES if b <= max_budget]
        self.costs = costs
        self.cost = {b: interpolate(costs, b + 1) for b in self.candidates}
        self.proposed = torch.zeros(max_budget)  # decayed count of steps that drafted node i
        self.accepted = torch.zeros(max_budget)  # ... in which node i was accepted
        self.prior = PRIOR_FIRST * PRIOR_DECAY ** torch.arange(max_budget, dtype=torch.float32)

    def rates(self) -> torch.Tensor:
        # one pseudo-step of prior, node i accepted with probability 0.5 * 0.9**i, so budgets
        # get tried; a node is taken to be no likelier than the nodes before it (drafts come
        # best first), which keeps a rarely tried deep node from looking good on its prior alone
        return torch.cummin((self.accepted + self.prior) / (self.proposed + 1.0), 0).values

    def choose(self, rows: int = 0, tokens: float = 0.0) -> int:
        """The budget for the next step; `rows` and `tokens`: the other requests of a shared pass."""
        gain = torch.cumsum(self.rates(), 0).tolist()
        cost = self.cost if not rows else {b: interpolate(self.costs, rows + b + 1) for b in self.candidates}
        return max(self.candidates, key=lambda b: (tokens + 1 + (gain[b - 1] if b else 0.0)) / cost[b])

    def update(self, asked: int, path: Sequence[int]) -> None:
        """`asked` nodes were asked for (those the drafter left out count as rejected);
        `path` lists the accepted draft node indices."""
        n = min(asked, self.max_budget)
        # the nodes of this step forget at DECAY, the others slowly, so that a large budget
        # found poor is tried again only now and then
        for counts in (self.proposed, self.accepted):
            counts[:n] *= DECAY
            counts[n:] *= IDLE_DECAY
        self.proposed[:n] += 1
        hits = [i for i in path if i < self.max_budget]
        if hits:
            self.accepted[hits] += 1
