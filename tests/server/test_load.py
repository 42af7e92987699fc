"""Safety under load: the bounded queue, disconnects, and 100 concurrent requests.

The 100 requests go to a server that decodes 8 at once on the native runtime (their passes
shared), so "no request lost or duplicated" is checked twice: every client gets exactly one reply
bitwise equal to its solo output, and the server's own counts show every request started exactly
once and ended exactly once (finished, or stopped by its disconnect).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import openai
import pytest

from leapdecode.server import create_app

from .support import ServerThread, extra, health, metric, solo, until, wait_idle


class GatedEngine:
    """The real engine, except that a generation waits at its first step until `gate` opens."""

    def __init__(self, engine):
        self._engine = engine
        self.gate, self.entered = threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self._engine, name)

    @contextmanager
    def session(self):
        yield self  # one request at a time, through the gate

    def stream(self, *args, **kwargs):
        inner, outer = self._engine.stream(*args, **kwargs), self

        class Gated:
            def __iter__(self):
                outer.entered.set()
                assert outer.gate.wait(30), "the test never opened the gate"
                yield from inner

            @property
            def result(self):
                return inner.result

        return Gated()


def test_full_queue_is_429_and_a_queued_disconnect_frees_its_place(engine):
    # its own server with a queue of one; the session's server is idle meanwhile (tests run in turn)
    gated = GatedEngine(engine)
    with ServerThread(create_app(gated, model_name=engine.name, max_queue=1)) as server, \
            ThreadPoolExecutor(4) as pool:
        client, scheduler = server.client(), server.state.scheduler
        body = dict(model=engine.name, max_tokens=4, temperature=0)
        first = pool.submit(client.completions.create, prompt="The sun is", **body)
        assert gated.entered.wait(30)  # the first request holds the worker
        # the second waits in the queue; its client gives up after 2 s and disconnects
        quitter = pool.submit(httpx.post, f"{server.url}/v1/completions",
                              json={"prompt": "Never run me", **body}, timeout=2.0)
        until(lambda: health(server)["queue_depth"] == 1)

        with pytest.raises(openai.RateLimitError) as info:  # the third finds the queue full
            client.completions.create(prompt="Too many", **body)
        assert info.value.status_code == 429 and info.value.code == "queue_full"
        assert info.value.response.headers["retry-after"] == "1"
        raw = httpx.post(f"{server.url}/v1/chat/completions", timeout=10,
                         json={"messages": [{"role": "user", "content": "Hi"}], **body})
        assert raw.status_code == 429 and set(raw.json()["error"]) == {"message", "type", "param", "code"}

        with pytest.raises(httpx.ReadTimeout):
            quitter.result()
        until(lambda: health(server)["queue_depth"] == 0)  # the quitter left the queue at once
        last = pool.submit(client.completions.create, prompt="The moon is", **body)  # its place is free
        until(lambda: health(server)["queue_depth"] == 1)
        gated.gate.set()

        replies = {"The sun is": first.result(), "The moon is": last.result()}
        wait_idle(server)  # the engine is the server's until then: solo runs must not overlap it
        for prompt, reply in replies.items():
            assert extra(reply)["token_ids"] == solo(engine, prompt, chat=False, max_new_tokens=4).token_ids
        assert (scheduler.submitted, scheduler.started, scheduler.dropped) == (3, 2, 1)
        assert metric(server, "leapdecode_dropped_requests_total") == 1
        assert metric(server, 'leapdecode_requests_total{endpoint="/v1/completions",status="429"}') == 1
        assert metric(server, 'leapdecode_requests_total{endpoint="/v1/completions",status="499"}') == 1
        assert health(server) == {"status": "ok", "model": engine.name, "queue_depth": 0, "running": 0}


N = 100
MAX_TOKENS = 8
SUBJECTS = ("apples", "rivers", "robots", "music", "winter", "bees", "clouds", "trains", "forests", "castles")
# ten requests per group, one subject per group: a reply handed to another group's client would show
KINDS = ("plain", "plain", "plain", "plain", "stop", "stop", "chat", "chat", "cancel", "cancel")
STOPS = [" we", "\n"]


def plan(i: int) -> dict:
    """Request i of the load test; every other request of a kind streams.

    The completion prompts make the model copy a line, so prompt lookup drafts the whole reply
    and one step accepts it: the test stays fast, and each stop string (" we") arrives inside a
    run of accepted tokens."""
    group, slot = divmod(i, len(KINDS))
    kind, subject = KINDS[slot], SUBJECTS[group]
    line = f"I like {subject}, you like {subject}, we all like {subject}."
    request = {"kind": kind, "stream": slot % 2 == 1 or kind == "cancel",
               "prompt": f"{line}\n{line}\nI like {subject},"}
    if kind == "stop":
        request["stop"] = STOPS
    elif kind == "chat":
        del request["prompt"]
        request["messages"] = [{"role": "user", "content": f"Repeat exactly: {line}"}]
    elif kind == "cancel":  # a long generation that its client abandons after the first text
        request.update(prompt=f"Count from {group} to 5000: {group}, {group + 1},", max_tokens=4000)
    return request


def send(client, model, request) -> dict:
    """One request through the openai client; returns what the client saw."""
    options = dict(model=model, temperature=0, max_tokens=request.get("max_tokens", MAX_TOKENS),
                   stream=request["stream"], stop=request.get("stop"))
    if "messages" in request:
        response = client.chat.completions.create(messages=request["messages"], **options)
        text_of = (lambda c: c.choices[0].delta.content or "") if request["stream"] else None
    else:
        response = client.completions.create(prompt=request["prompt"], **options)
        text_of = lambda c: c.choices[0].text  # noqa: E731
    if not request["stream"]:
        choice = response.choices[0]
        text = choice.message.content if "messages" in request else choice.text
        return {"ids": [response.id], "text": text, "finish": choice.finish_reason,
                "token_ids": extra(response)["token_ids"]}
    ids, parts, finish, token_ids = set(), [], None, None
    for chunk in response:
        ids.add(chunk.id)
        if chunk.choices:
            parts.append(text_of(chunk))
            finish = chunk.choices[0].finish_reason or finish
            if chunk.choices[0].finish_reason:
                token_ids = extra(chunk)["token_ids"]
        if request["kind"] == "cancel" and "".join(parts):
            response.close()  # the client goes away mid-generation
            return {"ids": list(ids), "cancelled": True}
    return {"ids": list(ids), "text": "".join(parts), "finish": finish, "token_ids": token_ids}


@pytest.fixture(scope="module")
def batched():
    import leapdecode

    return leapdecode.load("smollm2-135m", "bfloat16", backend="native", batch=8, max_len=1024)


@pytest.fixture(scope="module")
def batched_server(batched):
    with ServerThread(create_app(batched, max_queue=128, workers=batched.slots)) as running:
        yield running


def test_100_concurrent_requests_none_lost_or_duplicated(batched_server, batched):
    server, engine = batched_server, batched
    client = server.client(timeout=600)
    requests = [plan(i) for i in range(N)]
    wait_idle(server)
    scheduler = server.state.scheduler
    before = {
        "submitted": scheduler.submitted, "started": scheduler.started, "dropped": scheduler.dropped,
        "ok": metric(server, 'leapdecode_requests_total{endpoint="/v1/completions",status="200"}')
        + metric(server, 'leapdecode_requests_total{endpoint="/v1/chat/completions",status="200"}'),
        "finished": metric(server, "leapdecode_generations_total"),
        "cancelled": metric(server, "leapdecode_cancelled_generations_total"),
    }
    start = threading.Barrier(N)

    def one(request):
        start.wait(30)  # all 100 at once
        return send(client, engine.name, request)

    with ThreadPoolExecutor(N) as pool:
        replies = list(pool.map(one, requests, timeout=600))
    wait_idle(server)

    # every client got exactly one reply, each under its own id
    ids = [rid for reply in replies for rid in reply["ids"]]
    assert len(ids) == N == len(set(ids))
    cancelled = [r for r in requests if r["kind"] == "cancel"]
    assert all(reply.get("cancelled") for r, reply in zip(requests, replies) if r["kind"] == "cancel")
    # the server ran every request exactly once: started = finished + stopped by a disconnect
    assert scheduler.submitted - before["submitted"] == N
    assert scheduler.started - before["started"] == N and scheduler.dropped == before["dropped"]
    finished = metric(server, "leapdecode_generations_total") - before["finished"]
    stopped = metric(server, "leapdecode_cancelled_generations_total") - before["cancelled"]
    assert (finished, stopped) == (N - len(cancelled), len(cancelled))
    ok = (metric(server, 'leapdecode_requests_total{endpoint="/v1/completions",status="200"}')
          + metric(server, 'leapdecode_requests_total{endpoint="/v1/chat/completions",status="200"}'))
    assert ok - before["ok"] == N

    # every completed greedy reply equals its solo output
    stop_hits, solos = 0, {}
    for request, reply in zip(requests, replies):
        if request["kind"] == "cancel":
            continue
        chat = "messages" in request
        prompt = request["messages"] if chat else request["prompt"]
        stop = tuple(request.get("stop", ()))
        key = (repr(prompt), stop)
        if key not in solos:
            solos[key] = solo(engine, prompt, chat=chat, max_new_tokens=MAX_TOKENS, stop=stop)
        want = solos[key]
        assert (reply["text"], reply["token_ids"], reply["finish"]) == (
            want.text, want.token_ids, want.finish_reason), request
        stop_hits += request["kind"] == "stop" and want.finish_reason == "stop" and len(want.token_ids) > 1
    assert stop_hits == 2 * len(SUBJECTS)  # every stop string cut its reply
    assert health(server)["status"] == "ok"
    assert scheduler.workers == 8


def test_a_batch_of_prompts_in_one_request_decodes_together(batched_server, batched):
    """A prompt list is one job per prompt: on the batching target they share passes, and each
    choice (with its logprobs) is bitwise its solo reply; beams need transformers: a clear 400."""
    server, engine = batched_server, batched
    client = server.client(timeout=600)
    prompts = [f"A list of {subject}: {subject} one, {subject} two," for subject in SUBJECTS[:6]]
    got = client.completions.create(model=engine.name, prompt=prompts, max_tokens=MAX_TOKENS, temperature=0,
                                    logprobs=1)
    wait_idle(server)
    assert [c.index for c in got.choices] == list(range(len(prompts)))
    for prompt, choice, ids in zip(prompts, got.choices, extra(got)["choices"]):
        want = solo(engine, prompt, chat=False, max_new_tokens=MAX_TOKENS, logprobs=1)
        assert (choice.text, ids["token_ids"]) == (want.text, want.token_ids)
        assert choice.logprobs.token_logprobs == [lp.logprob for lp in want.logprobs]
    response = httpx.post(f"{server.url}/v1/completions", timeout=60,
                          json={"prompt": "Hi", "n": 2, "temperature": 0})
    assert response.status_code == 400 and "--backend hf" in response.json()["error"]["message"]
