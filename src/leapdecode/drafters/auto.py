"""`auto`: exact copies when the context repeats itself, a tree of guesses otherwise.

SAM-Decoding (Hu et al., ACL 2025, arXiv 2411.10666) pairs a suffix automaton, whose long
exact matches are accepted almost whole, with an auxiliary drafter for the steps where no
match exists. Here the automaton's chain comes first and a tree fills the rest of the budget in
the same pass; identical prefixes are shared, so the tree never holds a guess twice.

The tree is Token Recycling's (Luo et al., ACL 2025), whose drafting costs next to nothing, or,
for a small draft under greedy decoding, the trained eagle head's where one ships for the target
and its backend exposes the features it reads: the head guesses better, but each level of its tree
costs a small pass of its own, which pays only for small drafts (docs/heads.md has the figures).
`--opt tree=recycling|eagle` keeps one tree whatever the draft size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from .base import Draft, Drafter, StepResult, TargetInfo, check_int, merge
from .suffix import SuffixDrafter
from .token_recycling import TokenRecyclingDrafter

if TYPE_CHECKING:
    from .eagle import EagleDrafter

TREES = ("auto", "recycling", "eagle")
EAGLE_UP_TO = 4  # draft nodes: the head's tree for drafts this small, Token Recycling's above


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
        self.widest = 0  # the largest budget of this request so far

    def configure(self, sampling: Any, target: TargetInfo | None = None) -> None:
        from ..heads.model import shipped_head

        head_fits = (sampling.greedy and target is not None and target.features is not None
                     and shipped_head(target.name, "eagle") is not None)
        self.eagle = None
        if self.tree == "eagle" or (self.tree == "auto" and head_fits):
            from .eagle import EagleDrafter  # here: the heads' dependencies load only when used

            self.eagle = EagleDrafter()
        for tree in self._trees():
            tree.configure(sampling, target)

    def _trees(self) -> list[Drafter]:
        return [tree for tree in (self.recycle, self.eagle) if tree is not None]

    def reset(self, prompt: Sequence[int]) -> None:
        self.widest = 0
        self.copy.reset(prompt)
        for tree in self._trees():
            tree.reset(prompt)

    def _eagle_drafts(self) -> bool:
        """The head's tree while this request's budgets have all been small. Judged by the largest
        so far, not this step's: the budget shrinks to the tokens left at the end of a generation,
        and a head that has not drafted yet would first read every earlier step's features (15-18
        ms after 250 tokens). Once Token Recycling drafts, the head is done for the request."""
        return self.eagle is not None and (self.recycle is None or self.widest <= EAGLE_UP_TO)

    def propose(self, context: Sequence[int], budget: int) -> Draft:
        self.widest = max(self.widest, budget)
        chain = self.copy.propose(context, budget)
        tree = (self.eagle if self._eagle_drafts() else self.recycle).propose(context, budget)
        return merge([chain, tree], budget)

    def observe(self, result: StepResult) -> None:
        if self.recycle is not None:  # Token Recycling learns every step, whichever tree drafted it
            self.recycle.observe(result)
        if self.eagle is not None and self._eagle_drafts():
            self.eagle.observe(result)
