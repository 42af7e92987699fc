"""`leapdecode serve`: the OpenAI-compatible server on one model.

    leapdecode serve --model smollm2-135m --method prompt-lookup --port 8000
    curl -s localhost:8000/v1/chat/completions -d '{"messages": [{"role": "user", "content": "Hi"}],
         "temperature": 0, "max_tokens": 32}'
"""

from __future__ import annotations

import argparse
from typing import Any

from ..drafters import DEFAULT_METHOD, DRAFTERS


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "serve", help="serve a model over an OpenAI-compatible HTTP API",
        description="Requests follow the OpenAI protocol: an omitted temperature means 1.0 (sampling); "
        "send temperature 0 for greedy output, token-identical to `leapdecode generate`.",
    )
    p.add_argument("--model", default="smollm2-135m", help="packaged name, transformers dir or .gguf file")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--method", default=DEFAULT_METHOD,
                   help=f"default drafter; a request may name another in `method`: {', '.join(DRAFTERS)}")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests that may wait for the model; more are answered 429 (default 64)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    if args.method not in DRAFTERS:
        raise ValueError(f"unknown method {args.method!r}; choose one of: {', '.join(DRAFTERS)}")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in [0, 65535], got {args.port}")
    if args.max_queue < 1:
        raise ValueError(f"--max-queue must be >= 1, got {args.max_queue}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    try:
        import uvicorn

        from .app import create_app
    except ModuleNotFoundError as err:
        if err.name not in ("fastapi", "starlette", "uvicorn"):
            raise
        raise ValueError(f"the server needs {err.name}: pip install 'leapdecode[serve]'") from None
    import torch

    from .. import load

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    engine = load(args.model, args.dtype)  # before binding the port: a bad model fails fast
    app = create_app(engine, model_name=args.model, method=args.method, max_queue=args.max_queue)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
