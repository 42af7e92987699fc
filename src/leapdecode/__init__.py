"""leapdecode: fast, lossless speculative decoding for transformers causal LMs.

    import leapdecode
    engine = leapdecode.load("smollm2-135m")
    out = engine.generate("Summarize: ...", leapdecode.GenerationConfig(max_new_tokens=64))
    print(out.text, out.stats.line())
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Sequence

# MKL's float32 GEMM rounds by operand alignment unless told otherwise: greedy output must not depend
# on where earlier work left the allocator (tests/test_reproducible.py)
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

from .config import GenerationConfig
from .drafters import DEFAULT_METHOD, Draft, Drafter, make_drafter
from .engine import Engine, Generation, Stats
from .models.loading import BACKENDS, DEVICES, load_target, pick_backend  # noqa: F401

__version__ = "0.1.0"


def load(model: str = "smollm2-135m", dtype: str = "float32", device: str = "cpu",
         max_len: int = 4096, backend: str = "transformers", batch: int = 1) -> Engine:
    """An Engine over a packaged model name, a transformers directory or a GGUF file.

    backend "transformers" (or "hf"): on "cuda" the target is a StaticTarget (static KV cache,
    verification passes replayed as CUDA graphs; `max_len` bounds prompt plus output); on "cpu"
    an HFTarget.

    backend "native": leapdecode's own batch-invariant CPU runtime (Llama, Qwen2, Gemma3; float32,
    bfloat16, int8); "auto" takes it wherever it runs the model and transformers elsewhere.

    backend "llamacpp" runs a GGUF model (a packaged name or a .gguf file) with llama.cpp on the
    CPU instead, in the file's own quantization, with torch.get_num_threads() threads and a
    context of `max_len` tokens.

    batch > 1 (native runtime): that many requests decode at once, their passes shared, each
    output bitwise its solo one (`Engine.generate_many`, `Engine.session`, `leapdecode serve`).
    """
    target, tokenizer = load_target(model, backend, dtype, device, max_len, batch=batch)
    return Engine(target, tokenizer, name=model)


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
