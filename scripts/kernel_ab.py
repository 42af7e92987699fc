"""Time native passes of two or more builds of the CPU kernels in one process, alternating.

    .venv/bin/python scripts/kernel_ab.py --dtype w8a8 0327310 HEAD . other.c  # revisions, tree, files
    .venv/bin/python scripts/kernel_ab.py --dtype w8a8 --kv float32,bfloat16 .  # the cache's two dtypes
    .venv/bin/python scripts/kernel_ab.py --dtype w8a8 850c188@float32 .       # a build with its own cache
    .venv/bin/python scripts/kernel_ab.py --dtype w8a8 2ebc5c5@bfloat16@4k .     # ... and 4 KiB pages

Each revision's csrc/kernels.c (or the tree's, or a .c file named) is compiled with build.py's flags
into a temporary directory and loaded beside the others; the model is loaded once per cache dtype
in `--kv`, or in the dtype a build names after `@` (a bfloat16 cache needs a build that has one);
`@4k` puts that build's model in ordinary 4 KiB pages (as before the weights moved to huge pages).
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
    return build.Kernels(ctypes.CDLL(str(path)), missing_ok=True)


def small_pages(target: target_mod.NativeTarget) -> None:
    """The target's weights and cache copied into ordinary (4 KiB-page) tensors, the C view rebuilt."""
    m = target.m
    for w in m.linears():
        w.data = w.data.clone()
    target.k_cache, target.v_cache = target.k_cache.clone(), target.v_cache.clone()
    target._c_model, target._keep = target_mod._c_model(m, target.k_cache, target.v_cache, target.max_len,
                                                        target.sequences * target.max_len)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("revs", nargs="+", help="git revisions, . for the working tree, or kernels.c variants "
                        "(paths ending in .c); REV@float32 or REV@bfloat16 runs that build with that cache only, "
                        "REV@...@4k with its model in 4 KiB pages")
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
    variants = []  # (rev, cache dtype, 4 KiB pages)
    for spec in args.revs:
        rev, *tags = spec.split("@")
        pinned = [t for t in tags if t != "4k"]
        for kv in pinned or kvs:
            variants.append((rev, kv, "4k" in tags))
    variants = list(dict.fromkeys(variants))
    with tempfile.TemporaryDirectory() as tmp:
        builds = {rev: load(compile_rev(rev, Path(tmp))) for rev in dict.fromkeys(rev for rev, _, _ in variants)}
        current = [next(iter(builds.values()))]
        build.kernels = ops.kernels = target_mod.kernels = lambda: current[0]  # every caller's kernels()
        targets = {}
        for kv, small in dict.fromkeys((kv, small) for _, kv, small in variants):
            targets[kv, small] = target_mod.NativeTarget(resolve(args.model), args.dtype, max_len=args.context + 64,
                                                         threads=args.threads, kv_dtype=kv)
            if small:
                small_pages(targets[kv, small])
        for k in builds.values():
            k.set_threads(args.threads)
        torch.set_num_threads(1)
        for key, target in targets.items():  # by a build that runs this cache
            current[0] = builds[next(rev for rev, kv, small in variants if (kv, small) == key)]
            target.prefill(list(range(1000, 1000 + args.context)))
        label = {v: v[0] + ("" if v[1] is None else f" kv={v[1]}") + (" 4k pages" if v[2] else "") for v in variants}
        times: dict[tuple, dict[int, list[float]]] = {v: {k: [] for k in ks} for v in variants}
        for _ in range(args.rounds):
            for rev, kv, small in variants:
                current[0], target = builds[rev], targets[kv, small]
                for n in ks:
                    for i in range(6):
                        start = time.perf_counter()
                        target.forward(list(range(2000, 2000 + n)), torch.arange(n), None)
                        elapsed = (time.perf_counter() - start) * 1e3
                        target.commit([])
                        if i:
                            times[rev, kv, small][n].append(elapsed)
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
