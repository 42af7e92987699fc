"""`lookahead`: Jacobi iteration in the draft, an n-gram pool from its trajectory.

Lookahead decoding (Fu et al., ICML 2024, arXiv 2402.02057), fitted into the one-tree-per-step
interface. Each step's draft is one tree with two kinds of branches:

- the lookahead branch: a chain of W window guesses hanging from the root (the last committed
  token). Node i guesses the token at position anchor + i, where anchor = len(context). The
  target's argmax after each chain node is the next Jacobi iterate of the following position.
- verification branches: up to G n-grams from the pool whose first token equals the last
  committed token; their N - 1 remaining tokens are drafted. All branches share one trie, so a
  shared prefix (including one shared with the window) is verified once.

Every node is verified, so an accepted window guess commits too (that is Jacobi decoding).

How this relates to the paper. The paper's lookahead branch is a 2D window of W positions by
N - 1 levels, the levels being the last N - 1 Jacobi iterates of the window; all W (N - 1) window
tokens are fed every step, and the newest outputs become a new level while the oldest is dropped.
n-grams are read along the diagonals of that trajectory: the level-1 guess at position p, the
level-2 guess at p + 1, ..., and the new output at p + N - 1; each token was produced by the model
right after its predecessor. Here only the newest level is fed, as a plain chain (so a guess is
conditioned on the root and the newer guesses before it, as in the Jacobi decoding of Santilli et
al. 2023), and the N - 2 older levels are remembered by the drafter, keyed by absolute position
instead of re-fed. The n-grams are read along the same diagonals. The cost is W lookahead nodes
per step instead of W (N - 1). What is lost is the paper's extra conditioning of the newest level
on the older ones inside the pass; what is added is that the window chain is itself verified.

The window slides with the committed tokens: after a step that commits c tokens, the new guesses
for the positions still ahead are kept and the window is padded at the far end with fresh guesses
(random tokens of the context, seeded per request, as the paper initializes its window).
Under a tight budget the pool's n-grams get at most half of it beyond what the W window
guesses leave free; the window takes the rest, its far end cut first.
"""

from __future__ import annotations

import random
from collections import deque
from typing import Sequence

from .. import rowops
from .base import EMPTY_DRAFT, Draft, Drafter, DraftTrie, StepResult, check_int


def build_draft(
    window: Sequence[int], ngrams: Sequence[Sequence[int]], budget: int
) -> tuple[list[int], list[int], list[int]]:
    """The window chain, then the n-grams, merged into one trie of at most `budget` nodes.

    Returns (tokens, parents, window_nodes): window_nodes[i] is the node of window guess i.
    Shared prefixes are merged, so no two siblings carry the same token; an n-gram that does not
    fit is cut short.

    >>> build_draft([4, 5, 6], [(4, 7), (8, 9)], budget=6)
    ([4, 5, 6, 7, 8, 9], [-1, 0, 1, 0, -1, 4], [0, 1, 2])
    >>> build_draft([4, 5], [(8, 9)], budget=3)
    ([4, 5, 8], [-1, 0, -1], [0, 1])
    """
    trie = DraftTrie(budget)
    window_nodes = trie.insert(window)
    for ngram in ngrams:
        if trie.full:
            break
        trie.insert(ngram)
    return trie.tokens, trie.parents, window_nodes


def diagonal_ngrams(
    levels: Sequence[dict[int, int]], predicted: dict[int, int], n: int
) -> list[tuple[int, ...]]:
    """n-grams read along the diagonals of a Jacobi trajectory.

    `levels` are the last n - 1 iterates, oldest first, as {position: token}; `predicted` is the
    newest one. The n-gram ending at position p is (levels[-(n-1)][p-n+1], ..., levels[-1][p-1],
    predicted[p]); positions missing from a level give no n-gram.

    >>> old, cur = {10: 1, 11: 2}, {11: 3, 12: 4}
    >>> diagonal_ngrams([old, cur], {12: 5, 13: 6}, n=3)
    [(1, 3, 5), (2, 4, 6)]
    """
    if len(levels) < n - 1:
        return []
    recent = list(levels)[len(levels) - (n - 1) :]  # oldest first
    grams = []
    for position, token in sorted(predicted.items()):
        gram = [recent[-back].get(position - back) for back in range(n - 1, 0, -1)]
        if None not in gram:
            grams.append(tuple(gram) + (token,))  # type: ignore[arg-type]
    return grams


