"""Property-based: generated request bodies against the server's request validation (in process)
and, for a sample, against the real server on loopback: a 4xx in OpenAI's shape, never a 500."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leapdecode.server import create_app
from leapdecode.server.protocol import APIError, parse_chat, parse_completion, parse_json

from .support import ServerThread

SETTINGS = settings(max_examples=80, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
NAMES = ("m", "leapdecode")

scalar = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**25), max_value=10**25),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3),
)
value = st.recursive(scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                      st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                     max_leaves=6)
FIELDS = ["prompt", "messages", "model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k",
          "seed", "stop", "budget", "method", "stream", "stream_options", "n", "logprobs", "logit_bias"]
bodies = st.one_of(value, st.dictionaries(st.sampled_from(FIELDS), value, max_size=6))


@SETTINGS
@given(bodies, st.sampled_from([parse_completion, parse_chat]))
def test_validation_clean(body, parse):
    try:
        gen = parse(body, NAMES, "auto")
    except APIError as err:
        assert 400 <= err.status < 500 and set(err.body()["error"]) == {"message", "type", "param", "code"}
        return
    gen.config.sampling  # a valid request built a valid config
    assert all(isinstance(p, (str, list)) for p in gen.prompts)


@SETTINGS
@given(st.binary(max_size=64))
def test_parse_json_clean(raw):
    try:
        parse_json(raw)
    except APIError as err:
        assert err.status == 400


@pytest.fixture(scope="module")
def live(engine):
    with ServerThread(create_app(engine, max_body_bytes=4096)) as server:
        yield server


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(FIELDS), value, max_size=5),
       st.sampled_from(["completions", "chat/completions"]),
       st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain", ""]))
def test_live_server_never_500(live, body, path, kind):
    body = {**body, "max_tokens": 2} if isinstance(body.get("max_tokens"), int) and body["max_tokens"] > 2 else body
    body.setdefault("max_tokens", 2)
    body["stream"] = False
    raw = json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass")
    headers = {"content-type": kind} if kind else {}
    got = httpx.post(f"{live.url}/v1/{path}", content=raw, headers=headers, timeout=60)
    assert got.status_code < 500, got.text
    if got.status_code >= 400:
        assert set(got.json()["error"]) == {"message", "type", "param", "code"}
