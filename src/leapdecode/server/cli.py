"""`leapdecode serve`: the OpenAI-compatible server on one model.

    leapdecode serve --model smollm2-135m --method prompt-lookup --port 8000
    curl -s localhost:8000/v1/chat/completions -d '{"messages": [{"role": "user", "content": "Hi"}],
         "temperature": 0, "max_tokens": 32}'
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from typing import Any

from ..drafters import DEFAULT_METHOD, DRAFTERS
from ..options import add_model_args, resolve_backend, set_threads

DEFAULT_BATCH = 8


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "serve", help="serve a model over an OpenAI-compatible HTTP API",
        description="Requests follow the OpenAI protocol: an omitted temperature means 1.0 (sampling); "
        "send temperature 0 for greedy output, token-identical to `leapdecode generate`.",
    )
    add_model_args(p)
    p.add_argument("--method", default=DEFAULT_METHOD,
                   help=f"default drafter; a request may name another in `method`: {', '.join(DRAFTERS)}")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--batch", type=int, default=None, metavar="N",
                   help=f"requests decoded at once, their passes shared (native runtime; default {DEFAULT_BATCH}; "
                   "1 = one at a time). Each holds its own KV cache")
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests that may wait for the model; more are answered 429 (default 64)")
    p.add_argument("--max-n", type=int, default=None, metavar="N",
                   help="the most choices a request may ask for per prompt (`n`; default 16)")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on every endpoint but /health "
                   "(default: the env var LEAPDECODE_API_KEY, else no key)")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a Host header to answer besides the bound address (repeatable; '*' = any)")
    p.add_argument("--max-body-bytes", type=int, default=None,
                   help="larger request bodies are answered 413 (default 4 MiB)")
    p.add_argument("--request-timeout", type=float, default=None, metavar="S",
                   help="stop a request after S seconds on the model (504 / an error event); default none")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    cluster = p.add_argument_group("replicas on Ray Serve", "any of these serves through Ray Serve's proxy "
                                   "(pip install 'leapdecode[cluster]'); docs/scale.md")
    cluster.add_argument("--replicas", type=int, default=None, metavar="N",
                         help="engine replicas, each on --threads CPU cores of its own (default: the cores / N) "
                         "or one GPU; with autoscaling, the number to start with")
    cluster.add_argument("--min-replicas", type=int, default=None, metavar="N", help="autoscaling: the fewest replicas")
    cluster.add_argument("--max-replicas", type=int, default=None, metavar="N", help="autoscaling: the most replicas")
    cluster.add_argument("--target-ongoing-requests", type=float, default=None, metavar="X",
                         help="autoscaling: requests per replica to aim at (default: --batch)")
    cluster.add_argument("--ray-address", default=None, metavar="ADDR",
                         help="a running Ray cluster (its head's host:port, 'auto' or ray://host:port); "
                         "default: a Ray instance on this machine, for as long as the server runs")
    p.set_defaults(func=cmd_serve)


CLUSTER_FLAGS = ("replicas", "min_replicas", "max_replicas", "target_ongoing_requests", "ray_address")


def cmd_serve(args: argparse.Namespace) -> int:
    options = app_options(args)
    if any(getattr(args, flag) is not None for flag in CLUSTER_FLAGS):
        from ..cluster import serve_replicas

        return serve_replicas(args, options)
    sock = bind_socket(args.host, args.port)  # before loading the model: a busy port fails fast
    try:
        import uvicorn

        from .app import create_app
    except ModuleNotFoundError as err:
        if err.name not in ("fastapi", "starlette", "uvicorn"):
            raise
        raise ValueError(f"the server needs {err.name}: pip install 'leapdecode[serve]'") from None
    from .. import load

    set_threads(args.threads)
    try:
        backend = resolve_backend(args, notice=lambda line: print(line, file=sys.stderr))
        engine = load(args.model, args.dtype, args.device, backend=backend, batch=serving_batch(args, backend))
    except BaseException:
        sock.close()
        raise
    app = create_app(engine, workers=engine.slots, **options)
    config = uvicorn.Config(app, log_level=args.log_level)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def app_options(args: argparse.Namespace) -> dict[str, Any]:
    """The flags checked (one-line errors) and turned into create_app's keyword arguments
    (all but the engine and its workers); shared with the replicas of `leapdecode.cluster`."""
    if args.method not in DRAFTERS:
        raise ValueError(f"unknown method {args.method!r}; choose one of: {', '.join(DRAFTERS)}")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in [0, 65535], got {args.port}")
    if args.max_queue < 1:
        raise ValueError(f"--max-queue must be >= 1, got {args.max_queue}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.batch is not None and not 1 <= args.batch <= 256:
        raise ValueError(f"--batch must be in [1, 256], got {args.batch}")
    from .. import validate
    from .app import MAX_BODY_BYTES, NEEDS_OPTIONS
    from .protocol import MAX_N

    if args.method in NEEDS_OPTIONS:
        raise ValueError(NEEDS_OPTIONS[args.method].replace("this server does not take", "`serve` does not take"))
    body_limit = validate.integer("--max-body-bytes", args.max_body_bytes if args.max_body_bytes is not None
                                  else MAX_BODY_BYTES, 1024, 2**40, example=MAX_BODY_BYTES)
    timeout = None if args.request_timeout is None else validate.number(
        "--request-timeout", args.request_timeout, 0.0, 1e7, open_low=True, example=60)
    max_n = validate.integer("--max-n", args.max_n if args.max_n is not None else MAX_N, 1, 1024, example=MAX_N)
    api_key = args.api_key if args.api_key is not None else os.environ.get("LEAPDECODE_API_KEY") or None
    return dict(model_name=args.model, method=args.method, max_queue=args.max_queue, api_key=api_key,
                allowed_hosts=allowed_hosts(args.host, args.allowed_host), max_body_bytes=body_limit,
                request_timeout=timeout, max_n=max_n)


def serving_batch(args: argparse.Namespace, backend: str) -> int:
    """Requests decoded at once: --batch on the native runtime on the CPU, else one."""
    together = backend == "native" and getattr(args, "device", "cpu") == "cpu"
    batch = args.batch or (DEFAULT_BATCH if together else 1)
    if batch > 1 and not together:
        print(f"--batch {batch}: only the native runtime on the CPU decodes requests together; serving one "
              "at a time", file=sys.stderr)
        batch = 1
    return batch


LOOPBACK = ("localhost", "127.0.0.1", "::1")


def allowed_hosts(host: str, extra: list[str]) -> list[str]:
    """The Host headers to answer: the bound address (all loopback names for a loopback bind)."""
    if "*" in extra:
        return ["*"]
    names = list(LOOPBACK) if host in LOOPBACK or host.startswith("127.") else [host]
    if host in ("0.0.0.0", "::"):  # every interface: the user names the hosts, or we allow any
        return ["*"] if not extra else [*LOOPBACK, *extra]
    return [*names, *extra]


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port}: {err.strerror}; choose another --port "
                         "(or stop what uses it)") from None
    sock.set_inheritable(True)
    return sock
