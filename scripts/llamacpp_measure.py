"""The llama.cpp backend measured in one go (see docs/llamacpp.md for what it found).

    OMP_WAIT_POLICY=passive python scripts/llamacpp_measure.py --out /tmp/llamacpp_results.json

1. pass cost: seconds per `LlamaCppTarget.forward` of k inputs (k = 1 .. 64) over a 256-token
   cache, best of 5, relative to k = 1; `--cost-rounds` rounds, the ratios of each round printed;
2. speed: on 2 questions of each Spec-Bench group of the dev set (the MT-bench categories are one
   group), first turn in the chat template, `--max-new-tokens` each: llama.cpp's own greedy
   decoding (`llama_cpp.Llama.generate`, temperature 0, one token per `llama_decode`) and the
   engine on the llama.cpp target with `none`, `prompt-lookup`, `suffix`, `token-recycling` at each
   `--budgets` and with `--budget auto`. Every (question, method) runs `--repeats` times, methods
   interleaved question by question; tokens/s = all tokens / the sum of each run's best time;
3. numerics: each output is compared with llama.cpp's greedy output and with the engine's `none`
   output; at the first differing position the logit gap between the two tokens is reported in
   both runs (each run's own logits there: the reference's from `llama_get_logits_ith`, the
   engine's from the verification pass that chose the token).

Other processes may share the CPU cores: compare ratios within one run. OpenMP's busy-waiting
barriers make a 2-thread llama.cpp pass take seconds when another process holds a core, hence
OMP_WAIT_POLICY=passive above on a loaded machine (set it for a whole run, for every method alike;
on a quiet machine it made llama.cpp greedy about 2.8 times slower, docs/llamacpp.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from importlib import resources
from typing import Any, Sequence

import numpy as np
import torch

GROUPS = ("mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag")


def pick_questions(per_group: int) -> list[dict]:
    path = resources.files("leapdecode.bench") / "data" / "specbench_dev.jsonl"
    chosen, seen = [], {}
    for line in path.read_text().splitlines():
        q = json.loads(line)
        group = q["category"] if q["category"] in GROUPS else "mt_bench"
        if seen.get(group, 0) < per_group:
            seen[group] = seen.get(group, 0) + 1
            chosen.append({**q, "group": group})
    return chosen


class RecordingTarget:
    """A target wrapper keeping, for every committed token, the logits row that chose it: the
    engine commits rows [0, *path] of a pass, and row j's argmax is the token after input j."""

    def __init__(self, target: Any):
        self.target, self.rows, self._last = target, [], None
        self.recording = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.target, name)

    def reset(self) -> None:
        self.rows = []
        self.target.reset()

    def forward(self, tokens: Sequence[int], depths: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        self._last = self.target.forward(tokens, depths, mask)  # [n, vocab]
        return self._last

    def commit(self, keep: Sequence[int]) -> None:
        if self.recording and len(keep):
            self.rows.extend(self._last[list(keep)].numpy())
        self.target.commit(keep)


def llama_greedy(llama: Any, lib: Any, prompt: list[int], n: int, eos: set[int],
                 record: bool) -> tuple[list[int], list[np.ndarray], float]:
    """llama.cpp's own greedy decoding: tokens, the logits row behind each, wall seconds."""
    llama.reset()
    tokens, rows = [], []
    start = time.perf_counter()
    for token in llama.generate(prompt, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
        if record:  # the last decode's logits: the distribution this token was chosen from
            ptr = lib.llama_get_logits_ith(llama._ctx.ctx, -1)
            rows.append(np.ctypeslib.as_array(ptr, shape=(llama.n_vocab(),)).copy())
        tokens.append(int(token))
        if token in eos or len(tokens) >= n:
            break
    return tokens, rows, time.perf_counter() - start


def first_difference(ref: list[int], ref_rows: list, out: list[int], out_rows: list) -> dict | None:
    """None when equal; else the first differing position and the logit gap of the two tokens
    there in each run (each run's chosen token minus the other one, so both are >= 0)."""
    n = min(len(ref), len(out))
    i = next((k for k in range(n) if ref[k] != out[k]), None)
    if i is None:
        return None if len(ref) == len(out) else {"index": n, "length_only": True}
    a, b = ref[i], out[i]
    r, o = ref_rows[i], out_rows[i]
    return {"index": i, "ref_token": a, "out_token": b,
            "ref_gap": float(r[a] - r[b]), "out_gap": float(o[b] - o[a]),
            "ref_top": float(r.max()), "row_max_abs_diff": float(np.abs(r - o).max())}


def logit_shifts(ref: list[int], ref_rows: list, out: list[int], out_rows: list) -> list[float]:
    """|change of the chosen token's logit| between the runs, at each position before the first
    difference: the noise that decides whether a gap counts as a near-tie."""
    shifts = []
    for k in range(min(len(ref), len(out), len(ref_rows), len(out_rows))):
        if ref[k] != out[k]:
            break
        shifts.append(float(abs(ref_rows[k][ref[k]] - out_rows[k][ref[k]])))
    return shifts


def top2_gaps(rows: list) -> list[float]:
    """Top-1 minus top-2 logit at each position of a run."""
    return [float(np.diff(np.partition(r, -2)[-2:])[0]) for r in rows]


def pass_costs(target: Any, rounds: int) -> list[dict[int, float]]:
    from leapdecode.budget import measure_pass_costs

    return [measure_pass_costs(target, ks=(1, 2, 4, 8, 16, 32, 64), context=256, repeats=5)
            for _ in range(rounds)]


def methods(budgets: Sequence[int]) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = [("none", None)]
    for name in ("prompt-lookup", "suffix", "token-recycling"):
        out += [(name, b) for b in budgets]
    return out + [("token-recycling", "auto"), ("prompt-lookup", "auto")]


def label(method: str, budget: Any) -> str:
    return method if budget is None else f"{method}@{budget}"


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    import llama_cpp
    import llama_cpp.llama_cpp as lib
    from leapdecode import Engine, GenerationConfig
    from leapdecode.models.llamacpp import load_llamacpp, locate_gguf

    engine = Engine(*load_llamacpp(args.model, threads=args.threads, n_ctx=args.n_ctx), name=args.model)
    recorder = RecordingTarget(engine.target)
    engine.target = recorder
    llama = llama_cpp.Llama(model_path=str(locate_gguf(args.model)), n_threads=args.threads,
                            n_threads_batch=args.threads, n_ctx=args.n_ctx, flash_attn=True, verbose=False)
    costs = pass_costs(engine.target.target, args.cost_rounds)
    # `auto` reads the costs just measured, not a cache file written under other load
    key = f"{engine.name}|{engine.target.cache_key}"
    engine._pass_costs[key] = costs[-1]

    questions = pick_questions(args.per_group)
    prompts = [engine.encode(q["turns"][0]) for q in questions]
    configs = methods(args.budgets)
    best: dict[tuple[int, str], float] = {}
    tokens: dict[tuple[int, str], list[int]] = {}
    steps: dict[tuple[int, str], int] = {}
    diffs: dict[str, list] = {}
    noise: dict[str, list[float]] = {"vs_llama_greedy": [], "vs_none": [], "top2_gap_none": []}
    for rep in range(args.repeats):
        for qi, prompt in enumerate(prompts):
            record = rep == 0
            ref, ref_rows, wall = llama_greedy(llama, lib, prompt, args.max_new_tokens, engine.eos_ids, record)
            _keep(best, tokens, (qi, "llama.cpp greedy"), ref, wall)
            none_rows: list = []
            for method, budget in configs:
                recorder.recording = record
                config = GenerationConfig(max_new_tokens=args.max_new_tokens, budget=budget)
                g = engine.generate(prompt, config, method)
                name = label(method, budget)
                _keep(best, tokens, (qi, name), g.token_ids, g.stats.wall_s)
                steps[(qi, name)] = g.stats.steps
                if not record:
                    continue
                if method == "none":
                    none_rows = list(recorder.rows)
                vs_ref = first_difference(ref, ref_rows, g.token_ids, recorder.rows)
                none = tokens[(qi, "none")]
                vs_none = None if method == "none" else first_difference(none, none_rows, g.token_ids, recorder.rows)
                diffs.setdefault(name, []).append({"question": qi, "vs_llama_greedy": vs_ref, "vs_none": vs_none})
                noise["vs_llama_greedy"] += logit_shifts(ref, ref_rows, g.token_ids, recorder.rows)
                if method == "none":
                    noise["top2_gap_none"] += top2_gaps(recorder.rows)
                else:
                    noise["vs_none"] += logit_shifts(none, none_rows, g.token_ids, recorder.rows)
            print(f"repeat {rep} question {qi} ({questions[qi]['group']}) done", file=sys.stderr, flush=True)
    return summarise(args, questions, configs, costs, best, tokens, steps, diffs, noise)


def _keep(best: dict, tokens: dict, key: tuple, out: list[int], wall: float) -> None:
    best[key] = min(wall, best.get(key, float("inf")))
    tokens[key] = out


def summarise(args, questions, configs, costs, best, tokens, steps, diffs, noise) -> dict:
    names = ["llama.cpp greedy"] + [label(m, b) for m, b in configs]
    n_q = len(questions)
    table = {}
    for name in names:
        total = sum(len(tokens[(q, name)]) for q in range(n_q))
        secs = sum(best[(q, name)] for q in range(n_q))
        row = {"tokens": total, "seconds": secs, "tokens_per_s": total / secs}
        if name != "llama.cpp greedy":
            row["tau"] = total / sum(steps[(q, name)] for q in range(n_q))
            row["identical_to_llama_greedy"] = sum(d["vs_llama_greedy"] is None for d in diffs[name])
            row["identical_to_none"] = sum(d["vs_none"] is None for d in diffs[name]) if name != "none" else None
        table[name] = row
    base = table["llama.cpp greedy"]["tokens_per_s"]
    for row in table.values():
        row["vs_llama_greedy"] = row["tokens_per_s"] / base
    return {
        "settings": {**vars(args), "load_average": os.getloadavg(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")},
        "questions": [{"id": q["question_id"], "group": q["group"]} for q in questions],
        "pass_costs": [{str(k): v for k, v in c.items()} for c in costs],
        "table": table,
        "differences": diffs,
        "noise": {k: _quantiles(v) for k, v in noise.items()},
    }


def _quantiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    v = np.asarray(values)
    return {"n": len(v), "median": float(np.median(v)), "p99": float(np.quantile(v, 0.99)),
            "max": float(v.max()), "share_exactly_0": float(np.mean(v == 0)),
            "share_below_0.5": float(np.mean(v < 0.5))}


def print_tables(result: dict) -> None:
    print("\npass cost of k inputs over a 256-token cache, relative to k = 1 (each round):")
    for c in result["pass_costs"]:
        one = c["1"]
        print("  " + "  ".join(f"k={k}: {v / one:.2f}" for k, v in c.items()) + f"   (k=1: {one * 1e3:.1f} ms)")
    print("\n| method | tokens/s | vs llama.cpp greedy | tau | identical to llama.cpp greedy | identical to none |")
    print("|---|---|---|---|---|---|")
    n_q = len(result["questions"])
    for name, row in result["table"].items():
        tau = f"{row['tau']:.2f}" if "tau" in row else "1.00"
        same = f"{row['identical_to_llama_greedy']}/{n_q}" if "identical_to_llama_greedy" in row else "-"
        none = f"{row['identical_to_none']}/{n_q}" if row.get("identical_to_none") is not None else "-"
        print(f"| {name} | {row['tokens_per_s']:.1f} | {row['vs_llama_greedy']:.2f} | {tau} | {same} | {none} |")
    print("\nfirst differences (question: index, gap in llama.cpp's run / gap in this run):")
    for name, items in result["differences"].items():
        for kind in ("vs_llama_greedy", "vs_none"):
            found = [(d["question"], d[kind]) for d in items if d[kind] is not None]
            if found:
                text = ", ".join(_gap_text(q, d) for q, d in found)
                print(f"  {name} {kind}: {text}")


def _print_noise(result: dict) -> None:
    print("\nlogit noise: |shift of the chosen token's logit| before the first difference; "
          "top-1 minus top-2 in the none runs:")
    for name, q in result["noise"].items():
        print(f"  {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in q.items()))


def _gap_text(q: int, d: dict) -> str:
    if d.get("length_only"):
        return f"q{q}: lengths differ at {d['index']}"
    return f"q{q}@{d['index']}: {d['ref_gap']:.3f}/{d['out_gap']:.3f}"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-ctx", type=int, default=4096)
    p.add_argument("--per-group", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--budgets", type=lambda s: [int(x) for x in s.split(",")], default=[2, 4, 8, 16])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--cost-rounds", type=int, default=3)
    p.add_argument("--out", default="/tmp/llamacpp_results.json")
    args = p.parse_args(argv)
    result = run(args)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print_tables(result)
    _print_noise(result)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
