"""`leapdecode bench`: this project's drafters and the peers on Spec-Bench questions, in one run.

Everything the user typed is checked before any model loads; a problem is one line and exit 2.
"""

from __future__ import annotations

import argparse
import hashlib
import shlex
import signal
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..options import add_model_args, budget_arg, resolve_backend
from ..drafters import DEFAULT_METHOD
from .questions import Question, default_questions_path, load_questions, round_robin, select_questions
from .runners import PEER_OPTIONS, all_methods, check_methods, family, has_package, own_greedy, split_method

DEFAULT_METHODS = f"none,{DEFAULT_METHOD}"
GGUF_FAMILIES = ("llamacpp", "llama-server")  # peers that run the model's GGUF file


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "bench", help="compare methods and peers on Spec-Bench questions",
        description="Run methods on Spec-Bench-format questions (question-major, interleaved) and "
                    "write DIR/results.json, DIR/report.md and DIR/speedup.png.",
    )
    p.add_argument("--questions", default=None,
                   help="Spec-Bench jsonl (default: the shipped 240-question dev set)")
    p.add_argument("--methods", default=DEFAULT_METHODS,
                   help=f"comma-separated, from: {', '.join(all_methods())} (default: {DEFAULT_METHODS})")
    p.add_argument("--baseline", default="none", help="method the speedup and `identical` refer to (default: none)")
    add_model_args(p, threads=2)
    p.add_argument("--draft-model", default=None,
                   help="draft model for draft-model (any tokenizer) and hf-assisted (same tokenizer)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--limit-per-category", type=int, default=None, metavar="K",
                   help="the first K questions of each subtask")
    p.add_argument("--categories", default=None,
                   help="comma-separated subtasks (mt_bench, translation, summarization, qa, math_reasoning, "
                        "rag) or MT-bench categories (writing, coding, ...)")
    p.add_argument("--repeat", type=int, default=1, help="timed runs per output; the median counts")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up generations per method")
    p.add_argument("--budget", type=budget_arg, default=None,
                   help="draft tokens per step for this project's drafters (an integer or 'auto')")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_bench)


@dataclass
class Plan:
    """A checked command line."""

    methods: list[str]
    baseline: str
    questions_file: Path
    questions: list[Question]
    out: Path
    args: argparse.Namespace


