"""leapdecode: fast, lossless speculative decoding for transformers causal LMs.

    import leapdecode
    engine = leapdecode.load("smollm2-135m")
    out = engine.generate("Summarize: ...", leapdecode.GenerationConfig(max_new_tokens=64))
    print(out.text, out.stats.line())
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

from .config import GenerationConfig
from .drafters import DEFAULT_METHOD, Draft, Drafter, make_drafter
from .engine import Engine, Generation, Stats

__version__ = "0.1.0"


DEVICES = ("cpu", "cuda")
# "hf" is short for "transformers"; "auto" picks the native runtime where it runs the model
BACKENDS = ("auto", "native", "transformers", "hf", "llamacpp")


def pick_backend(backend: str, model: str, dtype: str, device: str = "cpu",
                 notice: Callable[[str], None] | None = None) -> str:
    """The concrete backend for a request: "auto" is the native runtime on the CPU for an
    architecture and dtype it runs, else transformers (with a one-line `notice` saying why)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if backend == "hf":
        return "transformers"
    if backend != "auto":
        return backend
    from .models.native import FORMATS, unsupported_reason
    from .models.registry import resolve

    if device != "cpu":
        return "transformers"
    reason = unsupported_reason(resolve(model)) if dtype in FORMATS else f"dtype {dtype} is not one it runs"
    if reason is None:
        return "native"
    if dtype == "int8":
        raise ValueError(f"--dtype int8 needs the native runtime, which cannot run this model: {reason}")
    if notice is not None:
        notice(f"native runtime: {reason.split('; ')[0]}; running on transformers")
    return "transformers"


def load(model: str = "smollm2-135m", dtype: str = "float32", device: str = "cpu",
         max_len: int = 4096, backend: str = "transformers") -> Engine:
    """An Engine over a packaged model name, a transformers directory or a GGUF file.

    backend "transformers" (or "hf"): on "cuda" the target is a StaticTarget (static KV cache,
    verification passes replayed as CUDA graphs; `max_len` bounds prompt plus output); on "cpu"
    an HFTarget.

    backend "native": leapdecode's own batch-invariant CPU runtime (Llama, Qwen2, Gemma3; float32,
    bfloat16, int8); "auto" takes it wherever it runs the model and transformers elsewhere.

    backend "llamacpp" runs a GGUF model (a packaged name or a .gguf file) with llama.cpp on the
    CPU instead, in the file's own quantization, with torch.get_num_threads() threads and a
    context of `max_len` tokens.
    """
    backend = pick_backend(backend, model, dtype, device)
    if backend == "llamacpp":
        return _load_llamacpp(model, dtype, device, max_len)
    if backend == "native":
        import torch

        from .models.native import load_native
        from .models.registry import load_tokenizer, resolve

        target = load_native(resolve(model), dtype, device, max_len, threads=torch.get_num_threads())
        return Engine(target, load_tokenizer(model), name=model)
    from .models.hf import HFTarget
    from .models.registry import load_model

    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose one of: {', '.join(DEVICES)}")
    if device == "cuda":
        from .models.cuda import StaticTarget, require_cuda

        require_cuda(device)  # before loading anything
        hf_model, tokenizer = load_model(model, dtype, device)
        target = StaticTarget(hf_model, max_len=max_len, tokenizer=tokenizer)
        target.capture()  # compile and capture every pass size now, not inside the first requests
        return Engine(target, tokenizer, name=model)
    hf_model, tokenizer = load_model(model, dtype, device)
    return Engine(HFTarget(hf_model, tokenizer), tokenizer, name=model)


def _load_llamacpp(model: str, dtype: str, device: str, max_len: int) -> Engine:
    from .models.llamacpp import load_llamacpp

    if device != "cpu":
        raise ValueError(f"--backend llamacpp runs on the CPU, not {device!r}; drop --device")
    if dtype != "float32":
        raise ValueError(f"--dtype {dtype} does not apply to --backend llamacpp (it computes in the "
                         "GGUF file's own quantization); drop --dtype")
    return load_llamacpp(model, n_ctx=max_len)


def generate(prompt: str | Sequence[int], model: str = "smollm2-135m", method: str = DEFAULT_METHOD,
             dtype: str = "float32", **config: Any) -> Generation:
    """One-shot helper: load a model and generate (load once with `load` for repeated use)."""
    return load(model, dtype).generate(prompt, GenerationConfig(**config), method)


def stream(prompt: str | Sequence[int], model: str = "smollm2-135m", method: str = DEFAULT_METHOD,
           dtype: str = "float32", **config: Any) -> Iterator[str]:
    """One-shot helper yielding text deltas."""
    return iter(load(model, dtype).stream(prompt, GenerationConfig(**config), method))


__all__ = ["Draft", "Drafter", "Engine", "Generation", "GenerationConfig", "Stats", "generate",
           "load", "make_drafter", "pick_backend", "stream"]
