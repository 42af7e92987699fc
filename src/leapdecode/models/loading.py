"""One loading path: a model source and a backend -> (Target, tokenizer).

A model is a packaged name, a transformers directory or a GGUF file (registry.py resolves it);
a backend is "native" (leapdecode's own runtime, on the CPU or CUDA), "transformers" ("hf"; a
StaticTarget on CUDA, an HFTarget on the CPU), "llamacpp" (the GGUF file run by llama.cpp), or
"auto" (native where it runs the model, else transformers). `leapdecode.load` wraps the result in an Engine;
draft models come through `load_draft`, cached per process.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from .base import Target
from .registry import QUANTIZED

DEVICES = ("cpu", "cuda")
BACKENDS = ("auto", "native", "transformers", "hf", "llamacpp")
DRAFT_BACKENDS = ("transformers", "native", "llamacpp")  # what may run a draft model

_DRAFTS: dict[tuple[str, str, str], tuple[Target, Any]] = {}  # (name, dtype, backend) -> loaded


def pick_backend(backend: str, model: str, dtype: str, device: str = "cpu",
                 notice: Callable[[str], None] | None = None) -> str:
    """The concrete backend for a request: "auto" is the native runtime for an architecture and
    dtype it runs on that device, else transformers (with a one-line `notice` saying why)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if backend == "hf":
        return "transformers"
    if backend != "auto":
        return backend
    from .native import FORMATS, unsupported_reason
    from .registry import resolve

    if device == "cuda":
        if not torch.cuda.is_available():
            return "transformers"  # whoever loads it says that there is no GPU
        from importlib.util import find_spec

        from .native.gpu import gpu_unsupported_reason

        reason = gpu_unsupported_reason(resolve(model), dtype)
        if reason is None and find_spec("triton") is None:
            reason = "triton is not installed"
    else:
        reason = unsupported_reason(resolve(model)) if dtype in FORMATS else f"dtype {dtype} is not one it runs"
    if reason is None:
        return "native"
    if dtype in QUANTIZED:
        raise ValueError(f"--dtype {dtype} needs the native runtime, which cannot run this model: {reason}")
    if notice is not None:
        notice(f"native runtime: {reason.split('; ')[0]}; running on transformers")
    return "transformers"


def load_target(model: str, backend: str = "transformers", dtype: str = "float32", device: str = "cpu",
                max_len: int = 4096, threads: int | None = None, batch: int = 1) -> tuple[Target, Any]:
    """(target, tokenizer) of `model` on `backend` (see the module docstring).

    max_len bounds prompt plus output for the targets with a static cache (native, CUDA) and is
    llama.cpp's context size; threads defaults to torch.get_num_threads(); batch > 1 gives the
    native runtime that many sequences whose passes run together (Engine.session, generate_many).
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be an integer >= 1, got {batch!r}")
    backend = pick_backend(backend, model, dtype, device)
    threads = threads or torch.get_num_threads()
    if backend == "llamacpp":
        from .llamacpp import load_llamacpp

        if device != "cpu":
            raise ValueError(f"--backend llamacpp runs on the CPU, not {device!r}; drop --device")
        if dtype != "float32":
            raise ValueError(f"--dtype {dtype} does not apply to --backend llamacpp (it computes in the "
                             "GGUF file's own quantization); drop --dtype")
        return load_llamacpp(model, threads=threads, n_ctx=max_len)
    from .registry import load_model, load_tokenizer, resolve

    if backend == "native":
        from .native import load_native

        sequences = 1 if batch == 1 else batch + 1  # sequence 0 stays the target's own
        target = load_native(resolve(model), dtype, device, max_len, threads=threads, sequences=sequences)
        return target, load_tokenizer(model)
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose one of: {', '.join(DEVICES)}")
    if device == "cuda":
        from .cuda import StaticTarget, require_cuda

        require_cuda(device)  # before loading anything
        hf_model, tokenizer = load_model(model, dtype, device)
        target = StaticTarget(hf_model, max_len=max_len, tokenizer=tokenizer)
        target.capture()  # compile and capture every pass size now, not inside the first requests
        return target, tokenizer
    from .hf import HFTarget

    hf_model, tokenizer = load_model(model, dtype, device)
    return HFTarget(hf_model, tokenizer), tokenizer


def as_target(model: Any) -> Target:
    """A Target as it is, or a transformers model wrapped in one (ValueError for anything else)."""
    if isinstance(model, Target):
        return model
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"expected a Target or a transformers model, got {type(model).__name__}")
    from .hf import HFTarget

    return HFTarget(model)


def load_draft(name: str, dtype: str = "float32", backend: str = "transformers") -> tuple[Target, Any]:
    """(target, tokenizer) of a draft model, loaded once per process for each (name, dtype, backend).

    "native" runs an architecture the runtime does not know on transformers instead (in bfloat16
    for int8); "llamacpp" runs the model's GGUF file with one branch per pass (a chain) and
    ignores `dtype`. Errors name the draft model.
    """
    if backend not in DRAFT_BACKENDS:
        raise ValueError(f"draft-model option backend must be one of {', '.join(DRAFT_BACKENDS)}, got {backend!r}")
    key = (name, dtype if backend != "llamacpp" else f"threads={torch.get_num_threads()}", backend)
    if key not in _DRAFTS:
        try:
            if backend == "llamacpp":
                from .llamacpp import load_llamacpp

                _DRAFTS[key] = load_llamacpp(name, max_branches=1)
            else:
                if backend == "native":
                    from .native import unsupported_reason
                    from .registry import resolve

                    if unsupported_reason(resolve(name)) is not None:
                        backend, dtype = "transformers", "bfloat16" if dtype in QUANTIZED else dtype
                _DRAFTS[key] = load_target(name, backend, dtype)
        except ValueError as err:  # ModelNotInstalled's message already names the install command
            raise type(err)(f"draft model: {err}") from None
        except OSError as err:
            raise ValueError(f"draft model {name!r} could not be loaded: {err}") from None
    return _DRAFTS[key]
