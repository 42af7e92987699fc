"""`leapdecode bench` refuses bad input with one line and exit code 2, before any model loads."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from leapdecode.bench import runners
from leapdecode.cli import main

LEAPDECODE = Path(sys.executable).parent / "leapdecode"


@pytest.fixture
def qfile(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"question_id": 1, "category": "qa", "turns": ["Who?"]}) + "\n")
    return path


def bench(capsys, *argv):
    code = main(["bench", *argv])
    err = capsys.readouterr().err
    return code, err


def bad_file(tmp_path, text):
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--dtype", "w4a8", "--backend", "hf"], "int8, w8a8 and w4a8 run on leapdecode's own runtime only"),
        (["--dtype", "w8a8", "--backend", "hf"], "int8, w8a8 and w4a8 run on leapdecode's own runtime only"),
        (["--backend", "native", "--device", "cuda"], "--device cuda needs an NVIDIA GPU"),
        (["--methods", "none,warp-drive"], "unknown method 'warp-drive'"),
        (["--baseline", "warp-drive"], "unknown method 'warp-drive'"),
        (["--methods", "none,none"], "lists none more than once"),
        (["--methods", " , "], "--methods is empty"),
        (["--methods", "none,hf-assisted"], "needs a draft model: add --draft-model"),
        (["--categories", "qa,poetry"], "unknown category 'poetry'"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be a positive integer, got 0"),
        (["--limit-per-category", "0"], "--limit-per-category must be a positive integer"),
        (["--repeat", "-1"], "--repeat must be a positive integer"),
        (["--threads", "0"], "--threads must be a positive integer"),
        (["--budget", "0"], "--budget must be a positive integer"),
        (["--budget", "auto", "--max-new-tokens", "-3"], "--max-new-tokens must be a positive integer, got -3"),
        (["--warmup", "-1"], "--warmup must be >= 0"),
        (["--model", "no-such-model"], "unknown model 'no-such-model'"),
        (["--methods", "none,hf-assisted", "--draft-model", "nope"], "unknown model 'nope' for --draft-model"),
        (["--methods", "none,draft-model"], "'draft-model' needs a draft model for 'smollm2-135m'"),
        (["--methods", "none,draft-model:length=2", "--draft-model", "nope"], "unknown model 'nope'"),
        (["--methods", "none,hf-greedy:k=2"], "options after ':' are for this project's drafters"),
        (["--methods", "none,warp:k=2"], "unknown method 'warp'"),
        (["--backend", "llamacpp", "--methods", "none,hf-greedy"], "no transformers model for hf-greedy"),
        (["--backend", "llamacpp", "--dtype", "bfloat16"], "drop --dtype"),
    ],
)
def test_bad_arguments(capsys, tmp_path, qfile, no_model_loads, extra, message):
    code, err = bench(capsys, "--questions", str(qfile), "--out", str(tmp_path / "out"), *extra)
    assert code == 2
    assert message in err
    assert err.count("\n") == 1 and err.startswith("leapdecode bench: error: ")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"question_id": 1, "category": "qa", "turns": ["a"]}\n{"question_id": 2,\n', "bad.jsonl:2: bad JSON"),
        ('{"question_id": 1, "category": "qa"}\n', "bad.jsonl:1: missing 'turns'"),
    ],
)
def test_bad_questions_file(capsys, tmp_path, no_model_loads, text, message):
    code, err = bench(capsys, "--questions", str(bad_file(tmp_path, text)), "--out", str(tmp_path / "o"))
    assert code == 2 and message in err and err.count("\n") == 1


def test_missing_questions_file(capsys, tmp_path, no_model_loads):
    code, err = bench(capsys, "--questions", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o"))
    assert code == 2 and "does not exist" in err


def test_missing_optional_package(capsys, monkeypatch, tmp_path, qfile, no_model_loads):
    monkeypatch.setattr(runners, "has_package", lambda name: name != "llama_cpp")
    code, err = bench(capsys, "--questions", str(qfile), "--out", str(tmp_path / "o"),
                      "--methods", "none,llamacpp-greedy")
    assert code == 2
    assert "'llamacpp-greedy' needs the optional package 'llama_cpp'" in err
    assert "pip install" in err and "llama-cpp-python" in err


def test_check_methods_names_every_case():
    runners.check_methods(["none", "hf-greedy", "hf-assisted"], "smollm2-135m", available=lambda n: False)
    with pytest.raises(ValueError, match="install it with"):
        runners.check_methods(["llamacpp-prompt-lookup"], None, available=lambda n: False)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--methods", "none,warp-drive"], "unknown method 'warp-drive'"),
        (["--questions", "{bad}"], ":1: bad JSON"),
    ],
)
def test_real_command_exit_code(tmp_path, argv, message):
    argv = [a.replace("{bad}", str(bad_file(tmp_path, "{oops\n"))) for a in argv]
    proc = subprocess.run([str(LEAPDECODE), "bench", "--out", str(tmp_path / "o"), *argv],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert message in proc.stderr and proc.stderr.count("\n") == 1
    assert proc.stdout == ""


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_cuda_without_a_gpu(capsys, tmp_path, qfile, no_model_loads):
    code, err = bench(capsys, "--questions", str(qfile), "--out", str(tmp_path / "o"), "--device", "cuda")
    assert code == 2 and "needs an NVIDIA GPU" in err and err.count("\n") == 1


def test_split_method():
    assert runners.split_method("none") == ("none", {})
    assert runners.split_method("draft-model:length=auto:tree_width=2") == (
        "draft-model", {"length": "auto", "tree_width": 2})


def test_engine_runner_passes_method_options():
    class FakeEngine:
        def generate(self, ids, config, method, **options):
            self.call = (method, options, config.budget)
            return type("G", (), {"token_ids": [1], "stats": type("S", (), {"steps": 1})()})()

    engine = FakeEngine()
    setup = runners.Setup(engine, budget=3, draft_name="qwen2.5-coder-0.5b", dtype="bfloat16")
    runner = runners.build_runners(["draft-model:length=2"], setup)[0]
    runner.generate([5, 6], 4)
    # the draft model runs on the target's backend and dtype (the drafter's default)
    assert engine.call == ("draft-model", {"model": "qwen2.5-coder-0.5b", "length": 2}, 3)
    setup = runners.Setup(engine, draft_name="qwen2.5-coder-0.5b", dtype="int8", backend="native")
    runner = runners.build_runners(["suffix:budget=auto"], setup)[0]
    runner.generate([5, 6], 4)
    assert engine.call == ("suffix", {}, "auto")  # a method's own budget overrides --budget
