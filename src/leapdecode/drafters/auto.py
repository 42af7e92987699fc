"""`auto`: exact copies when the context repeats itself, the Token Recycling tree otherwise.

SAM-Decoding (Hu et al., ACL 2025, arXiv 2411.10666) pairs a suffix automaton, whose long
exact matches are accepted almost whole, with an auxiliary drafter for the steps where no
match exists. Here the automaton's chain comes first and the Token Recycling tree
(Luo et al., ACL 2025) fills the rest of the budget in the same pass; identical prefixes are
shared, so the tree never holds a guess twice.
"""

from __future__ import annotations

from typing import Sequence

from .base import Draft, Drafter, StepResult, check_int, merge
from .suffix import SuffixDrafter
from .token_recycling import TokenRecyclingDrafter


class AutoDrafter(Drafter):
    name = "auto"
    # 8: the best of 8, 16 and 48 in `leapdecode bench` on the CPU (docs/benchmarks.md); on a GPU,
    # where a pass of 64 costs about what a pass of 1 does, pass a larger --budget
    default_budget = 8

    def __init__(self, min_match: int = 2, max_copy: int = 16):
        check_int("auto", "max_copy", max_copy, 1, 16)
        self.copy = SuffixDrafter(min_match=min_match, max_draft=max_copy)
        self.recycle = TokenRecyclingDrafter()

    def reset(self, prompt: Sequence[int]) -> None:
        self.copy.reset(prompt)
        self.recycle.reset(prompt)

    def propose(self, context: Sequence[int], budget: int) -> Draft:
        chain = self.copy.propose(context, budget)
        tree = self.recycle.propose(context, budget)
        return merge([chain, tree], budget)

    def observe(self, result: StepResult) -> None:
        self.recycle.observe(result)
