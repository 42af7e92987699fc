"""`leapdecode train-head --model M --kind eagle|medusa --out DIR`: see heads/train.py."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from ..options import UsageError, set_threads

POSITIVE = ("prompts", "max_new_tokens", "gen_batch", "steps", "batch", "max_len", "vocab", "unroll",
            "medusa_heads")


def add_parser(sub: Any) -> None:
    from ..models.registry import DEFAULT_MODEL

    p = sub.add_parser("train-head", help="train an EAGLE-style or Medusa draft head on the model's own outputs")
    p.add_argument("--model", default=DEFAULT_MODEL, help="packaged name or transformers dir (or .gguf file)")
    p.add_argument("--name", default=None, help="the model name the head is recorded for (default: --model); "
                   "a packaged model's shipped head is found by this name")
    p.add_argument("--kind", required=True, choices=["eagle", "medusa"])
    p.add_argument("--out", required=True, help="directory: data.pt, ckpt.pt (resumed from), head.safetensors, "
                   "curve.png, log.json")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--prompts", type=int, default=4000, help="stand-alone prompts (heads/corpus.py)")
    p.add_argument("--passages", type=int, default=1000, help="passages the model writes, then works on (0: none)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--gen-batch", type=int, default=64, help="prompts per generate call")
    p.add_argument("--sample-share", type=float, default=0.25, help="share of batches sampled (T 0.8) not greedy")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=16, help="sequences per training step")
    p.add_argument("--max-len", type=int, default=640, help="tokens of a sequence trained on")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--unroll", type=int, default=3, help="eagle: draft depths trained together")
    p.add_argument("--medusa-heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=4096, help="draft vocabulary: the model's most emitted tokens")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train_head)


def cmd_train_head(args: argparse.Namespace) -> int:
    for name in POSITIVE:
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.passages < 0:
        raise UsageError(f"--passages must be >= 0, got {args.passages}")
    if not (0.0 <= args.sample_share <= 1.0):
        raise UsageError(f"--sample-share must be between 0 and 1, got {args.sample_share}")
    if not args.lr > 0:
        raise UsageError(f"--lr must be > 0, got {args.lr}")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device cuda: no CUDA device here; leave --device out to train on the CPU")
    set_threads(args.threads)
    from .train import train

    path = train(args.model, args.kind, args.out, prompts=args.prompts, passages=args.passages,
                 max_new_tokens=args.max_new_tokens, gen_batch=args.gen_batch, steps=args.steps, batch=args.batch,
                 max_len=args.max_len, lr=args.lr, unroll=args.unroll, medusa_heads=args.medusa_heads,
                 vocab=args.vocab, device=args.device, sample_share=args.sample_share, seed=args.seed,
                 quiet=args.quiet, name=args.name, command="leapdecode " + shlex.join(sys.argv[1:]))
    print(f"wrote {path} (curve: {path.parent / 'curve.png'})")
    return 0
