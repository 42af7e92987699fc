"""The whole GPU measurement in one go (bf16, batch 1); see docs/gpu.md for what it found.

    python scripts/gpu_measure.py check              # StaticTarget == HFTarget on the GPU (fp32)
    python scripts/gpu_measure.py sweep              # ms per pass, k = 1..256, 1.5B and 7B shapes
    python scripts/gpu_measure.py bench --gguf F     # SmolLM2-135M on the dev questions
    python scripts/gpu_measure.py all --gguf F --out DIR

`sweep` builds random-weight models of the Qwen2.5-1.5B and Llama-7B shapes from configs (no
download) and times one verification pass of k inputs over a 256-token cache: the CUDA graph's
replay alone (device time, CUDA events), and a whole `StaticTarget.forward` + argmax + commit as
the engine calls it (host included); against the weight-read floor (bytes of weights over the
device-to-device copy bandwidth measured here). `bench` runs the real SmolLM2-135M: transformers'
`generate` with the dynamic cache and with `cache_implementation="static"` (compiled), and
leapdecode on the static target, on the first turn of each dev question, question-major; then
the identical-output rate of every drafter against leapdecode's own compiled plain decoding, and
for each difference the logit gap between the two tokens at the first differing position.
Tables are printed last; everything goes to DIR/gpu_results.json.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

SHAPES: dict[str, dict[str, Any]] = {
    # the published configs of Qwen/Qwen2.5-1.5B-Instruct and of a LLaMA-7B (Touvron et al. 2023)
    "qwen2.5-1.5b": dict(model_type="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                         num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                         max_position_embeddings=32768, rope_theta=1e6, tie_word_embeddings=True),
    "llama-7b": dict(model_type="llama", vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                     num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                     max_position_embeddings=4096, tie_word_embeddings=False),
    # SmolLM2-135M-Instruct as transformers reads it from the packaged GGUF (`warm` compiles for it)
    "smollm2-135m": dict(model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                         max_position_embeddings=8192, rms_norm_eps=9.999999747378752e-06,
                         rope_parameters={"rope_theta": 100000.0, "rope_type": "default"},
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2),
}
SWEEP_KS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
DRAFTERS = ("prompt-lookup", "token-recycling", "auto", "suffix")
SUBTASKS = ("mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag")
MT_BENCH = {"writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"}


class Clock:
    """Seconds since start, and whether `need` more seconds still fit in the budget."""

    def __init__(self, budget_s: float):
        self.start, self.budget = time.perf_counter(), budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def allows(self, need: float) -> bool:
        return self.elapsed() + need <= self.budget


def log(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


DEVICE = "cuda"  # --device cpu is a dry run of the script's logic, not a measurement


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


# ---- ceilings --------------------------------------------------------------------------------
def ceilings() -> dict[str, float]:
    """Device-to-device copy bandwidth (bytes read + written) and bf16 matmul rate, measured here."""
    x = torch.randn(1 << 30, dtype=torch.bfloat16, device="cuda")  # 2 GiB
    y = torch.empty_like(x)
    bw = 2 * x.numel() * 2 / _median_ms(lambda: y.copy_(x), 10) * 1e3
    del x, y
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    flops = 2 * 8192**3 / _median_ms(lambda: a @ b, 10) * 1e3
    del a, b
    torch.cuda.empty_cache()
    return {"copy_GBps": bw / 1e9, "bf16_TFLOPs": flops / 1e12}


def _median_ms(fn: Callable[[], Any], reps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


# ---- check -----------------------------------------------------------------------------------
def check() -> dict[str, Any]:
    """StaticTarget (graphs over eager kernels, and over compiled ones) against HFTarget, fp32,
    on a small random llama: trees, non-prefix commits, chains, trims, compaction."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from leapdecode import tree
    from leapdecode.drafters import Draft
    from leapdecode.models.cuda import StaticTarget
    from leapdecode.models.hf import HFTarget

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=1024)
    model = AutoModelForCausalLM.from_config(config).to("cuda").eval()
    result: dict[str, Any] = {}
    for mode, compiled in (("graphs", False), ("compiled+graphs", True)):
        torch._dynamo.reset()
        start = time.perf_counter()
        ref = HFTarget(model)
        st = StaticTarget(model, max_len=16, sizes=(1, 2, 4, 8, 16), graphs=True, compile=compiled)
        worst = 0.0

        def both(tokens, depths, mask):
            nonlocal worst
            a, b = ref.forward(tokens, depths, mask), st.forward(tokens, depths, mask)
            worst = max(worst, (a - b).abs().max().item())

        draft = Draft((50, 51, 52, 53, 54, 55, 56), (-1, 0, 0, -1, 3, 4, 2))
        lay = tree.layout(draft)
        for t in (ref, st):
            t.prefill(list(range(5, 45)))
        for step in range(70):  # 5 slots a step on average, 320 in all: compaction happens on the way
            both([7 + step, *draft.tokens], lay.depths, lay.mask)
            keep = [0, 4, 5, 6] if step % 2 else [0, 1, 2]
            for t in (ref, st):
                t.commit(keep)
            if step == 30:
                for t in (ref, st):
                    t.trim(t.length - 5)
        both(list(range(100, 113)), torch.arange(13), None)  # padded to 16
        for t in (ref, st):
            t.commit([0])
        both(list(range(100, 130)), torch.arange(30), None)  # no graph: eager, with a warning
        result[mode] = {"max_abs_diff": worst, "ok": worst < 1e-3, "seconds": time.perf_counter() - start,
                        "capture_s": st.capture_s, "compactions_done": st.compact_cache}
        log(f"check {mode}: max |diff| {worst:.2e} ({'PASS' if worst < 1e-3 else 'FAIL'})")
    return result


