"""`leapdecode profile`: where a pass of the native runtime spends its time.

For each pass width k (k query tokens after `--context` cached ones) it times `--repeat` passes (in
rounds of one pass per width, so that the widths share the host's minutes) and splits each into
linear layers, attention and the rest (norms, rope, cache writes, residuals), by the kernels' own
timers. The floor is the bytes one pass must read (every weight once, plus the
cached K/V once: the pass's queries share them) over the read bandwidth measured on the spot;
`x floor` is how far a pass is from it. The arithmetic floor is the pass's multiply-adds over the
rate at which the kernels' threads do the weight format's multiply-add step from registers (for
attention: the scores' step, bfloat16 pairs or fp32 FMAs as the cache's dtype has it, and fp32 FMAs for
the weighted values), also measured on the spot: no pass can beat the larger of the two floors
(`x max floor`).

    leapdecode profile --dtype bfloat16 --ks 1,2,4,8,16,32,64 --out runs/profile
    -> runs/profile/profile.json, profile.md, profile.png
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from ..options import add_model_args

DEFAULT_KS = "1,2,4,8,16,32,64"


def add_parser(sub: Any) -> None:
    p = sub.add_parser("profile", help="ms per native pass for k = 1..64 tokens against the weight-read floor",
                       description=__doc__.split("\n\n")[1].replace("\n", " "))
    add_model_args(p, threads=2, device=False, backend=False, dtype="bfloat16")
    p.add_argument("--ks", default=DEFAULT_KS, help=f"pass widths, comma-separated (default {DEFAULT_KS})")
    p.add_argument("--context", type=int, default=256, help="tokens in the cache before each pass (default 256)")
    p.add_argument("--repeat", type=int, default=5, help="timed passes per width; the median counts (default 5)")
    p.add_argument("--out", default=None, metavar="DIR", help="write profile.json, profile.md and profile.png here")
    p.set_defaults(func=cmd_profile)


def parse_ks(text: str) -> list[int]:
    try:
        ks = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--ks takes comma-separated integers, e.g. {DEFAULT_KS}; got {text!r}") from None
    if not ks or min(ks) < 1:
        raise ValueError(f"--ks takes integers >= 1, e.g. {DEFAULT_KS}; got {text!r}")
    return sorted(set(ks))


def cmd_profile(args: argparse.Namespace) -> int:
    from .. import validate

    ks = parse_ks(args.ks)
    validate.integer("--context", args.context, 1, 1 << 20, example=256)
    validate.integer("--repeat", args.repeat, 1, 10_000, example=5)
    validate.integer("--threads", args.threads, 1, 4096, example=2)
    from ..models.native import load_native, unsupported_reason
    from ..models.registry import resolve

    directory = resolve(args.model)
    reason = unsupported_reason(directory)
    if reason:
        raise ValueError(f"leapdecode profile measures the native runtime: {reason.split('; ')[0]}")
    import torch

    torch.set_num_threads(args.threads)
    print(f"loading {args.model} ({args.dtype}) on the native runtime ...", file=sys.stderr)
    target = load_native(directory, args.dtype, max_len=args.context + max(ks), threads=args.threads)
    result = measure(target, ks, args.context, args.repeat, log=lambda s: print(s, file=sys.stderr))
    result["settings"] = {"model": args.model, "dtype": args.dtype, "kv_dtype": target.kv_dtype,
                          "threads": args.threads, "context": args.context, "repeat": args.repeat, "ks": ks}
    print(table(result))
    if args.out:
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {str(out)!r} is a file; name a directory")
        out.mkdir(parents=True, exist_ok=True)
        (out / "profile.json").write_text(json.dumps(result, indent=1))
        (out / "profile.md").write_text(table(result) + "\n")
        written = [out / "profile.json", out / "profile.md"]
        import importlib.util

        if importlib.util.find_spec("matplotlib") is not None:
            plot(result, out / "profile.png")
            written.append(out / "profile.png")
        print(f"wrote {', '.join(map(str, written))}", file=sys.stderr)
    return 0


def measure(target: Any, ks: list[int], context: int, repeat: int, log: Any = None) -> dict[str, Any]:
    """Median ms per pass and its split, for each width in `ks`, after `context` cached tokens."""
    from ..models.native import ops

    bandwidth = ops.read_bandwidth()
    fp32 = ops.arithmetic_rate("float32")
    rates = {"linear": ops.arithmetic_rate(target.dtype), "values": fp32,
             "scores": ops.arithmetic_rate("bfloat16") if target.kv_dtype == "bfloat16" else fp32}
    with target.decoding():  # as the engine runs passes: torch's own threads idle, not spinning
        rows = _passes(target, ks, context, repeat, bandwidth, log)
    one = rows[0]["ms"] if rows[0]["k"] == 1 else None
    for row in rows:
        macs = pass_macs(target, row["k"], context)
        row["macs"] = macs
        row["arith_floor_ms"] = sum(macs[part] / rates[part] for part in rates) * 1e3
        row["x_floor"] = row["ms"] / row["floor_ms"]
        row["x_max_floor"] = row["ms"] / max(row["floor_ms"], row["arith_floor_ms"])
        row["x_pass_of_1"] = row["ms"] / one if one else None
    return {"bandwidth_gb_s": bandwidth / 1e9, "weight_bytes": target.weight_bytes, "passes": rows,
            "macs_per_s": rates}


def pass_macs(target: Any, k: int, context: int) -> dict[str, int]:
    """Multiply-adds of a chain of k inputs after `context` cached tokens: the linear layers'
    (every weight once per input, the head included) and attention's scores and weighted values (of
    every head over the keys each input sees: the cache, its ancestors and itself)."""
    m = target.m
    keys = k * context + k * (k + 1) // 2
    attention = len(m.layers) * m.heads * m.head_dim * keys
    return {"linear": k * sum(w.shape[0] * w.shape[1] for w in m.linears()), "scores": attention, "values": attention}


def _passes(target: Any, ks: list[int], context: int, repeat: int, bandwidth: float, log: Any) -> list[dict]:
    import torch

    from ..models.native import ops

    target.reset()
    target.prefill([i % target.vocab_size for i in range(7, 7 + context)])
    inputs = {k: ([(11 * i + 3) % target.vocab_size for i in range(k)], torch.arange(k)) for k in ks}
    walls: dict[int, list[float]] = {k: [] for k in ks}
    splits: dict[int, list[dict[str, float]]] = {k: [] for k in ks}
    for k in ks:  # warm-up
        target.forward(*inputs[k], None)
        target.commit([])
    # rounds of one pass per width, so that every width sees the same minutes of a host whose speed
    # drifts (the read bandwidth of these machines moves by 1.5x within minutes)
    for _ in range(repeat):
        for k in ks:
            ops.profile(True)
            start = time.perf_counter()
            target.forward(*inputs[k], None)
            walls[k].append((time.perf_counter() - start) * 1e3)
            splits[k].append(ops.profile_times())
            ops.profile(False)
            target.commit([])
    floor_bytes = target.weight_bytes + target.cache_bytes(context)
    floor = floor_bytes / bandwidth * 1e3
    rows = []
    for k in ks:
        wall = statistics.median(walls[k])
        linear = statistics.median(s["linear"] for s in splits[k])
        attention = statistics.median(s["attention"] for s in splits[k])
        rows.append({"k": k, "ms": wall, "linear_ms": linear, "attention_ms": attention,
                     "rest_ms": max(0.0, wall - linear - attention), "floor_ms": floor, "bytes": floor_bytes})
        if log:
            log(f"k={k:>3}: {wall:7.2f} ms per pass ({wall / floor:.2f}x the floor)")
    return rows


def table(result: dict[str, Any]) -> str:
    s = result.get("settings", {})
    head = ["k", "ms/pass", "linear", "attention", "rest", "floor", "x floor", "arith floor", "x max floor",
            "x pass of 1", "ms/token"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---:"] * len(head)) + "|"]
    for r in result["passes"]:
        cells = [str(r["k"]), f"{r['ms']:.2f}", f"{r['linear_ms']:.2f}", f"{r['attention_ms']:.2f}",
                 f"{r['rest_ms']:.2f}", f"{r['floor_ms']:.2f}", f"{r['x_floor']:.2f}x",
                 f"{r['arith_floor_ms']:.2f}", f"{r['x_max_floor']:.2f}x",
                 "n/a" if r["x_pass_of_1"] is None else f"{r['x_pass_of_1']:.2f}x", f"{r['ms'] / r['k']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"{s.get('model', '?')} {s.get('dtype', '?')}, {s.get('threads', '?')} threads, "
                 f"{s.get('context', '?')} cached tokens; weights {result['weight_bytes'] / 1e6:.1f} MB, "
                 f"read bandwidth {result['bandwidth_gb_s']:.1f} GB/s, multiply-adds "
                 f"{result['macs_per_s']['linear'] / 1e9:.0f} G/s ({s.get('dtype', '?')} step) and "
                 f"{result['macs_per_s']['scores'] / 1e9:.0f} G/s (attention's scores, "
                 f"{s.get('kv_dtype', '?')} cache) and {result['macs_per_s']['values'] / 1e9:.0f} G/s "
                 "(fp32, its weighted values), measured now; "
                 "floor = bytes read / bandwidth; arith floor = multiply-adds / rate; times are medians")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["passes"]
    ks = [r["k"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    bottom = [0.0] * len(rows)
    for key, label in (("linear_ms", "linear"), ("attention_ms", "attention"), ("rest_ms", "rest")):
        values = [r[key] for r in rows]
        ax.bar([str(k) for k in ks], values, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.plot([str(k) for k in ks], [r["floor_ms"] for r in rows], "k--", marker="o", label="weight-read floor")
    ax.plot([str(k) for k in ks], [r["arith_floor_ms"] for r in rows], "k:", marker="s", label="arithmetic floor")
    s = result.get("settings", {})
    ax.set_xlabel("tokens per pass (k)")
    ax.set_ylabel("ms per pass")
    ax.set_title(f"native pass cost: {s.get('model', '')} {s.get('dtype', '')}, {s.get('threads', '')} threads")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
