"""Issue 16 on the command line and in the library: one line on stderr, exit 2, never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from leapdecode import GenerationConfig
from leapdecode.cli import main
from leapdecode.models.packaged import PACKAGED, CorruptModelFile, check_gguf, gguf_path
from leapdecode.models.registry import cache_dir
from leapdecode.sampling import GREEDY_BELOW, SamplingParams, make_warp

SRC = str(Path(__file__).resolve().parents[1] / "src")


def one_line_error(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize("flag,value", [("--temperature", "nan"), ("--temperature", "inf"),
                                        ("--temperature", "-1e-9"), ("--top-p", "nan"), ("--top-p", "0"),
                                        ("--seed", str(10**23)), ("--top-k", str(10**20)),
                                        ("--max-new-tokens", str(10**12))])
def test_bad_numbers_one_line(capsys, flag, value):
    one_line_error(capsys, ["generate", "hi", f"{flag}={value}"], flag.lstrip("-").replace("-", "_")[:8])


@pytest.mark.parametrize("t", [1e-300, 5e-324, GREEDY_BELOW / 2])
def test_tiny_temperature_is_greedy(t):
    assert GenerationConfig(temperature=t).sampling.greedy


@pytest.mark.parametrize("t", [GREEDY_BELOW, 1e-4, 0.7, 1e4])
def test_warp_is_finite_for_every_finite_temperature(t):
    logits = torch.tensor([[3e4, 3e4 - 1e-3, 0.0, -3e38], [1.0, 1.0, 1.0, 1.0]])  # [2, vocab]
    probs = make_warp(SamplingParams(temperature=t))(logits)
    assert torch.isfinite(probs).all() and torch.allclose(probs.sum(-1), torch.ones(2))
    exact = torch.softmax(logits.double() / t, -1).float()  # the same distribution, where float64 holds it
    assert torch.allclose(probs, exact, atol=1e-6)


def test_prompt_with_surrogates(capsys):
    one_line_error(capsys, ["generate", "bad \udcff byte"], "not valid UTF-8")


def test_stdin_not_utf8():
    run = subprocess.run([sys.executable, "-m", "leapdecode.cli", "generate", "-"], input=b"caf\xe9 au lait",
                         capture_output=True, env={**os.environ, "PYTHONPATH": SRC}, timeout=120)
    assert run.returncode == 2 and b"standard input is not valid UTF-8" in run.stderr
    assert b"Traceback" not in run.stderr


def test_broken_pipe_exits_quietly():
    """`leapdecode generate ... | head -c 1` through a real pipe: exit 0, nothing on stderr but the
    model's load messages; the stats line is missing, so the pipe did break before the end."""
    argv = [sys.executable, "-m", "leapdecode.cli", "generate", "Count from 1 to 500: 1, 2, 3,",
            "--method", "none", "--max-new-tokens", "200", "--raw"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": SRC})
    assert len(proc.stdout.read(1)) == 1
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err and "[none]" not in err


def test_index_out_is_a_directory(capsys, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("one document\n\nanother\n")
    one_line_error(capsys, ["index", str(corpus), "--out", str(tmp_path)], "is a directory", "store.npz")
    one_line_error(capsys, ["index", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "s.npz")],
                   "not a file")


def test_bench_questions_directory(capsys, tmp_path):
    from leapdecode.bench.cli import _questions_file

    one_line_error(capsys, ["bench", "--questions", str(tmp_path), "--out", str(tmp_path / "r")],
                   "exactly one .jsonl")
    (tmp_path / "q.jsonl").write_text("")
    assert _questions_file(str(tmp_path)) == tmp_path / "q.jsonl"


@pytest.fixture(scope="module")
def real_gguf():
    return gguf_path(PACKAGED["smollm2-135m"], cache_dir(), progress=False)


@pytest.mark.parametrize("keep", [0, 3, 24, 5000, 0.5, 0.999])
def test_truncated_gguf(capsys, tmp_path, real_gguf, keep):
    data = real_gguf.read_bytes()
    size = int(len(data) * keep) if isinstance(keep, float) else keep
    bad = tmp_path / "t.gguf"
    bad.write_bytes(data[:size])
    with pytest.raises(CorruptModelFile, match="truncated"):
        check_gguf(bad)
    err = one_line_error(capsys, ["generate", "hi", "--model", str(bad)], "truncated", f"{size}")
    if isinstance(keep, float):
        assert str(len(data)) in err  # the expected size is known once the tensor table is read


def test_corrupt_gguf_magic(capsys, tmp_path):
    bad = tmp_path / "c.gguf"
    bad.write_bytes(b"NOPE" + bytes(100))
    one_line_error(capsys, ["generate", "hi", "--model", str(bad)], "GGUF magic")


def test_whole_gguf_passes(real_gguf):
    check_gguf(real_gguf)


def test_serve_busy_port_fails_before_loading(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        err = one_line_error(capsys, ["serve", "--port", str(port), "--model", "no-such-model"],
                             f"127.0.0.1:{port}", "--port")
    assert "no-such-model" not in err  # the port is checked before the model is looked up


@pytest.mark.parametrize("argv,needle", [
    (["serve", "--method", "retrieval"], "datastore"),
    (["serve", "--method", "draft-model"], "draft model"),
    (["serve", "--request-timeout", "nan"], "--request-timeout"),
    (["serve", "--max-body-bytes", "10"], "--max-body-bytes"),
])
def test_serve_refuses_at_startup(capsys, argv, needle):
    one_line_error(capsys, argv, needle)


def test_allowed_hosts():
    from leapdecode.server.cli import allowed_hosts

    assert set(allowed_hosts("127.0.0.1", [])) == {"127.0.0.1", "localhost", "::1"}
    assert allowed_hosts("10.0.0.5", ["box.lan"]) == ["10.0.0.5", "box.lan"]
    assert allowed_hosts("127.0.0.1", ["*"]) == ["*"]
