"""`auto`: exact copies when the context repeats itself, a tree of guesses otherwise.

SAM-Decoding (Hu et al., ACL 2025, arXiv 2411.10666) pairs a suffix automaton, whose long
exact matches are accepted almost whole, with an auxiliary drafter for the steps where no
match exists. Here the automaton's chain comes first and a tree fills the rest of the budget in
the same pass; identical prefixes are shared, so the tree never holds a guess twice. The tree is
Token Recycling's (Luo et al., ACL 2025), or with `--opt tree=eagle` the trained eagle head's
(docs/heads.md: on the CPUs measured, the head's better guesses did not pay for its drafting
time at the default budget, so it is not the default).
"""

from __future__ import annotations

from typing import Any, Sequence

from .base import Draft, Drafter, StepResult, TargetInfo, check_int, merge
from .suffix import SuffixDrafter
from .token_recycling import TokenRecyclingDrafter

TREES = ("recycling", "eagle")


class AutoDrafter(Drafter):
    name = "auto"
    # 8: the best of 8, 16 and 48 in `leapdecode bench` on the CPU (docs/benchmarks.md); on a GPU,
    # where a pass of 64 costs about what a pass of 1 does, pass a larger --budget
    default_budget = 8

    def __init__(self, min_match: int = 2, max_copy: int = 16, tree: str = "recycling"):
        check_int("auto", "max_copy", max_copy, 1, 16)
        if tree not in TREES:
            raise ValueError(f"auto option tree must be one of {', '.join(TREES)}, got {tree!r}; pass e.g. tree=eagle")
        self.tree_choice = tree
        self.copy = SuffixDrafter(min_match=min_match, max_draft=max_copy)
        # Token Recycling's matrix is kept across requests; the eagle drafter is made per request
        self.tree: Drafter = TokenRecyclingDrafter() if tree == "recycling" else Drafter()

    def configure(self, sampling: Any, target: TargetInfo | None = None) -> None:
        if self.tree_choice == "eagle":
            from .eagle import EagleDrafter

            self.tree = EagleDrafter()
        self.tree.configure(sampling, target)

    def reset(self, prompt: Sequence[int]) -> None:
        self.copy.reset(prompt)
        self.tree.reset(prompt)

    def propose(self, context: Sequence[int], budget: int) -> Draft:
        chain = self.copy.propose(context, budget)
        tree = self.tree.propose(context, budget)
        return merge([chain, tree], budget)

    def observe(self, result: StepResult) -> None:
        self.tree.observe(result)
