"""Adapter over a transformers causal LM with explicit positions and an explicit KV cache.

The cache holds `length` committed tokens. `forward` appends a block of inputs (a chain or a
tree) on top of it and returns logits for every input; `commit(keep)` then keeps the KV entries
of the chosen inputs and drops the rest, so the cache holds committed tokens only.

Column layout of the linear layers (float32 on the CPU). A verification pass multiplies each
weight matrix by a handful of rows, and the BLAS path that `torch.nn.functional.linear` takes for
[n, in] x [out, in]^T costs about n times a one-row pass for small n on some CPUs, which would
eat the gain of verifying n tokens at once. The same product computed as (W @ x^T)^T takes
another path that reads W once for all n columns (the measurements: docs/benchmarks.md, "Why
`hf-assisted` is slower than plain decoding here").

While an HFTarget runs the model, its linear layers take the column layout (`column_layout`);
at any other time, e.g. inside transformers' own `generate`, they compute exactly as before.
The engine's plain decoding (`none`) runs through the same layout, so speedups compare like with
like; the two layouts round differently (about 1e-5 in the logits), as any two BLAS paths do.
"""

from __future__ import annotations

import threading
import types
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch
from transformers import DynamicCache, PreTrainedModel

from .base import Capabilities, PendingGuard, additive_mask, check_trim, eos_ids_of, threads_key

PREFILL_CHUNK = 512


class _Layout(threading.local):
    column = False


_LAYOUT = _Layout()


def _linear_forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """nn.Linear.forward, in the column layout while an HFTarget runs the model."""
    if not _LAYOUT.column:
        return torch.nn.functional.linear(x, self.weight, self.bias)
    rows = x.reshape(-1, x.shape[-1])  # [n, in]
    y = torch.mm(self.weight, rows.t()).t()  # [n, out], W read once for all n rows
    if self.bias is not None:
        y = y + self.bias
    return y.reshape(*x.shape[:-1], self.weight.shape[0])


def install_column_layout(model: torch.nn.Module) -> bool:
    """Give every nn.Linear of a float32 CPU model the switchable forward; False where the
    model is on another device or in another dtype (then nothing changes)."""
    first = next(model.parameters())
    if first.device.type != "cpu" or first.dtype != torch.float32:
        return False
    for module in model.modules():
        if type(module) is torch.nn.Linear and "forward" not in module.__dict__:
            module.forward = types.MethodType(_linear_forward, module)
    return True


@contextmanager
def column_layout(on: bool = True) -> Iterator[None]:
    """Linear layers with the switchable forward compute in the column layout inside this block."""
    before, _LAYOUT.column = _LAYOUT.column, on
    try:
        yield
    finally:
        _LAYOUT.column = before


class HFTarget:
    """A transformers causal LM as a Target: forward(tokens, depths, mask) -> logits, commit, trim."""

    capabilities = Capabilities(hf_model=True)
    backend = "transformers"

    def __init__(self, model: PreTrainedModel, tokenizer: Any = None):
        """tokenizer: adds its eos token to the model config's (optional)."""
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.vocab_size = model.get_output_embeddings().weight.shape[0]
        self.context_window = int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30)
        self.eos_ids = eos_ids_of(model, tokenizer)
        self.n_params = model.num_parameters()
        self.cache = DynamicCache()
        self.length = 0  # committed tokens in the cache
        self._guard = PendingGuard()  # inputs appended by the last forward, not yet committed
        self.column = install_column_layout(self.model)

    @property
    def cache_key(self) -> str:
        return f"{self.dtype}|{threads_key(self.device)}"

    def reset(self) -> None:
        self.cache = DynamicCache()
        self.length = 0
        self._guard.clear()

    @torch.inference_mode()
    def prefill(self, tokens: Sequence[int]) -> None:
        """Append and commit `tokens` (no logits are needed: the engine feeds the last one later)."""
        for start in range(0, len(tokens), PREFILL_CHUNK):
            chunk = list(tokens[start : start + PREFILL_CHUNK])
            self._run(chunk, torch.arange(len(chunk)), None, logits_to_keep=1)
            self.commit_all()

    @torch.inference_mode()
    def forward(
        self, tokens: Sequence[int], depths: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Run inputs at positions length + depths. mask: [n, n] bool tree mask (None = causal).

        Returns float32 logits [n, vocab] (upcast from the model's dtype: exact, same argmax).
        """
        return self._run(list(tokens), depths, mask, logits_to_keep=0)[0].float()

    def _run(
        self, tokens: list[int], depths: torch.Tensor, mask: torch.Tensor | None, logits_to_keep: int
    ) -> torch.Tensor:
        self._guard.check("running another")
        n = len(tokens)
        ids = torch.tensor([tokens], device=self.device)  # [1, n]
        positions = (depths.to(self.device) + self.length).unsqueeze(0)  # [1, n]
        attention = None if mask is None else additive_mask(mask, n, self.length, self.dtype, self.device)
        with column_layout(self.column):
            out = self.model(
                input_ids=ids,
                position_ids=positions,
                attention_mask=attention,
                cache=self.cache,
                use_cache=True,
                logits_to_keep=logits_to_keep,
            )
        self._guard.start(n)
        return out.logits  # [1, n or logits_to_keep, vocab]

    @torch.inference_mode()
    def commit(self, keep: Sequence[int]) -> None:
        """Keep the KV entries of inputs `keep` (ascending indices into the last forward)."""
        n, keep = self._guard.done(), list(keep)
        if keep != list(range(len(keep))):
            # move the kept entries down into place, then drop the tail like a chain
            index = torch.tensor([self.length + k for k in keep], device=self.device)
            span = slice(self.length, self.length + len(keep))
            for layer in self.cache.layers:  # keys/values: [batch, kv_heads, seq, head_dim]
                layer.keys[:, :, span] = layer.keys.index_select(2, index)
                layer.values[:, :, span] = layer.values.index_select(2, index)
        self._crop(n - len(keep))
        self.length += len(keep)

    def commit_all(self) -> None:
        self.length += self._guard.done()

    def trim(self, length: int) -> None:
        """Drop committed tokens beyond `length`."""
        self._guard.check("trimming")
        check_trim(length, self.length)
        self._crop(self.length - length)
        self.length = length

    def _crop(self, drop: int) -> None:
        if drop > 0:
            self.cache.crop(-drop)
