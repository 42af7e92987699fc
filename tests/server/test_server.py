"""End to end against a real uvicorn server on loopback, through the official openai client.

Greedy replies must equal `engine.generate` for the same request, token for token.
"""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from leapdecode import GenerationConfig
from leapdecode.drafters import DEFAULT_METHOD
from leapdecode.drafters.prompt_lookup import PromptLookupDrafter

from .support import ServerThread, extra, metric, solo, wait_idle

# a prompt the model continues by copying: prompt lookup drafts the copy, and the first step
# accepts about ten tokens at once
ROSES = "Roses are red, violets are blue, sugar is sweet, and so are you.\n" * 3 + "Roses are red,"
COUNTING = "Count from 1 to 1000: 1, 2, 3,"


def test_models_and_health(server, client, engine):
    assert [m.id for m in client.models.list().data] == [engine.name]
    assert httpx.get(f"{server.url}/health", timeout=10).json()["status"] == "ok"


def test_completion_equals_generate(client, engine):
    prompt = "The capital of France is"
    want = solo(engine, prompt, chat=False, max_new_tokens=10)
    got = client.completions.create(model=engine.name, prompt=prompt, max_tokens=10, temperature=0)
    assert got.choices[0].text == want.text
    assert extra(got)["token_ids"] == want.token_ids
    assert got.choices[0].finish_reason == want.finish_reason
    assert got.usage.prompt_tokens == len(engine.encode(prompt, chat=False))
    assert got.usage.completion_tokens == len(want.token_ids)
    assert got.object == "text_completion" and got.model == engine.name


def test_streamed_completion_equals_generate(client, engine):
    want = solo(engine, COUNTING, chat=False, max_new_tokens=12, method="none")
    chunks = list(client.completions.create(
        model="leapdecode", prompt=COUNTING, max_tokens=12, temperature=0, stream=True,
        extra_body={"method": "none"}, stream_options={"include_usage": True}))
    text_chunks = [c for c in chunks if c.choices]
    assert "".join(c.choices[0].text for c in text_chunks) == want.text
    assert len(text_chunks) >= 3  # really streamed, not one blob
    assert [c.choices[0].finish_reason for c in text_chunks][-1] == "length"
    assert all(c.choices[0].finish_reason is None for c in text_chunks[:-1])
    assert extra(text_chunks[-1])["token_ids"] == want.token_ids
    assert chunks[-1].usage.completion_tokens == 12
    assert len({c.id for c in chunks}) == 1


