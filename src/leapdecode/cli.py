"""`leapdecode generate | bench | profile | index | serve | diversity | loadtest | train-head | models`.

Every user error ends as one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable, Sequence

from .drafters import DEFAULT_METHOD, DRAFTERS
from .options import UsageError, add_model_args, budget_arg, parse_options, resolve_backend, set_threads


def _add_generate(sub: Any) -> None:
    p = sub.add_parser("generate", help="generate text from a prompt")
    p.add_argument("prompt", help="the prompt text ('-' reads standard input)")
    add_model_args(p)
    p.add_argument("--method", default=DEFAULT_METHOD, help=f"drafter: {', '.join(DRAFTERS)}")
    p.add_argument("--budget", type=budget_arg, default=None,
                   help="draft tokens per step, or 'auto' to size drafts by measured pass cost (default: the drafter's)")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="a drafter option, e.g. --opt store=corpus.npz (repeatable)")
    p.add_argument("--draft-model", default=None, metavar="NAME",
                   help="the draft model of --method draft-model (packaged name, directory or .gguf)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--raw", action="store_true", help="do not wrap the prompt in the chat template")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    from .decoding.cli import add_mode_args

    add_mode_args(p)
    p.set_defaults(func=cmd_generate)


def _add_models(sub: Any) -> None:
    p = sub.add_parser("models", help="list the packaged models and whether each is installed")
    p.set_defaults(func=cmd_models)


def cmd_generate(args: argparse.Namespace) -> int:
    from .config import GenerationConfig

    prompt = read_prompt(args.prompt)
    if not prompt.strip():
        raise UsageError("the prompt is empty; pass some text to continue")
    if args.mode != "speculative":
        from .decoding.cli import mode_options, run_mode

        mode_options(args)  # check the flags before the model loads
        run_mode(args, _load(args), prompt)
        return 0
    config = GenerationConfig(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, seed=args.seed, stop=tuple(args.stop), budget=args.budget,
    )
    if args.method not in DRAFTERS:
        raise UsageError(f"unknown method {args.method!r}; choose one of: {', '.join(DRAFTERS)}")
    options = parse_options(args.opt)
    if args.draft_model is not None:
        if args.method != "draft-model":
            raise UsageError(f"--draft-model goes with --method draft-model, not {args.method!r}")
        options["model"] = args.draft_model
    engine = _load(args)
    stream = engine.stream(prompt, config, args.method, chat=not args.raw, **options)
    for delta in stream:
        if not args.json:
            print(delta, end="", flush=True)
    result = stream.result
    if args.json:
        print(json.dumps({**result.as_dict(), "model": args.model, "method": args.method}, ensure_ascii=False))
    else:
        print()
        print(f"[{args.method}] {result.stats.line()}, finish: {result.finish_reason}", file=sys.stderr)
    return 0


def read_prompt(text: str) -> str:
    """The prompt from argv (or stdin for '-'), refused in one line unless it is valid UTF-8."""
    if text == "-":
        raw = sys.stdin.buffer.read()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise UsageError(f"standard input is not valid UTF-8 (byte {err.start}); "
                             "convert it first, e.g. iconv -f latin1 -t utf-8") from None
    try:
        text.encode("utf-8")  # undecodable argv bytes arrive as lone surrogates
    except UnicodeEncodeError as err:
        raise UsageError(f"the prompt is not valid UTF-8 (character {err.start}); "
                         "pass UTF-8 text or use '-' with a UTF-8 file on stdin") from None
    return text


def cmd_models(args: argparse.Namespace) -> int:
    from .models.registry import DEFAULT_MODEL, list_models

    rows = list_models()
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        mark = "installed" if r["installed"] else "missing  "
        default = " (default)" if r["name"] == DEFAULT_MODEL else ""
        print(f"{r['name']:<{width}}  {mark}  {r['description']}{default}")
        if not r["installed"]:
            print(f"{'':<{width}}  install: {r['install']}")
    print("Any local transformers model directory or .gguf file also works as --model.")
    return 0


def _load(args: argparse.Namespace) -> Any:
    from . import load

    set_threads(args.threads)
    if args.mode != "speculative" and args.backend == "auto":
        args.backend = "transformers"  # the multi-output modes run on a transformers model
    backend = resolve_backend(args, notice=lambda line: print(line, file=sys.stderr))
    return load(args.model, args.dtype, args.device, backend=backend)


COMMANDS: list[Callable[[Any], None]] = [_add_generate, _add_models]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leapdecode", description="Fast, lossless speculative decoding.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    for extra in ("bench", "diversity", "index", "loadtest", "profile", "serve", "train-head"):
        _try_add(extra, sub)
    return parser


def _try_add(name: str, sub: Any) -> None:
    """Sub-commands that live in their own modules register through an `add_parser` there."""
    import importlib

    module = {"bench": ".bench.cli", "diversity": ".bench.diversity", "index": ".drafters.index_cli",
              "loadtest": ".bench.loadtest", "profile": ".bench.profile", "serve": ".server.cli",
              "train-head": ".heads.cli"}[name]
    try:
        importlib.import_module(module, __package__).add_parser(sub)
    except ModuleNotFoundError as err:
        if not err.name or not err.name.startswith("leapdecode"):
            raise


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows up here at the latest
        return code
    except BrokenPipeError:
        return _pipe_closed()
    except (ValueError, FileNotFoundError) as err:  # UsageError, ModelNotInstalled, config errors
        print(f"leapdecode {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _pipe_closed() -> int:
    """The reader of stdout went away (`| head`): stop quietly with exit 0, the pipeline's business.
    stdout is pointed at /dev/null so the interpreter's final flush cannot fail again."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
