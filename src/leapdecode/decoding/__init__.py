"""Several outputs from one call: beam search, diverse beam search, superposed decoding.

    from leapdecode.decoding import decode
    outs = decode(engine, "Name a fruit.", "diverse-beam", num_beams=4, diversity=0.5,
                  max_new_tokens=32)
    for out in outs:                  # best first
        print(out.score, out.text)    # out.token_ids: the new tokens

Modes (one module each):
- "beam": beam search with transformers' semantics, beams sharing the prompt's KV cache (beam.py)
- "diverse-beam": G groups with a Hamming or n-gram diversity penalty (diverse_beam.py)
- "superposed": k drafts from one forward pass per step (superposed.py)
- "sample": k independent samples in one batch, the baseline (sample.py)

Every mode takes max_new_tokens, num_beams (the beams, groups' beams, drafts or samples) and
num_return_sequences (default: all of them); see each config class for the rest.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

from .beam import BeamConfig, beam_search
from .diverse_beam import DiverseBeamConfig, diverse_beam_search
from .outputs import Output
from .sample import SampleConfig, sample_k
from .superposed import SuperposedConfig, superposed_decode


def _beam_config(options: dict[str, Any]) -> BeamConfig:
    return _config(BeamConfig, "beam", options)


def _diverse_config(options: dict[str, Any]) -> DiverseBeamConfig:
    return _config(DiverseBeamConfig, "diverse-beam", options)


def _superposed_config(options: dict[str, Any]) -> SuperposedConfig:
    options = {("num_drafts" if k == "num_beams" else k): v for k, v in options.items() if k != "corpus"}
    return _config(SuperposedConfig, "superposed", options)


def _sample_config(options: dict[str, Any]) -> SampleConfig:
    options = dict(options)
    k = options.pop("num_beams", None)
    n = options.pop("num_return_sequences", None)
    options["num_samples"] = n or k or SampleConfig.num_samples
    return _config(SampleConfig, "sample", options)


# mode -> (its config from decode()'s options, the decoder given the engine, prompt ids, config, options)
MODES: dict[str, tuple[Callable[[dict[str, Any]], Any], Callable[..., list[Output]]]] = {
    "beam": (_beam_config, lambda engine, ids, config, options: beam_search(engine, ids, config)),
    "diverse-beam": (_diverse_config, lambda engine, ids, config, options: diverse_beam_search(engine, ids, config)),
    "superposed": (_superposed_config, lambda engine, ids, config, options:
                   superposed_decode(engine, ids, config, options.get("corpus", ()))),
    "sample": (_sample_config, lambda engine, ids, config, options: sample_k(engine, ids, config)),
}


def _config(cls: type, mode: str, options: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(options) - names)
    if unknown:
        raise ValueError(f"mode {mode!r} takes no option {', '.join(unknown)}; its options: {', '.join(sorted(names))}")
    return cls(**options)


def check_options(mode: str, **options: Any) -> Any:
    """The config decode(engine, prompt, mode, **options) would use; raises its ValueError for a bad
    mode or option without needing a model."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of: {', '.join(MODES)}")
    return MODES[mode][0](options)


def decode(engine: Any, prompt: str | Sequence[int] | Sequence[dict], mode: str = "beam",
           chat: bool = True, **options: Any) -> list[Output]:
    """Decode `prompt` with a multi-output mode; returns Outputs best first."""
    config = check_options(mode, **options)
    return MODES[mode][1](engine, engine.encode(prompt, chat), config, options)


__all__ = ["BeamConfig", "DiverseBeamConfig", "MODES", "Output", "SampleConfig", "SuperposedConfig", "beam_search",
           "check_options", "decode", "diverse_beam_search", "sample_k", "superposed_decode"]
