"""NativeTarget: the Target protocol (models/base.py) on leapdecode's own kernels.

The cache is static, by slot: [layer, kv_head, slot, head_dim], one region of max_len slots per
sequence; bfloat16 where the model computes in bfloat16 or 8 or 4 bits, float32 for float32 and int8
weights (`kv_dtype`). A pass writes a sequence's inputs' K/V at the slots after its committed ones;
commit copies the kept path down into consecutive slots, so a region always holds its committed
tokens in order, and a token's attention is bitwise the same computed in a chain, a tree, alone
after its ancestors were committed, or in a pass with other sequences' inputs (batch.py).
The target itself is the Target protocol on sequence 0; `open_sequence` hands out the others.
"""

from __future__ import annotations

import ctypes
import dataclasses
import math
import os
from array import array
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..base import Capabilities, PendingGuard, check_trim
from . import ops
from .build import kernels, library_path, torch_single_threaded
from .model import Model, load_model

PREFILL_CHUNK = 256


class Region:
    """One sequence's slots of the cache: start..start+max_len-1, the first `length` committed."""

    def __init__(self, index: int, start: int):
        self.index, self.start, self.length, self.guard = index, start, 0, PendingGuard()


@dataclass
class Part:
    """One sequence's inputs in a pass (see `NativeTarget.run`)."""

    region: Region
    tokens: list[int]
    depths: torch.Tensor
    mask: torch.Tensor | None
    head: bool  # logits wanted (False: a prefill chunk)
    hidden: torch.Tensor | None = None  # [n, hidden] after the pass: the last hidden state, before the final norm


