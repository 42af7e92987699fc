"""Headless Chromium driven over the DevTools protocol: a small client for the web view's test.

    with Browser.start() as page:          # Browser.start() raises BrowserMissing when it cannot
        page.goto(url)
        page.evaluate("document.title")
        assert not page.errors()
        page.wait_for("document.body.dataset.state === 'idle'")
        page.screenshot(path)

One page, one websocket (the `websockets` package), commands answered in order; nothing but
Chromium itself is needed (no chromedriver).
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

# as root, and on a machine whose network is closed: without the networking flags Chromium's own
# background connections are refused and slow it down
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-proxy-server", "--disable-dev-shm-usage", "--window-size=1400,1000", "--hide-scrollbars")


# run in every page before its own scripts: what the page throws and does not catch, for errors()
RECORD_ERRORS = """
window.__errors = [];
addEventListener("error", (e) => window.__errors.push(String(e.message)));
addEventListener("unhandledrejection", (e) => window.__errors.push(String(e.reason)));
"""


class BrowserMissing(Exception):
    """Chromium is not installed here (or does not start): the browser test skips with this."""


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    def __init__(self, stack: ExitStack, socket: Any):
        self._stack, self.socket = stack, socket  # the stack closes the socket, Chromium, its profile
        self._ids = itertools.count(1)

    @classmethod
    def start(cls, timeout: float = 30.0) -> "Browser":
        binary = find_chromium()
        if binary is None:
            raise BrowserMissing("no chromium on PATH (scripts/test.sh installs Debian's chromium)")
        try:
            from websockets.sync.client import connect
        except ImportError as err:
            raise BrowserMissing(f"the websockets package is missing: {err}") from None
        stack = ExitStack()
        profile = tempfile.mkdtemp(prefix="leapdecode-chromium-")
        stack.callback(shutil.rmtree, profile, ignore_errors=True)
        process = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
                                    "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stack.callback(_stop, process)
        try:
            port = cls._port(process, Path(profile) / "DevToolsActivePort", timeout)
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, never a proxy
            deadline = time.monotonic() + timeout
            while True:
                targets = json.load(opener.open(f"http://127.0.0.1:{port}/json/list", timeout=10))
                pages = [t for t in targets if t.get("type") == "page"]
                if pages or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            if not pages:
                raise BrowserMissing("chromium started but opened no page")
            socket = stack.enter_context(connect(pages[0]["webSocketDebuggerUrl"], max_size=None,
                                                 open_timeout=timeout))
        except BaseException:
            stack.close()
            raise
        browser = cls(stack, socket)
        browser.send("Page.enable")
        browser.send("Runtime.enable")
        browser.send("Page.addScriptToEvaluateOnNewDocument", source=RECORD_ERRORS)
        return browser

    @staticmethod
    def _port(process: subprocess.Popen, active: Path, timeout: float) -> int:
        """Chromium writes the DevTools port it picked into the profile once it listens."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise BrowserMissing(f"chromium exited at start with status {process.returncode}")
            if active.exists() and active.read_text().strip():
                return int(active.read_text().split()[0])
            time.sleep(0.05)
        raise BrowserMissing(f"chromium did not open its DevTools port within {timeout} s")

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()

    # ---- the protocol ------------------------------------------------------------------
    def send(self, method: str, timeout: float = 30.0, **params: Any) -> dict:
        """One command; events that arrive before its answer are dropped."""
        ident = next(self._ids)
        self.socket.send(json.dumps({"id": ident, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self.socket.recv(timeout=max(0.01, deadline - time.monotonic())))
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str, timeout: float = 30.0) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.send("Runtime.evaluate", timeout, expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise RuntimeError(f"{expression!r} threw: {details.get('exception', {}).get('description', details)}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60.0, what: str | None = None) -> Any:
        """Poll until the expression is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what or expression}")
            time.sleep(0.05)

    def errors(self) -> list[str]:
        """Uncaught errors and rejected promises of the open page so far."""
        return self.evaluate("window.__errors")

    def goto(self, url: str) -> None:
        """Open `url` (again, if it is open: a fresh page) and wait until it has loaded."""
        self.evaluate("window.__left = true")  # gone once the new document replaces this one
        self.send("Page.navigate", url=url)
        self.wait_for("!window.__left && document.readyState === 'complete'", what=f"{url} to load")

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
