"""Aggregate throughput of `leapdecode serve` with 1, 2, ... replicas (Ray Serve) beside the
single-process server, under the load test's clients (docs/scale.md).

    .venv/bin/python scripts/scale_measure.py --configs serve:1,replicas:1x1,replicas:2x1,serve:2 \
        --concurrency 16 --max-new-tokens 64 --out results/scale.json

A config is `serve:T` (one process, no Ray, T threads) or `replicas:NxT` (N replicas of T threads
each). Each server is started on a free loopback port, warmed up with one short round, then driven
by `concurrency` streaming chat clients (dev questions, temperature 0; leapdecode.bench.loadtest's
run_level), one request each per round; every config gets the same prompts.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from leapdecode.bench.loadtest import run_level
from leapdecode.bench.questions import default_questions_path, load_questions
from leapdecode.bench.servers import free_port


def command(config: str, port: int, args: argparse.Namespace) -> list[str]:
    kind, _, shape = config.partition(":")
    cmd = [sys.executable, "-m", "leapdecode.cli", "serve", "--port", str(port), "--dtype", args.dtype,
           "--method", args.method, "--log-level", "warning", "--max-queue", "1024"]
    if kind == "serve":
        return [*cmd, "--threads", shape]
    replicas, _, threads = shape.partition("x")
    return [*cmd, "--replicas", replicas, "--threads", threads]


def measure(config: str, prompts: list[str], args: argparse.Namespace) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(command(config, port, args), stdout=log, stderr=log)
        try:
            started = time.monotonic()
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    raise SystemExit(f"{config} exited at start:\n{log.read()[-2000:]}")
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
            up_s = time.monotonic() - started
            run_level(url, prompts[-args.concurrency:], args.concurrency, 1, 16)  # warm-up, not counted
            rows = [run_level(url, prompts[i * args.concurrency:], args.concurrency, 1, args.max_new_tokens)
                    for i in range(args.repeat)]
        finally:
            proc.terminate()  # SIGTERM: the replicas' command deletes its application and stops Ray
            proc.wait(60)
    best = max(rows, key=lambda r: r["tokens_per_s"])
    return {"config": config, "start_s": up_s, "tokens_per_s": [r["tokens_per_s"] for r in rows],
            "ttft_p50_ms": best["ttft_p50_ms"], "itl_p50_ms": best["itl_p50_ms"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="serve:1,replicas:1x1,replicas:2x1,serve:2")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--repeat", type=int, default=2, help="measured rounds per config (each on new prompts)")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--method", default="auto")
    p.add_argument("--out", default="results/scale.json")
    args = p.parse_args()
    questions = [q.turns[0] for q in load_questions(default_questions_path())]
    # every config on the same prompts, the six subtasks in turn (they come in blocks of 40, and
    # a block of long summarization prompts would make one config look slow)
    prompts = [questions[(i % 6) * 40 + i // 6] for i in range(len(questions))]
    results = []
    for config in args.configs.split(","):
        row = measure(config, prompts, args)
        print(f"{config:>14}: up in {row['start_s']:.0f} s; tokens/s "
              f"{', '.join(f'{v:.1f}' for v in row['tokens_per_s'])}; ttft p50 {row['ttft_p50_ms']:.0f} ms, "
              f"itl p50 {row['itl_p50_ms']:.1f} ms", flush=True)
        results.append(row)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": vars(args), "results": results}, indent=1))


if __name__ == "__main__":
    main()
