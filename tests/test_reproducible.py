"""Greedy output is a function of the prompt and the settings alone: not of where the allocator
happened to put a buffer (what the process did before).

MKL's float32 GEMM (transformers' linear layers on the CPU) picks its code path by the alignment
of its operands, and the paths round differently: on a 2-core AMD EPYC, 12 of 16 offsets of the
same input gave other bits. A server's earlier requests move its buffers, a near-tie flips, and a
reply differs from the same request sent alone. leapdecode sets MKL's conditional numerical
reproducibility (MKL_CBWR=AUTO,STRICT, unless the user set it) on import; the native runtime's
kernels never depended on alignment (unaligned loads, one fixed order of operations).
"""

from __future__ import annotations

import subprocess
import sys

import torch

PROBE = """
import leapdecode, torch
torch.set_num_threads(2)
torch.manual_seed(0)
w, x = torch.randn(1536, 576), torch.randn(3, 576)
ref = torch.nn.functional.linear(x, w)
differ = 0
for offset in range(1, 17):
    buf = torch.empty(3 * 576 + offset)
    moved = buf[offset:].view(3, 576)
    moved.copy_(x)
    differ += not torch.equal(torch.nn.functional.linear(moved, w), ref)
print(differ)
"""


def test_transformers_linear_rounds_the_same_at_any_alignment():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0"


def test_native_linear_rounds_the_same_at_any_alignment():
    from leapdecode.models.native import ops

    torch.manual_seed(0)
    w = ops.make_weight(torch.randn(64, 576), "bfloat16")
    x = torch.randn(3, 576)
    ref = ops.linear(x, w)
    for offset in range(1, 17):
        moved = torch.empty(3 * 576 + offset)[offset:].view(3, 576)
        moved.copy_(x)
        assert torch.equal(ops.linear(moved, w), ref), offset
