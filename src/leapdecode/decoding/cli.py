"""`leapdecode generate --mode beam|diverse-beam|superposed`: several outputs from one call.

cli.py's generate command adds these options with `add_mode_args(parser)` and hands over to
`run_mode(args, engine, prompt)` when --mode is not speculative. With --json it prints one
object whose `outputs` lists the returned sequences best first, each with `text`,
`token_ids` (new tokens only) and `score`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from . import check_options, decode

MODES = ("speculative", "beam", "diverse-beam", "superposed")
EARLY_STOPPING = {"false": False, "true": True, "never": "never"}

# option -> the modes it applies to (options absent here apply to all multi-output modes)
ONLY_FOR = {
    "beam_groups": ("diverse-beam",),
    "diversity": ("diverse-beam",),
    "diversity_ngram": ("diverse-beam",),
    "early_stopping": ("beam", "diverse-beam"),
    "ngram_alpha": ("superposed",),
}


def add_mode_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("several outputs (--mode other than speculative)")
    g.add_argument("--mode", default="speculative", choices=MODES,
                   help="speculative (default): one lossless output; the others return several")
    g.add_argument("--num-beams", type=int, default=4,
                   help="beams (all groups together), or drafts for superposed")
    g.add_argument("-n", "--num-return-sequences", type=int, default=None,
                   help="outputs to return (default: all beams)")
    g.add_argument("--length-penalty", type=float, default=1.0, help="score = logprob / length ** this (default 1)")
    g.add_argument("--early-stopping", choices=list(EARLY_STOPPING), default=None,
                   help="beam stopping rule as in transformers (default false)")
    g.add_argument("--beam-groups", type=int, default=None, help="diverse-beam groups (default: one per beam)")
    g.add_argument("--diversity", type=float, default=None, help="diverse-beam penalty lambda (default 0.5)")
    g.add_argument("--diversity-ngram", type=int, default=None, help="1 = Hamming diversity (default), n = n-gram")
    g.add_argument("--ngram-alpha", type=float, default=None, help="superposed: n-gram weight (default 0.25)")


def mode_options(args: argparse.Namespace) -> dict[str, Any]:
    """The decode() options that --mode and its flags ask for; a flag that does not apply to
    the mode, or a sampling/stop flag, is an error rather than silently ignored."""
    mode = args.mode
    if getattr(args, "temperature", 0.0):
        raise ValueError(f"--mode {mode} is deterministic; drop --temperature (or use --mode speculative)")
    if getattr(args, "stop", None):
        raise ValueError(f"--stop is not supported with --mode {mode}; drop it or use --mode speculative")
    from ..drafters import DEFAULT_METHOD

    speculative_only = {  # flags of --mode speculative, at their defaults otherwise
        "--method": getattr(args, "method", DEFAULT_METHOD) != DEFAULT_METHOD,
        "--budget": getattr(args, "budget", None) is not None,
        "--opt": bool(getattr(args, "opt", None)),
        "--draft-model": getattr(args, "draft_model", None) is not None,
        "--top-k": getattr(args, "top_k", 0) != 0,
        "--top-p": getattr(args, "top_p", 1.0) != 1.0,
        "--seed": getattr(args, "seed", None) is not None,
    }
    given = [flag for flag, set_ in speculative_only.items() if set_]
    if given:
        raise ValueError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to --mode speculative, "
                         f"not --mode {mode}; drop {'it' if len(given) == 1 else 'them'}")
    explicit = {
        "beam_groups": args.beam_groups, "diversity": args.diversity,
        "diversity_ngram": args.diversity_ngram, "ngram_alpha": args.ngram_alpha,
        "early_stopping": None if args.early_stopping is None else EARLY_STOPPING[args.early_stopping],
    }
    options: dict[str, Any] = {
        "num_beams": args.num_beams, "num_return_sequences": args.num_return_sequences,
        "max_new_tokens": args.max_new_tokens, "length_penalty": args.length_penalty,
    }
    for name, value in explicit.items():
        if value is None:
            continue
        if mode not in ONLY_FOR[name]:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} applies to --mode {' or '.join(ONLY_FOR[name])}, not {mode}")
        options["alpha" if name == "ngram_alpha" else name] = value
    check_options(mode, **options)  # the numbers too, before any model loads
    return options


def run_mode(args: argparse.Namespace, engine: Any, prompt: str | None = None) -> dict[str, Any]:
    """Decode with args.mode, print the outputs (one JSON object with --json), return the dict."""
    if args.mode == "speculative":
        raise ValueError("run_mode handles the multi-output modes; --mode speculative uses the engine")
    prompt = args.prompt if prompt is None else prompt
    options = mode_options(args)
    start = time.perf_counter()
    outputs = decode(engine, prompt, args.mode, chat=not getattr(args, "raw", False), **options)
    wall = time.perf_counter() - start
    result = {
        "model": getattr(args, "model", None),
        "mode": args.mode,
        "outputs": [o.as_dict() for o in outputs],
        "new_tokens": sum(len(o.token_ids) for o in outputs),
        "wall_s": wall,
    }
    if getattr(args, "json", False):
        print(json.dumps(result, ensure_ascii=False))
    else:
        for rank, out in enumerate(outputs, 1):
            print(f"[{rank}] score {out.score:.4f} ({len(out.token_ids)} tokens, {out.finish_reason})")
            print(out.text)
        print(f"[{args.mode}] {len(outputs)} outputs in {wall:.2f} s", file=sys.stderr)
    return result
