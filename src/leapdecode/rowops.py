"""Each row's argmax and top k of a [n, vocab] logits tensor, as the engine and the drafters take them.

Where the native runtime's kernels are loaded (a native target was made in this process) and the
tensor is a CPU float32 one, the kernels do it (csrc/kernels.c: `argmax_rows`, `topk_rows`, a row
per thread): these run between passes, while torch has one thread (build.torch_single_threaded),
and torch's reductions over a 49152-token vocabulary took 15-25 us a row. Elsewhere, and for a row
holding a NaN, torch does. The argmax is torch's either way (the first of tied maxima); the top k
is ordered by value, ties by the lower index (torch leaves the order of ties open).
"""

from __future__ import annotations

from typing import Any

import torch

from .models.native import build

TOPK_MOST = 64  # the kernels' largest k
_loaded: Any = None


def _kernels(logits: torch.Tensor) -> Any:
    """The native kernels if they are loaded and can read `logits` in place, else None."""
    global _loaded
    if _loaded is None:
        if build.kernels.cache_info().currsize == 0:  # not built or loaded here: torch's turn
            return None
        _loaded = build.kernels()
    if logits.device.type != "cpu" or logits.dtype != torch.float32 or logits.dim() != 2:
        return None
    if not logits.is_contiguous() or logits.shape[1] == 0:
        return None
    return _loaded


def argmax(logits: torch.Tensor) -> list[int]:
    """Each row's index of its largest value (the first where several tie), as Python ints."""
    lib = _kernels(logits)
    if lib is not None:
        out = torch.empty(logits.shape[0], dtype=torch.long)
        if lib.argmax_rows(logits.data_ptr(), logits.shape[0], logits.shape[1], out.data_ptr()) == 0:
            return out.tolist()
    return logits.argmax(-1).tolist()


def topk(logits: torch.Tensor, k: int) -> torch.Tensor:
    """[n, k] long: each row's k largest values' indices, largest first."""
    lib = _kernels(logits)
    if lib is not None and 1 <= k <= min(TOPK_MOST, logits.shape[1]):
        out = torch.empty(logits.shape[0], k, dtype=torch.long)
        if lib.topk_rows(logits.data_ptr(), logits.shape[0], logits.shape[1], k, out.data_ptr()) == 0:
            return out
    return logits.topk(k, dim=-1).indices
