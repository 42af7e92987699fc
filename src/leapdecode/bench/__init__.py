"""Spec-Bench-style benchmark: `leapdecode bench` (see docs/benchmarks.md).

questions.py  load and check Spec-Bench jsonl, pick subtasks
runners.py    this project's drafters and the peers (transformers, llama.cpp) behind one interface
harness.py    the interleaved run loop (question-major), multi-turn contexts, repeats, warm-up
metrics.py    per-output records -> speedup, tau, tokens/s, identical (Spec-Bench's definitions)
report.py     results.json, report.md, speedup.png
cli.py        the `bench` sub-command
profile.py    `leapdecode profile`: ms per pass for k widths against the weight-read floor
diversity.py  `leapdecode diversity`: the multi-output modes' diversity, quality and cost
text_metrics.py  distinct-n, BLEU, self-BLEU for diversity.py
memory.py     peak memory of beam search with a shared prompt cache against per-beam copies
"""
