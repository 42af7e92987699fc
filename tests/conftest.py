"""Shared fixtures: the packaged 135M model, loaded once per test session in float32."""

import json
from importlib import resources

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def engine():
    import leapdecode

    return leapdecode.load("smollm2-135m", dtype="float32")


@pytest.fixture
def no_model_loads(monkeypatch):
    """Fails the test if a model loads (for input that must be refused before any does)."""
    import leapdecode.models.registry

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(leapdecode, "load", refuse)
    monkeypatch.setattr(leapdecode.models.registry, "load_model", refuse)


@pytest.fixture(scope="session")
def dev_questions():
    path = resources.files("leapdecode.bench") / "data" / "specbench_dev.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def tree_mask(parents):
    """(mask [n, n] bool, depths [n]) of a draft tree given each node's parent (-1: a root)."""
    n = len(parents)
    mask, depths = torch.zeros(n, n, dtype=torch.bool), torch.zeros(n, dtype=torch.long)
    for j, p in enumerate(parents):
        mask[j, j] = True
        if p >= 0:
            mask[j] |= mask[p]
            depths[j] = depths[p] + 1
    return mask, depths


def pick_prompts(questions, per_subtask):
    """The first `per_subtask` questions of each subtask (MT-bench categories grouped)."""
    subtasks = {"translation", "summarization", "qa", "math_reasoning", "rag"}
    chosen, seen = [], {}
    for q in questions:
        sub = q["category"] if q["category"] in subtasks else "mt_bench"
        if seen.get(sub, 0) < per_subtask:
            seen[sub] = seen.get(sub, 0) + 1
            chosen.append(q["turns"][0])
    return chosen


@pytest.fixture(scope="session")
def reference(engine):
    """Memoised plain greedy output of transformers' own generate: (prompt, n) -> new token ids."""
    cache = {}

    def ref(prompt: str, max_new_tokens: int) -> list[int]:
        key = (prompt, max_new_tokens)
        if key not in cache:
            ids = engine.encode(prompt)
            with torch.inference_mode():
                out = engine.target.model.generate(
                    torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False
                )
            cache[key] = out[0, len(ids):].tolist()
        return cache[key]

    return ref


def give_pass_costs(engine, monkeypatch):
    """Pass costs for `--budget auto`, given rather than measured (a minute on a slow CPU;
    tests/test_budget.py measures them): flat up to 8 inputs, then rising."""
    key = f"{engine.name}|{engine.target.cache_key}"
    monkeypatch.setitem(engine._pass_costs, key, {k: 0.05 * max(1.0, k / 8) for k in range(1, 130)})
