"""The command line: JSON output, and bad input as one line on stderr with exit code 2."""

import json
import subprocess
import sys

import pytest

from leapdecode.cli import main, parse_options

CLI = [sys.executable, "-m", "leapdecode.cli"]


def run(*args, timeout=300):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def test_generate_json_matches_api(engine, reference):
    prompt = "Name three primary colors."
    done = run("generate", "--json", "--max-new-tokens", "16", "--threads", "2", prompt)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    for key in ("text", "token_ids", "new_tokens", "steps", "tau", "tokens_per_s", "finish_reason"):
        assert key in out
    assert out["token_ids"] == reference(prompt, 16)
    assert out["new_tokens"] == len(out["token_ids"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", ""], "prompt is empty"),
        (["generate", "--max-new-tokens", "-3", "hi"], "max_new_tokens"),
        (["generate", "--method", "telepathy", "hi"], "unknown method"),
        (["generate", "--model", "no-such-model", "hi"], "unknown model"),
        (["generate", "--temperature", "-1", "hi"], "temperature"),
        (["generate", "--top-p", "1.5", "hi"], "top_p"),
        (["generate", "--top-p", "0", "hi"], "top_p"),
        (["generate", "--budget", "0", "hi"], "budget"),
        (["generate", "--opt", "nokey", "hi"], "KEY=VALUE"),
        (["generate", "--draft-model", "qwen2.5-coder-0.5b", "hi"], "--draft-model goes with --method draft-model"),
        (["generate", "--mode", "beam", "--num-beams", "0", "hi"], "num_beams"),
        (["generate", "--mode", "diverse-beam", "--num-beams", "4", "--beam-groups", "3", "hi"], "divide"),
        (["generate", "--mode", "beam", "--num-beams", "2", "-n", "3", "hi"], "num_return_sequences"),
        (["generate", "--mode", "diverse-beam", "--diversity", "-1", "hi"], "diversity"),
        (["generate", "--mode", "beam", "--method", "foo", "--top-k", "-3", "hi"], "apply to --mode speculative"),
    ],
)
def test_bad_input_exit_2_before_a_model_loads(args, message, capsys, no_model_loads):
    assert_refused(args, message, capsys)


@pytest.mark.parametrize(
    "args, message",
    [  # refused while the target or the draft model is being resolved
        (["generate", "--method", "draft-model", "--draft-model", "nope", "hi"], "unknown model 'nope'"),
        (["generate", "--method", "draft-model", "hi"], "--draft-model NAME"),
        (["generate", "--backend", "llamacpp", "--dtype", "bfloat16", "hi"], "drop --dtype"),
    ],
)
def test_bad_input_exit_2_while_loading(args, message, capsys):
    assert_refused(args, message, capsys)


def assert_refused(args, message, capsys):
    """main(args) in this process: exit code 2 and `message` in one line on stderr."""
    try:
        code = main(args)
    except SystemExit as done:  # argparse's own refusals
        code = done.code
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_bad_input_through_the_real_entry_point_is_one_line_without_traceback():
    for args, message in [(["generate", "--model", "no-such-model", "hi"], "unknown model"),
                          (["generate", "--max-new-tokens", "-3", "hi"], "max_new_tokens")]:
        done = run(*args)
        assert done.returncode == 2
        assert message in done.stderr
        assert "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message shown without a GPU")
def test_cuda_without_a_gpu(capsys):
    assert_refused(["generate", "--device", "cuda", "hi"], "needs an NVIDIA GPU", capsys)
    assert_refused(["generate", "--device", "cuda", "hi"], "--device cpu", capsys)


def test_beam_mode_json(engine):
    done = run("generate", "--mode", "beam", "--num-beams", "2", "--max-new-tokens", "8", "--json",
               "--threads", "2", "Name a fruit.")
    assert done.returncode == 0, done.stderr
    outputs = json.loads(done.stdout)["outputs"]
    assert len(outputs) == 2 and outputs[0]["score"] >= outputs[1]["score"]
    for out in outputs:
        assert out["text"] == engine.tokenizer.decode(out["token_ids"], skip_special_tokens=True)


def test_too_long_prompt_in_process(capsys):
    code = main(["generate", "--max-new-tokens", "4", "hi " * 9000])
    err = capsys.readouterr().err
    assert code == 2 and "context window" in err and len(err.strip().splitlines()) == 1


def test_models_lists_packaged_models():
    done = run("models")
    assert done.returncode == 0
    assert "smollm2-135m" in done.stdout and "installed" in done.stdout
    for name in ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b", "gemma3-270m"):
        assert name in done.stdout


def test_parse_options():
    assert parse_options(["k=8", "store=a.npz", "keep-all=true", "p=0.5"]) == {
        "k": 8, "store": "a.npz", "keep_all": True, "p": 0.5}


def test_generate_on_the_llamacpp_backend():
    done = run("generate", "--backend", "llamacpp", "--method", "suffix", "--max-new-tokens", "8", "--json",
               "--threads", "1", "Name three primary colors.")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert 1 <= out["new_tokens"] == len(out["token_ids"]) <= 8 and out["steps"] >= 1
