"""leapdecode: fast, lossless speculative decoding for transformers causal LMs.

    import leapdecode
    engine = leapdecode.load("smollm2-135m")
    out = engine.generate("Summarize: ...", leapdecode.GenerationConfig(max_new_tokens=64))
    print(out.text, out.stats.line())
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

from .config import GenerationConfig
from .drafters import Draft, Drafter, make_drafter
from .engine import Engine, Generation, Stats

__version__ = "0.1.0"


def load(model: str = "smollm2-135m", dtype: str = "float32", device: str = "cpu") -> Engine:
    """An Engine over a packaged model name, a transformers directory or a GGUF file."""
    from .models.hf import HFTarget
    from .models.registry import load_model

    hf_model, tokenizer = load_model(model, dtype, device)
    return Engine(HFTarget(hf_model), tokenizer, name=model)


def generate(prompt: str | Sequence[int], model: str = "smollm2-135m", method: str = "prompt-lookup",
             dtype: str = "float32", **config: Any) -> Generation:
    """One-shot helper: load a model and generate (load once with `load` for repeated use)."""
    return load(model, dtype).generate(prompt, GenerationConfig(**config), method)


def stream(prompt: str | Sequence[int], model: str = "smollm2-135m", method: str = "prompt-lookup",
           dtype: str = "float32", **config: Any) -> Iterator[str]:
    """One-shot helper yielding text deltas."""
    return iter(load(model, dtype).stream(prompt, GenerationConfig(**config), method))


__all__ = ["Draft", "Drafter", "Engine", "Generation", "GenerationConfig", "Stats", "generate",
           "load", "make_drafter", "stream"]
