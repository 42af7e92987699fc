"""Request validation on literal bodies: no model, no server."""

import pytest

from leapdecode.server.protocol import APIError, parse_chat, parse_completion, parse_json

NAMES = ("smollm2-135m", "leapdecode")


def completion(**body):
    return parse_completion(body, NAMES, "prompt-lookup")


def chat(**body):
    return parse_chat(body, NAMES, "prompt-lookup")


def refused(parse, body) -> APIError:
    with pytest.raises(APIError) as info:
        parse(**body)
    return info.value


def test_defaults_follow_openai():
    req = completion(prompt="Hi", model="smollm2-135m")
    assert req.prompts == ("Hi",) and not req.chat and not req.stream
    assert req.method == "prompt-lookup"
    assert req.config.max_new_tokens == 128
    assert req.config.temperature == 1.0  # OpenAI's default: an omitted temperature samples
    assert req.config.top_p == 1.0 and req.config.stop == () and req.config.seed is None


def test_fields_reach_the_config():
    req = completion(prompt="Hi", model="leapdecode", method="none", max_tokens=7, temperature=0,
                     top_p=0.5, top_k=3, seed=11, stop="\n", budget=4, stream=True,
                     stream_options={"include_usage": True})
    c = req.config
    assert (c.max_new_tokens, c.temperature, c.top_p, c.top_k, c.seed, c.stop, c.budget) == (
        7, 0.0, 0.5, 3, 11, ("\n",), 4)
    assert req.method == "none" and req.stream and req.include_usage
    assert c.sampling.greedy


def test_prompt_shapes():
    assert completion(prompt=["Hi"]).prompts == ("Hi",)
    assert completion(prompt=[1, 2, 3]).prompts == ([1, 2, 3],)
    assert completion(prompt=[[4, 5]]).prompts == ([4, 5],)


def test_chat_messages_and_limits():
    parts = [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]
    req = chat(messages=[{"role": "developer", "content": "Be brief."}, {"role": "user", "content": parts}],
               max_tokens=9, max_completion_tokens=5)
    assert req.chat and req.kind == "chat"
    assert req.prompts[0] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    assert req.config.max_new_tokens == 5  # max_completion_tokens wins, as in the OpenAI API
    assert chat(messages=[{"role": "user", "content": "x"}], stop=["a", "b"]).config.stop == ("a", "b")


@pytest.mark.parametrize("body, param, code", [
    ({}, "prompt", "missing_required_parameter"),
    ({"prompt": None}, "prompt", "missing_required_parameter"),
    ({"prompt": "  "}, "prompt", "invalid_value"),
    ({"prompt": 5}, "prompt", "invalid_value"),
    ({"prompt": [1, -2]}, "prompt", "invalid_value"),
    ({"prompt": [True]}, "prompt", "invalid_value"),
    ({"prompt": "x", "method": "psychic"}, "method", "invalid_value"),
    ({"prompt": "x", "max_tokens": -1}, "max_tokens", "invalid_value"),
    ({"prompt": "x", "max_tokens": 2.5}, "max_tokens", "invalid_value"),
    ({"prompt": "x", "max_tokens": "8"}, "max_tokens", "invalid_value"),
    ({"prompt": "x", "temperature": -0.1}, "temperature", "invalid_value"),
    ({"prompt": "x", "temperature": 2.5}, "temperature", "invalid_value"),
    ({"prompt": "x", "temperature": True}, "temperature", "invalid_value"),
    ({"prompt": "x", "temperature": float("inf")}, "temperature", "invalid_value"),
    ({"prompt": "x", "top_p": 0}, "top_p", "invalid_value"),
    ({"prompt": "x", "top_p": 1.5}, "top_p", "invalid_value"),
    ({"prompt": "x", "top_k": -1}, "top_k", "invalid_value"),
    ({"prompt": "x", "seed": "s"}, "seed", "invalid_value"),
    ({"prompt": "x", "seed": 2**64}, "seed", "invalid_value"),
    ({"prompt": "x", "stop": ""}, "stop", "invalid_value"),
    ({"prompt": "x", "stop": ["ok", 3]}, "stop", "invalid_value"),
    ({"prompt": "x", "budget": 0}, "budget", "invalid_value"),
    ({"prompt": "x", "stream": "yes"}, "stream", "invalid_value"),
    ({"prompt": "x", "n": 17}, "n", "invalid_value"),  # above MAX_N
    ({"prompt": "x", "n": 0}, "n", "invalid_value"),
    ({"prompt": "x", "logprobs": 6}, "logprobs", "invalid_value"),  # above the completions API's 5
    ({"prompt": "x", "logprobs": True}, "logprobs", "invalid_value"),
    ({"prompt": "x", "n": 2, "temperature": 0, "stop": "."}, "stop", "unsupported_parameter"),  # beams
    ({"prompt": "x", "n": 2, "temperature": 0, "logprobs": 1}, "logprobs", "unsupported_parameter"),
    ({"prompt": ["x", ""]}, "prompt[1]", "invalid_value"),
    ({"prompt": ["x", 3]}, "prompt", "invalid_value"),
    ({"prompt": "x", "echo": True}, "echo", "unsupported_parameter"),
    ({"prompt": "x", "presence_penalty": 0.5}, "presence_penalty", "unsupported_parameter"),
])
def test_bad_completion_bodies_are_400(body, param, code):
    err = refused(completion, body)
    assert (err.status, err.param, err.code, err.type) == (400, param, code, "invalid_request_error")
    assert err.body()["error"]["message"]


