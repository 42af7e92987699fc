"""Suffix-automaton drafter: copy what followed the last time the context ended this way.

SAM-Decoding (Hu et al., ACL 2025, arXiv 2411.10666) keeps a suffix automaton over the
prompt and the output so far. The longest suffix of the context that also occurs earlier is
the suffix link of the automaton's last state, so it is known after every extension; the draft
is the text that followed that earlier occurrence. We follow the *most recent* earlier
occurrence, which tracks loops and recent edits better than the first one.

The continuation is read LZ77-style: when it runs into the end of the context it goes on with
the draft itself, so a repeating pattern of period p yields a full-length draft rather than p
tokens.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from leapdecode.drafters.base import EMPTY_DRAFT, Draft, Drafter, StepResult, check_int

# Feeding more tokens than this at once builds without end-position upkeep and fixes the end
# positions in one linear pass afterwards (a prompt full of repeats would cost O(n^2) otherwise).
_BULK_FROM = 32


class SuffixAutomaton:
    """Online suffix automaton of a token sequence, with the longest earlier match of its end.

    After each `extend`, `match_length` is the length of the longest suffix of `tokens` that
    also occurs ending at an earlier position, and `match_end` is the last index of its most
    recent earlier occurrence (-1 when `match_length` is 0).

    Extending costs amortized O(1) for the automaton plus O(match_length) to keep each state's
    most recent end position exact; `extend_many` with many tokens costs O(total length).
    """

    def __init__(self, tokens: Iterable[int] = ()) -> None:
        self.tokens: list[int] = []
        # One entry per state; state 0 is the root (the empty string).
        self._next: list[dict[int, int]] = [{}]  # transitions: token -> state
        self._link: list[int] = [-1]  # suffix link
        self._len: list[int] = [0]  # length of the longest string of the state
        self._own: list[int] = [-1]  # position that created the state, -1 for clones and root
        self._end: list[int] = [-1]  # most recent end position of the state's strings
        self._last = 0
        self.match_length = 0
        self.match_end = -1
        self.extend_many(tokens)

    def __len__(self) -> int:
        return len(self.tokens)

    def extend(self, token: int) -> None:
        """Append one token, keeping end positions and the match exact."""
        u = self._append(int(token))
        v = u
        while v > 0:  # every suffix of the new sequence now also ends here
            self._end[v] = len(self.tokens) - 1
            v = self._link[v]

    def extend_many(self, tokens: Iterable[int]) -> None:
        """Append tokens; a long run is built in bulk and gives the same result as `extend`."""
        tokens = [int(t) for t in tokens]
        if len(tokens) < _BULK_FROM:
            for t in tokens:
                self.extend(t)
            return
        for t in tokens[:-1]:
            self._append(t)
        self._recompute_ends()
        self.extend(tokens[-1])

    def continuation(self, n: int) -> list[int]:
        """The n tokens after the most recent earlier occurrence of the matched suffix."""
        if self.match_length == 0:
            return []
        seq, out = self.tokens, []
        for j in range(n):
            i = self.match_end + 1 + j
            # past the end of the context the copy goes on from its own output (i - len < j)
            out.append(seq[i] if i < len(seq) else out[i - len(seq)])
        return out

    def _new_state(self, length: int, link: int, nxt: dict[int, int], own: int, end: int) -> int:
        self._next.append(nxt)
        self._link.append(link)
        self._len.append(length)
        self._own.append(own)
        self._end.append(end)
        return len(self._len) - 1

    def _append(self, token: int) -> int:
        """The classic online construction; returns the new state's suffix-link target."""
        i = len(self.tokens)
        self.tokens.append(token)
        nxt, link, length = self._next, self._link, self._len
        cur = self._new_state(length[self._last] + 1, 0, {}, i, i)
        p = self._last
        while p != -1 and token not in nxt[p]:
            nxt[p][token] = cur
            p = link[p]
        if p == -1:
            u = 0
        else:
            q = nxt[p][token]
            if length[p] + 1 == length[q]:
                u = q
            else:
                # the clone's strings occurred exactly where q's did, until now
                u = self._new_state(length[p] + 1, link[q], dict(nxt[q]), -1, self._end[q])
                while p != -1 and nxt[p].get(token) == q:
                    nxt[p][token] = u
                    p = link[p]
                link[q] = u
        link[cur] = u
        self._last = cur
        # u holds the longest suffix that occurred before position i; its end is still the old one
        self.match_length = length[u]
        self.match_end = self._end[u] if u > 0 else -1
        return u

    def _recompute_ends(self) -> None:
        """end[v] = latest creating position in v's suffix-link subtree, children before parents."""
        end = list(self._own)
        for v in sorted(range(1, len(end)), key=self._len.__getitem__, reverse=True):
            parent = self._link[v]
            if end[v] > end[parent]:
                end[parent] = end[v]
        end[0] = -1
        self._end = end


