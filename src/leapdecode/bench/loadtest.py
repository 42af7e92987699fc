"""`leapdecode loadtest`: a server under N concurrent streams, against the same server serving
them one at a time and against llama.cpp's own server.

    leapdecode loadtest --concurrency 1,4,16 --max-new-tokens 128 --out results/load

Each server is started here (a subprocess on a free loopback port) and driven through the
OpenAI client: at concurrency c, c clients each send `--rounds` streaming chat requests (dev
questions' first turns, temperature 0), one after another, after one warm-up round of short
requests (not counted); each level and the warm-up take prompts of their own. Per level it reports aggregate
tokens/s (completion tokens of all requests / the level's wall time), time to first token and
inter-token latency (the gaps between streamed chunks, divided by the tokens they carried), p50
and p99. Servers ("systems"):

- `leapdecode`: `leapdecode serve --batch B` (requests decoded together), drafter `--method`;
- `leapdecode-none`: the same without speculation;
- `leapdecode-serial`: `--batch 1`, one request at a time (the server before batching);
- `llama-server`: llama.cpp's server on the model's GGUF with `--parallel B` slots, built by
  scripts/build_llama_server.sh.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

from ..options import add_model_args
from .servers import BUILD_HINT, LLAMA_SERVER, Started, free_port, llama_server_command

SYSTEMS = ("leapdecode", "leapdecode-none", "leapdecode-serial", "llama-server")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("loadtest", help="aggregate tokens/s and latency of servers under concurrent streams",
                       description=__doc__.split("\n\n")[1] if __doc__ else None)
    add_model_args(p, threads=2, device=False, backend=False, dtype="bfloat16")
    p.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated, of: {', '.join(SYSTEMS)}")
    p.add_argument("--concurrency", default="1,4,16", help="comma-separated stream counts (default 1,4,16)")
    p.add_argument("--rounds", type=int, default=1, help="requests per client per level (default 1)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--method", default="auto", help="the drafter of the `leapdecode` system (default auto)")
    p.add_argument("--batch", type=int, default=None,
                   help="requests decoded together (leapdecode --batch, llama-server --parallel); "
                   "default: the largest concurrency")
    p.add_argument("--out", default="results/loadtest", help="results.json, report.md, loadtest.png go here")
    p.set_defaults(func=cmd_loadtest)


def _ints(text: str, name: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise ValueError(f"{name} takes integers >= 1 separated by commas, e.g. 1,4,16; got {text!r}")
    return values


def cmd_loadtest(args: argparse.Namespace) -> int:
    levels = _ints(args.concurrency, "--concurrency")
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown or not systems:
        raise ValueError(f"unknown system {', '.join(unknown) or '(none)'}; choose from: {', '.join(SYSTEMS)}")
    if args.rounds < 1 or args.max_new_tokens < 1:
        raise ValueError("--rounds and --max-new-tokens must be >= 1")
    if "llama-server" in systems and not LLAMA_SERVER.exists():
        raise ValueError(f"{BUILD_HINT} (or drop it from --systems)")
    from .questions import default_questions_path, load_questions

    prompts = [q.turns[0] for q in load_questions(default_questions_path())]
    batch = args.batch or max(levels)
    results: dict[str, Any] = {"settings": {"model": args.model, "dtype": args.dtype, "threads": args.threads,
                                            "max_new_tokens": args.max_new_tokens, "rounds": args.rounds,
                                            "batch": batch, "method": args.method, "levels": levels},
                               "systems": {}}
    for system in systems:
        print(f"loadtest: starting {system}", file=sys.stderr, flush=True)
        with _start(system, args, batch) as url:
            # warm-up (first passes, measured pass costs) on the last prompts; then each level on
            # prompts of its own, so no server answers a prompt it has already seen (prompt caches)
            warm = min(batch, max(levels))
            run_level(url, prompts[-warm:], warm, 1, 16)
            rows, offset = [], 0
            for c in levels:
                row = run_level(url, prompts[offset:] + prompts[:offset], c, args.rounds, args.max_new_tokens)
                offset = (offset + c * args.rounds) % len(prompts)
                print(f"loadtest: {system} c={c}: {row['tokens_per_s']:.1f} tok/s, ttft p50 "
                      f"{row['ttft_p50_ms']:.0f} ms, itl p99 {row['itl_p99_ms']:.0f} ms", file=sys.stderr, flush=True)
                rows.append(row)
            results["systems"][system] = rows
    write_results(results, Path(args.out))
    print(report(results))
    return 0


# ---- the servers ---------------------------------------------------------------------------
def _start(system: str, args: argparse.Namespace, batch: int) -> Started:
    """A system's server on a free port; the context yields its base URL and stops it after."""
    port = free_port()
    if system == "llama-server":
        from ..models.llamacpp import locate_gguf

        context = (1024 + args.max_new_tokens) * batch  # llama-server splits -c among its slots
        cmd = llama_server_command(locate_gguf(args.model), port, args.threads, batch, context)
    else:
        method = "none" if system != "leapdecode" else args.method
        cmd = [sys.executable, "-m", "leapdecode.cli", "serve", "--model", args.model, "--dtype", args.dtype,
               "--threads", str(args.threads), "--port", str(port), "--method", method,
               "--batch", "1" if system == "leapdecode-serial" else str(batch), "--log-level", "warning",
               "--max-queue", "1024"]
    return Started(cmd, f"http://127.0.0.1:{port}")


