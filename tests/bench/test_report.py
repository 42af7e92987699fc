"""Writing results.json, report.md and speedup.png from a literal results dict."""

import json

from leapdecode.bench.report import markdown_table, write_all


def summary(speedup, tau, tps, ident, own=None):
    return {"questions": 2, "outputs": 3, "new_tokens": 40, "wall_s": 2.0, "tokens_per_s": tps,
            "speedup": speedup, "tau": tau, "identical": ident, "identical_to_own_greedy": own}


RESULTS = {
    "methods": {
        "none": {"overall": summary(1.0, 1.0, 20.0, 1.0, 1.0),
                 "subtasks": {"mt_bench": summary(1.0, 1.0, 19.0, 1.0, 1.0), "qa": summary(1.0, 1.0, 21.0, 1.0, 1.0)}},
        "prompt-lookup": {"overall": summary(1.5, 2.25, 30.0, 1.0, 1.0),
                          "subtasks": {"mt_bench": summary(1.25, 2.0, 24.0, 1.0, 1.0),
                                       "qa": summary(1.75, 2.5, 36.0, 1.0, 1.0)}},
        "llamacpp-prompt-lookup": {"overall": summary(2.0, None, 40.0, 0.0, 0.5),
                                   "subtasks": {"qa": summary(2.0, None, 40.0, 0.0, 0.5)}},
    },
    "settings": {"model": "smollm2-135m", "dtype": "float32", "baseline": "none", "max_new_tokens": 16,
                 "questions_file": "q.jsonl", "questions": 2, "outputs_per_method": 3, "repeat": 1,
                 "warmup": 0, "threads": 2, "command": "leapdecode bench --out x"},
    "machine": {"cpu": "test cpu", "logical_cpus": 2, "loadavg_start": [1.0, 1.0, 1.0]},
    "versions": {"leapdecode": "0.1.0"},
    "questions": [
        {"method": "none", "question_id": 1, "subtask": "qa", "turn": 1, "new_tokens": 2, "steps": 2,
         "wall_s": 0.1, "tokens_per_s": 20.0, "token_ids": [5, 6]},
        {"method": "prompt-lookup", "question_id": 1, "subtask": "qa", "turn": 1, "new_tokens": 2, "steps": 1,
         "wall_s": 0.05, "tokens_per_s": 40.0, "token_ids": [5, 6]},
    ],
}


def test_markdown_table():
    table = markdown_table(RESULTS).splitlines()
    assert table[0].startswith("| Method | Multi-turn Conversation | Question Answering | Overall | tau |")
    assert table[2] == "| `none` | 1.00x | 1.00x | **1.00x** | 1.00 | 20.0 | 100% | 100% |"
    assert table[3] == "| `prompt-lookup` | 1.25x | 1.75x | **1.50x** | 2.25 | 30.0 | 100% | 100% |"
    # a method that skipped a subtask, and an unknown tau
    assert table[4] == "| `llamacpp-prompt-lookup` | n/a | 2.00x | **2.00x** | n/a | 40.0 | 0% | 50% |"


def test_write_all(tmp_path):
    paths = write_all(RESULTS, tmp_path / "out")
    assert json.loads(paths["json"].read_text()) == RESULTS
    text = paths["json"].read_text()
    assert '\n  {"method": "prompt-lookup", "question_id": 1,' in text  # one line per record
    report = paths["report"].read_text()
    assert report.startswith("# leapdecode bench: smollm2-135m, float32")
    assert markdown_table(RESULTS) in report
    assert "leapdecode bench --out x" in report
    png = paths["plot"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_write_all_without_questions(tmp_path):
    results = {k: v for k, v in RESULTS.items() if k != "questions"}
    paths = write_all(results, tmp_path)
    assert json.loads(paths["json"].read_text()) == {**results, "questions": []}


def test_write_all_without_matplotlib(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    paths = write_all(RESULTS, tmp_path / "out")
    assert set(paths) == {"json", "report"} and not (tmp_path / "out" / "speedup.png").exists()
    assert paths["report"].read_text().startswith("# leapdecode bench")
