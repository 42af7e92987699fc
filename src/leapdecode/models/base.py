"""The Target protocol: everything the engine, the drafters and the decoding modes may call on a model.

A target holds a KV cache of `length` committed tokens. One verification step is

    logits = target.forward(inputs, depths, mask)  # [n, vocab] float32, one pass
    target.commit(keep)                            # keep the cache entries of a path of inputs

`forward` appends n inputs at positions `length + depths`; input j attends to the whole cache
and to the inputs that `mask[j]` marks (its tree ancestors and itself; None = causal chain).
Row j of the logits is the next-token distribution after input j along its own path.
`commit(keep)` keeps the inputs `keep` (ascending, a root-to-node path starting at input 0, or
empty) and drops the rest, so the cache again holds committed tokens only. `trim(n)` drops
committed tokens past n. Nothing else is hidden: positions are explicit, and between a forward
and its commit no other call is allowed (`PendingGuard`).

A batching target (several requests in each pass) also offers `draft_cap()`, the most draft
nodes a fixed-budget step should carry now (the pass's rows shared among its requests), and
`shared_load()`, the (rows, tokens kept) of the other requests' last passes, which `--budget
auto` sizes each draft against.

Capabilities say what a target can do beyond that protocol, so that a mode that needs more (the
multi-output modes read a transformers model's own cache) fails with a message before it starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import torch


@dataclass(frozen=True)
class Capabilities:
    """What a target offers beyond the protocol."""

    trimmable: bool = True  # trim(n) is supported (every target so far)
    tree: bool = True  # forward accepts a tree mask, not only a causal chain
    hf_model: bool = False  # `.model` is a transformers PreTrainedModel (multi-output modes need it)
    batch_invariant: bool = False  # a row's logits are bitwise the same at any pass width and tree shape
    features: bool = False  # it is also a FeatureSource: its hidden states, embeddings and LM head rows


@runtime_checkable
class FeatureSource(Protocol):
    """What a drafter trained on the target's own features (heads/) reads of it."""

    hidden_size: int

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """[n] token ids -> [n, hidden] float32 input embeddings, as the first layer sees them."""

    def head_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """[n] token ids -> [n, hidden] float32 rows of the LM head (logits = rows @ feature)."""

    def linear(self, weight: torch.Tensor, dtype: str | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
        """A linear layer of `weight` [out, in] on the target's own kernels, in the target's weight
        format or `dtype`: x [n, in] float32 -> [n, out] float32 (a head then runs as fast as the
        target's layers)."""

    def hidden(self) -> torch.Tensor:
        """[n, hidden] float32 final hidden states (after the final norm: the LM head's input) of
        the inputs of the last prefill (all its tokens) or forward (all its inputs, kept or not)."""


@runtime_checkable
class Target(Protocol):
    """A causal LM with an explicit, trimmable KV cache (see the module docstring)."""

    vocab_size: int
    context_window: int  # most tokens the cache can hold
    eos_ids: frozenset[int]
    n_params: int
    cache_key: str  # what measured pass costs are keyed on (model, weights, device, threads)
    capabilities: Capabilities
    backend: str  # what runs it: "transformers", "native" or "llamacpp" (a draft model runs there too)

    @property
    def length(self) -> int:
        """Committed tokens in the cache."""
        ...

    def reset(self) -> None:
        """Empty the cache."""

    def prefill(self, tokens: Sequence[int]) -> None:
        """Append and commit `tokens` (no logits: the engine feeds the last prompt token later)."""

    def forward(self, tokens: Sequence[int], depths: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Run inputs at positions length + depths; returns float32 logits [n, vocab]."""

    def commit(self, keep: Sequence[int]) -> None:
        """Keep the inputs `keep` of the last forward (a path from input 0, or empty)."""

    def commit_all(self) -> None:
        """Keep every input of the last forward (a chain)."""

    def trim(self, length: int) -> None:
        """Drop committed tokens beyond `length`."""


class PendingGuard:
    """The rule every target shares: a forward must be committed before anything else runs.

    A target calls `start(n)` in forward, `check(action)` at the top of every other call that
    touches the cache, and `done()` (which returns n) in commit.
    """

    def __init__(self) -> None:
        self.pending = 0

    def check(self, action: str) -> None:
        if self.pending:
            raise RuntimeError(f"commit() the previous forward before {action}")

    def start(self, n: int) -> None:
        self.check("running another")
        self.pending = n

    def check_pending(self) -> None:
        if not self.pending:
            raise RuntimeError("commit() needs a forward() first")

    def done(self) -> int:
        self.check_pending()
        n, self.pending = self.pending, 0
        return n

    def clear(self) -> None:
        self.pending = 0


def check_trim(length: int, committed: int) -> None:
    """The one error message for a trim past the cache."""
    if not 0 <= length <= committed:
        raise ValueError(f"cannot trim a cache of {committed} tokens to {length}")


def allowed_keys(tree_mask: torch.Tensor | None, n: int, cached: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """[n, cached + n] bool: which keys (the cache, then the pass's own inputs) each input may see.

    tree_mask: [n, n] bool (True = may attend), or None for a causal chain.
    """
    allowed = torch.ones(n, cached + n, dtype=torch.bool, device=device)
    own = torch.ones(n, n, dtype=torch.bool, device=device).tril() if tree_mask is None else tree_mask.to(device)
    allowed[:, cached:] = own
    return allowed


def additive_mask(tree_mask: torch.Tensor | None, n: int, cached: int, dtype: torch.dtype,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """[1, 1, n, cached + n] additive attention mask (0 where allowed, the dtype's minimum elsewhere)."""
    allowed = allowed_keys(tree_mask, n, cached, device)
    additive = torch.zeros(allowed.shape, dtype=dtype, device=device)
    additive.masked_fill_(~allowed, torch.finfo(dtype).min)
    return additive[None, None]


def eos_ids_of(model: Any, tokenizer: Any = None) -> frozenset[int]:
    """End-of-sequence ids from a transformers model's generation config and config, and the tokenizer."""
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None), tokenizer):
        value = getattr(source, "eos_token_id", None)
        if value is not None:
            ids.update([value] if isinstance(value, int) else value)
    return frozenset(ids)


def threads_key(device: Any) -> str:
    """The part of a pass-cost key that says where a pass ran: device and torch threads now."""
    return f"{device}|threads={torch.get_num_threads()}"


def hf_model_of(target: Any, what: str) -> Any:
    """The transformers model behind `target`, or a clear error naming what needs it and the fix."""
    if not getattr(target, "capabilities", Capabilities()).hf_model:
        raise ValueError(f"{what} needs a transformers model: load with --backend hf (this target is "
                         f"{type(target).__name__})")
    return target.model
