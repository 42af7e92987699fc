"""NativeGpuTarget: the native runtime on an NVIDIA GPU, batch-invariant in bfloat16.

The model is the CPU runtime's (model.py: fused qkv and gate|up, weights from the transformers
directory) on the GPU's kernels: cuBLAS for the linear layers and the Triton kernels of
triton_kernels.py for the rest. Two things make a row's logits bitwise the same whatever the pass:

- **One width per kind of pass.** Every verification pass has exactly `width` rows (the inputs,
  padded), every prefill pass `prefill_width` rows, so a linear layer always runs the same GEMM
  (cuBLAS picks its kernel by shape, and a kernel's rows do not mix). A forward of more than
  `width` inputs runs as several passes of `width`. The padding rows write their K/V past the
  pass's own slots and nobody reads them.
- **Attention in one canonical order** (triton_kernels.attention_chunk and attention_merge): a
  query reads the committed slots, then its ancestors by depth, in fixed chunks merged in order. commit() copies a kept tree path down into consecutive slots,
  so the committed slots always hold the committed tokens in order.

Each pass width is captured once as a CUDA graph and replayed after one host-to-device copy of its
integer inputs (tokens, positions, slots, each row's key list).

The prefill runs other GEMM shapes than the decoding, which is consistent: every method prefills
the same prompt the same way, and a token's K/V in the cache come from the kind of pass that
committed it, the same under every drafter.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..base import Capabilities, PendingGuard, check_trim
from .model import Model, load_model
from .target import _eos_ids, _visible

WIDTH = 32  # rows of every verification pass
PREFILL_WIDTH = 128  # rows of every prefill pass
ANCESTORS = 256  # the most in-pass keys (ancestors and itself) one input of a forward may have
CHUNK, BLOCK_N = 256, 64  # attention: keys per program, keys per step within it
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
GPU_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM")


def gpu_unsupported_reason(directory: Path, dtype: str) -> str | None:
    """Why the GPU runtime cannot run this model in `dtype` (None: it can)."""
    if dtype not in DTYPES:
        return f"the native runtime on a GPU runs {' or '.join(DTYPES)}, not {dtype}"
    config = Path(directory) / "config.json"
    arch = (json.loads(config.read_text()).get("architectures") or ["unknown"])[0] if config.exists() else "unknown"
    if arch not in GPU_ARCHITECTURES:
        return f"the native runtime on a GPU runs Llama and Qwen2 models, not {arch}"
    return None


class NativeGpuTarget:
    """The Target protocol on the GPU runtime (see the module docstring)."""

    backend = "native"

    def __init__(self, directory: Path, dtype: str = "bfloat16", max_len: int = 4096, device: str = "cuda",
                 width: int = WIDTH, prefill_width: int = PREFILL_WIDTH, graphs: bool | None = None,
                 chunk: int = CHUNK):
        reason = gpu_unsupported_reason(directory, dtype)
        if reason:
            raise ValueError(reason)
        from . import triton_kernels  # noqa: F401  (fails here, with its import error, if triton is missing)

        self.directory, self.dtype, self.device = Path(directory), dtype, torch.device(device)
        self.act = DTYPES[dtype]
        m = load_model(self.directory, dtype)
        self.m = _to_device(m, self.device, self.act)
        self.vocab_size = m.head.shape[0]
        self.max_len = max_len
        self.context_window = min(max_len, int(m.config.get("max_position_embeddings") or max_len))
        self.eos_ids = frozenset(_eos_ids(self.directory, m.config))
        self.n_params = m.n_params
        self.capabilities = Capabilities(trimmable=True, tree=True, hf_model=False, batch_invariant=True)
        self.cache_key = f"{self.directory}|{dtype}|{self.device}|native-gpu|w{width}"
        self.guard = PendingGuard()
        self._length = 0
        slots = max_len + max(width, prefill_width)  # room for a last pass's padding rows
        shape = (len(m.layers), slots, m.kv_heads, m.head_dim)
        self.k_cache = torch.zeros(shape, dtype=self.act, device=self.device)  # [layer, slot, kv_head, d]
        self.v_cache = torch.zeros(shape, dtype=self.act, device=self.device)
        half = m.head_dim // 2
        inv_freq = 1.0 / m.rope_theta ** (torch.arange(0, half, dtype=torch.float32) * 2 / m.head_dim)
        angles = torch.arange(slots, dtype=torch.float32)[:, None] * inv_freq[None]  # [slots, d/2]
        self.cos, self.sin = angles.cos().to(self.device), angles.sin().to(self.device)
        self.width, self.chunk = width, chunk
        graphs = self.device.type == "cuda" if graphs is None else graphs
        self._decode = _Pass(self, width, ANCESTORS, head=True, graph=graphs)
        self._prefill = _Pass(self, prefill_width, prefill_width, head=False, graph=graphs)

    @property
    def length(self) -> int:
        return self._length

    def reset(self) -> None:
        self._length = 0
        self.guard.clear()

    @torch.inference_mode()
    def prefill(self, tokens: Sequence[int]) -> None:
        self.guard.check("prefilling")
        step = self._prefill.rows
        self._check_room(len(tokens))
        for start in range(0, len(tokens), step):
            chunk = list(tokens[start:start + step])
            self._prefill.run(chunk, torch.arange(len(chunk)), self._length)
            self._length += len(chunk)

    @torch.inference_mode()
    def forward(self, tokens: Sequence[int], depths: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """float32 logits [n, vocab] on the GPU; row j is bitwise independent of n and of the tree."""
        n = len(tokens)
        if n == 0:
            raise ValueError("forward() needs at least one token")
        self.guard.check("running another")
        self._check_room(n)
        extra, count = _visible(mask, n, self._length)
        if int(count.max()) > ANCESTORS:
            raise ValueError(f"an input of this pass sees {int(count.max())} inputs of the pass; the GPU "
                             f"runtime takes at most {ANCESTORS}")
        out = []
        for start in range(0, n, self.width):
            rows = slice(start, min(n, start + self.width))
            out.append(self._decode.run(list(tokens[rows]), depths[rows], self._length, start=start,
                                        keys=(extra[rows], count[rows])))
        self.guard.start(n)
        return out[0] if len(out) == 1 else torch.cat(out)

    def commit(self, keep: Sequence[int]) -> None:
        self.guard.done()
        keep, base = list(keep), self._length
        if keep != list(range(len(keep))):
            index = torch.tensor([base + k for k in keep], device=self.device)
            span = slice(base, base + len(keep))
            self.k_cache[:, span] = self.k_cache[:, index]  # an exact copy, all layers at once
            self.v_cache[:, span] = self.v_cache[:, index]
        self._length += len(keep)

    def commit_all(self) -> None:
        self._length += self.guard.done()

    def trim(self, length: int) -> None:
        self.guard.check("trimming")
        check_trim(length, self._length)
        self._length = length

    def _check_room(self, n: int) -> None:
        if self._length + n > self.max_len:
            raise ValueError(f"the native cache holds {self.max_len} tokens; {self._length + n} needed "
                             "(raise max_len)")


class _Pass:
    """One pass width: its integer inputs in one buffer, its activations, optionally a CUDA graph."""

    def __init__(self, t: NativeGpuTarget, rows: int, ancestors: int, head: bool, graph: bool):
        self.t, self.rows, self.a, self.head = t, rows, ancestors, head
        dev = t.device
        self.ints = torch.zeros(rows * (6 + ancestors), dtype=torch.int32, device=dev)
        self.host = torch.zeros(self.ints.numel(), dtype=torch.int32, pin_memory=dev.type == "cuda")
        self.host_ints = self.host[:6 * rows].numpy().reshape(6, rows)  # views, written by run()
        self.host_anc = self.host[6 * rows:].numpy().reshape(rows, ancestors)
        self.chunks = -(-(t.max_len + ancestors) // t.chunk)  # the most key chunks a row can have
        self.tok, self.pos, self.slot, self.lo, self.hi, self.cnt = self.ints[:6 * rows].view(6, rows)
        self.anc = self.ints[6 * rows:].view(rows, ancestors)
        self.graph = None
        self.out: torch.Tensor | None = None
        if graph:
            self._capture()

    def run(self, tokens: list[int], depths: torch.Tensor, length: int, start: int = 0,
            keys: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor | None:
        """Rows for `tokens` (inputs start.. of a forward whose first input goes to slot `length`);
        keys: each row's in-pass key slots and their count (default: a causal chain)."""
        n, r = len(tokens), self.rows
        base = length + start
        extra, count = _visible(None, n, base) if keys is None else keys
        slots = np.arange(base, base + r, dtype=np.int32)  # padding rows write past the pass
        ints, anc = self.host_ints, self.host_anc
        ints[0, :n], ints[0, n:] = tokens, 0
        ints[1, :n], ints[1, n:] = depths.cpu().numpy() + length, slots[n:]  # a padding row: at its slot,
        ints[2] = slots
        ints[3] = 0
        ints[4, :n], ints[4, n:] = length, 0
        ints[5, :n], ints[5, n:] = count.numpy(), 1  # seeing itself only
        anc[:n, :extra.shape[1]] = extra.numpy()
        anc[n:, 0] = slots[n:]
        self.ints.copy_(self.host)  # blocking: the host buffer is rewritten by the next pass
        if self.graph is not None:
            self.graph.replay()
            out = self.out
        else:
            out = self._compute()
        return None if out is None else out[:n].to(torch.float32, copy=True)  # the graph reuses `out`

    def _capture(self) -> None:
        self.ints.zero_()
        self.cnt.fill_(1)  # warm-up rows see themselves at slot 0 (the cache is rewritten before use)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(2):  # compiles the Triton kernels and lets cuBLAS pick
                self._compute()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.inference_mode():
            self.out = self._compute()

    def _compute(self) -> torch.Tensor | None:
        from . import triton_kernels as tk

        t, m, r = self.t, self.t.m, self.rows
        hidden, h, kv, d = m.embed.shape[1], m.heads, m.kv_heads, m.head_dim
        hb, kvb, inter = tk.next_pow2(h), tk.next_pow2(kv), m.layers[0].down.shape[1]
        res = m.embed.index_select(0, self.tok)  # [r, hidden] float32
        xn = torch.empty(r, hidden, dtype=t.act, device=t.device)
        q = torch.empty(r, h, d, dtype=torch.float32, device=t.device)
        att = torch.empty(r, h * d, dtype=t.act, device=t.device)
        mid = torch.empty(r, inter, dtype=t.act, device=t.device)
        ml = torch.empty(r, h, self.chunks, 2, dtype=torch.float32, device=t.device)  # per chunk: max, sum
        part = torch.empty(r, h, self.chunks, d, dtype=torch.float32, device=t.device)
        scale = m.attn_scale if m.attn_scale is not None else d ** -0.5
        norm_block = tk.next_pow2(hidden)
        delta = None
        for i, layer in enumerate(m.layers):
            tk.add_rmsnorm[(r,)](res, res if delta is None else delta, layer.attn_norm, xn, m.eps, hidden, norm_block,
                                 delta is not None)
            qkv = F.linear(xn, layer.qkv.data, layer.qkv.bias)
            tk.rope_store[(r,)](qkv, t.cos, t.sin, self.pos, self.slot, q, t.k_cache[i], t.v_cache[i], h, kv, d,
                                hb, kvb)
            tk.attention_chunk[(r, h, self.chunks)](q, t.k_cache[i], t.v_cache[i], self.lo, self.hi, self.anc,
                                                    self.cnt, ml, part, scale, h, kv, d, self.a, self.chunks,
                                                    t.chunk, min(BLOCK_N, t.chunk))
            tk.attention_merge[(r, h)](ml, part, self.lo, self.hi, self.cnt, att, h, d, self.chunks, t.chunk)
            o = F.linear(att, layer.o.data)
            tk.add_rmsnorm[(r,)](res, o, layer.mlp_norm, xn, m.eps, hidden, norm_block, True)
            gu = F.linear(xn, layer.gate_up.data)
            tk.silu_mul[(r,)](gu, mid, inter, tk.next_pow2(inter))
            delta = F.linear(mid, layer.down.data)
        if not self.head:
            return None
        tk.add_rmsnorm[(r,)](res, delta, m.norm, xn, m.eps, hidden, norm_block, True)
        return F.linear(xn, m.head.data)  # [r, vocab]


def _to_device(m: Model, device: torch.device, act: torch.dtype) -> Model:
    """The model's tensors on `device`: weights and biases in `act`, norms and embeddings float32."""
    def weight(w):  # plain [out, in] tensors in `act` (the CPU kernels' bfloat16 panels unpacked)
        w.data, w.dims = w.rows().to(device, act), None
        w.bias = None if w.bias is None else w.bias.to(device, act)
        return w

    for layer in m.layers:
        layer.attn_norm, layer.mlp_norm = layer.attn_norm.to(device), layer.mlp_norm.to(device)
        for name in ("qkv", "o", "gate_up", "down"):
            weight(getattr(layer, name))
    m.embed, m.norm, m.head = m.embed.to(device), m.norm.to(device), weight(m.head)
    return m