# ---- sweep -----------------------------------------------------------------------------------
def random_model(shape: str) -> Any:
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(SHAPES[shape])
    config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    return model.eval()


def weight_bytes(model: Any) -> int:
    """Bytes a pass must read: every weight once, except an untied input embedding (k rows)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())  # tied weights count once
    embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    if embed.data_ptr() != head.data_ptr():
        total -= embed.numel() * embed.element_size()
    return total


def time_passes(target: Any, ks: tuple[int, ...], reps: int = 30, context: int = 256) -> dict[int, dict[str, float]]:
    """Per k: the graph's replay (device ms) and a whole forward + argmax + commit (host ms)."""
    gen = torch.Generator().manual_seed(1)
    vocab = target.vocab_size
    target.reset()
    target.prefill(torch.randint(0, vocab, (context,), generator=gen).tolist())
    out: dict[int, dict[str, float]] = {}
    for k in ks:
        tokens = torch.randint(0, vocab, (k,), generator=gen).tolist()
        depths = torch.arange(k)

        def step():
            target.forward(tokens, depths, None).argmax(-1).tolist()  # the engine syncs here too
            target.commit([])

        for _ in range(3):
            step()
        start = time.perf_counter()
        for _ in range(reps):
            step()
        row = {"call_ms": (time.perf_counter() - start) / reps * 1e3}
        graph = target.graph(k)
        if graph is not None:
            row["replay_ms"] = _median_ms(graph.replay, reps)
        out[k] = row
    target.reset()
    return out


def eager_pass_ms(model: Any, ks: tuple[int, ...], reps: int = 5) -> dict[int, float]:
    """transformers' own eager pass (dynamic cache) over a 256-token cache, for contrast."""
    from leapdecode.models.hf import HFTarget

    target = HFTarget(model)
    target.prefill(list(range(1, 257)))
    out = {}
    for k in ks:
        tokens, depths = list(range(10, 10 + k)), torch.arange(k)
        for _ in range(2):
            target.forward(tokens, depths, None).argmax(-1).tolist()
            target.commit([])
        start = time.perf_counter()
        for _ in range(reps):
            target.forward(tokens, depths, None).argmax(-1).tolist()
            target.commit([])
        out[k] = (time.perf_counter() - start) / reps * 1e3
    return out


