"""Per-step events: Stream.record_steps in the engine, `stream_options.include_steps` in the API,
and the web view's page and files. Greedy replies are compared with the engine's own."""

from __future__ import annotations

import json
from collections import Counter

import httpx
import pytest

from leapdecode import GenerationConfig
from leapdecode.server import create_app

from .support import ServerThread, extra, solo
from .test_server import ROSES


def sse(server, path: str, body: dict) -> list[dict]:
    """The chunks of a streamed request, parsed by hand (every field as sent), [DONE] checked."""
    with httpx.stream("POST", f"{server.url}{path}", json=body, timeout=120) as response:
        assert response.status_code == 200, response.read()
        lines = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def steps_of(chunks: list[dict]) -> list[dict]:
    return [c["leapdecode"]["step"] for c in chunks if "step" in c.get("leapdecode", {})]


def test_stream_records_each_step(engine):
    config = GenerationConfig(max_new_tokens=16)
    stream = engine.stream(ROSES, config, "prompt-lookup", chat=False).record_steps()
    text = "".join(stream)
    result, steps = stream.result, stream.steps
    assert text == result.text
    assert len(steps) == result.stats.steps and sum(s.drafted for s in steps) == result.stats.drafted
    assert Counter(s.accepted for s in steps) == result.stats.accepted_hist
    emitted = [t for s in steps for t in s.tokens]
    assert emitted[: len(result.token_ids)] == result.token_ids  # the last step may be cut by max_new_tokens
    assert steps[0].accepted >= 5  # the copy is drafted and accepted in one step
    assert all(len(s.alternatives) == len(s.tokens) for s in steps)
    # a tree drafter offers alternatives, never the token it was given
    stream = engine.stream("Name three colours.", config, "ngram-adaptive").record_steps()
    list(stream)
    offered = [(t, alts) for s in stream.steps for t, alts in zip(s.tokens, s.alternatives)]
    assert any(alts for _, alts in offered) and all(t not in alts for t, alts in offered)
    # not asked: nothing recorded
    plain = engine.stream(ROSES, config, "prompt-lookup", chat=False)
    list(plain)
    assert plain.steps is None and plain.result.token_ids == result.token_ids


def test_include_steps_adds_a_chunk_per_step(server, engine):
    want = solo(engine, ROSES, chat=False, max_new_tokens=16)
    chunks = sse(server, "/v1/completions", {"prompt": ROSES, "max_tokens": 16, "temperature": 0,
                                             "method": "prompt-lookup", "stream": True,
                                             "stream_options": {"include_steps": True}})
    steps = steps_of(chunks)
    assert [s["step"] for s in steps] == list(range(1, want.stats.steps + 1))
    assert "".join(p for s in steps for p in s["text"]) == want.text
    assert "".join(c["choices"][0]["text"] for c in chunks) == want.text  # the OpenAI text is unchanged
    assert [t for s in steps for t in s["tokens"]] == want.token_ids == chunks[-1]["leapdecode"]["token_ids"]
    assert Counter(s["accepted"] for s in steps) == want.stats.accepted_hist
    assert steps[0]["accepted"] >= 5 and steps[0]["drafted"] >= steps[0]["accepted"]
    assert all(len(s["text"]) == len(s["tokens"]) == len(s["alternatives"]) for s in steps)
    step_chunks = [c for c in chunks if "step" in c.get("leapdecode", {})]
    assert all(c["choices"][0]["text"] == "" and c["choices"][0]["finish_reason"] is None for c in step_chunks)
    assert chunks.index(step_chunks[0]) < min(i for i, c in enumerate(chunks) if c["choices"][0]["text"])


def test_steps_through_the_official_client_and_a_stop_string(server, client, engine):
    question = "Name three colours."
    want = solo(engine, question, chat=True, method="auto", max_new_tokens=12)
    chunks = list(client.chat.completions.create(
        model=engine.name, messages=[{"role": "user", "content": question}], max_tokens=12, temperature=0,
        stream=True, stream_options={"include_steps": True}, extra_body={"method": "auto"}))
    steps = [extra(c)["step"] for c in chunks if "step" in (c.model_extra.get("leapdecode") or {})]
    assert "".join(p for s in steps for p in s["text"]) == want.text
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want.text

    # a stop string inside an accepted run: the pieces stop where the text does
    want = solo(engine, ROSES, chat=False, max_new_tokens=16, stop=("sugar",))
    chunks = sse(server, "/v1/completions", {
        "prompt": ROSES, "max_tokens": 16, "temperature": 0, "method": "prompt-lookup", "stop": "sugar",
        "stream": True, "stream_options": {"include_steps": True}})
    steps = steps_of(chunks)
    assert want.finish_reason == "stop" and "sugar" not in want.text
    assert "".join(p for s in steps for p in s["text"]) == want.text
    assert [t for s in steps for t in s["tokens"]] == want.token_ids


def test_without_include_steps_the_stream_is_unchanged(server):
    body = {"prompt": ROSES, "max_tokens": 8, "temperature": 0, "method": "prompt-lookup", "stream": True}
    for options in (None, {"include_steps": False}, {"include_usage": False}):
        chunks = sse(server, "/v1/completions", {**body, "stream_options": options})
        assert not steps_of(chunks)
        assert all(c["choices"][0]["text"] for c in chunks[:-1])  # every chunk but the last carries text


@pytest.mark.parametrize("body, param", [
    ({"stream_options": {"include_steps": "yes"}}, "include_steps"),
    ({"stream_options": {"include_steps": True}, "n": 2, "temperature": 0}, "include_steps"),  # beams
])
def test_bad_include_steps_is_400(server, body, param):
    response = httpx.post(f"{server.url}/v1/completions", json={"prompt": "Hi", "max_tokens": 2, "stream": True,
                                                                  **body}, timeout=30)
    assert response.status_code == 400 and response.json()["error"]["param"] == param


def test_the_page_and_its_files(server, engine):
    page = httpx.get(f"{server.url}/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '<script src="/ui/app.js"' in page.text and "{{config}}" not in page.text
    config = json.loads(page.text.split('<script id="config" type="application/json">')[1].split("</script>")[0])
    assert "none" in config["methods"] and "retrieval" not in config["methods"]  # it needs a datastore
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        response = httpx.get(f"{server.url}/ui/{name}", timeout=10)
        assert response.status_code == 200 and response.headers["content-type"].startswith(kind)
    missing = httpx.get(f"{server.url}/ui/../app.py", timeout=10)
    assert missing.status_code == 404
    # with an API key the page still opens (a browser cannot send the key for it); the API does not
    with ServerThread(create_app(engine, api_key="sesame")) as guarded:
        assert httpx.get(f"{guarded.url}/", timeout=10).status_code == 200
        assert httpx.get(f"{guarded.url}/ui/app.js", timeout=10).status_code == 200
        assert httpx.get(f"{guarded.url}/v1/models", timeout=10).status_code == 401
