"""`none`: no draft at all, so every step decodes exactly one token.

This is the baseline every speedup is measured against: the same engine, one target pass per
token.
"""

from __future__ import annotations

from typing import Sequence

from .base import EMPTY_DRAFT, Draft, Drafter


class NoDrafter(Drafter):
    name = "none"
    default_budget = 1

    def propose(self, context: Sequence[int], budget: int) -> Draft:
        return EMPTY_DRAFT
