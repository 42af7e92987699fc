"""Peak memory of beam search with a shared prompt cache against one prompt copy per beam.

    python -m leapdecode.bench.memory --prompt-tokens 2000 --beams 8

Each variant runs in a fresh process (so that memory freed by one cannot be reused by the
other): load the model, prefill the prompt once, reset the kernel's peak-RSS mark (Linux
/proc/self/clear_refs) after handing free heap memory back (malloc_trim), run `--steps` steps
of beam search, and read the peak (VmHWM). The figure reported is that peak minus the RSS
right after the prefill: what decoding the beams added on top of the one prompt cache. The
copy variant is the same code with the prompt's keys and values copied into every row (what a
per-row cache such as transformers' does).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import subprocess
import sys
from typing import Any

from ..models.base import hf_model_of

MIB = 1 << 20


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (this measurement needs Linux)")


def _release_free_heap() -> None:
    """Hand memory that malloc holds but nobody uses back to the kernel (glibc only)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _prompt(tokenizer: Any, n: int) -> list[int]:
    """n tokens of real text: the dev questions, concatenated."""
    from .diversity import load_questions

    text = " ".join(q.turns[0] for q in load_questions(per_subtask=40))
    ids = tokenizer(text)["input_ids"]
    if len(ids) < n:
        ids = (ids * (n // max(len(ids), 1) + 1))
    return ids[:n]


def measure(model_name: str, prompt_tokens: int, beams: int, steps: int, copy_prefix: bool,
            threads: int = 2) -> dict[str, Any]:
    """Run in this process; returns bytes figures (see the module doc)."""
    import torch

    from .. import load
    from ..decoding.beam import BeamGroup, run_groups

    torch.set_num_threads(threads)
    engine = load(model_name, "float32")
    ids = _prompt(engine.tokenizer, prompt_tokens)
    marks: dict[str, int] = {}

    def after_prefill() -> None:
        gc.collect()
        _release_free_heap()  # so that decoding cannot hide in memory the prefill freed
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak-RSS mark to the current RSS
        marks["rss_after_prefill"] = _status_kib("VmRSS") * 1024

    # ignore EOS so that every variant runs exactly `steps` steps
    group = BeamGroup(beams, steps, frozenset(), early_stopping="never")
    model = hf_model_of(engine.target, "the memory measurement")
    run_groups(model, ids, [group], copy_prefix=copy_prefix, after_prefill=after_prefill)
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    prompt_cache = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * 4 * len(ids)
    peak = _status_kib("VmHWM") * 1024
    return {
        "variant": "copy per beam" if copy_prefix else "shared prefix",
        "prompt_tokens": len(ids), "beams": beams, "steps": steps,
        "prompt_cache_bytes": prompt_cache,
        "added_peak_bytes": peak - marks["rss_after_prefill"],
    }


def compare(model_name: str = "smollm2-135m", prompt_tokens: int = 2000, beams: int = 8, steps: int = 8,
            threads: int = 2) -> dict[str, Any]:
    """Both variants, each in its own process."""
    results = {}
    for copy in (False, True):
        cmd = [sys.executable, "-m", "leapdecode.bench.memory", "--worker", "--model", model_name,
               "--prompt-tokens", str(prompt_tokens), "--beams", str(beams), "--steps", str(steps),
               "--threads", str(threads)] + (["--copy"] if copy else [])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        results[row["variant"]] = row
    shared, copied = results["shared prefix"], results["copy per beam"]
    return {
        "shared": shared, "copy": copied,
        "copies_of_prompt_cache_bytes": beams * shared["prompt_cache_bytes"],
        "ratio_shared_to_copy": shared["added_peak_bytes"] / max(copied["added_peak_bytes"], 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--prompt-tokens", type=int, default=2000)
    p.add_argument("--beams", type=int, default=8)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--copy", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(args.model, args.prompt_tokens, args.beams, args.steps, args.copy, args.threads)))
        return 0
    result = compare(args.model, args.prompt_tokens, args.beams, args.steps, args.threads)
    s, c = result["shared"], result["copy"]
    print(f"{s['beams']} beams, {s['prompt_tokens']}-token prompt, {s['steps']} steps, model {args.model} (float32)")
    print(f"one prompt cache:              {s['prompt_cache_bytes'] / MIB:8.1f} MiB")
    print(f"{s['beams']} copies of it:               {result['copies_of_prompt_cache_bytes'] / MIB:8.1f} MiB")
    print(f"peak added by decoding, shared: {s['added_peak_bytes'] / MIB:8.1f} MiB")
    print(f"peak added by decoding, copies: {c['added_peak_bytes'] / MIB:8.1f} MiB")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