class LookaheadDrafter(Drafter):
    """Lookahead decoding as a tree drafter (see the module docstring).

    Options (paper's names in brackets): `window` [W] guesses in the lookahead chain (5);
    `ngram` [N] n-gram length, so N - 1 drafted tokens per n-gram (4); `guesses` [G] n-grams kept
    per first token and verified per step (5); `init`, the first window: "random" prompt tokens
    (seeded by `seed`) or the prompt's "tail" (its last W tokens); `seed` (0);
    `keep_across_requests` keeps the n-gram pool over `reset` (False); `vocab_size` (None: learned
    from the first logits; until then the drafter proposes nothing).
    """

    name = "lookahead"
    default_budget = 20  # W + G (N - 1) with the defaults

    def __init__(
        self,
        *,
        window: int = 5,
        ngram: int = 4,
        guesses: int = 5,
        init: str = "random",
        seed: int = 0,
        keep_across_requests: bool = False,
        vocab_size: int | None = None,
    ):
        check_int("lookahead", "window", window, 1, 5)
        check_int("lookahead", "ngram", ngram, 2, 4)
        check_int("lookahead", "guesses", guesses, 0, 5)
        check_int("lookahead", "seed", seed, 0, 0)
        if init not in ("random", "tail"):
            raise ValueError(f"lookahead option init must be 'random' or 'tail', got {init!r}")
        if not isinstance(keep_across_requests, bool):
            raise ValueError(
                f"lookahead option keep_across_requests must be True or False, got {keep_across_requests!r}"
            )
        if vocab_size is not None:
            check_int("lookahead", "vocab_size", vocab_size, 1, 49152)
        self.window_size = window
        self.ngram = ngram
        self.guesses = guesses
        self.init = init
        self.seed = seed
        self.keep_across_requests = keep_across_requests
        self.vocab_size = vocab_size
        self.pool: dict[int, list[tuple[int, ...]]] = {}  # first token -> continuations, oldest first
        self.reset(())

    # --- state -------------------------------------------------------------------------------

    def reset(self, prompt: Sequence[int]) -> None:
        self._rng = random.Random(self.seed)
        self.anchor = len(prompt)  # window[i] guesses the token at position anchor + i
        # the last N - 1 Jacobi iterates of the window, {position: token}, oldest first
        self.levels: deque[dict[int, int]] = deque(maxlen=self.ngram - 1)
        if not self.keep_across_requests:
            self.pool = {}
        self._last_draft: Draft | None = None
        self._window_nodes: list[int] = []
        prompt = [int(t) for t in prompt]
        self.window = prompt[-self.window_size :] if self.init == "tail" else []
        self._pad(prompt)

    def _fresh_guess(self, context: Sequence[int]) -> int:
        token = int(context[self._rng.randrange(len(context))])
        if self.vocab_size is not None and not 0 <= token < self.vocab_size:
            return 0
        return token

    def _pad(self, context: Sequence[int]) -> None:
        """Fill the window up to W guesses (needs a non-empty context)."""
        while context and len(self.window) < self.window_size:
            self.window.append(self._fresh_guess(context))

    def _align(self, context: Sequence[int]) -> None:
        """Slide the window so that it starts right after `context`."""
        shift = len(context) - self.anchor
        if shift < 0:  # the context went back: the trajectory no longer applies
            self.levels.clear()
            self.window = []
        else:
            self.window = self.window[shift:]
        self.anchor = len(context)
        self._pad(context)

    def add_ngram(self, gram: tuple[int, ...]) -> None:
        """Put an n-gram in the pool under its first token, as the most recent of at most G."""
        bucket = self.pool.setdefault(gram[0], [])
        continuation = gram[1:]
        if continuation in bucket:
            bucket.remove(continuation)  # seen again: make it the most recent
        bucket.append(continuation)
        del bucket[: max(len(bucket) - self.guesses, 0)]

    # --- protocol ----------------------------------------------------------------------------

    def propose(self, context: Sequence[int], budget: int) -> Draft:
        self._last_draft, self._window_nodes = None, []
        if self.vocab_size is None or not context:
            return EMPTY_DRAFT
        self._align(context)
        vocab = self.vocab_size
        self.window = [t if 0 <= t < vocab else 0 for t in self.window]  # prompt ids past the logits
        ngrams = self.pool.get(int(context[-1]), [])[::-1]  # most recent first
        pool_nodes = sum(len(g) for g in ngrams)
        n_window = min(self.window_size, budget - min(pool_nodes, budget // 2))
        tokens, parents, self._window_nodes = build_draft(self.window[:n_window], ngrams, budget)
        self._last_draft = Draft(tuple(tokens), tuple(parents)) if tokens else EMPTY_DRAFT
        return self._last_draft

    def observe(self, result: StepResult) -> None:
        logits = result.logits  # [n + 1, vocab]
        if self.vocab_size != logits.shape[-1]:
            if self.vocab_size is not None:
                self.pool = {}  # another target: its n-grams mean nothing here
            self.vocab_size = logits.shape[-1]
        committed = len(result.accepted) + 1
        ours = result.draft == self._last_draft and len(result.context) == self.anchor + committed
        if ours:
            self._jacobi_step(result)
        self._align(result.context)
        self._last_draft, self._window_nodes = None, []

    def _jacobi_step(self, result: StepResult) -> None:
        """New window iterate from the target's argmax after the root and each window node."""
        rows = [0] + [node + 1 for node in self._window_nodes]
        argmax = rowops.argmax(result.logits[rows])  # [fed + 1]
        predicted = {self.anchor + i: int(t) for i, t in enumerate(argmax)}
        if self.guesses:
            for gram in diagonal_ngrams(self.levels, predicted, self.ngram):
                self.add_ngram(gram)
        self.levels.append(predicted)
        # positions the pass did not reach (window cut by the budget) keep their old guess
        old = {self.anchor + i: t for i, t in enumerate(self.window)}
        old.update(predicted)
        end = self.anchor + len(self.window)
        start = self.anchor + len(result.accepted) + 1
        self.window = [old[p] for p in range(start, max(end, self.anchor + len(argmax)))]
        self.window = self.window[: self.window_size]
        self.anchor = start