def sweep(clock: Clock, shapes: tuple[str, ...], compiled: bool, ceil: dict[str, float]) -> dict[str, Any]:
    from leapdecode.models.cuda import StaticTarget

    results: dict[str, Any] = {}
    for shape in shapes:
        if not clock.allows(60):
            log(f"sweep {shape}: skipped, out of time")
            continue
        log(f"sweep {shape}: building a random-weight model")
        model = random_model(shape)
        nbytes = weight_bytes(model)
        floor_ms = nbytes / (ceil["copy_GBps"] * 1e9) * 1e3
        row: dict[str, Any] = {"weight_GB": nbytes / 1e9, "floor_ms": floor_ms, "modes": {}}
        row["eager_hf_ms"] = eager_pass_ms(model, (1, 64))
        modes = [("graphs", False)] + ([("compiled+graphs", True)] if compiled else [])
        for mode, compile_ in modes:
            if not clock.allows(150 if compile_ else 40):
                log(f"sweep {shape} {mode}: skipped, out of time")
                continue
            torch._dynamo.reset()
            target = None
            try:
                target = StaticTarget(model, max_len=512, sizes=SWEEP_KS, graphs=True, compile=compile_, dynamic=True)
                capture_s = target.capture()
                passes = time_passes(target, SWEEP_KS)
                row["modes"][mode] = {"capture_s": capture_s, "passes": passes}
                log(f"sweep {shape} {mode}: captured in {capture_s:.1f} s; k=1 {passes[1]}")
            except Exception as err:  # report and go on: one failing mode must not lose the rest
                row["modes"][mode] = {"error": f"{type(err).__name__}: {err}"}
                log(traceback.format_exc())
            finally:
                target = None
                gc.collect()
                torch.cuda.empty_cache()
        results[shape] = row
        del model
        gc.collect()
        torch.cuda.empty_cache()
    return results


# ---- warm ------------------------------------------------------------------------------------
def warm(max_len: int, sizes: tuple[int, ...], dynamic: bool) -> dict[str, Any]:
    """Compile what `bench` compiles for its StaticTarget, on a random-weight model of SmolLM2-135M's
    shape (the compiled code lands in the on-disk inductor and triton caches, so a later `bench` on
    the same machine re-traces but need not regenerate kernels); time its passes and count the
    kernels one replay of each size launches."""
    from leapdecode.models.cuda import StaticTarget

    start = time.perf_counter()
    model = random_model("smollm2-135m")
    torch._dynamo.reset()
    target = StaticTarget(model, max_len=max_len, sizes=sizes, dynamic=dynamic)
    capture_s = target.capture()
    passes = time_passes(target, target.sizes) if DEVICE == "cuda" else time_passes(target, (1, 2), reps=2)
    for size, row in passes.items():
        row["kernels"] = kernels_per_replay(target, size)
    log(f"warm: {time.perf_counter() - start:.0f} s (StaticTarget capture {capture_s:.0f} s)")
    return {"seconds": time.perf_counter() - start, "capture_s": capture_s, "dynamic": dynamic, "passes": passes}


def kernels_per_replay(target: Any, size: int) -> int | None:
    """GPU kernels in one replay of the graph of `size` (torch.profiler), None if unavailable."""
    graph = target.graph(size)
    if graph is None:
        return None
    try:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            graph.replay()
            sync()
        return sum(1 for e in prof.events() if e.device_type.name == "CUDA")
    except Exception as err:  # the profiler is a nicety here
        log(f"kernel count failed: {err}")
        return None


