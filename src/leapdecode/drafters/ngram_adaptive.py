"""Adaptive tri-gram drafter: a draft tree from token statistics that learn while decoding.

After ADED (Liu et al., AAAI 2025, "Adaptive Draft-Verification for Efficient LLM Decoding",
arXiv 2407.12021): counts of the next token given the previous two (backing off to the previous
one) are built from the prompt, then grow with every committed token and, optionally, with the
target's own top choices at every verified node, so the statistics drift toward what the target
says. ADED searches its tree with MCTS; we keep the idea of balancing a deep greedy chain
(exploitation) against shallow alternatives (exploration) with a cheaper two-phase build:
a greedy chain first, then best-first expansion by path probability.
"""

from __future__ import annotations

import heapq
import itertools
import math
from typing import Callable, Sequence

import torch

from .base import EMPTY_DRAFT, Draft, Drafter, DraftTrie, StepResult, check_int

# (previous token or None, current token) -> best next tokens with their probabilities
NextTokens = Callable[[int | None, int], Sequence[tuple[int, float]]]


def _most_frequent_first(item: tuple[int, float]) -> tuple[float, int]:
    return -item[1], item[0]  # ties: the smaller token id, for reproducible drafts


class NgramTable:
    """Weighted counts of next tokens after two tokens (tri-gram) and after one (bi-gram).

    `top(prev2, prev1)` uses the tri-gram context when it has been seen, else the bi-gram one.
    Sorted candidate lists are cached per context and dropped when that context changes.
    """

    def __init__(self, max_children: int = 4) -> None:
        self.max_children = max_children
        self.tri: dict[tuple[int, int], dict[int, float]] = {}
        self.bi: dict[int, dict[int, float]] = {}
        self._top: dict[object, list[tuple[int, float]]] = {}

    def add(self, prev2: int | None, prev1: int, nxt: int, weight: float = 1.0) -> None:
        """Count `nxt` after `prev1` and, when known, after the pair (`prev2`, `prev1`)."""
        row = self.bi.setdefault(prev1, {})
        row[nxt] = row.get(nxt, 0.0) + weight
        self._top.pop(prev1, None)
        if prev2 is not None:
            key = (prev2, prev1)
            row = self.tri.setdefault(key, {})
            row[nxt] = row.get(nxt, 0.0) + weight
            self._top.pop(key, None)

    def add_sequence(self, tokens: Sequence[int], start: int = 1) -> None:
        """Count every token of `tokens` from index `start` on, given the ones before it."""
        for i in range(max(start, 1), len(tokens)):
            self.add(tokens[i - 2] if i >= 2 else None, tokens[i - 1], tokens[i])

    def top(self, prev2: int | None, prev1: int) -> list[tuple[int, float]]:
        """Up to `max_children` (token, probability) pairs, most frequent first."""
        key: object = prev1
        counts = self.bi.get(prev1)
        if prev2 is not None and (prev2, prev1) in self.tri:
            key, counts = (prev2, prev1), self.tri[(prev2, prev1)]
        if counts is None:
            return []
        cached = self._top.get(key)
        if cached is None:
            total = sum(counts.values())
            best = heapq.nsmallest(self.max_children, counts.items(), key=_most_frequent_first)
            cached = self._top[key] = [(tok, c / total) for tok, c in best]
        return cached


def build_tree(
    next_tokens: NextTokens,
    prev2: int | None,
    prev1: int,
    budget: int,
    *,
    max_depth: int = 8,
    greedy_share: float = 0.5,
) -> tuple[list[int], list[int]]:
    """Grow a draft tree of at most `budget` nodes below the context (..., prev2, prev1).

    Phase 1 (exploitation) follows the most probable next token for up to
    ceil(greedy_share * budget) nodes. Phase 2 (exploration) adds, best first, the candidates
    with the highest path probability (product of conditional probabilities from the root),
    shallower first on ties. Returns (tokens, parents) with parents[i] < i, -1 = below prev1.

    >>> table = {(None, 1): [(2, 0.6), (5, 0.4)], (1, 2): [(3, 0.5), (4, 0.5)],
    ...          (2, 3): [(1, 1.0)], (1, 5): [(6, 1.0)]}
    >>> next_tokens = lambda a, b: table.get((a, b), [])
    >>> build_tree(next_tokens, None, 1, 4, greedy_share=0.5)
    ([2, 3, 5, 6], [-1, 0, -1, 2])

    The greedy chain is 2 3 (path probability 0.6, then 0.3); the branch 5 6 (0.4 each) then
    beats 4 and the child of 3 (0.3 each).
    """
    trie = DraftTrie(budget)
    # heap entries: (-path probability, depth, tie order, parent index, token, token before it)
    heap: list[tuple[float, int, int, int, int, int]] = []
    order = itertools.count()

    def push_children(parent: int, depth: int, before: int | None, last: int, prob: float) -> None:
        if depth < max_depth:
            for tok, p in next_tokens(before, last):
                heapq.heappush(heap, (-prob * p, depth + 1, next(order), parent, tok, last))

    # Phase 1: the greedy chain; its siblings wait in the heap.
    chain_len = min(budget, max_depth, math.ceil(greedy_share * budget))
    parent, before, last, prob = -1, prev2, prev1, 1.0
    while len(trie) < chain_len:
        candidates = next_tokens(before, last)
        if not candidates:
            break
        for tok, p in candidates[1:]:
            heapq.heappush(heap, (-prob * p, len(trie) + 1, next(order), parent, tok, last))
        tok, p = candidates[0]
        parent, before, last, prob = trie.add(parent, tok), last, tok, prob * p
    push_children(parent, len(trie), before, last, prob)

    # Phase 2: best-first by path probability.
    while heap and not trie.full:
        neg_prob, depth, _, parent, tok, before = heapq.heappop(heap)
        push_children(trie.add(parent, tok), depth, before, tok, -neg_prob)
    return trie.tokens, trie.parents



