"""Helpers for the server tests: a real uvicorn server in a thread, and the engine's solo replies."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import openai
import uvicorn

from leapdecode import GenerationConfig


class ServerThread:
    """`with ServerThread(app) as s:` serves `app` on 127.0.0.1:<free port> until the block ends."""

    def __init__(self, app):
        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))  # the port is ours from here on: no race for a free one
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()

    def client(self, **options) -> openai.OpenAI:
        """The official client; no retries, so every call is exactly one HTTP request."""
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="x", max_retries=0,
                             timeout=options.pop("timeout", 120), **options)

    @property
    def state(self):
        return self.app.state.server


def solo(engine, prompt, chat, method="prompt-lookup", **config):
    """The engine's own reply to the same request (greedy unless a temperature is given).
    Call it only while the server is idle: the engine and its cache are the server's otherwise."""
    config.setdefault("temperature", 0.0)
    return engine.generate(prompt, GenerationConfig(**config), method, chat=chat)


def extra(response) -> dict:
    """leapdecode's own fields of a response or chunk (token ids, steps, tau)."""
    return response.model_extra["leapdecode"]


def metric(server: ServerThread, name: str) -> float:
    """The sum of the /metrics samples whose line starts with `name`."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def health(server: ServerThread) -> dict:
    return httpx.get(f"{server.url}/health", timeout=10).json()


def until(condition, timeout: float = 30.0, what: str = "the server") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def wait_idle(server: ServerThread, timeout: float = 30.0) -> None:
    until(lambda: health(server)["queue_depth"] == 0 and health(server)["running"] == 0, timeout,
          "the server to go idle")
