"""The generate options for several outputs: parsing, clear errors, the --json object."""

import argparse
import json

import pytest

from leapdecode.decoding.cli import add_mode_args, mode_options, run_mode


def parse(*argv):
    """A parser shaped like `leapdecode generate` (the options run_mode reads)."""
    p = argparse.ArgumentParser()
    p.add_argument("prompt")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--stop", action="append", default=[])
    p.add_argument("--raw", action="store_true")
    p.add_argument("--json", action="store_true")
    add_mode_args(p)
    return p.parse_args(list(argv))


def test_defaults_keep_speculative():
    assert parse("hi").mode == "speculative"


def test_options_per_mode():
    args = parse("hi", "--mode", "diverse-beam", "--num-beams", "6", "--beam-groups", "3",
                 "--diversity", "0.7", "-n", "2", "--early-stopping", "never", "--max-new-tokens", "9")
    assert mode_options(args) == dict(num_beams=6, num_return_sequences=2, max_new_tokens=9, length_penalty=1.0,
                                      beam_groups=3, diversity=0.7, early_stopping="never")
    assert mode_options(parse("hi", "--mode", "superposed", "--ngram-alpha", "0.3"))["alpha"] == 0.3


@pytest.mark.parametrize("argv, message", [
    (["--mode", "beam", "--beam-groups", "2"], "--beam-groups applies to --mode diverse-beam"),
    (["--mode", "superposed", "--early-stopping", "true"], "--early-stopping applies"),
    (["--mode", "beam", "--temperature", "0.7"], "deterministic"),
    (["--mode", "beam", "--stop", "x"], "--stop"),
])
def test_flags_that_do_not_apply(argv, message):
    with pytest.raises(ValueError, match=message):
        mode_options(parse("hi", *argv))


@pytest.mark.parametrize("argv, message", [
    (["--mode", "beam", "--num-beams", "0"], "--num-beams 1 or more"),
    (["--mode", "diverse-beam", "--num-beams", "4", "--beam-groups", "3"], "must divide"),
    (["--mode", "beam", "--num-beams", "2", "-n", "3"], "cannot exceed"),
    (["--mode", "diverse-beam", "--diversity", "-1"], ">= 0"),
])
def test_bad_numbers_are_refused_before_a_model_is_needed(argv, message):
    with pytest.raises(ValueError, match=message):
        mode_options(parse("hi", "--max-new-tokens", "4", *argv))


def test_json_object(engine, capsys):
    args = parse("Name a color.", "--mode", "beam", "--num-beams", "3", "-n", "2",
                 "--max-new-tokens", "6", "--json")
    result = run_mode(args, engine)
    printed = json.loads(capsys.readouterr().out)
    assert printed["outputs"] == result["outputs"] and printed["mode"] == "beam"
    outs = printed["outputs"]
    assert len(outs) == 2 and outs[0]["score"] >= outs[1]["score"]
    for out in outs:
        assert {"text", "token_ids", "score"} <= set(out)
        assert 1 <= len(out["token_ids"]) <= 6
        assert out["text"] == engine.tokenizer.decode(out["token_ids"], skip_special_tokens=True)