class NativeTarget:
    """leapdecode's own CPU runtime as a Target: a static KV cache by slot, C kernels whose rows
    compute the same whatever the pass width (see docs/runtime.md)."""

    backend = "native"
    sizes_drafts = True  # its pass costs differ by CPU: the engine sizes default drafts to them

    def __init__(self, directory: Path, dtype: str = "bfloat16", max_len: int = 4096, threads: int | None = None,
                 sequences: int = 1, kv_dtype: str | None = None):
        """max_len: slots per sequence; sequences: regions of the cache (1 + the sequences that
        `open_sequence` can hand out at once); kv_dtype: the cache's, "bfloat16" or "float32"
        (default: `default_kv_dtype(dtype, head_dim)`)."""
        if dtype not in ops.FORMATS:
            raise ValueError(f"dtype {dtype!r} is not one of {', '.join(ops.FORMATS)}")
        if kv_dtype not in (None, "bfloat16", "float32"):
            raise ValueError(f"kv_dtype {kv_dtype!r} is not one of bfloat16, float32")
        self.directory, self.dtype = Path(directory), dtype
        self.threads = threads or min(os.cpu_count() or 1, torch.get_num_threads())
        kernels().set_threads(self.threads)
        self.m: Model = load_model(self.directory, dtype)
        m = self.m
        ops.to_huge_pages(m.linears())
        self.vocab_size = m.head.shape[0]
        self.max_len = max_len
        self.context_window = min(max_len, int(m.config.get("max_position_embeddings") or max_len))
        self.eos_ids = frozenset(_eos_ids(self.directory, m.config))
        self.n_params = m.n_params
        # the kernels' build is part of the key: measured pass costs are theirs
        self.cache_key = f"{self.directory}|{dtype}|threads={self.threads}|native|{library_path().stem}"
        self.capabilities = Capabilities(trimmable=True, tree=True, hf_model=False, batch_invariant=True,
                                         features=True)
        self.hidden_size = m.embed.shape[1]
        self._hidden: list[torch.Tensor] = []  # the last prefill's or forward's parts' hidden states
        if isinstance(sequences, bool) or not isinstance(sequences, int) or sequences < 1:
            raise ValueError(f"sequences must be an integer >= 1, got {sequences!r}")
        self.sequences = sequences
        self.kv_dtype = kv_dtype or default_kv_dtype(dtype, m.head_dim)
        if self.kv_dtype == "bfloat16" and m.head_dim % 16:
            raise ValueError(f"kv_dtype 'bfloat16' needs a head size that is a multiple of 16 (this model's is "
                             f"{m.head_dim}); use float32")
        shape = (len(m.layers), m.kv_heads, sequences * max_len, m.head_dim)
        kv = getattr(torch, self.kv_dtype)
        self.k_cache, self.v_cache = (ops.huge_empty(math.prod(shape) * kv.itemsize).view(kv).view(shape).zero_()
                                      for _ in range(2))  # [layer, kv_head, slot, d]
        self._c_model, self._keep = _c_model(m, self.k_cache, self.v_cache, max_len, sequences * max_len)
        self.regions = [Region(i, i * max_len) for i in range(sequences)]
        self._chains: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # n -> a chain's ancestors
        self._own = self.regions[0]
        self.guard = self._own.guard
        from .batch import Batcher

        self._batcher = Batcher(self)  # made here, once: two threads must never make two

    @property
    def length(self) -> int:
        return self._own.length

    def reset(self) -> None:
        self._own.length = 0
        self.guard.clear()
        self._hidden = []

    def decoding(self) -> AbstractContextManager:
        """Held by the engine while a generation decodes here (build.torch_single_threaded)."""
        return torch_single_threaded()

    def open_sequence(self) -> AbstractContextManager:
        """A context manager giving a free sequence (a Target of its own) whose passes run
        together with the other open sequences' (batch.py); RuntimeError when none is free."""
        return self._batcher.sequence()

    def prefill(self, tokens: Sequence[int]) -> None:
        self._hidden = []
        for start in range(0, len(tokens), PREFILL_CHUNK):
            chunk = list(tokens[start:start + PREFILL_CHUNK])
            part = Part(self._own, chunk, torch.arange(len(chunk)), None, head=False)
            self.run([part])
            self.commit_all()
            self._hidden.append(part.hidden)

    def forward(self, tokens: Sequence[int], depths: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """float32 logits [n, vocab]; row j is bitwise independent of n and of the tree's shape."""
        part = Part(self._own, list(tokens), depths, mask, head=True)
        logits = self.run([part])[0]
        self._hidden = [part.hidden]
        return logits

    # ---- features (models/base.FeatureSource: what trained draft heads read) -------------
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.m.embed[ids.long().cpu()]
        return x * self.m.embed_scale if self.m.embed_scale != 1.0 else x

    def head_rows(self, ids: torch.Tensor) -> torch.Tensor:
        return self.m.head.rows(ids.long().cpu())

    def linear(self, weight: torch.Tensor, dtype: str | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
        w = ops.make_weight(weight.detach().float().cpu(), dtype or self.dtype)
        return lambda x: ops.linear(x.contiguous(), w)

    def hidden(self) -> torch.Tensor:
        return self.final_norm(self._hidden)

    def final_norm(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """The final norm over the hidden states of `parts` (see Part.hidden), concatenated."""
        if not parts:
            return torch.zeros(0, self.hidden_size)
        m = self.m
        return ops.rmsnorm(torch.cat(parts), m.norm, m.eps, m.norm_offset)

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
        """Bytes of K and V one query reads over `tokens` cached tokens."""
        return 2 * len(self.m.layers) * self.m.kv_heads * tokens * self.m.head_dim * self.k_cache.element_size()

    def commit(self, keep: Sequence[int]) -> None:
        self.commit_region(self._own, keep)

    def commit_region(self, region: Region, keep: Sequence[int]) -> None:
        """Keep the inputs `keep` of `region`'s last pass (a path from input 0, or empty)."""
        region.guard.done()
        keep, base = list(keep), region.start + region.length
        if keep != list(range(len(keep))):
            index = torch.tensor([base + k for k in keep])
            span = slice(base, base + len(keep))
            self.k_cache[:, :, span] = self.k_cache.index_select(2, index)  # exact copy
            self.v_cache[:, :, span] = self.v_cache.index_select(2, index)
        region.length += len(keep)

    def commit_all(self) -> None:
        self._own.length += self.guard.done()

    def trim(self, length: int) -> None:
        self.guard.check("trimming")
        check_trim(length, self._own.length)
        self._own.length = length

    # ---- one pass --------------------------------------------------------------------
    def _ancestors(self, mask: torch.Tensor | None, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each input's ancestors in the pass as offsets from its first slot, and their counts;
        a chain's (no mask) are the same in every pass of n inputs."""
        if mask is not None:
            return _visible(mask, n)
        if n not in self._chains:
            self._chains[n] = _visible(None, n)
        return self._chains[n]

    def check_part(self, part: Part) -> None:
        """The errors a part would raise in `run` (ValueError, RuntimeError), before any pass."""
        n, region = len(part.tokens), part.region
        if n == 0:
            raise ValueError("forward() needs at least one token")
        if region.length + n > self.max_len:
            raise ValueError(f"the native cache holds {self.max_len} tokens per sequence; "
                             f"{region.length + n} needed (raise max_len)")
        if min(part.tokens) < 0 or max(part.tokens) >= self.m.embed.shape[0]:  # the kernel reads the rows unchecked
            raise ValueError(f"token ids must lie in 0..{self.m.embed.shape[0] - 1}, got "
                             f"{min(part.tokens)}..{max(part.tokens)}")
        region.guard.check("running another")

    def run(self, parts: Sequence[Part]) -> list[torch.Tensor | None]:
        """One pass over the inputs of one or more sequences; each part's float32 logits
        [n, vocab] (None where `head` is False), bitwise what a pass of that part alone gives."""
        # Few torch calls (and no inference_mode: no tensor here needs autograd): each costs
        # microseconds more after a pass has streamed the weights through the caches (the Python
        # side of a pass of one took 0.22 ms before this was cut down, 0.07 ms after).
        order = sorted(range(len(parts)), key=lambda i: parts[i].head)  # prefill chunks first
        slot, lo, hi, pos, extras, counts, tokens = [], [], [], [], [], [], []
        for i in order:
            p = parts[i]
            self.check_part(p)
            n, region = len(p.tokens), p.region
            base = region.start + region.length
            slot += range(base, base + n)
            lo += [region.start] * n
            hi += [base] * n
            pos += [region.length + d for d in p.depths.tolist()]
            extra, count = self._ancestors(p.mask, n)
            extras.append(extra)
            counts.append(count)
            tokens += p.tokens
        if len(extras) == 1:
            (extra,), (count,) = extras, counts
        else:
            width = max(e.shape[1] for e in extras)
            extra = torch.cat([torch.nn.functional.pad(e, (0, width - e.shape[1])) for e in extras]).contiguous()
            count = torch.cat(counts)
        rows, m, lib = len(tokens), self.m, kernels()
        ints = array("i", slot + lo + hi + pos + tokens)  # [5, rows] int32, read in place
        at = ints.buffer_info()[0]
        x = torch.empty(rows, m.embed.shape[1])
        lib.embed_rows(m.embed.data_ptr(), m.embed.shape[1], at + 16 * rows, rows, m.embed_scale, x.data_ptr())
        head_from = sum(len(parts[i].tokens) for i in order if not parts[i].head)
        logits = torch.empty(rows - head_from, self.vocab_size) if head_from < rows else None
        status = lib.model_forward(
            ctypes.addressof(self._c_model), x.data_ptr(), rows, *(at + 4 * rows * k for k in range(4)),
            extra.data_ptr(), count.data_ptr(), extra.shape[1], head_from,
            None if logits is None else logits.data_ptr())
        if status:
            raise MemoryError("the native pass ran out of memory")
        out: list[torch.Tensor | None] = [None] * len(parts)
        row = x_row = 0
        for i in order:  # a part that is the whole pass takes the tensors themselves, not slices
            n = len(parts[i].tokens)
            parts[i].region.guard.start(n)
            parts[i].hidden = x if n == rows else x[x_row:x_row + n]
            x_row += n
            if parts[i].head:
                out[i] = logits if n == rows else logits[row:row + n]
                row += n
        return out


def _c_model(m: Model, k_cache: torch.Tensor, v_cache: torch.Tensor, max_len: int,
             slots: int) -> tuple[ops.CModel, list]:
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
    model = ops.CModel(len(m.layers), m.embed.shape[1], m.heads, m.kv_heads, m.head_dim, inter, slots, m.act,
                       m.eps, m.norm_offset, scale, int(k_cache.dtype == torch.bfloat16), layers, m.norm.data_ptr(),
                       ops.c_linear(m.head))
    return model, keep


def default_kv_dtype(dtype: str, head_dim: int) -> str:
    """The cache's dtype for weights in format `dtype`: bfloat16 (half the bytes a pass reads per cached
    token, and dot products of bfloat16 pairs) where the model already rounds its activations to 16
    bits or fewer (bfloat16, w8a8, w4a8) and the head size is a multiple of 16; else float32."""
    return "bfloat16" if dtype in ("bfloat16", "w8a8", "w4a8") and head_dim % 16 == 0 else "float32"


def _rope_table(theta: float, d: int, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)  # [d/2]
    freqs = torch.arange(max_len, dtype=torch.float32)[:, None] * inv_freq[None]  # [max_len, d/2]
    emb = torch.cat([freqs, freqs], dim=-1)  # [max_len, d]
    return emb.cos().contiguous(), emb.sin().contiguous()


def _visible(mask: torch.Tensor | None, n: int, base: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
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
