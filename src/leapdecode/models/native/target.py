"""NativeTarget: the Target protocol (models/base.py) on leapdecode's own kernels.

The cache is static, by slot: [layer, kv_head, slot, head_dim] float32 for max_len tokens. A pass
writes its inputs' K/V at slots length..length+n-1; commit copies the kept path down into
consecutive slots, so the cache always holds the committed tokens in order, and a token's attention
is bitwise the same computed in a chain, a tree, or alone after its ancestors were committed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch

from ..base import Capabilities, PendingGuard, check_trim
from . import ops
from .build import kernels
from .model import Model, load_model

PREFILL_CHUNK = 256


class NativeTarget:
    def __init__(self, directory: Path, dtype: str = "bfloat16", max_len: int = 4096, threads: int | None = None):
        if dtype not in ops.FORMATS:
            raise ValueError(f"dtype {dtype!r} is not one of {', '.join(ops.FORMATS)}")
        self.directory, self.dtype = Path(directory), dtype
        self.threads = threads or min(os.cpu_count() or 1, torch.get_num_threads())
        kernels().set_threads(self.threads)
        self.m: Model = load_model(self.directory, dtype)
        m = self.m
        self.vocab_size = m.head.shape[0]
        self.max_len = max_len
        self.context_window = min(max_len, int(m.config.get("max_position_embeddings") or max_len))
        self.eos_ids = frozenset(_eos_ids(self.directory, m.config))
        self.n_params = m.n_params
        self.cache_key = f"{self.directory}|{dtype}|threads={self.threads}|native"
        self.capabilities = Capabilities(trimmable=True, tree=True, hf_model=False, batch_invariant=True)
        shape = (len(m.layers), m.kv_heads, max_len, m.head_dim)
        self.k_cache, self.v_cache = torch.zeros(shape), torch.zeros(shape)  # [layer, kv_head, slot, d]
        self.cos, self.sin = _rope_table(m.rope_theta, m.head_dim, max_len)  # [max_len, d] each
        self._length, self.guard = 0, PendingGuard()

    @property
    def length(self) -> int:
        return self._length

    def reset(self) -> None:
        self._length = 0
        self.guard.clear()

    @torch.inference_mode()
    def prefill(self, tokens: Sequence[int]) -> None:
        for start in range(0, len(tokens), PREFILL_CHUNK):
            chunk = list(tokens[start:start + PREFILL_CHUNK])
            self._run(chunk, torch.arange(len(chunk)), None, head=False)
            self.commit_all()

    @torch.inference_mode()
    def forward(self, tokens: Sequence[int], depths: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """float32 logits [n, vocab]; row j is bitwise independent of n and of the tree's shape."""
        return self._run(list(tokens), depths, mask, head=True)

    def commit(self, keep: Sequence[int]) -> None:
        self.guard.done()
        keep, base = list(keep), self._length
        if keep != list(range(len(keep))):
            index = torch.tensor([base + k for k in keep])
            span = slice(base, base + len(keep))
            self.k_cache[:, :, span] = self.k_cache.index_select(2, index)  # exact copy
            self.v_cache[:, :, span] = self.v_cache.index_select(2, index)
        self._length += len(keep)

    def commit_all(self) -> None:
        self._length += self.guard.done()

    def trim(self, length: int) -> None:
        self.guard.check("trimming")
        check_trim(length, self._length)
        self._length = length

    # ---- one pass --------------------------------------------------------------------
    def _run(self, tokens: list[int], depths: torch.Tensor, mask: torch.Tensor | None, head: bool) -> torch.Tensor:
        n, base, m = len(tokens), self._length, self.m
        if n == 0:
            raise ValueError("forward() needs at least one token")
        if base + n > self.max_len:
            raise ValueError(f"the native cache holds {self.max_len} tokens; {base + n} needed (raise max_len)")
        self.guard.check("running another")
        positions = depths.to(torch.long) + base  # [n]
        extra, count = _visible(mask, n, base)  # [n, e] int32 slots, [n] int32
        cos, sin = self.cos[positions][:, None], self.sin[positions][:, None]  # [n, 1, d]
        x = m.embed[torch.tensor(tokens)]  # [n, hidden]
        for i, layer in enumerate(m.layers):
            x = self._layer(i, layer, x, base, cos, sin, extra, count)
        self.guard.start(n)
        if not head:
            return x
        return ops.linear(ops.rmsnorm(x, m.norm, m.eps), m.head)  # [n, vocab]

    def _layer(self, i, layer, x, base, cos, sin, extra, count) -> torch.Tensor:
        m, n = self.m, x.shape[0]
        h, kv, d = m.heads, m.kv_heads, m.head_dim
        qkv = ops.linear(ops.rmsnorm(x, layer.attn_norm, m.eps), layer.qkv)  # [n, (h + 2kv) d]
        q = _rope(qkv[:, : h * d].view(n, h, d), cos, sin)  # [n, h, d]
        k = _rope(qkv[:, h * d:(h + kv) * d].view(n, kv, d), cos, sin)  # [n, kv, d]
        self.k_cache[i, :, base:base + n] = k.transpose(0, 1)
        self.v_cache[i, :, base:base + n] = qkv[:, (h + kv) * d:].view(n, kv, d).transpose(0, 1)
        a = ops.attention(q, self.k_cache[i], self.v_cache[i], base, extra, count, d ** -0.5, self.threads)
        x = x + ops.linear(a.view(n, h * d), layer.o)
        gu = ops.linear(ops.rmsnorm(x, layer.mlp_norm, m.eps), layer.gate_up)  # [n, 2 * inter]
        return x + ops.linear(ops.gated_act(gu), layer.down)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [n, heads, d] rotated by halves; elementwise mul/add only, so exact per element."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).contiguous()


def _rope_table(theta: float, d: int, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)  # [d/2]
    freqs = torch.arange(max_len, dtype=torch.float32)[:, None] * inv_freq[None]  # [max_len, d/2]
    emb = torch.cat([freqs, freqs], dim=-1)  # [max_len, d]
    return emb.cos(), emb.sin()


def _visible(mask: torch.Tensor | None, n: int, base: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each input's in-pass keys as cache slots, ancestors by depth (= by index), itself last."""
    own = torch.ones(n, n, dtype=torch.bool).tril() if mask is None else mask.to(torch.bool).cpu()
    count = own.sum(dim=1).to(torch.int32)  # [n]
    order = torch.arange(n).expand(n, n)
    keyed = torch.where(own, order, n + order)  # visible ones first, ascending
    extra = (keyed.sort(dim=1).values[:, : int(count.max())] + base).to(torch.int32).contiguous()
    return extra, count.contiguous()


def _eos_ids(directory: Path, config: dict) -> set[int]:
    import json
    ids: set[int] = set()
    sources = [config]
    gen = directory / "generation_config.json"
    if gen.exists():
        sources.append(json.loads(gen.read_text()))
    for src in sources:
        value = src.get("eos_token_id")
        if value is not None:
            ids.update([value] if isinstance(value, int) else value)
    return ids
