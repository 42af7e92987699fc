"""OpenAI-compatible HTTP server: `leapdecode serve`, or `create_app(engine)` for any ASGI server.

fastapi and uvicorn are imported only when a server is built, so the rest of leapdecode (and its
command line) works without them.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["create_app"]
