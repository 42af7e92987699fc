"""The web view: one page at `/` that streams replies from this server's own API.

It asks for `stream_options: {"include_steps": true}` (steps.py) and colours each token by how it
came (an accepted draft token, the bonus token the target chose itself, plain decoding), shows
live tau, tokens/s and the accepted-length histogram, and races a method against `none`. The page
is three static files in `static/`, served as they are: no build step, nothing from elsewhere
(its Content-Security-Policy allows this server only). docs/webview.md shows it.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Callable

from fastapi import FastAPI
from fastapi.responses import Response

from .protocol import APIError

STATIC = resources.files(__package__) / "static"
ASSETS = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
PAGE_PATHS = frozenset({"/", *(f"/ui/{name}" for name in ASSETS)})
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def is_page(path: str) -> bool:
    """The page and its files: static, so open without the API key (the page sends the key)."""
    return path in PAGE_PATHS


def add_routes(app: FastAPI, methods: Callable[[], list[str]], default_method: str) -> None:
    """GET / (the page, with the server's methods written into it) and GET /ui/<file>."""

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        config = json.dumps({"methods": methods(), "default_method": default_method})
        # a JSON data block inside <script>: no "</script>" may close it early
        html = (STATIC / "index.html").read_text("utf-8").replace("{{config}}", config.replace("<", "\\u003c"))
        return Response(html, media_type="text/html; charset=utf-8", headers=HEADERS)

    @app.get("/ui/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in ASSETS:
            raise APIError(404, f"the web view has no file {name!r}", type="not_found_error", code="not_found")
        return Response((STATIC / name).read_bytes(), media_type=ASSETS[name], headers=HEADERS)