def test_chat_equals_generate(client, engine):
    question = "Name three colours."
    want = solo(engine, question, chat=True, max_new_tokens=10)  # what `leapdecode generate` does
    got = client.chat.completions.create(model=engine.name, messages=[{"role": "user", "content": question}],
                                         max_tokens=10, temperature=0)
    assert got.choices[0].message.role == "assistant"
    assert got.choices[0].message.content == want.text
    assert extra(got)["token_ids"] == want.token_ids
    assert got.usage.prompt_tokens == len(engine.encode(question))

    messages = [{"role": "system", "content": "Answer in one word."},
                {"role": "user", "content": "Sky colour?"}]
    want = solo(engine, messages, chat=True, max_new_tokens=6)
    stream = client.chat.completions.create(model=engine.name, messages=messages, max_tokens=6, temperature=0,
                                            stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want.text
    assert chunks[-1].choices[0].finish_reason == want.finish_reason


def test_seeded_sampling_equals_generate(client, engine):
    want = solo(engine, "Once upon a time", chat=False, max_new_tokens=8, temperature=0.9, top_p=0.95, seed=7)
    got = client.completions.create(model=engine.name, prompt="Once upon a time", max_tokens=8,
                                    temperature=0.9, top_p=0.95, seed=7)
    assert extra(got)["token_ids"] == want.token_ids


def test_a_prompt_list_with_n_samples_gives_each_choice_its_solo_reply(client, engine):
    prompts = ["Once upon a time", "The best way to cook rice is"]
    got = client.completions.create(model=engine.name, prompt=prompts, n=2, max_tokens=8, temperature=0.9,
                                    seed=11, extra_body={"method": "prompt-lookup"})  # the sample depends on it
    assert [c.index for c in got.choices] == [0, 1, 2, 3]
    ids = [c["token_ids"] for c in extra(got)["choices"]]
    for index, choice in enumerate(got.choices):
        want = solo(engine, prompts[index // 2], chat=False, max_new_tokens=8, temperature=0.9, seed=11 + index % 2)
        assert ids[index] == want.token_ids and choice.text == want.text
    assert got.usage.prompt_tokens == sum(len(engine.encode(p, chat=False)) for p in prompts)
    assert got.usage.completion_tokens == sum(map(len, ids))

    # greedy prompts in a batch, streamed: each choice's deltas are its solo text
    chunks = list(client.completions.create(model=engine.name, prompt=prompts, max_tokens=8, temperature=0,
                                            stream=True))
    for index, prompt in enumerate(prompts):
        text = "".join(c.choices[0].text for c in chunks if c.choices and c.choices[0].index == index)
        assert text == solo(engine, prompt, chat=False, max_new_tokens=8).text


def test_n_at_temperature_zero_gives_the_beams(client, engine):
    from leapdecode.decoding import decode

    got = client.completions.create(model=engine.name, prompt="The capital of France is", n=3, max_tokens=6,
                                    temperature=0)
    want = decode(engine, "The capital of France is", "beam", chat=False, num_beams=3, max_new_tokens=6)
    assert [c["token_ids"] for c in extra(got)["choices"]] == [w.token_ids for w in want]
    assert [c.text for c in got.choices] == [w.text for w in want]


def test_logprobs_are_the_models_and_pick_the_greedy_token(client, engine):
    import torch

    prompt = "The capital of France is"
    got = client.completions.create(model=engine.name, prompt=prompt, max_tokens=8, temperature=0, logprobs=3)
    lp, ids = got.choices[0].logprobs, extra(got)["token_ids"]
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(ids) == 8
    assert "".join(lp.tokens) == got.choices[0].text
    assert lp.text_offset == [sum(map(len, lp.tokens[:i])) for i in range(8)]
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert len(top) == 3 and max(top.values()) == chosen  # greedy: the chosen token is the top one
    # the same numbers as one plain forward over prompt + reply (float32; widths round differently)
    full = torch.tensor([engine.encode(prompt, chat=False) + ids])
    with torch.no_grad():
        rows = torch.log_softmax(engine.target.model(full).logits[0, -9:-1].float(), -1)
    want = rows[torch.arange(8), torch.tensor(ids)]
    assert torch.allclose(torch.tensor(lp.token_logprobs), want, atol=1e-3)

    question = [{"role": "user", "content": "Name a colour."}]
    whole = client.chat.completions.create(model=engine.name, messages=question, max_tokens=6, temperature=0,
                                           logprobs=True, top_logprobs=2)
    chunks = list(client.chat.completions.create(model=engine.name, messages=question, max_tokens=6,
                                                 temperature=0, logprobs=True, top_logprobs=2, stream=True))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    content = whole.choices[0].logprobs.content
    assert len(content) == whole.usage.completion_tokens == 6
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in content]
    assert all(len(e.top_logprobs) == 2 and e.top_logprobs[0].logprob == e.logprob for e in content)
    assert bytes(content[0].bytes).decode() == content[0].token


def test_stop_string_inside_an_accepted_run(client, engine):
    class Recorder(PromptLookupDrafter):
        def reset(self, prompt):
            self.runs = []

        def observe(self, result):
            self.runs.append(len(result.accepted) + 1)

    # without a stop: the first step emits a run of tokens that covers "sugar" and goes past it
    recorder = Recorder()
    free = engine.generate(ROSES, GenerationConfig(max_new_tokens=16), recorder, chat=False)
    first_run = engine.tokenizer.decode(free.token_ids[: recorder.runs[0]])
    assert "sugar" in first_run and not first_run.rstrip().endswith("sugar"), (first_run, recorder.runs)

    want = solo(engine, ROSES, chat=False, max_new_tokens=16, stop=("so are", "sugar"))
    assert want.finish_reason == "stop" and want.text == free.text[: free.text.index("sugar")]
    for method in ("prompt-lookup", "none"):
        body = dict(model=engine.name, prompt=ROSES, max_tokens=16, temperature=0, stop=["so are", "sugar"],
                    extra_body={"method": method})
        whole = client.completions.create(**body)
        assert whole.choices[0].text == want.text and whole.choices[0].finish_reason == "stop"
        assert extra(whole)["token_ids"] == want.token_ids
        chunks = client.completions.create(**body, stream=True)
        deltas = [(c.choices[0].text, c.choices[0].finish_reason) for c in chunks]
        assert "".join(text for text, _ in deltas) == want.text
        assert deltas[-1][1] == "stop"
        streamed = "".join(text for text, _ in deltas)
        assert "sugar" not in streamed and "sweet" not in streamed


def test_max_tokens_zero_and_eos(client, engine):
    got = client.completions.create(model=engine.name, prompt="Hello", max_tokens=0, temperature=0)
    assert got.choices[0].text == "" and got.choices[0].finish_reason == "length"
    assert got.usage.completion_tokens == 0

    question = [{"role": "user", "content": "Answer with one word: what colour is the sky?"}]
    want = solo(engine, question, chat=True, max_new_tokens=24)
    assert want.finish_reason == "stop" and want.token_ids[-1] in engine.eos_ids  # ended by EOS
    chunks = list(client.chat.completions.create(model=engine.name, messages=question, max_tokens=24,
                                                 temperature=0, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want.text
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_client_disconnect_stops_the_generation(server, client, engine):
    before = metric(server, "leapdecode_cancelled_generations_total")
    stream = client.completions.create(model=engine.name, prompt=COUNTING, max_tokens=2000, temperature=0,
                                       stream=True)
    for i, _ in enumerate(stream):
        if i == 2:
            break
    stream.close()
    start = time.monotonic()
    wait_idle(server)
    assert time.monotonic() - start < 20  # 2000 tokens would take minutes
    assert metric(server, "leapdecode_cancelled_generations_total") == before + 1

    # a plain request whose client gives up while it runs (or, on a very slow machine, still waits)
    dropped = metric(server, "leapdecode_dropped_requests_total")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/completions", timeout=1.5,
                   json={"prompt": COUNTING, "max_tokens": 2000, "temperature": 0})
    wait_idle(server)
    stopped = metric(server, "leapdecode_cancelled_generations_total") - (before + 1)
    assert stopped + metric(server, "leapdecode_dropped_requests_total") - dropped == 1

    # and the engine is fine afterwards
    want = solo(engine, COUNTING, chat=False, max_new_tokens=6)
    got = client.completions.create(model=engine.name, prompt=COUNTING, max_tokens=6, temperature=0)
    assert extra(got)["token_ids"] == want.token_ids


BAD = [
    # (path, body or raw bytes, status, param)
    ("completions", b'{"prompt": "Hi",', 400, None),
    ("completions", b"not json", 400, None),
    ("completions", b"[1, 2]", 400, None),
    ("completions", {"model": "smollm2-135m"}, 400, "prompt"),
    ("chat/completions", {"model": "smollm2-135m"}, 400, "messages"),
    ("chat/completions", {"messages": []}, 400, "messages"),
    ("completions", {"prompt": "Hi", "model": "gpt-4o"}, 404, "model"),
    ("completions", {"prompt": "Hi", "method": "telepathy"}, 400, "method"),
    ("completions", {"prompt": "Hi", "max_tokens": -1}, 400, "max_tokens"),
    ("chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": -5}, 400,
     "max_tokens"),
    ("completions", {"prompt": "Hi", "temperature": 7}, 400, "temperature"),
    ("completions", {"prompt": "Hi", "top_p": 0}, 400, "top_p"),
    ("completions", {"prompt": "Hi", "stop": [""]}, 400, "stop"),
    ("completions", {"prompt": "Hi", "n": 17}, 400, "n"),  # above the server's --max-n
    ("completions", {"prompt": ["Hi"] * 200}, 400, "prompt"),  # more prompts than the queue has places
    ("completions", {"prompt": "Hi", "logprobs": 6}, 400, "logprobs"),
    ("chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "logprobs": True,
                          "top_logprobs": 21}, 400, "top_logprobs"),
    ("completions", {"prompt": ["Hi", [1] * 9000], "max_tokens": 2}, 400, "prompt"),  # one prompt too long
    ("completions", {"prompt": [1] * 9000}, 400, "prompt"),  # longer than the context window
    ("completions", {"prompt": [1] * 9000, "stream": True}, 400, "prompt"),  # refused before any event
    ("completions", {"prompt": "Hi " * 9000}, 400, "prompt"),
    ("chat/completions", {"messages": [{"role": "user", "content": "Hi " * 9000}]}, 400, "messages"),
    ("completions", {"prompt": [10 ** 7]}, 400, "prompt"),  # not a token of this model
]


@pytest.mark.parametrize("path, body, status, param", BAD)
def test_bad_input_is_4xx_and_the_server_keeps_serving(server, path, body, status, param):
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    response = httpx.post(f"{server.url}/v1/{path}", timeout=60, headers={"content-type": "application/json"},
                          **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param
    assert httpx.get(f"{server.url}/health", timeout=10).json()["status"] == "ok"


def test_errors_reach_the_openai_client(client, engine):
    with pytest.raises(openai.NotFoundError) as info:
        client.completions.create(model="gpt-4o", prompt="Hi", max_tokens=2)
    assert info.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=engine.name, messages=[{"role": "user", "content": "Hi"}],
                                       max_tokens=2, extra_body={"method": "guessing"})
    assert info.value.param == "method"
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=engine.name, prompt="Hi " * 9000, max_tokens=2, stream=True)
    assert info.value.code == "context_length_exceeded"
    got = client.completions.create(model=engine.name, prompt="Hi", max_tokens=2, temperature=0)
    assert got.usage.completion_tokens == 2


