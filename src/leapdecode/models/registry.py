"""Model names -> loaded transformers models.

A model is a packaged name (see packaged.py), a local transformers model directory, or a GGUF
file. GGUF models are dequantized once by transformers and saved as a transformers directory
in the cache, so later loads take a fraction of a second instead of tens of seconds.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from .packaged import PACKAGED, ModelNotInstalled, check_gguf, convert_to_hf_dir, gguf_path, install_command, is_installed

DEFAULT_MODEL = "smollm2-135m"
DTYPES = ("float32", "bfloat16")
QUANTIZED = ("int8", "w8a8", "w4a8")  # formats of the native runtime alone (ops.make_weight)
QUANTIZED_NEEDS_NATIVE = "--dtype int8, w8a8 and w4a8 run on leapdecode's own runtime only: use --backend native (or auto)"


def cache_dir() -> Path:
    """Where assembled and converted models live: $XDG_CACHE_HOME/leapdecode (~/.cache/leapdecode)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "leapdecode"


def resolve(name: str) -> Path:
    """A transformers model directory for `name`, assembling/converting it on first use."""
    if name in PACKAGED:
        spec = PACKAGED[name]
        if not is_installed(spec):
            raise ModelNotInstalled(f"model {name!r} is not installed; run: {install_command(spec)}")
        out = cache_dir() / "hf" / f"{name}-{spec.sha256[:12]}"
        if not (out / "config.json").exists():
            convert_to_hf_dir(gguf_path(spec, cache_dir()), out)
        return out
    path = Path(name).expanduser()
    if path.is_dir() and (path / "config.json").exists():
        return path
    if path.is_file() and path.suffix == ".gguf":
        check_gguf(path)
        stat = path.stat()
        key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
        out = cache_dir() / "hf" / f"{path.stem}-{key}"
        if not (out / "config.json").exists():
            convert_to_hf_dir(path, out)
        return out
    raise ValueError(
        f"unknown model {name!r}: use one of {', '.join(PACKAGED)} "
        "(see `leapdecode models`), a transformers model directory, or a .gguf file"
    )


def load_tokenizer(name: str) -> Any:
    """The tokenizer of a model name, offline (the model itself is not loaded)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve(name), local_files_only=True)


def load_model(name: str, dtype: str = "float32", device: str = "cpu") -> tuple[Any, Any]:
    """(model, tokenizer) for a model name, offline."""
    if dtype in QUANTIZED:
        raise ValueError(QUANTIZED_NEEDS_NATIVE)
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")
    directory = resolve(name)
    import torch
    from transformers import AutoModelForCausalLM

    from transformers.utils import logging as hf_logging

    tokenizer = load_tokenizer(str(directory))
    # a converted directory loads in a fraction of a second: no progress bar on stderr, which
    # would otherwise precede the one-line errors of the CLI
    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            directory, dtype=getattr(torch, dtype), local_files_only=True
        ).to(device)
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
    return model.eval(), tokenizer


def list_models() -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "description": spec.description,
            "installed": is_installed(spec),
            "install": install_command(spec),
        }
        for name, spec in PACKAGED.items()
    ]
