"""The native runtime's GPU kernels (Triton), each one program per row (or per row and head).

A program never reads another row's data, and the launch is the same at every pass width, so a
row's result does not depend on the pass it is in. The attention reduces a query's keys in one
canonical order: its sequence's committed slots lo..hi-1, then its ancestors in the pass by depth
(itself last), in chunks of CHUNK keys counted from the first key (one program each, so a long
cache is read in parallel), each in blocks of BLOCK_N, and the chunks merged in order. A token
thus sees the same keys at the same places whether it is verified in a chain, in a tree, or
decoded alone after its ancestors were committed, and gets bitwise the same output.

Run on a CPU with TRITON_INTERPRET=1 (set before triton is imported), they serve the tests.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def add_rmsnorm(res_ptr, delta_ptr, w_ptr, out_ptr, eps, N: tl.constexpr, BLOCK: tl.constexpr,
                HAS_DELTA: tl.constexpr):
    """res[row] (+= delta[row]); out[row] = res[row] / rms(res[row]) * w. res float32."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    m = offs < N
    x = tl.load(res_ptr + row * N + offs, mask=m, other=0.0)
    if HAS_DELTA:
        x += tl.load(delta_ptr + row * N + offs, mask=m, other=0.0).to(tl.float32)
        tl.store(res_ptr + row * N + offs, x, mask=m)
    r = 1.0 / tl.sqrt(tl.sum(x * x, 0) / N + eps)
    w = tl.load(w_ptr + offs, mask=m, other=0.0)
    tl.store(out_ptr + row * N + offs, (x * r * w).to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def rope_store(qkv_ptr, cos_ptr, sin_ptr, pos_ptr, slot_ptr, q_ptr, k_ptr, v_ptr,
               H: tl.constexpr, KV: tl.constexpr, D: tl.constexpr, HB: tl.constexpr, KVB: tl.constexpr):
    """Rotate q and k of row `row` at its position (rotate-half convention; cos/sin tables
    [positions, D/2]); q to q_ptr [rows, H, D] float32, k and v to the cache slot [slots, KV, D]."""
    row = tl.program_id(0).to(tl.int64)
    HALF: tl.constexpr = D // 2
    pos = tl.load(pos_ptr + row).to(tl.int64)
    slot = tl.load(slot_ptr + row).to(tl.int64)
    j = tl.arange(0, HALF)[None, :]
    c = tl.load(cos_ptr + pos * HALF + j)
    s = tl.load(sin_ptr + pos * HALF + j)
    base = qkv_ptr + row * (H + 2 * KV) * D
    h = tl.arange(0, HB)[:, None]
    hm = h < H
    x1 = tl.load(base + h * D + j, mask=hm, other=0.0).to(tl.float32)
    x2 = tl.load(base + h * D + HALF + j, mask=hm, other=0.0).to(tl.float32)
    qo = q_ptr + row * H * D + h * D
    tl.store(qo + j, x1 * c - x2 * s, mask=hm)
    tl.store(qo + HALF + j, x2 * c + x1 * s, mask=hm)
    g = tl.arange(0, KVB)[:, None]
    gm = g < KV
    kb = base + H * D + g * D
    k1 = tl.load(kb + j, mask=gm, other=0.0).to(tl.float32)
    k2 = tl.load(kb + HALF + j, mask=gm, other=0.0).to(tl.float32)
    ko = k_ptr + slot * KV * D + g * D
    tl.store(ko + j, (k1 * c - k2 * s).to(k_ptr.dtype.element_ty), mask=gm)
    tl.store(ko + HALF + j, (k2 * c + k1 * s).to(k_ptr.dtype.element_ty), mask=gm)
    d = tl.arange(0, D)[None, :]
    v = tl.load(base + (H + KV) * D + g * D + d, mask=gm, other=0.0)
    tl.store(v_ptr + slot * KV * D + g * D + d, v.to(v_ptr.dtype.element_ty), mask=gm)


@triton.jit
def attention_chunk(q_ptr, k_ptr, v_ptr, lo_ptr, hi_ptr, anc_ptr, cnt_ptr, ml_ptr, part_ptr, scale,
                    H: tl.constexpr, KV: tl.constexpr, D: tl.constexpr, A: tl.constexpr, NCHUNK: tl.constexpr,
                    CHUNK: tl.constexpr, BLOCK_N: tl.constexpr):
    """Query (row, head) over chunk c of its keys, in canonical order: slots lo..hi-1, then
    anc[row, :cnt]; chunk c holds keys c*CHUNK.. of that order. Writes the chunk's running max,
    sum of exponentials and unnormalised output to ml/part (nothing for a chunk past the keys)."""
    row = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    c = tl.program_id(2)
    g = h // (H // KV)
    lo = tl.load(lo_ptr + row)
    n_pre = tl.load(hi_ptr + row) - lo
    total = n_pre + tl.load(cnt_ptr + row)
    d = tl.arange(0, D)
    q = tl.load(q_ptr + (row * H + h) * D + d) * scale  # float32
    m_i = tl.full((), float("-inf"), tl.float32)
    l_i = tl.zeros((), tl.float32)
    acc = tl.zeros((D,), tl.float32)
    start = c * CHUNK
    end = tl.minimum(start + CHUNK, total)
    while start < end:
        j = start + tl.arange(0, BLOCK_N)
        valid = j < end
        cached = j < n_pre
        anc = tl.load(anc_ptr + row * A + (j - n_pre), mask=valid & ~cached, other=0)
        slot = tl.where(cached, lo + j, anc).to(tl.int64)
        at = (slot[:, None] * KV + g) * D + d[None, :]
        k = tl.load(k_ptr + at, mask=valid[:, None], other=0.0).to(tl.float32)
        s = tl.where(valid, tl.sum(k * q[None, :], 1), float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 0))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new)
        v = tl.load(v_ptr + at, mask=valid[:, None], other=0.0).to(tl.float32)
        l_i = l_i * alpha + tl.sum(p, 0)
        acc = acc * alpha + tl.sum(p[:, None] * v, 0)
        m_i = m_new
        start += BLOCK_N
    used = c * CHUNK < total
    at = (row * H + h) * NCHUNK + c
    tl.store(ml_ptr + 2 * at, m_i, mask=used)
    tl.store(ml_ptr + 2 * at + 1, l_i, mask=used)
    tl.store(part_ptr + at * D + d, acc, mask=(d < D) & used)


