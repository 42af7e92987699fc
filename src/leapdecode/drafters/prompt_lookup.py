"""`prompt-lookup`: copy what followed the latest earlier occurrence of the context's suffix.

Prompt lookup decoding (Saxena 2023) and Input-guided Aggressive Decoding (Ge et al. 2022,
arXiv 2205.10350) both rest on the observation that outputs often copy spans of the input
(summaries, edits, RAG answers, code). CopySpec (arXiv 2502.08923) extends the copied span as
far as the match allows; `max_draft` bounds it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .base import Draft, Drafter


def lookup(
    context: Sequence[int], max_ngram: int = 4, min_ngram: int = 1, max_tokens: int = 10
) -> list[int]:
    """Continuation of the longest context suffix (max_ngram down to min_ngram tokens) that
    also occurs earlier; the latest earlier occurrence wins.

    >>> lookup([1, 2, 3, 4, 9, 1, 2, 3], max_ngram=3, max_tokens=2)
    [4, 9]
    >>> lookup([5, 6, 7], min_ngram=1)
    []
    """
    tokens = np.asarray(context, dtype=np.int64)
    length = len(tokens)
    for n in range(min(max_ngram, length - 1), min_ngram - 1, -1):
        suffix = tokens[length - n :]
        # windows starting at 0 .. length - n - 1: every n-gram except the suffix itself
        windows = np.lib.stride_tricks.sliding_window_view(tokens[: length - 1], n)
        hits = np.flatnonzero((windows == suffix).all(axis=1))
        if len(hits):
            start = int(hits[-1]) + n
            return tokens[start : start + max_tokens].tolist()
    return []


class PromptLookupDrafter(Drafter):
    name = "prompt-lookup"
    default_budget = 10

    def __init__(self, max_ngram: int = 4, min_ngram: int = 1):
        for label, value in (("max_ngram", max_ngram), ("min_ngram", min_ngram)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"prompt-lookup option {label} must be an integer >= 1, got {value!r}")
        if min_ngram > max_ngram:
            raise ValueError(f"prompt-lookup needs min_ngram <= max_ngram, got {min_ngram} > {max_ngram}")
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram

    def propose(self, context: Sequence[int], budget: int) -> Draft:
        return Draft(tuple(lookup(context, self.max_ngram, self.min_ngram, budget)))