def cmd_bench(args: argparse.Namespace) -> int:
    plan = make_plan(args)
    results = run(plan)
    from .report import markdown_table, write_all

    paths = write_all(results, plan.out)
    print(markdown_table(results))
    print(f"\nwrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    if "plot" not in paths:
        print("leapdecode bench: no speedup.png: matplotlib is not installed "
              "(pip install 'leapdecode[bench]')", file=sys.stderr)
    stopped = results["settings"]["stopped"]
    if stopped:
        st = results["settings"]
        print(f"leapdecode bench: stopped early ({stopped}); the results hold the {st['questions']} of "
              f"{st['questions_planned']} questions finished", file=sys.stderr)
        return 130 if stopped == "interrupted" else 1
    return 0


def make_plan(args: argparse.Namespace) -> Plan:
    """Check every argument without loading a model; ValueError on the first problem."""
    for flag, value, low in (("--max-new-tokens", args.max_new_tokens, 1), ("--repeat", args.repeat, 1),
                             ("--warmup", args.warmup, 0), ("--threads", args.threads, 1),
                             ("--limit-per-category", args.limit_per_category, 1), ("--budget", args.budget, 1)):
        if isinstance(value, int) and value < low:
            raise ValueError(f"{flag} must be {'>= 0' if low == 0 else 'a positive integer'}, got {value}")
    methods = _split(args.methods, "--methods")
    duplicates = sorted({m for m in methods if methods.count(m) > 1})
    if duplicates:
        raise ValueError(f"--methods lists {', '.join(duplicates)} more than once")
    check_methods([*methods, args.baseline], args.draft_model)
    if args.baseline not in methods:
        methods.insert(0, args.baseline)
    llamacpp = args.backend == "llamacpp"
    check_model(args.model, "--model", need_gguf=llamacpp or any(family(m) in GGUF_FAMILIES for m in methods))
    args.backend = resolve_backend(args, notice=lambda line: print(f"leapdecode bench: {line}", file=sys.stderr))
    from ..models.registry import QUANTIZED, QUANTIZED_NEEDS_NATIVE

    if args.dtype in QUANTIZED and args.backend != "native":
        raise ValueError(QUANTIZED_NEEDS_NATIVE)
    if llamacpp:
        hf = [m for m in methods if family(m) == "hf"]
        if hf:
            raise ValueError(f"--backend llamacpp has no transformers model for {', '.join(hf)}; "
                             "run those with --backend transformers")
        if args.dtype != "float32" or args.device != "cpu":
            raise ValueError("--backend llamacpp runs the GGUF file's own quantized weights on the CPU: "
                             "drop --dtype and --device")
        if not has_package("llama_cpp"):
            from .runners import OPTIONAL_PACKAGES

            raise ValueError(f"--backend llamacpp needs llama-cpp-python; install it with: "
                             f"{OPTIONAL_PACKAGES['llama_cpp']}")
    if args.draft_model is not None:
        check_model(args.draft_model, "--draft-model")
    elif any(split_method(m)[0] == "draft-model" and "model" not in split_method(m)[1] for m in methods):
        from ..drafters.draft_model import DEFAULT_DRAFTS

        if args.model not in DEFAULT_DRAFTS:
            raise ValueError(f"method 'draft-model' needs a draft model for {args.model!r}: add --draft-model NAME")
    if args.device == "cuda":
        from ..models.cuda import require_cuda

        require_cuda()
    questions_file = _questions_file(args.questions) if args.questions else default_questions_path()
    categories = _split(args.categories, "--categories") if args.categories is not None else None
    questions = select_questions(load_questions(questions_file), categories, args.limit_per_category)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file; name a directory")
    return Plan(methods, args.baseline, questions_file, questions, out, args)


def _split(text: str, flag: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise ValueError(f"{flag} is empty; give a comma-separated list")
    return items


def check_model(name: str, flag: str, need_gguf: bool = False) -> None:
    """A packaged model that is installed, a transformers directory, or a .gguf file."""
    from ..models.packaged import PACKAGED, install_command, is_installed

    if name in PACKAGED:
        if not is_installed(PACKAGED[name]):
            raise ValueError(f"{flag} {name!r} is not installed; run: {install_command(PACKAGED[name])}")
        return
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return
    if path.is_dir() and (path / "config.json").exists():
        if need_gguf:
            raise ValueError(f"the llama.cpp peers need a GGUF file, but {flag} {name!r} is a transformers "
                             "directory; pass a packaged model or a .gguf file")
        return
    raise ValueError(f"unknown model {name!r} for {flag}: use one of {', '.join(PACKAGED)}, "
                     "a transformers model directory, or a .gguf file")


def gguf_file(name: str) -> Path:
    from ..models.packaged import PACKAGED, gguf_path
    from ..models.registry import cache_dir

    return gguf_path(PACKAGED[name], cache_dir()) if name in PACKAGED else Path(name).expanduser()


def run(plan: Plan) -> dict[str, Any]:
    """Load the model(s), run every method, and return the results dict."""
    import os

    import torch

    import leapdecode

    from .harness import context_needed, machine_info, run_benchmark, versions
    from .metrics import aggregate
    from .questions import SUBTASKS
    from .runners import Setup, build_runners

    args, methods = plan.args, plan.methods
    torch.set_num_threads(args.threads)
    machine = machine_info()
    engine = leapdecode.load(args.model, args.dtype, args.device, backend=args.backend)
    setup = Setup(engine, budget=args.budget, threads=args.threads, draft_name=args.draft_model, dtype=args.dtype,
                  model=args.model, device=args.device, backend=args.backend)
    if "hf-assisted" in methods:
        from ..models.registry import load_model

        setup.draft_model = load_model(args.draft_model, setup.hf_dtype, args.device)[0]
    if any(family(m) in GGUF_FAMILIES for m in methods) or "hf-static-reused" in methods:
        needed = context_needed(engine, plan.questions, args.max_new_tokens)
        setup.n_ctx = min(engine.target.context_window, needed)
    if any(family(m) in GGUF_FAMILIES for m in methods):
        setup.gguf = gguf_file(args.model)
    runners = build_runners(methods, setup)
    with _sigterm_as_interrupt():
        records, stopped = run_benchmark(engine, runners, round_robin(plan.questions), args.max_new_tokens,
                                          args.repeat, args.warmup, progress=not args.no_progress)
    position = {q.question_id: i for i, q in enumerate(plan.questions)}
    records.sort(key=lambda r: (methods.index(r.method), position[r.question_id], r.turn))
    finished = [q for q in plan.questions if any(r.question_id == q.question_id for r in records)]
    if hasattr(os, "getloadavg"):
        machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    machine["torch_threads"] = torch.get_num_threads()
    greedy_of = {m: own_greedy(m) if own_greedy(m) in methods else None for m in methods}
    return {
        "methods": aggregate(records, plan.baseline, greedy_of, SUBTASKS),
        "settings": {**settings(plan, engine, setup, finished), "complete": stopped is None, "stopped": stopped},
        "machine": machine,
        "versions": versions(),
        "questions": [r.as_dict() for r in records],
    }


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """`timeout` and `kill` send SIGTERM: stop like Ctrl-C, so the finished questions are written."""
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def settings(plan: Plan, engine: Any, setup: Any, finished: list[Question]) -> dict[str, Any]:
    args = plan.args
    subtasks: dict[str, int] = {}
    for q in finished:
        subtasks[q.subtask] = subtasks.get(q.subtask, 0) + 1
    command = ["leapdecode", "bench", "--methods", ",".join(plan.methods), "--baseline", plan.baseline,
               "--model", args.model, "--dtype", args.dtype, "--device", args.device, "--backend", args.backend,
               "--max-new-tokens", str(args.max_new_tokens),
               "--repeat", str(args.repeat), "--warmup", str(args.warmup), "--threads", str(args.threads)]
    for flag, value in (("--questions", args.questions), ("--limit-per-category", args.limit_per_category),
                        ("--categories", args.categories), ("--budget", args.budget),
                        ("--draft-model", args.draft_model)):
        if value is not None:
            command += [flag, str(value)]
    command += ["--out", str(plan.out)]
    return {
        "model": args.model,
        "dtype": args.dtype,
        "device": args.device,
        "backend": args.backend,
        "draft_model": args.draft_model,
        "methods": plan.methods,
        "baseline": plan.baseline,
        "families": {m: family(m) for m in plan.methods},
        "budget": args.budget,
        "max_new_tokens": args.max_new_tokens,
        "greedy": True,
        "eos_ids": sorted(engine.eos_ids),
        "questions_file": str(plan.questions_file),
        "questions_sha256": hashlib.sha256(plan.questions_file.read_bytes()).hexdigest(),
        "questions": len(finished),
        "questions_planned": len(plan.questions),
        "outputs_per_method": sum(len(q.turns) for q in finished),
        "subtasks": subtasks,
        "limit_per_category": args.limit_per_category,
        "categories": args.categories,
        "repeat": args.repeat,
        "warmup": args.warmup,
        "threads": args.threads,
        "peer_options": {m: PEER_OPTIONS[m] for m in plan.methods if m in PEER_OPTIONS},
        "hf_dtype": setup.hf_dtype if any(family(m) in ("hf", "leapdecode-hf") for m in plan.methods) else None,
        "llamacpp_n_ctx": setup.n_ctx if setup.gguf is not None else None,
        "command": shlex.join(command),
    }


def _questions_file(text: str) -> Path:
    """--questions FILE.jsonl, or a directory holding exactly one .jsonl file."""
    path = Path(text)
    if not path.is_dir():
        return path
    found = sorted(path.glob("*.jsonl"))
    if len(found) != 1:
        raise ValueError(f"--questions {text}: a directory must hold exactly one .jsonl questions file "
                         f"(found {len(found)}); pass the file itself, e.g. --questions {path / 'question.jsonl'}")
    return found[0]
