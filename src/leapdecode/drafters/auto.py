"""`auto`: exact copies when the context repeats itself, a tree of guesses otherwise.

SAM-Decoding (Hu et al., ACL 2025, arXiv 2411.10666) pairs a suffix automaton, whose long
exact matches are accepted almost whole, with an auxiliary drafter for the steps where no
match exists. Here the automaton's chain comes first and a tree fills the rest of the budget in
the same pass; identical prefixes are shared, so the tree never holds a guess twice.

The tree is Token Recycling's (Luo et al., ACL 2025), whose drafting costs next to nothing
(`tree=auto`, the default, or `tree=recycling`), or with `--opt tree=eagle` the trained eagle
head's. The head guesses better, but each level of its tree costs a small pass of its own: on the
AVX-512 machine its gain for small drafts was within noise, and on an AVX2-only one, where the
engine sizes drafts to 3 nodes, it cost `auto` 30-50% of its speed (docs/heads.md,
docs/benchmarks.md), so the default no longer switches to it for small drafts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from .base import Draft, Drafter, StepResult, TargetInfo, check_int, merge
from .suffix import SuffixDrafter
from .token_recycling import TokenRecyclingDrafter

if TYPE_CHECKING:
    from .eagle import EagleDrafter

TREES = ("auto", "recycling", "eagle")  # auto: Token Recycling's


class AutoDrafter(Drafter):
    name = "auto"
    # 8: the best of 8, 16 and 48 in `leapdecode bench` on the CPU (docs/benchmarks.md); on a GPU,
    # where a pass of 64 costs about what a pass of 1 does, pass a larger --budget
    default_budget = 8

    def __init__(self, min_match: int = 2, max_copy: int = 16, tree: str = "auto"):
        check_int("auto", "max_copy", max_copy, 1, 16)
        if tree not in TREES:
            raise ValueError(f"auto option tree must be one of {', '.join(TREES)}, got {tree!r}; pass e.g. tree=auto")
        self.tree = tree
        self.copy = SuffixDrafter(min_match=min_match, max_draft=max_copy)
        # Token Recycling's matrix is kept across requests; the eagle drafter is set by configure
        self.recycle = None if tree == "eagle" else TokenRecyclingDrafter()
        self.eagle: EagleDrafter | None = None

    def configure(self, sampling: Any, target: TargetInfo | None = None) -> None:
        if self.tree == "eagle":
            from .eagle import EagleDrafter  # here: the heads' dependencies load only when used

            self.eagle = EagleDrafter()
        for tree in self._trees():
            tree.configure(sampling, target)

    def _trees(self) -> list[Drafter]:
        return [tree for tree in (self.recycle, self.eagle) if tree is not None]

    def reset(self, prompt: Sequence[int]) -> None:
        self.copy.reset(prompt)
        for tree in self._trees():
            tree.reset(prompt)

    def propose(self, context: Sequence[int], budget: int) -> Draft:
        chain = self.copy.propose(context, budget)
        tree = (self.eagle or self.recycle).propose(context, budget)
        return merge([chain, tree], budget)

    def observe(self, result: StepResult) -> None:
        for tree in self._trees():
            tree.observe(result)
