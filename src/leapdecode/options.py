"""Command-line options shared by every sub-command (`generate`, `bench`, `serve`, `profile`, ...).

One set of model arguments (--model/--dtype/--device/--backend/--threads), one parser for drafter
options (KEY=VALUE) and for --budget; nothing here imports torch or a model.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable, Sequence

from .models.registry import DEFAULT_MODEL, DTYPES as FLOAT_DTYPES, QUANTIZED

DTYPES = (*FLOAT_DTYPES, *QUANTIZED)
BACKEND_CHOICES = ("auto", "native", "hf", "transformers", "llamacpp")


class UsageError(ValueError):
    """A bad command line: printed as one line, exit code 2."""


def budget_arg(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 or 'auto', got {text!r}") from None


def parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    """['k=8', 'store=a.npz', 'keep=true'] -> {'k': 8, 'store': 'a.npz', 'keep': True}."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--opt expects KEY=VALUE, got {pair!r}")
        value: Any = {"true": True, "false": False, "none": None}.get(text.lower(), text)
        if isinstance(value, str):
            for kind in (int, float):
                try:
                    value = kind(text)
                    break
                except ValueError:
                    pass
        options[key.replace("-", "_")] = value
    return options


def add_model_args(p: argparse.ArgumentParser, *, threads: int | None = None, device: bool = True,
                   backend: bool = True, dtype: str = "float32") -> None:
    """--model, --dtype, --threads and (where the command offers them) --device and --backend."""
    p.add_argument("--model", default=DEFAULT_MODEL, help="packaged name, transformers dir or .gguf file")
    p.add_argument("--dtype", default=dtype, choices=DTYPES,
                   help="int8: 8-bit weights (per output channel) on the native runtime; w8a8: 8-bit "
                        "weights and activations (each row quantized on its own), integer dot products; "
                        "w4a8: 4-bit weights in groups of 32 (as GGUF's Q4_1) and 8-bit activations")
    default_threads = threads if threads else "torch's choice"
    p.add_argument("--threads", type=int, default=threads, help=f"CPU threads (default: {default_threads})")
    if device:
        p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                       help="cuda: static KV cache and verification passes replayed as CUDA graphs")
    if backend:
        p.add_argument("--backend", "--runtime", dest="backend", default="auto", choices=BACKEND_CHOICES,
                       help="auto (default): leapdecode's own batch-invariant runtime where it runs the model "
                       "(Llama, Qwen2, Gemma3 on the CPU), else transformers; native: that runtime or an error; "
                       "hf/transformers: transformers; llamacpp: llama.cpp on the GGUF file's own weights")


def set_threads(threads: int | None) -> None:
    """torch's CPU threads from --threads (None: leave torch's choice)."""
    if threads is None:
        return
    if threads < 1:
        raise UsageError(f"--threads must be >= 1, got {threads}")
    import torch

    torch.set_num_threads(threads)


def resolve_backend(args: argparse.Namespace, notice: Callable[[str], None] | None = None) -> str:
    """args.backend made concrete ("auto" -> native or transformers) for args.model/dtype/device."""
    from . import pick_backend

    return pick_backend(getattr(args, "backend", "auto"), args.model, args.dtype,
                        getattr(args, "device", "cpu"), notice)