def test_unknown_path_and_method_get_openai_errors(server):
    response = httpx.get(f"{server.url}/v1/nothing", timeout=10)
    assert response.status_code == 404 and response.json()["error"]["message"]
    response = httpx.get(f"{server.url}/v1/completions", timeout=10)
    assert response.status_code == 405 and "error" in response.json()


def test_metrics_report_requests_tokens_and_tau(server, client, engine):
    label = f'{{method="{DEFAULT_METHOD}"}}'  # the request names no method: the server's default runs it
    wait_idle(server)
    tokens = metric(server, f'leapdecode_generated_tokens_total{label}')
    steps = metric(server, f'leapdecode_target_passes_total{label}')
    ok = metric(server, 'leapdecode_requests_total{endpoint="/v1/completions",status="200"}')
    got = client.completions.create(model=engine.name, prompt=ROSES, max_tokens=12, temperature=0)
    text = httpx.get(f"{server.url}/metrics", timeout=10)
    assert text.headers["content-type"].startswith("text/plain")
    assert metric(server, f'leapdecode_generated_tokens_total{label}') == tokens + 12
    passes = metric(server, f'leapdecode_target_passes_total{label}')
    assert passes == steps + extra(got)["steps"]
    assert metric(server, 'leapdecode_requests_total{endpoint="/v1/completions",status="200"}') == ok + 1
    tau = metric(server, f'leapdecode_mean_accepted_length{label}')
    assert tau == pytest.approx((tokens + 12) / (steps + extra(got)["steps"]))
    assert metric(server, "leapdecode_queue_depth") == 0


def test_an_engine_factory_is_loaded_at_startup(engine):
    from leapdecode.server import create_app

    calls = []

    def factory():
        calls.append(1)
        return engine

    app = create_app(factory, max_queue=2)
    assert not calls  # nothing is loaded before the server starts
    with ServerThread(app) as other:
        assert calls == [1]
        assert [m.id for m in other.client().models.list().data] == [engine.name]
        assert httpx.get(f"{other.url}/v1/models/leapdecode", timeout=10).json()["id"] == engine.name
