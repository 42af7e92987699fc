"""leapdecode's own CPU decoding runtime: batch-invariant C kernels behind the Target protocol."""

from __future__ import annotations

from pathlib import Path

from .model import unsupported_reason
from .ops import FORMATS
from .target import NativeTarget

__all__ = ["NativeTarget", "load_native", "unsupported_reason"]


def load_native(directory: Path, dtype: str = "bfloat16", device: str = "cpu", max_len: int = 4096,
                threads: int | None = None, sequences: int = 1) -> NativeTarget:
    if dtype not in FORMATS:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(FORMATS)}")
    if device != "cpu":
        raise ValueError(f"the native runtime runs on the CPU only, not {device!r}; use --backend hf")
    reason = unsupported_reason(Path(directory))
    if reason:
        raise ValueError(reason)
    return NativeTarget(Path(directory), dtype, max_len, threads, sequences)
