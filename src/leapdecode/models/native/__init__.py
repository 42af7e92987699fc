"""leapdecode's own decoding runtime behind the Target protocol: batch-invariant C kernels on the
CPU (target.py), Triton kernels and CUDA graphs on an NVIDIA GPU (gpu.py)."""

from __future__ import annotations

from pathlib import Path

from .model import unsupported_reason
from .ops import FORMATS
from .target import NativeTarget

__all__ = ["NativeTarget", "load_native", "unsupported_reason"]


def load_native(directory: Path, dtype: str = "bfloat16", device: str = "cpu", max_len: int = 4096,
                threads: int | None = None, sequences: int = 1):
    """The native target of a transformers directory: NativeTarget on the CPU, NativeGpuTarget on CUDA."""
    if device == "cuda":
        if sequences > 1:
            raise ValueError("the native runtime batches requests on the CPU only; drop --batch with --device cuda")
        from ..cuda import require_cuda
        from .gpu import NativeGpuTarget, gpu_unsupported_reason

        require_cuda(device)
        reason = gpu_unsupported_reason(Path(directory), dtype)
        if reason:
            raise ValueError(f"{reason}; use --backend hf")
        return NativeGpuTarget(Path(directory), dtype, max_len)
    if device != "cpu":
        raise ValueError(f"unknown device {device!r}; choose cpu or cuda")
    if dtype not in FORMATS:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(FORMATS)}")
    reason = unsupported_reason(Path(directory))
    if reason:
        raise ValueError(reason)
    return NativeTarget(Path(directory), dtype, max_len, threads, sequences)
