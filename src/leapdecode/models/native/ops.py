"""Thin wrappers: torch tensors in, kernels (build.py) called by data_ptr(), torch tensors out."""

from __future__ import annotations

import ctypes
import mmap
from dataclasses import dataclass

import torch

from .build import kernels

FORMATS = ("float32", "bfloat16", "int8", "w8a8", "w4a8")


@dataclass
class Weight:
    """A [out, in] weight in one storage format (`fmt`, one of FORMATS).

    float32: `data` [out, in]. bfloat16: packed in panels of 16 outputs, `data` [ceil(out / 16),
    in / 2, 16, 2] with element [p, t, o, j] = W[16 p + o, 2 t + j] (subnormals flushed to zero).
    int8: `data` [out, in] int8 and `scale` [out] fp32 (per output channel). w8a8: the same int8
    weights packed in panels of 16 outputs, `data` [ceil(out / 16), in / 4, 16, 4] with element
    [p, t, o, j] = W[16 p + o, 4 t + j], and `wsum` [out] int32, the sums of each output's weights.
    w4a8: `data` [ceil(out / 16), ceil(in / 32), 320] uint8, 4-bit weights with a float16 scale and
    min per output and group of 32 (layout in csrc/kernels.c). Outputs and inputs past the real ones
    are zeros."""

    data: torch.Tensor
    scale: torch.Tensor | None
    bias: torch.Tensor | None  # [out] float32
    wsum: torch.Tensor | None = None
    fmt: str = "float32"
    dims: tuple[int, int] | None = None  # (out, in) where `data` is packed

    @property
    def shape(self) -> tuple[int, int]:
        return self.dims or tuple(self.data.shape)

    @property
    def nbytes(self) -> int:
        extra = sum(t.numel() * 4 for t in (self.scale, self.bias, self.wsum) if t is not None)
        return self.data.numel() * self.data.element_size() + extra

    def int8_rows(self, ids: torch.Tensor | slice = slice(None)) -> torch.Tensor:
        """Rows `ids` of an 8-bit weight as [len(ids), in] int8 (W8A8's panels unpacked)."""
        if self.fmt == "int8":
            return self.data[ids]
        assert self.fmt == "w8a8", self.fmt
        return self._unpanel(ids)

    def _unpanel(self, ids: torch.Tensor | slice) -> torch.Tensor:
        """Rows `ids` of bfloat16's or w8a8's panels [p, t, 16, j] as [len(ids), in]."""
        out, d_in = self.shape
        return self.data.permute(0, 2, 1, 3).reshape(-1, d_in)[:out][ids]

    def rows(self, ids: torch.Tensor | slice = slice(None)) -> torch.Tensor:
        """Rows `ids` of the weight as the model computes with them: [len(ids), in] float32."""
        if self.fmt == "float32":
            return self.data[ids]
        if self.fmt == "bfloat16":
            return self._unpanel(ids).float()
        if self.fmt in ("int8", "w8a8"):
            return self.int8_rows(ids).float() * self.scale[ids, None]
        out, d_in = self.shape
        panels, groups = self.data.shape[:2]
        packed = self.data[:, :, :256].reshape(panels, groups, 4, 16, 4)  # [p, g, v, o, j]
        q = torch.cat([packed & 15, packed >> 4], dim=2)  # quads 0..7 of each group
        q = q.permute(0, 3, 1, 2, 4).reshape(panels * 16, groups * 32).float()
        half = self.data[:, :, 256:].contiguous().view(torch.float16).float()  # [p, g, 16 scales | 16 mins]

        def per_weight(t: torch.Tensor) -> torch.Tensor:  # [p, g, 16] -> [p * 16, g * 32]
            return t.permute(0, 2, 1).reshape(panels * 16, groups, 1).expand(-1, -1, 32).reshape(panels * 16, -1)

        return (per_weight(half[:, :, :16]) * q + per_weight(half[:, :, 16:]))[:out, :d_in][ids]


