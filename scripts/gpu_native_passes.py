"""Where a pass of the native GPU runtime spends its time (run on a CUDA machine).

    python scripts/gpu_native_passes.py MODEL [--dtype bfloat16] [--contexts 256,1024] [--out FILE.json]

For each cache length: the graph replay alone (CUDA events), a pass as the engine calls it
(forward + argmax + commit), and the GPU time of one pass split by kernel kind (torch.profiler):
linear layers (cuBLAS), attention, and the rest (norms, rope and cache writes, silu, embedding).
The floor is the weight bytes over the device-to-device copy bandwidth measured on the spot.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def bandwidth() -> float:
    """Bytes per second of a 1 GiB device-to-device copy (read + write)."""
    a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    b.copy_(a)
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        b.copy_(a)
    stop.record()
    stop.synchronize()
    return 2 * 10 * a.numel() / (start.elapsed_time(stop) / 1e3)


def kernel_split(target, tokens) -> dict[str, float]:
    """ms of GPU time per kind of kernel in one forward (mean of 20)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(20):
            target.forward(tokens, torch.arange(len(tokens)), None)
            target.commit([])
        torch.cuda.synchronize()
    split = {"linear": 0.0, "attention": 0.0, "rest": 0.0}
    for e in prof.key_averages():
        if e.device_type.name != "CUDA":
            continue
        name = e.key.lower()
        kind = ("linear" if any(s in name for s in ("gemm", "gemv", "cublas", "cutlass", "sm90", "splitk"))
                else "attention" if "attention" in name else "rest")
        split[kind] += e.self_device_time_total / 1e3 / 20
    return split


def main() -> None:
    from leapdecode.models.native.gpu import NativeGpuTarget
    from leapdecode.models.registry import resolve

    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--contexts", default="256,1024")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    target = NativeGpuTarget(resolve(args.model), args.dtype, max_len=4096)
    weights = sum(t.numel() * t.element_size() for t in _weights(target))
    bw = bandwidth()
    result = {"device": torch.cuda.get_device_name(), "dtype": args.dtype, "weight_bytes": weights,
              "copy_GBps": bw / 1e9, "floor_ms": weights / bw * 1e3, "width": target.width, "rows": []}
    for context in [int(c) for c in args.contexts.split(",")]:
        target.reset()
        target.prefill([1 + (i * 7919) % 1000 for i in range(context)])
        for k in (1, target.width):
            tokens = list(range(100, 100 + k))
            calls = []
            for _ in range(50):
                start = time.perf_counter()
                logits = target.forward(tokens, torch.arange(k), None)
                logits.argmax(-1).tolist()
                target.commit([])
                calls.append(time.perf_counter() - start)
            graph = target._decode.graph
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(50):
                graph.replay()
            stop.record()
            stop.synchronize()
            row = {"context": context, "k": k, "call_ms": statistics.median(calls) * 1e3,
                   "replay_ms": start.elapsed_time(stop) / 50, **kernel_split(target, tokens)}
            result["rows"].append(row)
            print(json.dumps(row), flush=True)
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


def _weights(target):
    m = target.m
    for layer in m.layers:
        for name in ("qkv", "o", "gate_up", "down"):
            yield getattr(layer, name).data
    yield m.head.data


if __name__ == "__main__":
    main()