def test_neutral_values_of_unsupported_fields_are_accepted():
    completion(prompt="x", n=1, echo=False, logprobs=None, top_logprobs=None, presence_penalty=0, frequency_penalty=0.0,
               logit_bias={}, best_of=1, suffix="")


def test_several_prompts_and_choices():
    req = completion(prompt=["a", [5, 6]], n=3, temperature=0.5, seed=10)
    assert req.prompts == ("a", [5, 6]) and req.n == 3 and not req.beams
    choices = req.choices()
    assert [(i, p) for i, p, _ in choices] == [(0, "a"), (1, "a"), (2, "a"), (3, [5, 6]), (4, [5, 6]), (5, [5, 6])]
    assert [c.seed for _, _, c in choices] == [10, 11, 12, 10, 11, 12]  # sample j: seed + j
    top = completion(prompt="a", n=2, seed=2**64 - 1).choices()
    assert top[1][2].seed == -(2**63)  # wraps inside the seeds torch takes
    assert completion(prompt="a", n=2, temperature=0).beams


def test_logprobs_fields():
    assert completion(prompt="a").config.logprobs is None
    assert completion(prompt="a", logprobs=0).config.logprobs == 0
    assert completion(prompt="a", logprobs=5).config.logprobs == 5
    assert chat(messages=[{"role": "user", "content": "a"}], logprobs=True).config.logprobs == 0
    assert chat(messages=[{"role": "user", "content": "a"}], logprobs=True, top_logprobs=20).config.logprobs == 20
    for body, param in (({"logprobs": False, "top_logprobs": 2}, "top_logprobs"),
                        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
                        ({"logprobs": 1}, "logprobs")):
        err = refused(chat, {"messages": [{"role": "user", "content": "a"}], **body})
        assert (err.status, err.param) == (400, param)
    assert "20" in refused(chat, {"messages": [{"role": "user", "content": "a"}], "logprobs": True,
                                  "top_logprobs": 21}).message  # the limit is named


def test_unknown_model_is_404():
    err = refused(completion, {"prompt": "x", "model": "gpt-4"})
    assert (err.status, err.param, err.code) == (404, "model", "model_not_found")


IMAGE = [{"type": "image_url", "image_url": {}}]


@pytest.mark.parametrize("messages", [None, [], "hi", [{"content": "hi"}], [{"role": "user", "content": 3}],
                                      [{"role": "user", "content": "  "}], [{"role": "user", "content": IMAGE}]])
def test_bad_messages_are_400(messages):
    err = refused(chat, {"messages": messages})
    assert err.status == 400 and err.param.startswith("messages")


@pytest.mark.parametrize("raw", [b"{", b"", b"\xff\xfe", b'{"temperature": NaN}', b"[1, 2"])
def test_malformed_json_is_400(raw):
    with pytest.raises(APIError) as info:
        parse_json(raw)
    assert (info.value.status, info.value.code) == (400, "invalid_json")


def test_body_must_be_an_object():
    for body in ([1, 2], "prompt", None):
        with pytest.raises(APIError) as info:
            parse_completion(body, NAMES, "none")
        assert info.value.status == 400
