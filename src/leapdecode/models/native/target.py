"""NativeTarget: the Target protocol (models/base.py) on leapdecode's own kernels.

The cache is static, by slot: [layer, kv_head, slot, head_dim] float32 for max_len tokens. A pass
writes its inputs' K/V at slots length..length+n-1; commit copies the kept path down into
consecutive slots, so the cache always holds the committed tokens in order, and a token's attention
is bitwise the same computed in a chain, a tree, or alone after its ancestors were committed.
"""

from __future__ import annotations

import ctypes
import dataclasses
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
    """leapdecode's own CPU runtime as a Target: a static KV cache by slot, C kernels whose rows
    compute the same whatever the pass width (see docs/runtime.md)."""

    backend = "native"

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
        self._c_model, self._keep = _c_model(m, self.k_cache, self.v_cache, max_len)
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

    @property
    def weight_bytes(self) -> int:
        """Bytes of weights one pass reads (every linear layer and norm, Gemma3's included; the
        embedding rows looked up are negligible)."""
        def size(value: object) -> int:
            if isinstance(value, ops.Weight):
                return value.nbytes
            return value.numel() * value.element_size() if isinstance(value, torch.Tensor) else 0

        m = self.m
        layers = sum(size(getattr(layer, f.name)) for layer in m.layers for f in dataclasses.fields(layer))
        return size(m.head) + size(m.norm) + layers

    def cache_bytes(self, tokens: int) -> int:
        """Bytes of K and V one query reads over `tokens` cached tokens (float32)."""
        return 2 * len(self.m.layers) * self.m.kv_heads * tokens * self.m.head_dim * 4

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
    def _run(self, tokens: list[int], depths: torch.Tensor, mask: torch.Tensor | None, head: bool) -> torch.Tensor | None:
        n, base, m = len(tokens), self._length, self.m
        if n == 0:
            raise ValueError("forward() needs at least one token")
        if base + n > self.max_len:
            raise ValueError(f"the native cache holds {self.max_len} tokens; {base + n} needed (raise max_len)")
        self.guard.check("running another")
        positions = (depths.to(torch.int32) + base).contiguous()  # [n]
        extra, count = _visible(mask, n, base)  # [n, e] int32 slots, [n] int32
        x = m.embed[torch.tensor(tokens)]  # [n, hidden], an exact copy
        if m.embed_scale != 1.0:
            x = x * m.embed_scale
        x = x.contiguous()
        logits = torch.empty(n, self.vocab_size) if head else None
        status = kernels().model_forward(ctypes.addressof(self._c_model), x.data_ptr(), n, base,
                                         positions.data_ptr(), extra.data_ptr(), count.data_ptr(), extra.shape[1],
                                         None if logits is None else logits.data_ptr())
        if status:
            raise MemoryError("the native pass ran out of memory")
        self.guard.start(n)
        return logits  # [n, vocab], or None for a prefill


def _c_model(m: Model, k_cache: torch.Tensor, v_cache: torch.Tensor, max_len: int) -> tuple[ops.CModel, list]:
    """The C view of the weights and caches; `keep` holds every tensor the struct points into."""
    keep: list = []
    tables: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}
    layers = (ops.CLayer * len(m.layers))()
    for i, layer in enumerate(m.layers):
        theta = layer.rope_theta or m.rope_theta
        if theta not in tables:
            tables[theta] = _rope_table(theta, m.head_dim, max_len)
        cos, sin = tables[theta]
        c = layers[i]
        c.attn_norm, c.mlp_norm = layer.attn_norm.data_ptr(), layer.mlp_norm.data_ptr()
        for name in ("post_attn_norm", "post_mlp_norm", "q_norm", "k_norm"):
            t = getattr(layer, name)
            setattr(c, name, None if t is None else t.data_ptr())
        c.qkv, c.o, c.gu, c.down = (ops.c_linear(w) for w in (layer.qkv, layer.o, layer.gate_up, layer.down))
        c.kc, c.vc = k_cache[i].data_ptr(), v_cache[i].data_ptr()
        c.cos, c.sin, c.window = cos.data_ptr(), sin.data_ptr(), layer.window
    keep += [tables, layers]
    scale = m.attn_scale if m.attn_scale is not None else m.head_dim ** -0.5
    inter = m.layers[0].down.shape[1]
    model = ops.CModel(len(m.layers), m.embed.shape[1], m.heads, m.kv_heads, m.head_dim, inter, max_len, m.act,
                       m.eps, m.norm_offset, scale, 0, layers, m.norm.data_ptr(), ops.c_linear(m.head))
    return model, keep


def _rope_table(theta: float, d: int, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)  # [d/2]
    freqs = torch.arange(max_len, dtype=torch.float32)[:, None] * inv_freq[None]  # [max_len, d/2]
    emb = torch.cat([freqs, freqs], dim=-1)  # [max_len, d]
    return emb.cos().contiguous(), emb.sin().contiguous()


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
