"""Compile csrc/kernels.c once per (source, flags, CPU) into ~/.cache/leapdecode/kernels and load it with ctypes.

The kernels split their work over a pool of threads of their own (csrc/kernels.c), not OpenMP's,
so a pass costs the same whichever Python thread makes it (a server's workers, the request that
completes a batch); the pool serves one call at a time (`kernels()` holds a lock around each).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator

SOURCE = Path(__file__).parent / "csrc" / "kernels.c"
FLAGS = ["-O3", "-march=native", "-pthread", "-ffp-contract=off", "-shared", "-fPIC"]
if os.environ.get("LEAPDECODE_NATIVE_AVX2"):  # the 8-lane kernels of AVX2-only CPUs, on any x86 CPU
    FLAGS.append("-mno-avx512f")
CACHE = Path.home() / ".cache" / "leapdecode" / "kernels"

_P, _I, _F = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
SIGNATURES = {
    "linear_f32": [_P, _I, _I, _P, _P, _P, _P, _I],
    "linear_bf16": [_P, _I, _I, _P, _P, _P, _I],
    "linear_i8": [_P, _I, _I, _P, _P, _P, _P, _I],
    "linear_q8": [_P, _I, _I, _P, _P, _P, _P, _P, _I],
    "linear_q4": [_P, _I, _I, _P, _P, _P, _I],
    "attention": [_P, _I, _I, _I, _I, _P, _P, _I, _P, _P, _P, _P, _I, _F, _I, _P, _P, _I],
    "rmsnorm": [_P, _I, _I, _P, _F, _F, _P],
    "gated_act": [_P, _I, _I, _I, _P],
    "embed_rows": [_P, _I, _P, _I, _F, _P],
    "set_threads": [_I],
    "set_profile": [_I],
    "get_profile": [_P],
    "model_forward": [_P, _P, _I, _P, _P, _P, _P, _P, _P, _I, _I, _P],
    "stream_sum": [_P, ctypes.c_long],
    "peak_macs": [_I, ctypes.c_long],
    "argmax_rows": [_P, _I, _I, _P],
    "topk_rows": [_P, _I, _I, _I, _P],
}
RESULTS = {"model_forward": ctypes.c_int, "attention": ctypes.c_int, "linear_bf16": ctypes.c_int,
           "linear_q8": ctypes.c_int, "linear_q4": ctypes.c_int, "stream_sum": ctypes.c_double,
           "peak_macs": ctypes.c_double, "argmax_rows": ctypes.c_int, "topk_rows": ctypes.c_int}  # the rest return nothing


def _cpu_flags() -> str:
    """The CPU's feature flags: a .so built with -march=native must not run on another CPU."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return ""


def library_path() -> Path:
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode() + _cpu_flags().encode()).hexdigest()[:16]
    return CACHE / f"{key}.so"


def _compile(target: Path) -> None:
    gcc = shutil.which("gcc")
    if gcc is None:
        raise RuntimeError("the native runtime needs gcc to build its kernels; install it (apt-get install gcc) or use --backend hf")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run([gcc, *FLAGS, str(SOURCE), "-o", tmp, "-lm"], check=True, capture_output=True, text=True)
        os.replace(tmp, target)  # atomic: a concurrent loader sees no half-written file
    except subprocess.CalledProcessError as error:
        raise RuntimeError(f"building the native kernels failed: {error.stderr.strip()}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class Kernels:
    """The library's functions, one call at a time: the kernels' thread pool serves one caller."""

    def __init__(self, lib: ctypes.CDLL, missing_ok: bool = False):
        self._lock = threading.Lock()
        for name, args in SIGNATURES.items():
            if missing_ok and not hasattr(lib, name):  # an older build (scripts/kernel_ab.py)
                continue
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = args, RESULTS.get(name)
            setattr(self, name, self._serialized(fn))

    def _serialized(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            with self._lock:
                return fn(*args)

        return call


_held = 0
_held_lock = threading.Lock()
_torch_threads = 1


@contextmanager
def torch_single_threaded() -> Iterator[None]:
    """Torch's own ops run on one thread while a generation decodes on the kernels.

    Torch's OpenMP workers spin for a while after each parallel op (an argmax over the vocabulary,
    say); spinning beside the kernels' threads they took the CPUs from them and made a pass of 4
    inputs cost 1.5-1.9x. The engine's torch ops are small. Counted: the last generation to end
    gives torch its thread count back."""
    global _held, _torch_threads
    import torch

    with _held_lock:
        if _held == 0:
            _torch_threads = torch.get_num_threads()
        _held += 1
    torch.set_num_threads(1)  # this thread's OpenMP setting, and the default of new threads
    try:
        yield
    finally:
        with _held_lock:
            _held -= 1
            if _held == 0:
                torch.set_num_threads(_torch_threads)


@lru_cache(maxsize=1)
def kernels() -> Kernels:
    path = library_path()
    if not path.exists():
        _compile(path)
    return Kernels(ctypes.CDLL(str(path)))
