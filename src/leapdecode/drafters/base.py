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


@dataclass(frozen=True)
class TargetInfo:
    """What a drafter may know of the target it drafts for: given to `Drafter.configure`."""

    name: str  # the model as loaded: a packaged name, a directory or a .gguf file
    tokenizer: Any
    vocab_size: int
    eos_ids: frozenset[int]
    n_params: int
    key: str  # the target's weights and set-up: what state learned across requests is kept per
    backend: str = "transformers"  # what runs the target ("transformers", "native", "llamacpp")
    dtype: str = "float32"  # its weights' format; a draft model runs the same unless told otherwise
    # the target's hidden states, embeddings and LM head (models/base.FeatureSource) where its
    # backend exposes them (the native runtime), else None: what a trained head drafts from
    features: Any = None


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
    the draft size used when a request names none (sized to the machine by the engine, unless
    `sizes_own_drafts`: a drafter that decides each draft's length itself, as a draft model does).
    """

    name: str = "drafter"
    default_budget: int = 16  # draft nodes per step when the request does not say
    sizes_own_drafts: bool = False

    def configure(self, sampling: Any, target: TargetInfo | None = None) -> None:
        """Called once per request before `reset`, with the request's SamplingParams and the
        target's description: drafters that sample (and report q) or that need the target's
        tokenizer and set-up (a draft model) set themselves up here. Default: nothing."""

    def reset(self, prompt: Sequence[int]) -> None:
        """Called once at the start of each request with the prompt's token ids."""

    def propose(self, context: Sequence[int], budget: int) -> Draft:
        """Return at most `budget` (>= 1: the engine skips drafting when there is no room) draft
        tokens that may follow `context`."""
        raise NotImplementedError

    def observe(self, result: StepResult) -> None:
        """Learn from a verification step (adaptive drafters). Default: nothing."""


class DraftTrie:
    """A draft under construction: nodes appended parents first, no two siblings with the same
    token, at most `budget` nodes. Every drafter that builds a tree builds it here.

    >>> trie = DraftTrie(4)
    >>> trie.insert([5, 6]), trie.insert([5, 7]), trie.add(-1, 8), trie.add(-1, 9)
    ([0, 1], [0, 2], 3, None)
    >>> trie.draft()
    Draft(tokens=(5, 6, 7, 8), parents=(-1, 0, 0, -1), probs=None)
    """

    def __init__(self, budget: int):
        self.budget = budget
        self.tokens: list[int] = []
        self.parents: list[int] = []
        self._node: dict[tuple[int, int], int] = {}  # (parent node, token) -> node

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def full(self) -> bool:
        return len(self.tokens) >= self.budget

    def add(self, parent: int, token: int, share: bool = True) -> int | None:
        """The node of `token` below `parent` (-1: right after the context): the existing one
        (None instead when share is False), else a new one; None when the trie is full."""
        key = (parent, int(token))
        node = self._node.get(key)
        if node is not None:
            return node if share else None
        if self.full:
            return None
        node = self._node[key] = len(self.tokens)
        self.tokens.append(int(token))
        self.parents.append(parent)
        return node

    def insert(self, sequence: Sequence[int], parent: int = -1) -> list[int]:
        """Add a chain below `parent`; the nodes of its longest prefix that fits."""
        nodes: list[int] = []
        for token in sequence:
            node = self.add(parent, token)
            if node is None:
                break
            nodes.append(node)
            parent = node
        return nodes

    def draft(self) -> Draft:
        return Draft(tuple(self.tokens), tuple(self.parents)) if self.tokens else EMPTY_DRAFT


def merge(drafts: Sequence[Draft], budget: int) -> Draft:
    """Union of deterministic drafts as one trie, earlier drafts first, at most `budget` nodes.

    A node whose path already exists is shared, so no two siblings carry the same token.

    >>> merge([Draft((5, 6)), Draft((5, 7), (-1, -1))], 8)
    Draft(tokens=(5, 6, 7), parents=(-1, 0, -1), probs=None)
    """
    trie = DraftTrie(budget)
    for draft in drafts:
        mapped: list[int | None] = []  # draft node -> trie node (None: dropped)
        for token, parent in zip(draft.tokens, draft.parent_list()):
            below = -1 if parent == -1 else mapped[parent]
            mapped.append(None if below is None else trie.add(below, token))
    return trie.draft()