@triton.jit
def attention_merge(ml_ptr, part_ptr, lo_ptr, hi_ptr, cnt_ptr, out_ptr,
                    H: tl.constexpr, D: tl.constexpr, NCHUNK: tl.constexpr, CHUNK: tl.constexpr):
    """out[row, head] = the chunks of attention_chunk merged in order 0, 1, ..."""
    row = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    total = tl.load(hi_ptr + row) - tl.load(lo_ptr + row) + tl.load(cnt_ptr + row)
    d = tl.arange(0, D)
    m_i = tl.full((), float("-inf"), tl.float32)
    l_i = tl.zeros((), tl.float32)
    acc = tl.zeros((D,), tl.float32)
    base = (row * H + h) * NCHUNK
    c = 0
    while c * CHUNK < total:
        m_c = tl.load(ml_ptr + 2 * (base + c))
        l_c = tl.load(ml_ptr + 2 * (base + c) + 1)
        a_c = tl.load(part_ptr + (base + c) * D + d)
        m_new = tl.maximum(m_i, m_c)
        alpha = tl.exp(m_i - m_new)
        beta = tl.exp(m_c - m_new)
        l_i = l_i * alpha + l_c * beta
        acc = acc * alpha + a_c * beta
        m_i = m_new
        c += 1
    tl.store(out_ptr + (row * H + h) * D + d, (acc / l_i).to(out_ptr.dtype.element_ty))


@triton.jit
def silu_mul(gu_ptr, out_ptr, N: tl.constexpr, BLOCK: tl.constexpr):
    """gu [rows, 2N] (gate | up) -> out [rows, N] = silu(gate) * up."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    m = offs < N
    g = tl.load(gu_ptr + row * 2 * N + offs, mask=m, other=0.0).to(tl.float32)
    u = tl.load(gu_ptr + row * 2 * N + N + offs, mask=m, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * N + offs, (g / (1.0 + tl.exp(-g)) * u).to(out_ptr.dtype.element_ty), mask=m)


def next_pow2(n: int) -> int:
    return triton.next_power_of_2(n)