def _check_float(name: str, value: object, low: float, high: float, default: float) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not low <= value <= high:  # type: ignore[operator]
        raise ValueError(
            f"ngram-adaptive option {name} must be a number in [{low}, {high}], got {value!r}; pass e.g. {name}={default}"
        )
    return float(value)  # type: ignore[arg-type]


class NgramAdaptiveDrafter(Drafter):
    """ADED-style drafter: a tri-gram draft tree whose statistics learn online.

    Options:
        max_children: most children per node (default 4).
        max_depth: deepest node of the tree (default 8).
        greedy_share: fraction of the budget first spent on the greedy chain (default 0.5).
        target_topk: how many of the target's top tokens to learn at each verified node
            (default 1; 0 learns from committed tokens only).
        target_weight: count added for each learned target token; a committed token counts 1
            (default 0.5).
        persist: keep the statistics across requests instead of starting over at `reset`
            (default False).
    """

    name = "ngram-adaptive"

    def __init__(
        self,
        *,
        max_children: int = 4,
        max_depth: int = 8,
        greedy_share: float = 0.5,
        target_topk: int = 1,
        target_weight: float = 0.5,
        persist: bool = False,
    ) -> None:
        self.max_children = check_int("ngram-adaptive", "max_children", max_children, 1, 4)
        self.max_depth = check_int("ngram-adaptive", "max_depth", max_depth, 1, 8)
        self.greedy_share = _check_float("greedy_share", greedy_share, 0.0, 1.0, 0.5)
        self.target_topk = check_int("ngram-adaptive", "target_topk", target_topk, 0, 1)
        self.target_weight = _check_float("target_weight", target_weight, 0.0, math.inf, 0.5)
        if not isinstance(persist, bool):
            raise ValueError(f"persist must be True or False, got {persist!r}")
        self.persist = persist
        self.table = NgramTable(self.max_children)
        self._seen: list[int] = []  # the committed tokens counted so far

    def reset(self, prompt: Sequence[int]) -> None:
        if not self.persist:
            self.table = NgramTable(self.max_children)
        self._seen = []
        self._sync(prompt)

    def propose(self, context: Sequence[int], budget: int) -> Draft:
        self._sync(context)
        if not self._seen:
            return EMPTY_DRAFT
        prev2 = self._seen[-2] if len(self._seen) >= 2 else None
        tokens, parents = build_tree(
            self.table.top, prev2, self._seen[-1], budget,
            max_depth=self.max_depth, greedy_share=self.greedy_share,
        )
        return Draft(tokens=tokens, parents=parents) if tokens else EMPTY_DRAFT

    def observe(self, result: StepResult) -> None:
        self._sync(result.context)
        if self.target_topk and self.target_weight > 0 and result.logits is not None:
            self._learn_from_target(result)

    def _sync(self, context: Sequence[int]) -> None:
        """Count the committed tokens not seen yet; a foreign context starts over."""
        seen, n = self._seen, len(context)
        if n < len(seen) or (seen and int(context[len(seen) - 1]) != seen[-1]):
            self.reset(context)
            return
        start = len(seen)
        seen.extend(int(t) for t in context[start:])
        self.table.add_sequence(seen, start)

    def _learn_from_target(self, result: StepResult) -> None:
        """Count the target's top tokens after each (previous, current) pair it verified."""
        inputs = [int(t) for t in result.inputs]
        if result.logits.shape[0] != len(inputs):
            raise ValueError(
                f"StepResult has {result.logits.shape[0]} logit rows for {len(inputs)} inputs; "
                "the engine must report one row per input (root first)"
            )
        k = min(self.target_topk, result.logits.shape[-1])
        top = torch.topk(result.logits, k, dim=-1).indices.tolist()  # [n + 1, k]
        parents = result.draft.parent_list()
        ctx = result.context
        n_before = len(ctx) - len(result.accepted) - 1  # committed length before this step
        root_prev = int(ctx[n_before - 2]) if n_before >= 2 else None
        # next committed token after each row on the accepted path (already counted by _sync)
        committed = {0: result.accepted[0] if result.accepted else result.bonus}
        for j, node in enumerate(result.path):
            nxt = result.accepted[j + 1] if j + 1 < len(result.accepted) else result.bonus
            committed[node + 1] = nxt
        for row, cur in enumerate(inputs):
            prev = root_prev if row == 0 else inputs[parents[row - 1] + 1]
            for tok in top[row]:
                if committed.get(row) != tok:
                    self.table.add(prev, cur, tok, self.target_weight)
