"""Spec-Bench-style benchmark: `leapdecode bench` (see docs/benchmarks.md).

questions.py  load and check Spec-Bench jsonl, pick subtasks
runners.py    this project's drafters and the peers (transformers, llama.cpp) behind one interface
harness.py    the interleaved run loop (question-major), multi-turn contexts, repeats, warm-up
metrics.py    per-output records -> speedup, tau, tokens/s, identical (Spec-Bench's definitions)
report.py     results.json, report.md, speedup.png
cli.py        the `bench` sub-command
"""