def suffix_draft(tokens: Sequence[int], max_draft: int, min_match: int = 1) -> list[int]:
    """Draft by copying what followed the most recent earlier occurrence of the context's end.

    The matched suffix is the longest one that occurs earlier; shorter than `min_match` gives
    no draft. Past the end of `tokens` the copy continues from itself (LZ77 style).

    >>> suffix_draft([1, 2, 3, 4, 1, 2], 6)   # "1 2" occurred at 0..1, followed by 3 4 1 2 ...
    [3, 4, 1, 2, 3, 4]
    >>> suffix_draft([1, 2, 7, 1, 2, 8, 1, 2], 2)   # the most recent "1 2" was followed by 8
    [8, 1]
    >>> suffix_draft([5, 6, 7], 3)   # nothing repeats
    []
    """
    sam = SuffixAutomaton(tokens)
    if sam.match_length < max(min_match, 1):
        return []
    return sam.continuation(max_draft)



class SuffixDrafter(Drafter):
    """Proposes the continuation of the longest earlier match of the context's end (a chain).

    Options:
        min_match: shortest match worth drafting from (default 2); shorter matches go to
            `fallback` when one is given, else the draft is empty.
        max_draft: most tokens per draft (default 32), on top of the engine's budget.
        fallback: another drafter used when the match is too short; it also receives every
            `reset` and `observe`.

    `match_length` is the match found by the last `propose`, for combining drafters.
    """

    name = "suffix"

    def __init__(
        self, *, min_match: int = 2, max_draft: int = 32, fallback: Drafter | None = None
    ) -> None:
        self.min_match = check_int("suffix", "min_match", min_match, 1, 2)
        self.max_draft = check_int("suffix", "max_draft", max_draft, 1, 32)
        if fallback is not None and not isinstance(fallback, Drafter):
            raise ValueError(
                f"fallback must be a Drafter instance or None, got {type(fallback).__name__}; "
                "pass e.g. fallback=NgramAdaptiveDrafter()"
            )
        self.fallback = fallback
        self.match_length = 0
        self._sam = SuffixAutomaton()

    def reset(self, prompt: Sequence[int]) -> None:
        self._sam = SuffixAutomaton(prompt)
        self.match_length = 0
        if self.fallback is not None:
            self.fallback.reset(prompt)

    def propose(self, context: Sequence[int], budget: int) -> Draft:
        self._sync(context)
        self.match_length = self._sam.match_length
        if self.match_length < self.min_match:
            return self.fallback.propose(context, budget) if self.fallback else EMPTY_DRAFT
        return Draft(tokens=self._sam.continuation(min(budget, self.max_draft)))

    def observe(self, result: StepResult) -> None:
        # The automaton catches up from `context` in the next propose; nothing to learn here.
        if self.fallback is not None:
            self.fallback.observe(result)

    def _sync(self, context: Sequence[int]) -> None:
        """Feed the tokens of `context` not yet seen; rebuild if it is not a continuation."""
        fed = len(self._sam)
        n = len(context)
        if n < fed or (fed and int(context[fed - 1]) != self._sam.tokens[-1]):
            self._sam = SuffixAutomaton(context)  # a new sequence, e.g. no reset between requests
        elif n > fed:
            self._sam.extend_many(context[fed:])
