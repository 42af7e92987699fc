"""The web view in a real browser: headless Chromium (browser.py) against a live server on loopback.

The page streams a reply with per-step events; its rendered text must equal `leapdecode generate`'s
for the same settings, its tokens coloured by how they came. The race shows `none` and a method
side by side with a check mark when they agree. Server errors (400, 429) show inline and the page
recovers; a stream the server ends early ends the view with a message. Skipped, with the reason,
where Chromium is not installed (the API-level tests of the step events are in test_steps.py).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from leapdecode.server import create_app

from .browser import Browser, BrowserMissing
from .support import ServerThread, health, solo, until, wait_idle
from .test_server import COUNTING

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"  # ignored by git
PROMPT = "Copy this sentence: The quick brown fox jumps over the lazy dog."  # copied: drafts get accepted
METHOD = "prompt-lookup"
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def page():
    try:
        browser = Browser.start()
    except BrowserMissing as err:
        pytest.skip(f"no browser for the web view test: {err}")
    with browser:
        yield browser


@pytest.fixture(scope="module")
def view(engine):
    """A server of its own: two places in the queue (the race's two requests), so 429 is reachable."""
    with ServerThread(create_app(engine, max_queue=2)) as running:
        yield running


def fill(page: Browser, **fields) -> None:
    """Set form fields by element id, as typing would (value + input event)."""
    for name, value in fields.items():
        element = f"document.getElementById({json.dumps(name.replace('_', '-'))})"
        page.evaluate(f"{element}.value = {json.dumps(str(value))}; "
                      f"{element}.dispatchEvent(new Event('input', {{bubbles: true}}))")


def click(page: Browser, button: str) -> None:
    page.evaluate(f"document.getElementById({json.dumps(button)}).click()")


def finished(page: Browser, timeout: float = 90.0) -> None:
    page.wait_for("document.body.dataset.state === 'idle'", timeout, "the page to finish streaming")


def rendered(page: Browser, pane: str) -> str:
    return page.evaluate(f"Array.from(document.querySelectorAll('#{pane} .tok'), s => s.textContent).join('')")


def state(page: Browser, pane: str) -> str:
    return page.evaluate(f"document.getElementById({json.dumps(pane)}).dataset.state")


def hover(page: Browser, selector: str) -> str:
    """Move the mouse over the element (real input events) and return the inspector's text."""
    box = page.evaluate(f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
                        " return [r.left + r.width / 2, r.top + r.height / 2]; })()")
    page.send("Input.dispatchMouseEvent", type="mouseMoved", x=box[0], y=box[1])
    return page.evaluate("document.getElementById('inspector').textContent")


def test_page_streams_colours_and_races(page, view, engine):
    # `leapdecode generate` itself, for the same settings (the server runs transformers in float32),
    # while the browser works
    cli = subprocess.Popen([sys.executable, "-m", "leapdecode.cli", "generate", "--backend", "hf", "--json",
                            "--method", METHOD, "--max-new-tokens", str(MAX_TOKENS), PROMPT],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    page.goto(f"{view.url}/")
    finished(page)
    assert page.evaluate("document.getElementById('model').value") == engine.name
    fill(page, prompt=PROMPT, method=METHOD, max_tokens=MAX_TOKENS, temperature=0)
    click(page, "send")
    finished(page)
    assert state(page, "pane-main") == "done", page.evaluate("document.getElementById('pane-main').innerText")
    want = solo(engine, PROMPT, chat=True, method=METHOD, max_new_tokens=MAX_TOKENS)
    text = rendered(page, "pane-main")
    assert text == want.text
    kinds = page.evaluate("Array.from(document.querySelectorAll('#pane-main .tok'), s => s.dataset.kind)")
    assert len(kinds) == len(want.token_ids) and {"accepted", "bonus"} <= set(kinds)
    colours = page.evaluate("[...new Set(Array.from(document.querySelectorAll('#pane-main .tok'),"
                            " s => getComputedStyle(s).backgroundColor))]")
    assert len(colours) >= 2  # the kinds look different
    tau = page.evaluate("document.querySelector('#pane-main [data-figure=tau]').textContent")
    assert float(tau) == pytest.approx(want.stats.tau, abs=0.01)
    hist = want.stats.accepted_hist
    widths = page.evaluate("Array.from(document.querySelectorAll('#pane-main .hist-bar'), b => b.style.width)")
    assert widths == [f"{100 * hist[k] / max(hist.values()):g}%" for k in range(max(hist) + 1)]
    inspected = hover(page, "#pane-main .tok-accepted")
    assert "step" in inspected and "accepted draft token" in inspected

    # the race: none and the method side by side, the same output
    click(page, "race")
    finished(page)
    check = page.evaluate("(document.getElementById('race-check') || {}).textContent")
    assert check == "✓ identical output"
    assert rendered(page, "pane-none") == rendered(page, "pane-method") == want.text
    kinds = page.evaluate("Array.from(document.querySelectorAll('#pane-none .tok'), s => s.dataset.kind)")
    assert set(kinds) == {"plain"}
    assert "x the tokens/s of none" in page.evaluate("document.getElementById('race-result').textContent")
    hover(page, "#pane-method .tok-bonus")
    shot = page.screenshot(ARTIFACTS / "webview.png")
    assert shot.stat().st_size > 10_000

    assert not page.errors()

    out, err = cli.communicate(timeout=120)
    assert cli.returncode == 0, err
    assert json.loads(out)["text"] == text


def test_server_errors_show_inline_and_the_page_recovers(page, view):
    page.goto(f"{view.url}/")
    finished(page)
    fill(page, prompt=PROMPT, method="none", max_tokens=4, temperature=5)  # out of range: a 400
    click(page, "send")
    finished(page)
    error = page.evaluate("document.getElementById('error').textContent")
    assert error.startswith("none: 400:") and "temperature" in error
    assert state(page, "pane-main") == "error"

    # a full queue: one request decoding and two waiting (raw sockets that never read), then a 429
    body = json.dumps({"prompt": COUNTING, "max_tokens": 4000, "temperature": 0, "method": "none"}).encode()
    blockers = []
    try:
        for running, waiting in ((1, 0), (1, 1), (1, 2)):
            blocker = socket.create_connection(("127.0.0.1", view.port))
            blocker.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                            b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            blockers.append(blocker)
            until(lambda: (health(view)["running"], health(view)["queue_depth"]) == (running, waiting),
                  what=f"{running} running and {waiting} waiting")
        fill(page, temperature=0)
        click(page, "send")
        finished(page)
        error = page.evaluate("document.getElementById('error').textContent")
        assert error.startswith("none: 429:") and "busy" in error
    finally:
        for blocker in blockers:
            blocker.close()  # the server drops them: queued ones at once, the running one at its next step
    wait_idle(view)

    click(page, "send")
    finished(page)
    assert state(page, "pane-main") == "done"
    assert page.evaluate("document.getElementById('error').hidden") is True
    assert rendered(page, "pane-main")
    assert not page.errors()


def test_a_stream_the_server_ends_early_ends_the_view(page, view):
    page.goto(f"{view.url}/")
    finished(page)
    fill(page, prompt=COUNTING, method="none", max_tokens=2000, temperature=0)
    page.evaluate("document.getElementById('raw').checked = true")  # a completion that goes on counting
    click(page, "send")
    page.wait_for("document.querySelectorAll('#pane-main .tok').length >= 2", 60, "the first tokens")
    # what the server does to running requests when it shuts down: it cancels them, and their
    # streams end without [DONE]
    for job in list(view.state.scheduler.running):
        job._loop.call_soon_threadsafe(job.cancel)
    finished(page, timeout=30)
    assert state(page, "pane-main") == "error"
    notice = page.evaluate("document.querySelector('#pane-main .notice').textContent")
    assert "ended the stream before the reply was finished" in notice
    assert page.evaluate("document.getElementById('send').disabled") is False
    assert not page.errors()
    wait_idle(view)