# ---- one level -----------------------------------------------------------------------------
def run_level(url: str, prompts: Sequence[str], clients: int, rounds: int, max_tokens: int) -> dict[str, Any]:
    """`clients` concurrent clients, `rounds` streamed requests each; aggregate figures."""
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=1800)
    start = threading.Barrier(clients)

    def one(i: int) -> list[dict[str, float]]:
        start.wait(60)
        return [stream_one(client, prompts[(i * rounds + r) % len(prompts)], max_tokens) for r in range(rounds)]

    begin = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        records = [rec for recs in pool.map(one, range(clients)) for rec in recs]
    wall = time.perf_counter() - begin
    tokens = sum(r["tokens"] for r in records)
    ttft = sorted(r["ttft_s"] for r in records)
    itl = sorted(gap for r in records for gap in r["gaps"])
    return {"concurrency": clients, "requests": len(records), "tokens": tokens, "wall_s": wall,
            "tokens_per_s": tokens / wall, "ttft_p50_ms": 1e3 * _pct(ttft, 50), "ttft_p99_ms": 1e3 * _pct(ttft, 99),
            "itl_p50_ms": 1e3 * _pct(itl, 50), "itl_p99_ms": 1e3 * _pct(itl, 99)}


def stream_one(client: Any, prompt: str, max_tokens: int) -> dict[str, Any]:
    """One streamed chat request: time to first text, per-token gaps, completion tokens."""
    sent = time.perf_counter()
    stream = client.chat.completions.create(
        model="leapdecode", messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0,
        stream=True, stream_options={"include_usage": True})
    first, last, gaps, pieces, tokens = None, None, [], 0, None
    for chunk in stream:
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        if not chunk.choices or not chunk.choices[0].delta.content:
            continue
        now = time.perf_counter()
        if first is None:
            first = now
        elif last is not None:
            gaps.append(now - last)
        last, pieces = now, pieces + 1
    tokens = tokens if tokens is not None else pieces
    # a chunk can carry several tokens (accepted drafts): spread its gap over them
    per = max(1, tokens - 1) / max(1, len(gaps))
    return {"ttft_s": (first or time.perf_counter()) - sent, "tokens": tokens, "gaps": [g / per for g in gaps]}


def _pct(values: Sequence[float], p: float) -> float:
    if not values:
        return 0.0
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


# ---- output --------------------------------------------------------------------------------
def report(results: dict[str, Any]) -> str:
    st = results["settings"]
    lines = [f"{st['model']} ({st['dtype']}), {st['threads']} threads, {st['max_new_tokens']} new tokens, "
             f"batch {st['batch']}, drafter {st['method']}", "",
             "| system | streams | requests | tokens/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for system, rows in results["systems"].items():
        for r in rows:
            lines.append(f"| {system} | {r['concurrency']} | {r['requests']} | {r['tokens_per_s']:.1f} | "
                         f"{r['ttft_p50_ms']:.0f} | {r['ttft_p99_ms']:.0f} | {r['itl_p50_ms']:.1f} | {r['itl_p99_ms']:.1f} |")
    return "\n".join(lines) + "\n"


def write_results(results: dict[str, Any], out: Path) -> None:
    import importlib.util

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "report.md").write_text(report(results))
    if importlib.util.find_spec("matplotlib") is None:
        print("loadtest: matplotlib is not installed; skipped loadtest.png", file=sys.stderr)
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for system, rows in results["systems"].items():
        xs = [r["concurrency"] for r in rows]
        left.plot(xs, [r["tokens_per_s"] for r in rows], marker="o", label=system)
        right.plot(xs, [r["itl_p99_ms"] for r in rows], marker="o", label=system)
    for ax, label in ((left, "aggregate tokens/s"), (right, "inter-token latency p99 (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent streams")
        ax.set_ylabel(label)
    left.legend(fontsize=7)
    st = results["settings"]
    fig.suptitle(f"{st['model']} ({st['dtype']}), {st['max_new_tokens']} new tokens")
    fig.tight_layout()
    fig.savefig(out / "loadtest.png", dpi=120)
    plt.close(fig)
