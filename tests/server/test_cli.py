"""`leapdecode serve` on the command line: registration and user errors (no model is loaded)."""

import pytest

from leapdecode.cli import build_parser, main


def test_serve_is_registered_with_its_options():
    args = build_parser().parse_args(["serve", "--method", "none", "--port", "0", "--max-queue", "3"])
    assert (args.command, args.model, args.method, args.host, args.port, args.max_queue) == (
        "serve", "smollm2-135m", "none", "127.0.0.1", 0, 3)
    assert args.func.__name__ == "cmd_serve"


@pytest.mark.parametrize("argv, message", [
    (["serve", "--method", "telepathy"], "unknown method"),
    (["serve", "--max-queue", "0"], "--max-queue"),
    (["serve", "--port", "70000"], "--port"),
    (["serve", "--threads", "0"], "--threads"),
])
def test_serve_user_errors_are_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_create_app_refuses_an_unknown_default_method():
    from leapdecode.server import create_app

    with pytest.raises(ValueError, match="unknown method"):
        create_app(lambda: None, method="telepathy")


def test_serving_batch_decodes_together_on_the_cpu_native_runtime_only(capsys):
    from leapdecode.server.cli import DEFAULT_BATCH, serving_batch

    args = build_parser().parse_args(["serve"])
    assert serving_batch(args, "native") == DEFAULT_BATCH
    args = build_parser().parse_args(["serve", "--device", "cuda"])
    assert serving_batch(args, "native") == 1 and capsys.readouterr().err == ""
    args = build_parser().parse_args(["serve", "--device", "cuda", "--batch", "4"])
    assert serving_batch(args, "native") == 1
    assert "only the native runtime on the CPU decodes requests together" in capsys.readouterr().err
    args = build_parser().parse_args(["serve", "--batch", "4"])
    assert serving_batch(args, "transformers") == 1
