"""Time native passes of two or more builds of the CPU kernels in one process, alternating.

    .venv/bin/python scripts/kernel_ab.py --dtype w8a8 0327310 HEAD . other.c  # revisions, tree, files
    .venv/bin/python scripts/kernel_ab.py --dtype w8a8 --kv float32,bfloat16 .  # the cache's two dtypes
    .venv/bin/python scripts/kernel_ab.py --dtype w8a8 850c188@float32 .       # a build with its own cache

Each revision's csrc/kernels.c (or the tree's, or a .c file named) is compiled with build.py's flags
into a temporary directory and loaded beside the others; the model is loaded once per cache dtype
in `--kv`, or in the dtype a build names after `@` (a bfloat16 cache needs a build that has one).
Every round runs each build and cache in turn: 5 timed passes of each width in `--ks` (1 and 16
inputs by default; after a warm-up pass each) over `--context` cached tokens. The machines are shared and their memory bandwidth moves by 1.5x within
minutes, so builds compared in separate runs mislead; here they share every minute. Prints the lower
quartile and the minimum per build and width, and the ratio of the widest pass to the narrowest.
"""

from __future__ import annotations

import argparse
import ctypes
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import leapdecode.models.native.build as build
import leapdecode.models.native.ops as ops
import leapdecode.models.native.target as target_mod
from leapdecode.models.registry import resolve

SOURCE = "src/leapdecode/models/native/csrc/kernels.c"


def compile_rev(rev: str, out: Path) -> Path:
    source = out / f"{len(list(out.iterdir()))}.c"
    if rev == "." or rev.endswith(".c"):
        text = Path(SOURCE if rev == "." else rev).read_text()
    else:
        text = subprocess.run(["git", "show", f"{rev}:{SOURCE}"], check=True, capture_output=True, text=True).stdout
    source.write_text(text)
    lib = source.with_suffix(".so")
    subprocess.run(["gcc", *build.FLAGS, str(source), "-o", str(lib), "-lm"], check=True)
    return lib


def load(path: Path) -> build.Kernels:
    lib = ctypes.CDLL(str(path))
    for name, args in build.SIGNATURES.items():
        getattr(lib, name).argtypes = args
        getattr(lib, name).restype = build.RESULTS.get(name)
    return build.Kernels(lib)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("revs", nargs="+", help="git revisions, . for the working tree, or kernels.c variants "
                        "(paths ending in .c); REV@float32 or REV@bfloat16 runs that build with that cache only")
    parser.add_argument("--dtype", default="w8a8")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ks", default="1,16", help="pass widths, comma-separated; the ratio is last over first")
    parser.add_argument("--kv", default=None, help="the cache's dtypes, comma-separated (default: the runtime's)")
    args = parser.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    kvs = args.kv.split(",") if args.kv else [None]
    variants = [(rev, kv) for rev in args.revs for kv in kvs]
    variants = [(rev.split("@")[0], rev.split("@")[1]) if "@" in rev else (rev, kv) for rev, kv in variants]
    variants = list(dict.fromkeys(variants))
    with tempfile.TemporaryDirectory() as tmp:
        builds = {rev: load(compile_rev(rev, Path(tmp))) for rev in dict.fromkeys(rev for rev, _ in variants)}
        current = [next(iter(builds.values()))]
        build.kernels = ops.kernels = target_mod.kernels = lambda: current[0]  # every caller's kernels()
        targets = {kv: target_mod.NativeTarget(resolve(args.model), args.dtype, max_len=args.context + 64,
                                               threads=args.threads, kv_dtype=kv)
                   for kv in dict.fromkeys(kv for _, kv in variants)}
        for k in builds.values():
            k.set_threads(args.threads)
        torch.set_num_threads(1)
        for kv, target in targets.items():  # by a build that runs this cache
            current[0] = builds[next(rev for rev, k in variants if k == kv)]
            target.prefill(list(range(1000, 1000 + args.context)))
        label = {v: v[0] if v[1] is None else f"{v[0]} kv={v[1]}" for v in variants}
        times: dict[tuple, dict[int, list[float]]] = {v: {k: [] for k in ks} for v in variants}
        for _ in range(args.rounds):
            for rev, kv in variants:
                current[0], target = builds[rev], targets[kv]
                for n in ks:
                    for i in range(6):
                        start = time.perf_counter()
                        target.forward(list(range(2000, 2000 + n)), torch.arange(n), None)
                        elapsed = (time.perf_counter() - start) * 1e3
                        target.commit([])
                        if i:
                            times[rev, kv][n].append(elapsed)
        print(f"{args.model} {args.dtype}, {args.threads} threads, {args.context} cached, {args.rounds} rounds, ms")
        print("| build | " + " | ".join(f"k={k} q1 | k={k} min" for k in ks) + f" | k={ks[-1]} / k={ks[0]} (q1) |")
        print("|---|" + "---:|" * (2 * len(ks) + 1))
        for variant in variants:
            cells, q = [], {}
            for k in ks:
                v = sorted(times[variant][k])
                q[k] = v[len(v) // 4]
                cells += [f"{q[k]:.2f}", f"{v[0]:.2f}"]
            print(f"| {label[variant]} | " + " | ".join(cells) + f" | {q[ks[-1]] / q[ks[0]]:.2f}x |")


if __name__ == "__main__":
    sys.exit(main())
