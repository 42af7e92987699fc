"""`leapdecode diversity`: how different and how good are k outputs, and what does each cost?

For each dev question (Spec-Bench format, first turn, chat template) and each mode it asks for
k outputs and reports, averaged over questions:

- distinct-2: distinct word bigrams / all bigrams over the k outputs (higher = more diverse);
- unique: distinct output texts / k;
- self-BLEU: mean BLEU of each output against the other k-1 (lower = more diverse);
- best-of-k BLEU: the best output's BLEU against the question's reference, where it has one;
- s/output: wall time of the call / k, and model forward passes (prefill chunks included) / k.

Modes: beam, diverse-beam, superposed, sample (k independent samples in one batch over the
shared prompt cache) and sample-seq (k separate plain decodes, i.e. "sampling k times").
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any, Callable, Sequence

from ..decoding import decode
from ..models.base import hf_model_of
from ..options import add_model_args
from .questions import Question, default_questions_path, select_questions
from .questions import load_questions as read_questions
from .text_metrics import best_of_n_bleu, distinct_n, self_bleu

BENCH_MODES = ("beam", "diverse-beam", "superposed", "sample", "sample-seq")


def load_questions(per_subtask: int, path: str | None = None) -> list[Question]:
    """The first `per_subtask` questions of each subtask (MT-bench categories grouped), read by
    the benchmark's own loader (the packaged dev set unless `path`)."""
    return select_questions(read_questions(path or default_questions_path()), None, per_subtask)


def make_runners(args: argparse.Namespace) -> dict[str, Callable[[Any, list[int]], list[str]]]:
    """mode -> run(engine, prompt_ids) -> the k output texts."""
    k, n_new = args.k, args.max_new_tokens

    def via_decode(mode: str, **options: Any) -> Callable[[Any, list[int]], list[str]]:
        def run(engine: Any, ids: list[int]) -> list[str]:
            return [o.text for o in decode(engine, ids, mode, num_beams=k, max_new_tokens=n_new, **options)]
        return run

    def sample_seq(engine: Any, ids: list[int]) -> list[str]:
        from ..config import GenerationConfig

        configs = [GenerationConfig(max_new_tokens=n_new, temperature=args.temperature, top_p=args.top_p,
                                    seed=args.seed + i) for i in range(k)]
        return [engine.generate(ids, config, method="none").text for config in configs]

    return {
        "beam": via_decode("beam"),
        "diverse-beam": via_decode("diverse-beam", beam_groups=args.beam_groups or k, diversity=args.diversity),
        "superposed": via_decode("superposed"),
        "sample": via_decode("sample", temperature=args.temperature, top_p=args.top_p, seed=args.seed),
        "sample-seq": sample_seq,
    }


class PassCounter:
    """Counts forward passes of a torch module (a forward hook; prefill chunks count too)."""

    def __init__(self, module: Any):
        self.count = 0
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, *_: Any) -> None:
        self.count += 1

    def close(self) -> None:
        self._handle.remove()


