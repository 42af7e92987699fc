"""`--budget auto`: size each draft for the machine it runs on.

A verification pass over k inputs costs c(k); on a CPU c grows slowly for small k (the weights
are read once whatever k is) and then linearly (compute-bound). A draft of b nodes, ordered best
first, is expected to add sum_{i<b} a_i accepted tokens, where a_i is how often node i ends up on
the accepted path. Each step picks the b that maximises expected tokens per second,
(1 + sum_{i<b} a_i) / c(b + 1), from c measured once per model, dtype, device and thread count
(cached on disk) and a_i learned online from the steps so far.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import torch

CANDIDATES = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 80, 96, 128)
DECAY = 0.98  # per step: recent steps weigh more, so the estimate follows the text


def measure_pass_costs(target, ks: Sequence[int] = (1, 2, 4, 8, 16, 32, 64, 96, 129),
                       context: int = 256, repeats: int = 3) -> dict[int, float]:
    """Seconds per pass of k inputs over a `context`-token cache (best of `repeats`)."""
    target.reset()
    target.prefill([1 + (i * 7919) % 1000 for i in range(context)])
    costs = {}
    for k in ks:
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            target.forward(list(range(100, 100 + k)), torch.arange(k), None)
            best = min(best, time.perf_counter() - start)
            target.commit([])
        costs[k] = best
    target.reset()
    return costs


def cached_pass_costs(target, key: str, path: Path) -> dict[int, float]:
    """Pass costs for `key` from the JSON file at `path`, measured and stored when missing."""
    table = json.loads(path.read_text()) if path.exists() else {}
    if key not in table:
        table[key] = {str(k): v for k, v in measure_pass_costs(target).items()}
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


class AutoBudget:
    """Chooses the draft budget each step from pass costs and per-node acceptance rates."""

    def __init__(self, costs: dict[int, float], max_budget: int = 128):
        self.max_budget = max_budget
        self.candidates = [b for b in CANDIDATES if b <= max_budget]
        self.cost = {b: interpolate(costs, b + 1) for b in self.candidates}
        self.proposed = torch.zeros(max_budget)  # decayed count of steps that drafted node i
        self.accepted = torch.zeros(max_budget)  # ... in which node i was accepted

    def rates(self) -> torch.Tensor:
        # an unexplored node counts as accepted half the time, so budgets get tried
        return (self.accepted + 0.5) / (self.proposed + 1.0)

    def choose(self) -> int:
        gain = torch.cumsum(self.rates(), 0).tolist()
        return max(self.candidates, key=lambda b: (1 + (gain[b - 1] if b else 0.0)) / self.cost[b])

    def update(self, drafted: int, path: Sequence[int]) -> None:
        """`drafted` nodes were proposed; `path` lists the accepted draft node indices."""
        self.proposed *= DECAY
        self.accepted *= DECAY
        self.proposed[: min(drafted, self.max_budget)] += 1
        hits = [i for i in path if i < self.max_budget]
        if hits:
            self.accepted[hits] += 1
