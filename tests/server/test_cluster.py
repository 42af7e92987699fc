"""Replicas on Ray Serve (`leapdecode serve --replicas N`, leapdecode.cluster).

The module starts a real Ray instance on loopback, as the command does (`cluster.start` with the
command's own parsed flags): 2 replicas of the packaged model, 1 thread each, behind Ray Serve's
proxy. Greedy replies through the proxy must equal `leapdecode generate`; requests spread over both
replicas, none lost or duplicated; a replica killed under load loses at most its own requests and
comes back. Bad flags fail in one line before anything starts (those tests need no cluster).
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import redirect_stdout

import httpx
import openai
import pytest

from leapdecode.cli import build_parser, main

REPLICA = "x-leapdecode-replica"
PROMPT = "The capital of France is"
QUESTION = "Name three colours."


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def generate(*args: str) -> dict:
    """`leapdecode generate --json ...`, in this process."""
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["generate", "--json", *args]) == 0
    return json.loads(out.getvalue())


class Cluster:
    def __init__(self, url: str):
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=120)

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="x", max_retries=0, timeout=120)

    def metrics(self) -> dict[str, float]:
        """/metrics (all replicas) as {sample with labels: value}."""
        text = self.http.get("/metrics").text
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                for line in text.splitlines() if line and not line.startswith("#")}

    def total(self, name: str, **labels: str) -> float:
        """A metric summed over the replicas (and any labels not given)."""
        want = [f'{k}="{v}"' for k, v in labels.items()]
        return sum(v for k, v in self.metrics().items()
                   if k.split("{")[0] == name and all(w in k for w in want))

    def settled(self, name: str, **labels: str) -> float:
        """The total once every replica has reported it (two reads a report apart agree)."""
        from leapdecode.cluster import REPORT_S

        before = self.total(name, **labels)
        while True:
            time.sleep(2 * REPORT_S)
            now = self.total(name, **labels)
            if now == before:
                return now
            before = now

    def replicas(self) -> set[str]:
        return {k.split('replica="')[1].split('"')[0] for k in self.metrics() if 'replica="' in k}


@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("ray.serve")
    from leapdecode import cluster as ld_cluster
    from leapdecode.server.cli import app_options

    port = free_port()
    args = build_parser().parse_args(["serve", "--replicas", "2", "--threads", "1", "--port", str(port),
                                      "--log-level", "warning"])
    started = time.monotonic()
    plan = ld_cluster.start(args, app_options(args))
    print(f"\n2 replicas up in {time.monotonic() - started:.1f} s")
    assert (plan.replicas, plan.threads) == (2, 1)
    try:
        yield Cluster(f"http://127.0.0.1:{port}")
    finally:
        ld_cluster.stop(local=True)


def test_openai_client_through_the_proxy_equals_generate(cluster):
    raw = generate("--raw", "--max-new-tokens", "12", PROMPT)
    chat = generate("--max-new-tokens", "12", QUESTION)
    client, seen = cluster.client(), Counter()
    messages = [{"role": "user", "content": QUESTION}]

    reply = client.completions.with_raw_response.create(model="leapdecode", prompt=PROMPT, max_tokens=12,
                                                        temperature=0)
    seen[reply.headers[REPLICA]] += 1
    got = reply.parse()
    assert got.choices[0].text == raw["text"] and got.model_extra["leapdecode"]["token_ids"] == raw["token_ids"]

    reply = client.chat.completions.with_raw_response.create(model="leapdecode", messages=messages,
                                                             max_tokens=12, temperature=0)
    seen[reply.headers[REPLICA]] += 1
    got = reply.parse()
    assert got.choices[0].message.content == chat["text"]
    assert got.model_extra["leapdecode"]["token_ids"] == chat["token_ids"]

    reply = client.completions.with_raw_response.create(model="leapdecode", prompt=PROMPT, max_tokens=12,
                                                        temperature=0, stream=True)
    seen[reply.headers[REPLICA]] += 1
    chunks = [c for c in reply.parse() if c.choices]
    assert len(chunks) >= 3 and "".join(c.choices[0].text for c in chunks) == raw["text"]
    assert chunks[-1].model_extra["leapdecode"]["token_ids"] == raw["token_ids"]

    reply = client.chat.completions.with_raw_response.create(model="leapdecode", messages=messages,
                                                             max_tokens=12, temperature=0, stream=True)
    seen[reply.headers[REPLICA]] += 1
    chunks = [c for c in reply.parse() if c.choices]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == chat["text"]
    assert chunks[-1].choices[0].finish_reason == chat["finish_reason"]

    assert [m.id for m in client.models.list().data] == ["smollm2-135m"]
    assert cluster.http.get("/health").json()["status"] == "ok"
    print(f"replicas that answered: {dict(seen)}")


def test_concurrent_requests_spread_over_both_replicas(cluster):
    before = cluster.settled("leapdecode_requests_total", endpoint="/v1/completions", status="200")

    def ask(i: int) -> tuple[str, str, dict]:
        reply = cluster.http.post("/v1/completions", json={
            "prompt": f"Question {i}: what is {i} plus {i}?", "max_tokens": 8, "temperature": 0})
        assert reply.status_code == 200, reply.text
        return reply.headers[REPLICA], reply.json()["id"], reply.json()

    with ThreadPoolExecutor(40) as pool:
        answers = list(pool.map(ask, range(40)))
    split = Counter(replica for replica, _, _ in answers)
    print(f"\n40 concurrent requests by replica: {dict(split)}")
    assert len(split) == 2 and min(split.values()) >= 4, split
    assert len({rid for _, rid, _ in answers}) == 40  # none lost, none answered twice
    assert all(body["usage"]["completion_tokens"] >= 1 for _, _, body in answers)
    # each ran exactly once on the model: the replicas' own counters, merged in one /metrics
    after = cluster.settled("leapdecode_requests_total", endpoint="/v1/completions", status="200")
    assert after - before == 40
    assert cluster.replicas() == set(split)
    assert cluster.total("leapdecode_replicas") == 2


def test_client_gone_stops_the_generation_on_its_replica(cluster):
    before = cluster.settled("leapdecode_cancelled_generations_total")
    body = {"messages": [{"role": "user", "content": "Write a very long story about a dragon."}],
            "max_tokens": 2000, "temperature": 0, "stream": True}
    with cluster.http.stream("POST", "/v1/chat/completions", json=body) as reply:
        lines = reply.iter_lines()
        while "content" not in next(lines):
            pass  # the first text chunk: the generation runs; then the client goes away
    deadline = time.monotonic() + 30
    while cluster.total("leapdecode_cancelled_generations_total") < before + 1:
        assert time.monotonic() < deadline, "the replica went on generating for a client that left"
        time.sleep(0.2)
    assert cluster.settled("leapdecode_requests_running") == 0


def stream_chat(cluster: Cluster, i: int, record: dict) -> None:
    """One streaming chat request (no retries); records its replica, whether it finished, or how it failed."""
    body = {"messages": [{"role": "user", "content": f"Tell me a story about the number {i}."}],
            "max_tokens": 64, "temperature": 0, "stream": True}
    try:
        with cluster.http.stream("POST", "/v1/chat/completions", json=body) as reply:
            record["status"], record["replica"] = reply.status_code, reply.headers.get(REPLICA)
            for line in reply.iter_lines():
                if line == "data: [DONE]":
                    record["done"] = True
    except httpx.HTTPError as err:  # the connection cut: a clean failure, the client knows
        record["error"] = type(err).__name__


def complete(cluster: Cluster, i: int, record: dict) -> None:
    """One completion through the OpenAI client with its default retries (a 5xx is retried)."""
    client = openai.OpenAI(base_url=f"{cluster.url}/v1", api_key="x", max_retries=2, timeout=120)
    reply = client.completions.with_raw_response.create(model="leapdecode", prompt=f"{i} times {i} is",
                                                        max_tokens=32, temperature=0)
    record["status"], record["replica"] = reply.status_code, reply.headers[REPLICA]
    record["done"] = reply.parse().choices[0].finish_reason is not None


def test_a_killed_replica_loses_only_its_requests_and_comes_back(cluster):
    import ray
    from ray import serve

    from leapdecode.cluster import APP_NAME, STALE_S

    streams, completions = [{} for _ in range(8)], [{} for _ in range(8)]
    threads = [threading.Thread(target=stream_chat, args=(cluster, i, r)) for i, r in enumerate(streams)]
    threads += [threading.Thread(target=complete, args=(cluster, i, r)) for i, r in enumerate(completions)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while not any(r.get("replica") for r in streams):  # a stream is running: kill its replica
        assert time.monotonic() < deadline, streams
        time.sleep(0.02)
    victim = next(r["replica"] for r in streams if r.get("replica"))
    ray.kill(ray.get_actor(f"SERVE_REPLICA::{APP_NAME}#engine#{victim}", namespace="serve"), no_restart=True)
    for thread in threads:
        thread.join(timeout=120)
        assert not thread.is_alive(), "a request hung after its replica died"

    cut = [r for r in streams if not r.get("done")]
    print(f"\nkilled {victim} mid-stream; streams not finished: "
          f"{Counter((r.get('replica'), r.get('status'), r.get('error')) for r in cut)}; "
          f"completions (retried by the client) by replica: {Counter(r['replica'] for r in completions)}")
    assert cut and all(r.get("replica") in (victim, None) for r in cut), streams  # only the victim's
    assert all(r.get("done") for r in streams if r.get("replica") not in (victim, None))
    assert all(r["status"] == 200 and r["done"] and r["replica"] != victim for r in completions)

    # Serve starts a new replica in its place; it serves, and /metrics forgets the dead one
    deadline = time.monotonic() + 120
    while True:
        states = serve.status().applications[APP_NAME].deployments["engine"].replica_states
        replicas = cluster.replicas()
        if states.get("RUNNING") == 2 and len(replicas) == 2 and victim not in replicas:
            break
        assert time.monotonic() < deadline, (states, replicas)
        time.sleep(STALE_S / 5)
    with ThreadPoolExecutor(8) as pool:
        served = set(pool.map(lambda i: cluster.http.post("/v1/completions", json={
            "prompt": f"{i} + {i} =", "max_tokens": 4, "temperature": 0}).headers[REPLICA], range(8)))
    assert served <= replicas and victim not in served


# ---- bad input: one line, exit code 2, before anything starts --------------------------------
def serve_error(capsys, *flags: str) -> str:
    assert main(["serve", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    return err


def test_zero_replicas(capsys):
    assert "--replicas must be >= 1, got 0" in serve_error(capsys, "--replicas", "0")
    assert "--min-replicas 3 is more than --max-replicas 2" in serve_error(
        capsys, "--min-replicas", "3", "--max-replicas", "2")


def test_more_replicas_than_cores(capsys):
    cores = len(os.sched_getaffinity(0))
    err = serve_error(capsys, "--replicas", str(cores + 1))
    assert f"needs {cores + 1} CPU cores, and there are {cores}" in err
    assert "needs" in serve_error(capsys, "--replicas", "1", "--threads", str(cores + 1))


def test_a_ray_address_that_does_not_answer(capsys):
    pytest.importorskip("ray.serve")
    started = time.monotonic()
    err = serve_error(capsys, "--replicas", "1", "--threads", "1", "--ray-address", f"127.0.0.1:{free_port()}")
    assert "no Ray cluster answers at 127.0.0.1:" in err and "ray start --head" in err
    assert time.monotonic() - started < 10


def test_without_ray_replicas_say_how_to_install_it():
    code = ("import sys; sys.modules['ray'] = None  # as if Ray were not installed\n"
            "from leapdecode.cli import main; sys.exit(main(['serve', '--replicas', '1', '--threads', '1']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") == 0
    assert "pip install 'leapdecode[cluster]'" in done.stderr