def score_outputs(texts: Sequence[str], refs: Sequence[str], k: int) -> dict[str, float | None]:
    return {
        "distinct_2": distinct_n(texts, 2),
        "unique": len(set(texts)) / k,
        "self_bleu": self_bleu(texts),
        "best_bleu": best_of_n_bleu(texts, refs),
    }


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def run_bench(engine: Any, questions: list[Question], modes: Sequence[str], args: argparse.Namespace,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    runners = make_runners(args)
    counter = PassCounter(hf_model_of(engine.target, "the multi-output bench"))
    rows = []
    for q in questions:
        ids = engine.encode(q.turns[0])
        refs = list(q.reference)
        row: dict[str, Any] = {"question_id": q.question_id, "category": q.category, "modes": {}}
        for mode in modes:
            start, passes = time.perf_counter(), counter.count
            texts = runners[mode](engine, ids)
            wall, passes = time.perf_counter() - start, counter.count - passes
            metrics = score_outputs(texts, refs, args.k)
            row["modes"][mode] = {"outputs": texts, "wall_s": wall, "passes": passes, **metrics}
        rows.append(row)
        log(f"question {q.question_id} ({q.category}): done")
    counter.close()
    summary = {}
    for mode in modes:
        cells = [r["modes"][mode] for r in rows]
        summary[mode] = {
            metric: _mean([c[metric] for c in cells])
            for metric in ("distinct_2", "unique", "self_bleu", "best_bleu")
        }
        summary[mode]["s_per_output"] = sum(c["wall_s"] for c in cells) / (args.k * len(cells))
        summary[mode]["passes_per_output"] = sum(c["passes"] for c in cells) / (args.k * len(cells))
        summary[mode]["with_reference"] = sum(c["best_bleu"] is not None for c in cells)
    config = {key: getattr(args, key) for key in
              ("model", "dtype", "k", "max_new_tokens", "beam_groups", "diversity", "temperature", "top_p", "seed",
               "per_subtask")}
    return {"config": config, "questions": len(rows), "summary": summary, "rows": rows}


def table(result: dict[str, Any]) -> str:
    def fmt(v: float | None, spec: str = ".3f") -> str:
        return "-" if v is None else format(v, spec)

    head = (f"{'mode':<13} {'distinct-2':>10} {'unique':>7} {'self-BLEU':>9} {'best-BLEU':>9} "
            f"{'s/output':>9} {'passes/out':>10}")
    lines = [head, "-" * len(head)]
    for mode, s in result["summary"].items():
        lines.append(
            f"{mode:<13} {fmt(s['distinct_2']):>10} {fmt(s['unique'], '.2f'):>7} {fmt(s['self_bleu']):>9} "
            f"{fmt(s['best_bleu']):>9} {fmt(s['s_per_output']):>9} {fmt(s['passes_per_output'], '.1f'):>10}"
        )
    c = result["config"]
    lines.append(f"{result['questions']} questions, k={c['k']}, max_new_tokens={c['max_new_tokens']}, "
                 f"diverse-beam G={c['beam_groups'] or c['k']} lambda={c['diversity']}, "
                 f"samples T={c['temperature']} top-p={c['top_p']}; model {c['model']} ({c['dtype']})")
    return "\n".join(lines)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("diversity", help="diversity and cost of beam, diverse-beam, superposed and sampled outputs")
    add_model_args(p, device=False, backend=False)  # the multi-output modes run on transformers
    p.add_argument("--questions", default=None, help="a Spec-Bench-format .jsonl (default: the packaged dev set)")
    p.add_argument("--per-subtask", type=int, default=2, help="questions per subtask (6 subtasks)")
    p.add_argument("-k", type=int, default=4, help="outputs per question (beams, drafts or samples)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--modes", default=",".join(BENCH_MODES), help=f"comma-separated: {', '.join(BENCH_MODES)}")
    p.add_argument("--beam-groups", type=int, default=None, help="diverse-beam groups (default k)")
    p.add_argument("--diversity", type=float, default=0.5, help="diverse-beam lambda")
    p.add_argument("--temperature", type=float, default=0.8, help="for the sampled modes")
    p.add_argument("--top-p", type=float, default=0.95, help="for the sampled modes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the full results (outputs included) as JSON here")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=cmd_diversity)


def cmd_diversity(args: argparse.Namespace) -> int:
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in BENCH_MODES]
    if bad or not modes:
        raise ValueError(f"unknown mode(s) {', '.join(bad) or '(none)'}; choose from: {', '.join(BENCH_MODES)}")
    if args.k < 1 or args.per_subtask < 1 or args.max_new_tokens < 1:
        raise ValueError("-k, --per-subtask and --max-new-tokens must be >= 1")
    import sys

    from .. import load
    from ..options import set_threads

    set_threads(args.threads)
    questions = load_questions(args.per_subtask, args.questions)
    engine = load(args.model, args.dtype)
    result = run_bench(engine, questions, modes, args, log=lambda s: print(s, file=sys.stderr))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, ensure_ascii=False, indent=1)
    if args.json:
        print(json.dumps({"config": result["config"], "questions": result["questions"],
                          "summary": result["summary"]}))
    else:
        print(table(result))
    return 0
