"""The one protocol every drafter follows.

A drafter guesses the next tokens after a committed context. The engine verifies the
guesses with the target model and reports back what happened, so adaptive drafters can learn.

    draft = drafter.propose(context, budget)   # at most `budget` new tokens, never the context
    ...one target pass over the draft...
    drafter.observe(result)                    # accepted tokens, bonus, target logits per node

`Draft.parents[i]` is the index of node i's parent in the same draft, or -1 when node i hangs
directly below the last committed token. A chain is a draft whose parents are None
(equivalently [-1, 0, 1, ...]). Parents always come before their children.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch


@dataclass(frozen=True)
class Draft:
    """Tokens proposed by a drafter, as a chain (`parents` None) or a tree."""

    tokens: tuple[int, ...] = ()
    parents: tuple[int, ...] | None = None
    # [n, vocab] drafter probabilities q for each node's token, None for a deterministic drafter
    # (then verification treats q as one-hot).
    probs: torch.Tensor | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "tokens", tuple(int(t) for t in self.tokens))
        if self.parents is not None:
            parents = tuple(int(p) for p in self.parents)
            if len(parents) != len(self.tokens):
                raise ValueError(f"Draft has {len(self.tokens)} tokens but {len(parents)} parents")
            for i, p in enumerate(parents):
                if not -1 <= p < i:
                    raise ValueError(f"Draft node {i} has parent {p}; a parent must precede its child")
            object.__setattr__(self, "parents", parents)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def is_chain(self) -> bool:
        return self.parents is None or all(p == i - 1 for i, p in enumerate(self.parents))

    def parent_list(self) -> tuple[int, ...]:
        """Parents with the chain case spelled out: [-1, 0, 1, ...]."""
        if self.parents is None:
            return tuple(range(-1, len(self.tokens) - 1))
        return self.parents


EMPTY_DRAFT = Draft()


def check_int(method: str, name: str, value: object, low: int, default: int) -> int:
    """A drafter option that must be an integer >= low; the error names a value that works."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(
            f"{method} option {name} must be an integer >= {low}, got {value!r}; pass e.g. {name}={default}"
        )
    return value


@dataclass
class StepResult:
    """What one verification step did, reported to `Drafter.observe`.

    `inputs` are the tokens fed to the target in this step: the last committed token (the
    root, row 0) followed by the draft's tokens (row i + 1 is draft node i). `logits[j]` is the
    target's next-token logits after input j along its own tree path.
    """

    draft: Draft
    path: list[int]  # accepted draft node indices, root to leaf
    accepted: list[int]  # the accepted draft tokens (tokens of `path`)
    bonus: int  # the token the target added after the accepted ones
    context: Sequence[int]  # committed tokens after this step (prompt + output, bonus included)
    inputs: list[int]  # [n + 1] root token followed by draft tokens
    logits: torch.Tensor = field(repr=False)  # [n + 1, vocab] target logits, model dtype


class Drafter:
    """Base class: subclasses override `propose`, and `reset`/`observe` when they keep state.

    `name` is the method name used on the command line and in the bench; `default_budget`
    the draft size used when a request names none.
    """

    name: str = "drafter"
    default_budget: int = 16  # draft nodes per step when the request does not say

    def configure(self, sampling: Any, engine: Any) -> None:
        """Called once per request before `reset`, with the request's SamplingParams and the
        Engine: drafters that sample (and report q) or that need the target's tokenizer and
        model (a draft model) set themselves up here. Default: nothing."""

    def reset(self, prompt: Sequence[int]) -> None:
        """Called once at the start of each request with the prompt's token ids."""

    def propose(self, context: Sequence[int], budget: int) -> Draft:
        """Return at most `budget` draft tokens that may follow `context`."""
        raise NotImplementedError

    def observe(self, result: StepResult) -> None:
        """Learn from a verification step (adaptive drafters). Default: nothing."""


def merge(drafts: Sequence[Draft], budget: int) -> Draft:
    """Union of deterministic drafts as one trie, earlier drafts first, at most `budget` nodes.

    A node whose path already exists is shared, so no two siblings carry the same token.

    >>> merge([Draft((5, 6)), Draft((5, 7), (-1, -1))], 8)
    Draft(tokens=(5, 6, 7), parents=(-1, 0, -1), probs=None)
    """
    tokens: list[int] = []
    parents: list[int] = []
    index: dict[tuple[int, int], int] = {}  # (parent node, token) -> node
    for draft in drafts:
        mapped: list[int] = []  # draft node -> merged node (-2: dropped)
        for token, parent in zip(draft.tokens, draft.parent_list()):
            new_parent = -1 if parent == -1 else mapped[parent]
            node = -2
            if new_parent != -2:
                node = index.get((new_parent, token), -2)
                if node == -2 and len(tokens) < budget:
                    node = index[(new_parent, token)] = len(tokens)
                    tokens.append(token)
                    parents.append(new_parent)
            mapped.append(node)
    return Draft(tuple(tokens), tuple(parents)) if tokens else EMPTY_DRAFT
