"""Thin wrappers: torch tensors in, kernels (build.py) called by data_ptr(), torch tensors out."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import torch

from .build import kernels

FORMATS = ("float32", "bfloat16", "int8", "w8a8")


@dataclass
class Weight:
    """A [out, in] weight in one storage format; `scale` [out] fp32 for int8 (per output channel);
    `wsum` [out] int32, the sums of each output's int8 weights, marks W8A8 (activations quantized
    to int8 per row, integer dot products), whose `data` is packed in panels of 16 outputs:
    [ceil(out / 16), in / 4, 16, 4], element [p, t, o, j] = W[16 p + o, 4 t + j] (see
    csrc/kernels.c), outputs padded with zeros."""

    data: torch.Tensor  # [out, in] float32 | bfloat16 | int8, or W8A8's panels
    scale: torch.Tensor | None
    bias: torch.Tensor | None  # [out] float32
    wsum: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        if self.wsum is not None:
            return self.wsum.numel(), self.data.shape[1] * 4
        return tuple(self.data.shape)

    def int8_rows(self, ids: torch.Tensor | slice = slice(None)) -> torch.Tensor:
        """Rows `ids` of an 8-bit weight as [len(ids), in] int8 (unpacking W8A8's panels)."""
        if self.wsum is None:
            return self.data[ids]
        out, d_in = self.shape
        return self.data.permute(0, 2, 1, 3).reshape(-1, d_in)[:out][ids]

    @property
    def nbytes(self) -> int:
        extra = sum(t.numel() * 4 for t in (self.scale, self.bias, self.wsum) if t is not None)
        return self.data.numel() * self.data.element_size() + extra


def make_weight(w: torch.Tensor, fmt: str, bias: torch.Tensor | None = None) -> Weight:
    """w: [out, in] float. int8 and w8a8: symmetric, one fp32 scale per output channel (max |w| / 127)."""
    if fmt not in FORMATS:
        raise ValueError(f"dtype {fmt!r} is not one of {', '.join(FORMATS)}")
    if w.shape[1] % 8:
        raise ValueError(f"the native linear needs in_features divisible by 8, got {w.shape[1]}")
    w = w.float()
    b = None if bias is None else bias.float().contiguous()
    if fmt == "float32":
        return Weight(w.contiguous(), None, b)
    if fmt == "bfloat16":
        return Weight(w.to(torch.bfloat16).contiguous(), None, b)
    scale = (w.abs().amax(dim=1) / 127).clamp_min(1e-12)  # [out]
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous()
    if fmt == "int8":
        return Weight(q, scale.contiguous(), b)
    wsum = q.sum(dim=1, dtype=torch.int32).contiguous()
    out, d_in = q.shape
    panels = torch.nn.functional.pad(q, (0, 0, 0, -out % 16)).view(-1, 16, d_in // 4, 4).permute(0, 2, 1, 3)
    return Weight(panels.contiguous(), scale.contiguous(), b, wsum)


_KERNEL = {torch.float32: "linear_f32", torch.bfloat16: "linear_bf16", torch.int8: "linear_i8"}


def linear(x: torch.Tensor, w: Weight, out: torch.Tensor | None = None) -> torch.Tensor:
    """x: [n, in] float32 contiguous -> [n, out], each row bitwise independent of n."""
    n, d_in = x.shape
    d_out = w.shape[0]
    assert d_in == w.shape[1] and x.dtype == torch.float32 and x.is_contiguous()
    y = torch.empty(n, d_out) if out is None else out
    if w.wsum is not None:
        if kernels().linear_q8(x.data_ptr(), n, d_in, w.data.data_ptr(), _ptr(w.scale), w.wsum.data_ptr(),
                               _ptr(w.bias), y.data_ptr(), d_out):
            raise MemoryError("the W8A8 linear ran out of memory")
        return y
    fn = getattr(kernels(), _KERNEL[w.data.dtype])
    fn(x.data_ptr(), n, d_in, w.data.data_ptr(), _ptr(w.scale), _ptr(w.bias), y.data_ptr(), d_out)
    return y


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def rmsnorm(x: torch.Tensor, w: torch.Tensor, eps: float, offset: float = 0.0) -> torch.Tensor:
    """x: [n, d] -> [n, d]; offset 1.0 gives Gemma's x * (1 + w)."""
    x = x.contiguous()
    y = torch.empty_like(x)
    kernels().rmsnorm(x.data_ptr(), x.shape[0], x.shape[1], w.data_ptr(), eps, offset, y.data_ptr())
    return y


def gated_act(gu: torch.Tensor, gelu: bool = False) -> torch.Tensor:
    """gu: [n, 2m] (gate | up) -> [n, m] act(gate) * up (silu, or gelu-tanh for Gemma)."""
    n, m = gu.shape[0], gu.shape[1] // 2
    y = torch.empty(n, m)
    kernels().gated_act(gu.data_ptr(), n, m, int(gelu), y.data_ptr())
    return y


def attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, cached: int,
              extra: torch.Tensor, count: torch.Tensor, scale: float,
              window: int = 0, positions: torch.Tensor | None = None) -> torch.Tensor:
    """q: [n, heads, d]; k_cache, v_cache: [kv_heads, max_len, d] of one layer;
    extra: [n, e] int32 slots of each query's ancestors by depth (itself last), count: [n] int32.
    Returns [n, heads, d]: query j over slots 0..cached-1 then extra[j, :count[j]], in that order."""
    n, heads, d = q.shape
    kv_heads, max_len, _ = k_cache.shape
    q = q.contiguous()
    out = torch.empty_like(q)
    pos = positions if positions is not None else torch.zeros(n, dtype=torch.int32)
    lo, hi = torch.zeros(n, dtype=torch.int32), torch.full((n,), cached, dtype=torch.int32)
    kernels().attention(q.data_ptr(), n, heads, kv_heads, d, k_cache.data_ptr(), v_cache.data_ptr(), max_len,
                        lo.data_ptr(), hi.data_ptr(), extra.data_ptr(), count.data_ptr(), extra.shape[1], scale,
                        window, pos.data_ptr(), out.data_ptr())
    return out


# ---- the structs of csrc/kernels.c's model_forward (field order and types must match) ----------
_FMT = {torch.float32: 0, torch.bfloat16: 1, torch.int8: 2}
Q8 = 3  # int8 weights with a wsum: W8A8
_VP, _FP, _CI, _CF = ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_float


class CLin(ctypes.Structure):
    _fields_ = [("w", _VP), ("scale", _FP), ("bias", _FP), ("wsum", _VP), ("out", _CI), ("in_", _CI), ("fmt", _CI),
                ("pad", _CI)]


class CLayer(ctypes.Structure):
    _fields_ = [("attn_norm", _FP), ("post_attn_norm", _FP), ("mlp_norm", _FP), ("post_mlp_norm", _FP),
                ("q_norm", _FP), ("k_norm", _FP), ("qkv", CLin), ("o", CLin), ("gu", CLin), ("down", CLin),
                ("kc", _FP), ("vc", _FP), ("cos", _FP), ("sin", _FP), ("window", _CI), ("pad", _CI)]


class CModel(ctypes.Structure):
    _fields_ = [("n_layers", _CI), ("hidden", _CI), ("heads", _CI), ("kv_heads", _CI), ("d", _CI),
                ("inter", _CI), ("max_len", _CI), ("act", _CI), ("eps", _CF), ("norm_offset", _CF),
                ("attn_scale", _CF), ("pad", _CI), ("layers", ctypes.POINTER(CLayer)), ("final_norm", _FP),
                ("head", CLin)]


def c_linear(w: Weight) -> CLin:
    out, d_in = w.shape
    fmt = Q8 if w.wsum is not None else _FMT[w.data.dtype]
    return CLin(w.data.data_ptr(), _ptr(w.scale), _ptr(w.bias), _ptr(w.wsum), out, d_in, fmt, 0)


def read_bandwidth(megabytes: int = 512, repeat: int = 5) -> float:
    """Bytes per second that the kernels' threads read from memory (best of `repeat` sums over a
    buffer far larger than the caches)."""
    import time

    x = torch.ones(megabytes * 2**20 // 4)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        kernels().stream_sum(x.data_ptr(), x.numel())
        best = min(best, time.perf_counter() - start)
    return x.numel() * 4 / best


def profile(on: bool) -> None:
    """Start (and zero) or stop the kernels' per-category timers."""
    kernels().set_profile(int(on))


def profile_times() -> dict[str, float]:
    """Milliseconds spent in linear layers, attention and the rest since profile(True)."""
    out = (ctypes.c_double * 3)()
    kernels().get_profile(out)
    return {"linear": out[0], "attention": out[1], "rest": out[2]}
