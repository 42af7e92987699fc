"""Servers started by the benchmarks: a subprocess on a free loopback port, up once /health answers.

    with Started(cmd_for(port), f"http://127.0.0.1:{port}") as url: ...

`llama_server_command` is llama.cpp's `llama-server` (built from the vendored llama.cpp by
scripts/build_llama_server.sh), used by `leapdecode loadtest` and the bench's llama-server peers.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Sequence

LLAMA_SERVER = (Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "leapdecode" / "llama-server"
                / "bin" / "llama-server")
BUILD_HINT = "llama-server is not built; run: bash scripts/build_llama_server.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def llama_server_command(gguf: Path, port: int, threads: int, parallel: int, context: int,
                         extra: Sequence[str] = ()) -> list[str]:
    """llama-server on `gguf`: `parallel` slots sharing a context of `context` tokens."""
    if not LLAMA_SERVER.exists():
        raise ValueError(BUILD_HINT)
    return [str(LLAMA_SERVER), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-t", str(threads),
            "-tb", str(threads), "--parallel", str(parallel), "-c", str(context), "--cont-batching", "--no-webui",
            "-fa", "on", *extra]


class Started:
    """A server process for the block: yields its URL once GET /health is 200, stops it after."""

    def __init__(self, cmd: Sequence[str], url: str, wait_s: float = 300):
        self.cmd, self.url, self.wait_s = list(cmd), url, wait_s
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> str:
        import httpx

        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + self.wait_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ValueError(f"{Path(self.cmd[0]).name} exited at start: {self.proc.stderr.read()[-500:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self.url
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise ValueError(f"{Path(self.cmd[0]).name} did not answer /health within {self.wait_s:.0f} s")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
