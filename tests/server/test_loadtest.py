"""`leapdecode loadtest`'s client side against the session's real server, and its bad input."""

from __future__ import annotations

import json

import pytest

from leapdecode.bench import loadtest
from leapdecode.cli import main


def test_a_level_counts_every_request_and_token(server, tmp_path):
    prompts = ["Name a fruit.", "Name a color.", "Name a city."]
    row = loadtest.run_level(server.url, prompts, clients=3, rounds=2, max_tokens=4)
    assert row["requests"] == 6 and 6 <= row["tokens"] <= 24
    assert row["tokens_per_s"] > 0 and row["ttft_p50_ms"] <= row["ttft_p99_ms"]
    results = {"settings": {"model": "m", "dtype": "bfloat16", "threads": 2, "max_new_tokens": 4, "batch": 3,
                            "method": "auto", "rounds": 2, "levels": [3]}, "systems": {"leapdecode": [row]}}
    loadtest.write_results(results, tmp_path)
    assert "| leapdecode | 3 | 6 |" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "loadtest.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("args, message", [
    (["--concurrency", "0,4"], "--concurrency takes integers >= 1"),
    (["--systems", "vllm"], "unknown system vllm"),
    (["--rounds", "0"], "must be >= 1"),
])
def test_bad_input_is_one_line(capsys, args, message):
    assert main(["loadtest", *args]) == 2
    assert message in capsys.readouterr().err


def test_llama_server_system_runs_for_real(tmp_path, capsys):
    """The peer of the load test: llama-server with parallel slots, started by the load test."""
    out = tmp_path / "load"
    assert main(["loadtest", "--systems", "llama-server", "--concurrency", "2", "--max-new-tokens", "4",
                 "--threads", "1", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    (row,) = results["systems"]["llama-server"]
    assert row["requests"] == 2 and 2 <= row["tokens"] <= 8 and row["tokens_per_s"] > 0
    assert "| llama-server | 2 | 2 |" in capsys.readouterr().out