def make_weight(w: torch.Tensor, fmt: str, bias: torch.Tensor | None = None) -> Weight:
    """w: [out, in] float. int8 and w8a8: symmetric, one fp32 scale per output channel (max |w| / 127).
    w4a8: per output and group of 32 inputs, s = (max - min) / 15 and m = min (both rounded to
    float16), q = round((w - m) / s) clamped to 0..15 (GGUF's Q4_1 rule; a Q4_1 weight comes back
    as itself)."""
    if fmt not in FORMATS:
        raise ValueError(f"dtype {fmt!r} is not one of {', '.join(FORMATS)}")
    if w.shape[1] % 8:
        raise ValueError(f"the native linear needs in_features divisible by 8, got {w.shape[1]}")
    w = w.float()
    b = None if bias is None else bias.float().contiguous()
    if fmt == "float32":
        return Weight(w.contiguous(), None, b)
    out, d_in = w.shape
    if fmt == "bfloat16":
        h = w.to(torch.bfloat16)
        h = torch.where((h.view(torch.int16) & 0x7F80) == 0, torch.zeros_like(h).copysign(h), h)  # no subnormals
        panels = torch.nn.functional.pad(h, (0, 0, 0, -out % 16)).view(-1, 16, d_in // 2, 2).permute(0, 2, 1, 3)
        return Weight(panels.contiguous(), None, b, fmt=fmt, dims=(out, d_in))
    if fmt == "w4a8":
        return Weight(_pack_w4(w), None, b, fmt=fmt, dims=(out, d_in))
    scale = (w.abs().amax(dim=1) / 127).clamp_min(1e-12)  # [out]
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous()
    if fmt == "int8":
        return Weight(q, scale.contiguous(), b, fmt=fmt)
    wsum = q.sum(dim=1, dtype=torch.int32).contiguous()
    panels = torch.nn.functional.pad(q, (0, 0, 0, -out % 16)).view(-1, 16, d_in // 4, 4).permute(0, 2, 1, 3)
    return Weight(panels.contiguous(), scale.contiguous(), b, wsum, fmt=fmt, dims=(out, d_in))


def _pack_w4(w: torch.Tensor) -> torch.Tensor:
    """[out, in] float -> W4A8's panels [ceil(out / 16), ceil(in / 32), 320] uint8."""
    out, d_in = w.shape
    w = torch.nn.functional.pad(w, (0, -d_in % 32, 0, -out % 16))
    panels, groups = w.shape[0] // 16, w.shape[1] // 32
    g = w.view(panels * 16, groups, 32)
    lo, hi = g.amin(dim=2), g.amax(dim=2)
    s, m = ((hi - lo) / 15).half(), lo.half()
    sf, mf = s.float()[..., None], m.float()[..., None]
    q = torch.where(sf > 0, torch.round((g - mf) / sf.clamp_min(1e-30)), torch.zeros_like(g)).clamp(0, 15)
    q = q.to(torch.uint8).view(panels, 16, groups, 8, 4)  # [p, o, g, quad, j]
    packed = (q[:, :, :, :4] | (q[:, :, :, 4:] << 4)).permute(0, 2, 3, 1, 4).reshape(panels, groups, 256)
    halves = torch.stack([s, m]).view(2, panels, 16, groups).permute(1, 3, 0, 2)  # [p, g, 2, 16]
    halves = halves.contiguous().view(torch.uint8).reshape(panels, groups, 64)
    return torch.cat([packed, halves], dim=2).contiguous()


HUGE_PAGE = 2 << 20


def huge_empty(nbytes: int) -> torch.Tensor:
    """An uninitialized uint8 tensor of `nbytes` in fresh anonymous memory, 2 MiB-aligned, that the
    kernel is asked to back with 2 MiB pages (transparent huge pages, `madvise`; where they are off
    it gets ordinary pages). Streaming the weights through 4 KiB pages costs a TLB miss per page and
    stops the hardware's prefetching at each page: passes were 5-14% slower in some of this host's
    minutes and no slower in others (docs/runtime.md)."""
    buf = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # shared: no THP
    if hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            buf.madvise(mmap.MADV_HUGEPAGE)
        except OSError:  # a kernel without transparent huge pages
            pass
    whole = torch.frombuffer(buf, dtype=torch.uint8)  # keeps `buf` alive
    skip = -whole.data_ptr() % HUGE_PAGE
    return whole[skip:skip + nbytes]


def to_huge_pages(weights: list[Weight]) -> None:
    """Moves the weights' `data` into one arena of huge pages (huge_empty), in the order given (the
    order a pass reads them), each at a 64-byte boundary; the values are copied exactly."""
    sizes = [w.data.numel() * w.data.element_size() for w in weights]
    arena = huge_empty(sum(-(-size // 64) * 64 for size in sizes))
    at = 0
    for w, size in zip(weights, sizes):
        view = arena[at:at + size].view(w.data.dtype).view(w.data.shape)
        view.copy_(w.data)
        w.data = view
        at += -(-size // 64) * 64


_KERNEL = {"float32": "linear_f32", "int8": "linear_i8"}  # the row-major formats


def linear(x: torch.Tensor, w: Weight, out: torch.Tensor | None = None) -> torch.Tensor:
    """x: [n, in] float32 contiguous -> [n, out], each row bitwise independent of n."""
    n, d_in = x.shape
    d_out = w.shape[0]
    assert d_in == w.shape[1] and x.dtype == torch.float32 and x.is_contiguous()
    y = torch.empty(n, d_out) if out is None else out
    if w.fmt == "w8a8":
        err = kernels().linear_q8(x.data_ptr(), n, d_in, w.data.data_ptr(), _ptr(w.scale), w.wsum.data_ptr(),
                                  _ptr(w.bias), y.data_ptr(), d_out)
    elif w.fmt == "bfloat16":
        err = kernels().linear_bf16(x.data_ptr(), n, d_in, w.data.data_ptr(), _ptr(w.bias), y.data_ptr(), d_out)
    elif w.fmt == "w4a8":
        err = kernels().linear_q4(x.data_ptr(), n, d_in, w.data.data_ptr(), _ptr(w.bias), y.data_ptr(), d_out)
    else:
        fn = getattr(kernels(), _KERNEL[w.fmt])
        fn(x.data_ptr(), n, d_in, w.data.data_ptr(), _ptr(w.scale), _ptr(w.bias), y.data_ptr(), d_out)
        return y
    if err:
        raise MemoryError(f"the {w.fmt.upper()} linear ran out of memory")
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
    """q: [n, heads, d]; k_cache, v_cache: [kv_heads, max_len, d] of one layer, float32 or bfloat16;
    extra: [n, e] int32 slots of each query's ancestors by depth (itself last), count: [n] int32.
    Returns [n, heads, d]: query j over slots 0..cached-1 then extra[j, :count[j]], in that order."""
    n, heads, d = q.shape
    kv_heads, max_len, _ = k_cache.shape
    q = q.contiguous()
    out = torch.empty_like(q)
    pos = positions if positions is not None else torch.zeros(n, dtype=torch.int32)
    lo, hi = torch.zeros(n, dtype=torch.int32), torch.full((n,), cached, dtype=torch.int32)
    offsets = (extra - cached).to(torch.int32).contiguous()  # the kernel takes them from hi
    err = kernels().attention(q.data_ptr(), n, heads, kv_heads, d, k_cache.data_ptr(), v_cache.data_ptr(), max_len,
                              lo.data_ptr(), hi.data_ptr(), offsets.data_ptr(), count.data_ptr(), extra.shape[1],
                              scale, window, pos.data_ptr(), out.data_ptr(), int(k_cache.dtype == torch.bfloat16))
    if err:
        raise MemoryError("attention ran out of memory")
    return out


# ---- the structs of csrc/kernels.c's model_forward (field order and types must match) ----------
_FMT = {"float32": 0, "bfloat16": 1, "int8": 2, "w8a8": 3, "w4a8": 4}
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
                ("attn_scale", _CF), ("kv_bf16", _CI), ("layers", ctypes.POINTER(CLayer)), ("final_norm", _FP),
                ("head", CLin)]


def c_linear(w: Weight) -> CLin:
    out, d_in = w.shape
    return CLin(w.data.data_ptr(), _ptr(w.scale), _ptr(w.bias), _ptr(w.wsum), out, d_in, _FMT[w.fmt], 0)


def read_bandwidth(megabytes: int = 512, repeat: int = 5) -> float:
    """Bytes per second that the kernels' threads read from memory (best of `repeat` sums over a
    buffer far larger than the caches, in huge pages as the weights are)."""
    import time

    x = huge_empty(megabytes * 2**20).view(torch.float32).fill_(1.0)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        kernels().stream_sum(x.data_ptr(), x.numel())
        best = min(best, time.perf_counter() - start)
    return x.numel() * 4 / best


def arithmetic_rate(fmt: str, steps: int = 200_000, repeat: int = 5) -> float:
    """Multiply-adds per second that the kernels' threads do with the multiply-add step of weights
    in format `fmt` (float32 FMAs for float32 and int8), from registers: the arithmetic ceiling."""
    import time

    best = 0.0
    for _ in range(repeat):
        start = time.perf_counter()
        macs = kernels().peak_macs(_FMT[fmt], steps)
        best = max(best, macs / (time.perf_counter() - start))
    return best


def profile(on: bool) -> None:
    """Start (and zero) or stop the kernels' per-category timers."""
    kernels().set_profile(int(on))


def profile_times() -> dict[str, float]:
    """Milliseconds spent in linear layers, attention and the rest since profile(True)."""
    out = (ctypes.c_double * 3)()
    kernels().get_profile(out)
    return {"linear": out[0], "attention": out[1], "rest": out[2]}
