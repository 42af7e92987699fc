"""One tiny real run on the packaged model: complete results, and `identical` that an
independent token-by-token comparison reproduces."""

import json
from statistics import mean

import pytest

from leapdecode.cli import main

METHODS = ["none", "prompt-lookup", "hf-none", "hf-greedy"]
SUMMARY_KEYS = {"questions", "outputs", "new_tokens", "wall_s", "tokens_per_s", "speedup", "tau",
                "identical", "identical_to_own_greedy"}
RECORD_KEYS = {"method", "question_id", "subtask", "turn", "new_tokens", "steps", "wall_s",
               "tokens_per_s", "token_ids", "prompt_tokens"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    code = main(["bench", "--methods", ",".join(METHODS), "--limit-per-category", "1", "--categories", "qa",
                 "--max-new-tokens", "8", "--warmup", "0", "--no-progress", "--out", str(out)])
    assert code == 0
    return out, json.loads((out / "results.json").read_text())


def test_results_complete(run):
    out, results = run
    assert set(results) == {"methods", "settings", "machine", "versions", "questions"}
    assert list(results["methods"]) == METHODS
    for name, m in results["methods"].items():
        assert set(m) == {"overall", "subtasks"} and list(m["subtasks"]) == ["qa"]
        for summary in (m["overall"], m["subtasks"]["qa"]):
            assert set(summary) == SUMMARY_KEYS
            assert summary["tokens_per_s"] > 0 and summary["speedup"] > 0 and summary["outputs"] == 1
    s = results["settings"]
    assert (s["model"], s["dtype"], s["max_new_tokens"], s["baseline"]) == ("smollm2-135m", "float32", 8, "none")
    assert s["backend"] == "native" and s["families"]["hf-none"] == "leapdecode-hf"  # auto: the own runtime
    assert s["command"].startswith("leapdecode bench ")
    assert results["versions"]["torch"] and results["machine"]["logical_cpus"]
    assert len(results["questions"]) == len(METHODS)
    for r in results["questions"]:
        assert set(r) == RECORD_KEYS
        assert r["new_tokens"] == len(r["token_ids"]) and 1 <= r["new_tokens"] <= 8
        assert r["tokens_per_s"] == pytest.approx(r["new_tokens"] / r["wall_s"])
    assert (out / "report.md").read_text().count("| `") >= 2 * len(METHODS)
    assert (out / "speedup.png").read_bytes()[:4] == b"\x89PNG"


def test_identical_and_speedup_recomputed(run):
    _, results = run
    by = {(r["method"], r["question_id"], r["turn"]): r for r in results["questions"]}
    base = {k[1:]: r for k, r in by.items() if k[0] == "none"}
    for name in METHODS:
        mine = {k[1:]: r for k, r in by.items() if k[0] == name}
        same = [mine[k]["token_ids"] == base[k]["token_ids"] for k in mine]
        overall = results["methods"][name]["overall"]
        assert overall["identical"] == sum(same) / len(same)
        speedup = mean(r["tokens_per_s"] for r in mine.values()) / mean(r["tokens_per_s"] for r in base.values())
        assert overall["speedup"] == pytest.approx(speedup)
    # greedy speculative decoding is lossless in float32; greedy runs emit one token per pass
    assert results["methods"]["prompt-lookup"]["overall"]["identical"] == 1.0
    assert results["methods"]["none"]["overall"]["tau"] == 1.0
    assert results["methods"]["hf-greedy"]["overall"]["tau"] == 1.0
    assert results["methods"]["hf-none"]["overall"]["tau"] == 1.0


def test_llamacpp_runners(engine):
    pytest.importorskip("llama_cpp")
    from leapdecode.bench.cli import gguf_file
    from leapdecode.bench.runners import Setup, build_runners

    # one thread: llama.cpp's spinning thread barrier crawls when other processes hold the cores
    setup = Setup(engine, gguf=gguf_file("smollm2-135m"), n_ctx=256, threads=1)
    greedy, lookup = build_runners(["llamacpp-greedy", "llamacpp-prompt-lookup"], setup)
    ids = engine.encode("Repeat exactly: the quick brown fox jumps over the lazy dog. the quick brown fox")
    a, b = greedy.generate(ids, 6), greedy.generate(ids, 6)
    assert a.token_ids == b.token_ids and 1 <= len(a.token_ids) <= 6  # no state leaks between runs
    assert a.steps == len(a.token_ids)
    c = lookup.generate(ids, 6)
    assert 1 <= len(c.token_ids) <= 6 and 1 <= c.steps <= len(c.token_ids)
    with pytest.raises(ValueError, match="does not fit"):
        greedy.generate(ids, 500)


def test_llamacpp_prompt_lookup_long_prompt(engine):
    """A prompt longer than llama.cpp's 512-token batch (this once broke the draft-model path)."""
    pytest.importorskip("llama_cpp")
    from leapdecode.bench.cli import gguf_file
    from leapdecode.bench.runners import Setup, build_runners

    (lookup,) = build_runners(["llamacpp-prompt-lookup"], Setup(engine, gguf=gguf_file("smollm2-135m"),
                                                               n_ctx=1024, threads=1))
    ids = engine.encode("Summarize: " + "The river rose after the storm and the town was flooded. " * 44)
    assert len(ids) > 512
    out = lookup.generate(ids, 4)
    assert 1 <= len(out.token_ids) <= 4


def test_llama_server_runners(engine):
    """llama.cpp's own server, started by the runner (scripts/test.sh builds it)."""
    from leapdecode.bench.cli import gguf_file
    from leapdecode.bench.runners import Setup, build_runners

    setup = Setup(engine, gguf=gguf_file("smollm2-135m"), n_ctx=256, threads=1)
    greedy, ngram = build_runners(["llama-server-greedy", "llama-server-ngram"], setup)
    try:
        ids = engine.encode("Repeat exactly: the quick brown fox jumps over the lazy dog. the quick brown fox")
        a, b = greedy.generate(ids, 8), greedy.generate(ids, 8)
        assert a.token_ids == b.token_ids and 1 <= len(a.token_ids) <= 8  # no prompt cache between runs
        assert a.steps == len(a.token_ids)
        c = ngram.generate(ids, 8)
        assert c.token_ids == a.token_ids  # its speculation keeps its greedy output
        assert 1 <= c.steps <= len(c.token_ids)
        with pytest.raises(ValueError, match="does not fit"):
            greedy.generate(ids, 500)
    finally:
        greedy.server.stop()
        ngram.server.stop()


def test_hf_static_reused_runner(engine):
    """transformers' generate with one StaticCache reused across calls: reset between calls, so a
    repeated prompt gives the same ids, and a shorter prompt after a longer one sees none of it."""
    from leapdecode.bench.runners import Setup, build_runners

    (static,) = build_runners(["hf-static-reused"], Setup(engine, n_ctx=96, model="smollm2-135m"))
    long = engine.encode("Repeat exactly: the quick brown fox jumps over the lazy dog. the quick brown fox")
    short = engine.encode("Name three colours.")
    a = static.generate(short, 6)
    static.generate(long, 6)
    b = static.generate(short, 6)
    assert a.token_ids == b.token_ids and 1 <= len(a.token_ids) <= 6 and a.steps == len(a.token_ids)
