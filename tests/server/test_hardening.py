"""Issue 16: a hostile or careless client gets a clean 4xx, never a 500, a hang or a held worker.

One real uvicorn server per module on loopback, with an API key, a Host allow-list and a small
body limit; a second short-lived one for the per-request time limit."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from leapdecode.server import create_app

from .support import ServerThread, extra, solo

KEY = "test-key-123"
LIMIT = 64 * 1024
AUTH = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}


@pytest.fixture(scope="module")
def guarded(engine):
    app = create_app(engine, api_key=KEY, allowed_hosts=["127.0.0.1", "localhost"], max_body_bytes=LIMIT)
    with ServerThread(app) as running:
        yield running


def post(server, body, path="completions", headers=AUTH, **kw):
    content = body if isinstance(body, (bytes, str)) or callable(getattr(body, "__next__", None)) \
        else json.dumps(body)
    return httpx.post(f"{server.url}/v1/{path}", content=content, headers=headers, timeout=60, **kw)


def error(response, status):
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    return body


def test_api_key(guarded):
    body = {"prompt": "Hi", "max_tokens": 2, "temperature": 0}
    assert error(post(guarded, body, headers={"content-type": "application/json"}), 401)["code"] == "invalid_api_key"
    wrong = {**AUTH, "authorization": "Bearer nope"}
    assert error(post(guarded, body, headers=wrong), 401)["type"] == "authentication_error"
    assert httpx.get(f"{guarded.url}/v1/models", timeout=10).status_code == 401
    assert httpx.get(f"{guarded.url}/health", timeout=10).status_code == 200  # stays open
    assert post(guarded, body).status_code == 200


def test_official_client_with_key(guarded, engine):
    client = guarded.client().with_options(api_key=KEY)
    got = client.completions.create(model="leapdecode", prompt="The sky is", max_tokens=3, temperature=0)
    assert extra(got)["token_ids"] == solo(engine, "The sky is", chat=False, max_new_tokens=3).token_ids


@pytest.mark.parametrize("kind", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", ""])
def test_only_json_bodies(guarded, kind):
    headers = {"authorization": AUTH["authorization"], **({"content-type": kind} if kind else {})}
    assert error(post(guarded, {"prompt": "Hi", "max_tokens": 2}, headers=headers), 415)["code"] == \
        "unsupported_media_type"


def test_host_header_checked(guarded):
    body = {"prompt": "Hi", "max_tokens": 2, "temperature": 0}
    assert error(post(guarded, body, headers={**AUTH, "host": "evil.example:8000"}), 421)["code"] == "bad_host"
    assert httpx.get(f"{guarded.url}/health", headers={"host": "attacker.test"}, timeout=10).status_code == 421
    assert post(guarded, body, headers={**AUTH, "host": f"localhost:{guarded.port}"}).status_code == 200


def test_body_limit_by_content_length(guarded):
    start = time.monotonic()
    got = post(guarded, json.dumps({"prompt": "x" * (LIMIT * 4)}))
    assert error(got, 413)["code"] == "request_too_large"
    assert time.monotonic() - start < 10


def test_body_limit_while_reading_chunked(guarded):
    def chunks():  # no Content-Length: httpx sends this chunked
        yield b'{"prompt": "'
        for _ in range(40):
            yield b"y" * 4096
        yield b'"}'
    got = post(guarded, chunks())
    assert error(got, 413)["code"] == "request_too_large"


def test_prompt_chars_capped_before_tokenizing(engine):
    app = create_app(engine, max_body_bytes=2**22)
    with ServerThread(app) as server:
        window = engine.target.context_window
        start = time.monotonic()
        got = post(server, {"prompt": "ab " * (3 * window), "max_tokens": 2})
        body = error(got, 400)
        assert body["code"] == "context_length_exceeded" and "characters" in body["message"]
        assert time.monotonic() - start < 5  # no tokenizer ran
        messages = [{"role": "user", "content": "z" * (9 * window)}]
        assert error(post(server, {"messages": messages}, "chat/completions"), 400)["param"] == "messages"


@pytest.mark.parametrize("path,field", [("completions", "prompt"), ("chat/completions", "messages")])
def test_lone_surrogate_is_400(guarded, path, field):
    text = '"abc \\ud800 def"'
    raw = (f'{{"prompt": {text}, "max_tokens": 2}}' if field == "prompt"
           else f'{{"messages": [{{"role": "user", "content": {text}}}], "max_tokens": 2}}')
    body = error(post(guarded, raw, path), 400)
    assert "surrogate" in body["message"]


@pytest.mark.parametrize("field,value", [("temperature", 1e308), ("temperature", -1e-300), ("top_p", 1e-400),
                                         ("seed", 10**23), ("top_k", 10**30), ("max_tokens", 2**70),
                                         ("budget", 10**19), ("temperature", "0.5")])
def test_bad_numbers_are_400(guarded, field, value):
    body = error(post(guarded, {"prompt": "Hi", field: value}), 400)
    assert body["param"] == field


def test_tiny_temperature_is_greedy(guarded, engine):
    got = post(guarded, {"prompt": "The sky is", "max_tokens": 3, "temperature": 1e-300})
    assert got.status_code == 200, got.text
    want = solo(engine, "The sky is", chat=False, max_new_tokens=3)
    assert got.json()["leapdecode"]["token_ids"] == want.token_ids


@pytest.mark.parametrize("method", ["retrieval", "draft-model"])
def test_methods_needing_options_are_400(guarded, method):
    body = error(post(guarded, {"prompt": "Hi", "max_tokens": 2, "method": method}), 400)
    assert body["param"] == "method" and "choose another method" in body["message"]
    with pytest.raises(ValueError, match="needs"):
        create_app(lambda: None, method=method)


def _metric(server, status):
    text = httpx.get(f"{server.url}/metrics", headers={"authorization": AUTH["authorization"]}, timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("leapdecode_requests_total") and f'status="{status}"' in line
               and "/v1/completions" in line)


def test_aborted_upload_is_499_not_500(guarded):
    before_500, before_499 = _metric(guarded, 500), _metric(guarded, 499)
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     + f"Authorization: Bearer {KEY}\r\nContent-Length: 5000\r\n\r\n".encode() + b'{"prompt": "')
        time.sleep(0.2)
    deadline = time.monotonic() + 10
    while _metric(guarded, 499) == before_499 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _metric(guarded, 499) == before_499 + 1
    assert _metric(guarded, 500) == before_500


def test_request_timeout(engine):
    with ServerThread(create_app(engine, request_timeout=2.0)) as server:
        start = time.monotonic()
        got = post(server, {"prompt": "Count: 1, 2,", "max_tokens": 5000, "temperature": 0,
                            "method": "none"}, headers={"content-type": "application/json"})
        assert error(got, 504)["code"] == "request_timeout"
        assert time.monotonic() - start < 20
        with httpx.stream("POST", f"{server.url}/v1/completions", timeout=60,
                          json={"prompt": "Count: 1, 2,", "max_tokens": 5000, "temperature": 0,
                                "stream": True, "method": "none"}) as stream:
            assert stream.status_code == 200
            events = [line for line in stream.iter_lines() if line.startswith("data: ")]
        assert json.loads(events[-1][6:])["error"]["code"] == "request_timeout"
        ok = post(server, {"prompt": "Hi", "max_tokens": 2, "temperature": 0},
                  headers={"content-type": "application/json"})
        assert ok.status_code == 200  # the worker is free again
