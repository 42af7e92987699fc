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
        self._start_index()

    def _start_index(self) -> None:
        self._tokens: list[int] = []  # the context the index covers
        self._latest: dict[tuple[int, ...], int] = {}  # n-gram -> its latest start ending before the last token

    def propose(self, context: Sequence[int], budget: int) -> Draft:
        """`lookup`'s answer from an index of the context's n-grams, extended by the tokens new
        since the last step (a dict look-up per n, not a scan of the whole context). The index
        depends on the tokens alone: a context that does not extend the last one starts it over."""
        tokens, known = self._tokens, len(self._tokens)
        if len(context) < known or list(context[:known]) != tokens:
            self._start_index()
            tokens, known = self._tokens, 0
        tokens.extend(int(t) for t in context[known:])
        length = len(tokens)
        for end in range(max(known - 1, 0), length - 1):  # n-grams ending before the last token
            for n in range(self.min_ngram, min(self.max_ngram, end + 1) + 1):
                self._latest[tuple(tokens[end - n + 1:end + 1])] = end - n + 1
        for n in range(min(self.max_ngram, length - 1), self.min_ngram - 1, -1):
            start = self._latest.get(tuple(tokens[length - n:]))
            if start is not None:
                return Draft(tuple(tokens[start + n:start + n + budget]))
        return Draft(())