# ---- bench -----------------------------------------------------------------------------------
def load_smollm2(gguf: Path) -> tuple[Any, Any]:
    """(float32 model, tokenizer) from the GGUF file, or from a transformers directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if gguf.is_dir():
        return AutoModelForCausalLM.from_pretrained(gguf, dtype=torch.float32), AutoTokenizer.from_pretrained(gguf)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None
    return model, tokenizer


def dev_questions(limit_per_subtask: int | None) -> list[dict[str, Any]]:
    """First turns of the dev questions, round-robin over subtasks (a run cut short stays balanced)."""
    from importlib import resources

    path = resources.files("leapdecode.bench") / "data" / "specbench_dev.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    by_subtask: dict[str, list[dict[str, Any]]] = {s: [] for s in SUBTASKS}
    for row in rows:
        sub = "mt_bench" if row["category"] in MT_BENCH else row["category"]
        if limit_per_subtask is None or len(by_subtask[sub]) < limit_per_subtask:
            by_subtask[sub].append({"id": row["question_id"], "subtask": sub, "prompt": row["turns"][0]})
    ordered = []
    for i in range(max(len(v) for v in by_subtask.values())):
        ordered += [v[i] for v in by_subtask.values() if i < len(v)]
    return ordered


def bench(clock: Clock, gguf: Path, per_subtask: int | None, dynamic_per_subtask: int, max_new: int,
          max_len: int, sizes: tuple[int, ...], dynamic: bool) -> dict[str, Any]:
    from transformers import StaticCache

    from leapdecode.config import GenerationConfig
    from leapdecode.engine import Engine
    from leapdecode.models.cuda import StaticTarget

    start = time.perf_counter()
    model32, tokenizer = load_smollm2(gguf)
    model = copy.deepcopy(model32).to(DEVICE, torch.bfloat16).eval()
    model32 = model32.to(DEVICE).eval()
    load_s = time.perf_counter() - start
    torch._dynamo.reset()
    target = StaticTarget(model, max_len=max_len, sizes=sizes, dynamic=dynamic)
    capture_s = target.capture()
    engine = Engine(target, tokenizer, name="smollm2-135m")
    eos = sorted(engine.eos_ids)
    log(f"bench: model loaded in {load_s:.1f} s, graphs captured in {capture_s:.1f} s; eos {eos}")
    config = GenerationConfig(max_new_tokens=max_new)
    reused = StaticCache(config=model.config, max_cache_len=max_len)

    def hf(ids: list[int], **options: Any) -> tuple[list[int], int]:
        out = model.generate(torch.tensor([ids], device=DEVICE), do_sample=False, max_new_tokens=max_new,
                             eos_token_id=eos, pad_token_id=eos[0], **options)
        return out[0, len(ids):].tolist(), 0

    def hf_reused(ids: list[int]) -> tuple[list[int], int]:
        reused.reset()
        return hf(ids, past_key_values=reused)

    def ours(method: str) -> Callable[[list[int]], tuple[list[int], int]]:
        def run(ids: list[int]) -> tuple[list[int], int]:
            g = engine.generate(ids, config, method=method, chat=False)
            return g.token_ids, g.stats.steps
        return run

    methods: dict[str, Callable[[list[int]], tuple[list[int], int]]] = {
        "hf-dynamic": hf,
        "hf-static": lambda ids: hf(ids, cache_implementation="static", max_cache_len=max_len),
        "hf-static-reused": hf_reused,
        "none": ours("none"),
        **{m: ours(m) for m in DRAFTERS},
    }
    questions = dev_questions(per_subtask)
    prompts = [engine.encode(q["prompt"]) for q in questions]
    warm = time.perf_counter()
    for name, run in methods.items():  # compile, capture and warm every method untimed
        for ids in prompts[:2]:
            run(ids)
    sync()
    log(f"bench: warm-up {time.perf_counter() - warm:.1f} s; {len(questions)} questions")
    quota = {name: {s: dynamic_per_subtask for s in SUBTASKS} for name in ("hf-dynamic",)}
    records: list[dict[str, Any]] = []
    per_question_s = None
    for qi, (q, ids) in enumerate(zip(questions, prompts)):
        if per_question_s and not clock.allows(per_question_s * 1.5 + 90):
            log(f"bench: stopping after {qi} questions to stay in the time budget")
            break
        q_start = time.perf_counter()
        names = list(methods)
        names = names[qi % len(names):] + names[: qi % len(names)]  # rotate the order
        for name in names:
            if name in quota:
                if quota[name][q["subtask"]] <= 0:
                    continue
                quota[name][q["subtask"]] -= 1
            sync()
            t0 = time.perf_counter()
            tokens, steps = methods[name](ids)
            sync()
            wall = time.perf_counter() - t0
            records.append({"q": q["id"], "subtask": q["subtask"], "method": name, "tokens": tokens,
                            "steps": steps, "wall_s": wall, "prompt_len": len(ids)})
            mine = [r for r in records if r["method"] == name]
            if name not in quota and len(mine) == 6 and sum(r["wall_s"] for r in mine) > 0.012 * sum(
                    len(r["tokens"]) for r in mine):  # a slow method (> 12 ms/token) runs on few questions
                log(f"bench: {name} is slow; it runs on {dynamic_per_subtask} questions per subtask from now on")
                quota[name] = {s: dynamic_per_subtask - sum(r["subtask"] == s for r in mine) for s in SUBTASKS}
        per_question_s = time.perf_counter() - q_start if per_question_s is None else \
            0.8 * per_question_s + 0.2 * (time.perf_counter() - q_start)
    done = {r["q"] for r in records}
    summary = summarize(records)
    ties = near_ties(records, {q["id"]: p for q, p in zip(questions, prompts)}, model, model32)
    passes = time_passes(target, target.sizes) if DEVICE == "cuda" else time_passes(target, (1, 2), reps=2)
    for size, row in passes.items():
        row["kernels"] = kernels_per_replay(target, size)
    return {"load_s": load_s, "capture_s": capture_s, "sizes": sizes, "dynamic": dynamic,
            "questions": len(done), "max_new_tokens": max_new,
            "summary": summary, "identical": ties, "passes": passes, "records": records}


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """tokens/s per method (total new tokens over total wall time) overall and per subtask, tau."""
    out: dict[str, Any] = {}
    for name in dict.fromkeys(r["method"] for r in records):
        rows = [r for r in records if r["method"] == name]
        tokens = sum(len(r["tokens"]) for r in rows)
        wall = sum(r["wall_s"] for r in rows)
        steps = sum(r["steps"] for r in rows)
        by_sub = {}
        for sub in SUBTASKS:
            part = [r for r in rows if r["subtask"] == sub]
            if part:
                by_sub[sub] = sum(len(r["tokens"]) for r in part) / sum(r["wall_s"] for r in part)
        out[name] = {"questions": len(rows), "tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall,
                     "ms_per_token": wall / tokens * 1e3, "tau": tokens / steps if steps else None,
                     "tokens_per_s_by_subtask": by_sub}
    return out


@torch.inference_mode()
def near_ties(records: list[dict[str, Any]], prompts: dict[Any, list[int]], model: Any, model32: Any) -> dict[str, Any]:
    """Outputs identical to leapdecode `none` (and to hf-static); at each first difference, the
    logit gap between the reference's token and the method's, from a fresh eager pass in bf16
    and in fp32 over the common prefix."""
    by = {(r["q"], r["method"]): r["tokens"] for r in records}
    comparisons = [(m, "none") for m in DRAFTERS] + [("none", "hf-static"), ("hf-static-reused", "hf-static"),
                                                     ("hf-dynamic", "hf-static")]
    out: dict[str, Any] = {}
    for name, reference in comparisons:
        pairs = [(q, by[(q, name)], by[(q, reference)]) for (q, m) in by if m == name and (q, reference) in by]
        if not pairs:
            continue
        diffs = [first_difference(q, got, ref, prompts[q], model, model32) for q, got, ref in pairs if got != ref]
        out[f"{name} vs {reference}"] = {"pairs": len(pairs), "identical": len(pairs) - len(diffs),
                                         "rate": (len(pairs) - len(diffs)) / len(pairs), "differences": diffs}
    return out


def first_difference(q: Any, got: list[int], ref: list[int], prompt: list[int], model: Any,
                     model32: Any) -> dict[str, Any]:
    """Where two outputs first differ, and the logit gaps there (bf16 and fp32 eager passes)."""
    n = min(len(got), len(ref))
    p = next((i for i in range(n) if got[i] != ref[i]), n)
    row: dict[str, Any] = {"q": q, "position": p}
    if p == n:  # one output is a prefix of the other
        return row
    row.update(ref_token=ref[p], method_token=got[p])
    ids = torch.tensor([prompt + ref[:p]], device=DEVICE)
    for label, m in (("bf16", model), ("fp32", model32)):
        logits = m(ids).logits[0, -1].float()  # [vocab]
        top2 = logits.topk(2).values
        row[label] = {"ref_minus_method": (logits[ref[p]] - logits[got[p]]).item(),
                      "top1_minus_top2": (top2[0] - top2[1]).item()}
    return row


# ---- report ----------------------------------------------------------------------------------
def print_tables(results: dict[str, Any]) -> None:
    env = results.get("env", {})
    print(f"\n# {env.get('gpu')} | torch {env.get('torch')} | transformers {env.get('transformers')}")
    if "ceilings" in results:
        c = results["ceilings"]
        print(f"copy {c['copy_GBps']:.0f} GB/s (read+write), bf16 matmul {c['bf16_TFLOPs']:.0f} TFLOP/s")
    for mode, row in results.get("check", {}).items():
        print(f"check {mode}: max |diff| vs HFTarget {row['max_abs_diff']:.1e} {'PASS' if row['ok'] else 'FAIL'}")
    for shape, row in results.get("sweep", {}).items():
        print(f"\n## {shape}: {row['weight_GB']:.2f} GB of weights, floor {row['floor_ms']:.2f} ms; "
              f"eager transformers pass k=1 {row['eager_hf_ms'][1]:.1f} ms, k=64 {row['eager_hf_ms'][64]:.1f} ms")
        print("| mode | " + " | ".join(f"k={k}" for k in SWEEP_KS) + " |")
        print("|---" * (len(SWEEP_KS) + 1) + "|")
        for mode, m in row["modes"].items():
            if "error" in m:
                print(f"| {mode} | {m['error'][:80]} |")
                continue
            for key in ("replay_ms", "call_ms"):
                cells = [f"{m['passes'][k].get(key, float('nan')):.2f}" for k in SWEEP_KS]
                print(f"| {mode} {key} | " + " | ".join(cells) + " |")
    if "warm" in results:
        w = results["warm"]
        print(f"warm: {w['seconds']:.0f} s, capture {w['capture_s']:.0f} s, dynamic {w['dynamic']}; 135M-shape "
              "pass ms (replay / call, kernels): " + ", ".join(
                  f"k={k} {v.get('replay_ms', float('nan')):.2f}/{v['call_ms']:.2f} ({v.get('kernels')})"
                  for k, v in w["passes"].items()))
    b = results.get("bench")
    if b:
        s = b["summary"]
        base = max(s.get("hf-static", {}).get("tokens_per_s", 0), s.get("hf-static-reused", {}).get("tokens_per_s", 0))
        print(f"\n## SmolLM2-135M bf16, {b['questions']} dev questions (first turns), max_new_tokens {b['max_new_tokens']}")
        print("| method | questions | tok/s | ms/token | tau | x best hf-static | " + " | ".join(SUBTASKS) + " |")
        print("|---" * (6 + len(SUBTASKS)) + "|")
        for name, row in s.items():
            tau = f"{row['tau']:.2f}" if row["tau"] else "-"
            subs = " | ".join(f"{row['tokens_per_s_by_subtask'].get(x, float('nan')):.0f}" for x in SUBTASKS)
            print(f"| {name} | {row['questions']} | {row['tokens_per_s']:.0f} | {row['ms_per_token']:.2f} | {tau} | "
                  f"{row['tokens_per_s'] / base:.2f} | {subs} |")
        print("\n| outputs | identical | max |gap| bf16 | max |gap| fp32 |")
        print("|---|---|---|---|")
        for key, row in b["identical"].items():
            g16 = max((abs(d["bf16"]["ref_minus_method"]) for d in row["differences"] if "bf16" in d), default=0.0)
            g32 = max((abs(d["fp32"]["ref_minus_method"]) for d in row["differences"] if "fp32" in d), default=0.0)
            print(f"| {key} | {row['identical']}/{row['pairs']} | {g16:.3f} | {g32:.3f} |")
        print(f"\n135M passes (sizes {b['sizes']}, dynamic {b['dynamic']}, capture {b['capture_s']:.0f} s), "
              "ms (replay / call, kernels): " + ", ".join(
                  f"k={k} {v.get('replay_ms', float('nan')):.2f}/{v['call_ms']:.2f} ({v.get('kernels')})"
                  for k, v in b["passes"].items()))


def environment() -> dict[str, Any]:
    import transformers

    gpu = torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu (dry run)"
    return {"gpu": gpu, "torch": torch.__version__, "cuda": torch.version.cuda,
            "transformers": transformers.__version__}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("phase", choices=["check", "sweep", "warm", "bench", "all", "sweep+check"])
    p.add_argument("--gguf", type=Path, default=None, help="SmolLM2-135M-Instruct GGUF (default: the packaged one)")
    p.add_argument("--out", type=Path, default=Path("/tmp/leapdecode-gpu/out"))
    p.add_argument("--budget-s", type=float, default=560, help="stop starting new work after this many seconds")
    p.add_argument("--shapes", default="qwen2.5-1.5b,llama-7b")
    p.add_argument("--no-compiled-sweep", action="store_true", help="sweep graphs over eager kernels only")
    p.add_argument("--per-subtask", type=int, default=None, help="questions per subtask (default: all 240)")
    p.add_argument("--dynamic-per-subtask", type=int, default=2, help="questions per subtask for hf-dynamic")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--max-len", type=int, default=2048)
    p.add_argument("--sizes", default="1,2,4,8,16,32,64,128", help="padded pass sizes of the 135M StaticTarget")
    p.add_argument("--static", action="store_true", help="compile one graph per size (default: one dynamic "
                                                          "graph for every size >= 2)")
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("gpu_measure: no CUDA device; this script measures the GPU path", file=sys.stderr)
        return 2
    clock = Clock(args.budget_s)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"gpu_results_{args.phase.replace('+', '_')}.json"
    results: dict[str, Any] = {"env": environment(), "args": {k: str(v) for k, v in vars(args).items()}}

    def save() -> None:
        path.write_text(json.dumps(results, indent=1, default=str))

    if args.phase in ("check", "all", "sweep+check"):
        results["check"] = check()
        save()
    if args.phase in ("sweep", "all", "sweep+check"):
        results["ceilings"] = ceilings()
        save()
        shapes = tuple(s for s in args.shapes.split(",") if s)
        results["sweep"] = sweep(clock, shapes, not args.no_compiled_sweep, results["ceilings"])
        save()
    sizes = tuple(int(x) for x in args.sizes.split(","))
    if args.phase == "warm":
        results["warm"] = warm(args.max_len, sizes, not args.static)
        save()
    if args.phase in ("bench", "all"):
        gguf = args.gguf
        if gguf is None:
            from leapdecode.models.packaged import gguf_path
            from leapdecode.models.registry import cache_dir

            gguf = gguf_path("smollm2-135m", cache_dir())
        results["bench"] = bench(clock, gguf, args.per_subtask, args.dynamic_per_subtask, args.max_new_tokens,
                                 args.max_len, sizes, not args.static)
        save()
    print_tables(results)
    log(f"wrote {path} ({clock.elapsed():.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
