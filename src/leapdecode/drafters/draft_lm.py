"""A draft model's side of speculation: its KV cache kept in step with the committed context,
and the chain it decodes one token at a time.

    committed:    P a b c      (the target accepted a and b, then added the bonus c)
    draft cache:  P a b x      (x was the draft's rejected guess)
    next step:    trim the cache to the longest common prefix (P a b), feed the catch-up (c),
                  then decode the chain one token at a time

Used by the draft-model drafter (draft_model.py) and by its text-level twin for a draft of
another tokenizer (cross_tokenizer.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..models.base import Target
from .draft_length import DraftLength

CATCH_UP_LOGITS = 16  # catch-ups up to this long run in one pass; longer ones are prefilled first


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix.

    >>> common_prefix([1, 2, 3, 4], [1, 2, 5])
    2
    """
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class DraftLM:
    """A draft model whose KV cache follows a token sequence.

    `logits_after(context)` trims the cache to its longest common prefix with `context` and
    feeds only the rest; `extend(token)` appends one drafted token. Rejected draft tokens stay
    in the cache until the next `logits_after` trims them away.
    """

    def __init__(self, lm: Target):
        self.lm = lm
        self.seen: list[int] = []  # the tokens whose KV entries the cache holds
        self.passes = 0  # forward passes, for tests and statistics
        self._extend_s = 0.0  # time in one-token passes since the last `take_extends`
        self._extends = 0

    @property
    def vocab_size(self) -> int:
        return self.lm.vocab_size

    @property
    def context_window(self) -> int:
        return self.lm.context_window

    def reset(self) -> None:
        self.lm.reset()
        self.seen = []

    def logits_after(self, context: Sequence[int]) -> torch.Tensor:
        """Next-token logits [vocab] after `context` (not empty)."""
        keep = min(common_prefix(self.seen, context), len(context) - 1)
        self.lm.trim(keep)
        new = list(context[keep:])
        if len(new) > CATCH_UP_LOGITS:  # a prompt: no logits needed but the last one's
            self.lm.prefill(new[:-1])
            self.passes += 1
            new = new[-1:]
        logits = self._pass(new)
        self.seen = list(context)
        return logits

    def extend(self, token: int) -> torch.Tensor:
        """Append one token; next-token logits [vocab] after it."""
        logits = self._pass([token])
        self.seen.append(token)
        return logits

    def _pass(self, tokens: list[int]) -> torch.Tensor:
        """Feed and commit `tokens`; logits [vocab] after the last. One-token passes are timed:
        they are the cost of a draft pass."""
        start = time.perf_counter()
        logits = self.lm.forward(tokens, torch.arange(len(tokens)), None)[-1]  # [vocab]
        self.lm.commit_all()
        self.passes += 1
        if len(tokens) == 1:
            self._extend_s += time.perf_counter() - start
            self._extends += 1
        return logits

    def take_extends(self) -> tuple[float, int]:
        """(seconds, count) of the one-token passes since the last call: the cost of a draft pass."""
        out = (self._extend_s, self._extends)
        self._extend_s, self._extends = 0.0, 0
        return out


@dataclass
class Level:
    """One depth of a drafted chain: the chain's token and any siblings beside it."""

    token: int
    confidence: float  # the draft's top probability here: its guess that the token is accepted
    siblings: tuple[int, ...] = ()
    # [1 + siblings, vocab]: the law q each token was drawn from; None for deterministic picks
    rows: torch.Tensor | None = None


def decode_chain(
    lm: DraftLM,
    context: Sequence[int],
    limit: int,
    length: DraftLength,
    pick: Callable[[torch.Tensor], Level],
    stop_tokens: frozenset[int] = frozenset(),
) -> list[Level]:
    """Draft up to `limit` levels after `context`: one draft pass per level, no pass after the
    last one (its token is only fed next step, if the target accepts it)."""
    levels: list[Level] = []
    logits = lm.logits_after(context)
    while True:
        level = pick(logits)
        levels.append(level)
        if len(levels) >= limit or level.token in stop_tokens:
            return levels
        if not length.keep_going([lv.confidence for lv in levels]):
            return levels
        logits = lm.extend(level.token)


def pad_vocab(probs: torch.Tensor, vocab: int) -> torch.Tensor:
    """[..., n] -> [..., vocab]: cut or zero-pad the last axis (draft and target vocabularies
    differ by padding rows)."""
    n = probs.shape[-1]
    if n >= vocab:
        return probs[..., :vocab]
    return torch.nn.functional.pad(probs, (0, vocab - n))
