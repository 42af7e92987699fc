"""OpenAI request bodies -> validated generation requests, and OpenAI-style errors.

Every user error becomes an `APIError` (a 4xx with `{"error": {message, type, param, code}}`)
before the request reaches the engine; the one check that needs the tokenizer (a prompt longer
than the context window) is made by the worker, still before any response byte is sent.

Sampling defaults follow the OpenAI protocol, so a client written for it gets what it expects:
an omitted `temperature` means 1.0 (sampling); send `temperature: 0` for greedy decoding, which
is token-identical to `leapdecode generate`. Extra fields: `method` (a drafter name), `top_k`,
`budget` (draft tokens per step).

Several choices: a completion's `prompt` may be a list of prompts, and `n` asks for n choices per
prompt (choice index = prompt index * n + j). With temperature > 0 they are independent samples
(with a `seed`, sample j uses seed + j); with temperature 0 they are the n best beams of beam
search. `logprobs` (completions: the number of alternatives, at most 5; chat: `logprobs: true`
and `top_logprobs` up to 20) gives each new token's log-probability under the model, before
temperature, top-k and top-p.

Streaming with `stream_options: {"include_steps": true}` adds a chunk per decoding step (its
tokens, how many the target accepted from the draft, the draft's size and alternatives) before
the text it produced: the web view's data (docs/webview.md). Without it the stream is OpenAI's.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from ..config import MAX_TOP_LOGPROBS, GenerationConfig
from .. import validate
from ..drafters import DRAFTERS

DEFAULT_MAX_TOKENS = 128
DEFAULT_TEMPERATURE = 1.0  # the OpenAI default; 0 = greedy
MODEL_ALIAS = "leapdecode"  # accepted as a model name besides the served model's own
MAX_N = 16  # choices per prompt (create_app / serve --max-n)
MAX_COMPLETION_LOGPROBS = 5  # the completions API's limit; chat's top_logprobs goes to MAX_TOP_LOGPROBS

# fields of the OpenAI protocol this server does not implement: accepted only when absent,
# null or at their neutral value, so a request never silently means something else
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "best_of": (1,),
    "echo": (False,),
    "suffix": ("",),
    "presence_penalty": (0, 0.0),
    "frequency_penalty": (0, 0.0),
    "logit_bias": ({},),
    "tools": ([],),
}


class APIError(Exception):
    """A request the server refuses, in OpenAI's error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid(param: str | None, message: str, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


@dataclass(frozen=True)
class GenRequest:
    """What the engine is asked to do for one HTTP request."""

    kind: str  # "completion" or "chat"
    prompts: tuple  # each a text, token ids, or chat messages (chat: exactly one)
    chat: bool  # wrap a text prompt in the chat template (chat endpoint only)
    config: GenerationConfig
    method: str
    stream: bool
    include_usage: bool  # stream_options.include_usage: a last chunk carrying usage
    n: int = 1  # choices per prompt
    include_steps: bool = False  # stream_options.include_steps: a chunk per decoding step (streaming only)

    @property
    def beams(self) -> bool:
        """n > 1 at temperature 0: the n best beams of beam search."""
        return self.n > 1 and self.config.sampling.greedy

    def choices(self) -> list[tuple[int, Any, GenerationConfig]]:
        """(choice index, prompt, config) of every sampled or greedy choice (not beams)."""
        out = []
        for i, prompt in enumerate(self.prompts):
            for j in range(self.n):
                config = self.config
                if j and config.seed is not None:  # distinct yet reproducible samples
                    span = validate.SEED_MAX - validate.SEED_MIN + 1
                    seed = (config.seed + j - validate.SEED_MIN) % span + validate.SEED_MIN
                    config = dataclasses.replace(config, seed=seed)
                out.append((i * self.n + j, prompt, config))
        return out


def parse_completion(body: Any, model_names: tuple[str, ...], default_method: str,
                     max_n: int = MAX_N) -> GenRequest:
    """Validate a POST /v1/completions body. The prompt is taken raw (no chat template)."""
    body = _object(body)
    if "prompt" not in body or body["prompt"] is None:
        raise invalid("prompt", "you must provide a prompt", "missing_required_parameter")
    logprobs = _integer(body, "logprobs", None, minimum=0, maximum=MAX_COMPLETION_LOGPROBS)
    return _request(body, "completion", _prompts(body["prompt"]), False, "max_tokens", model_names,
                    default_method, max_n, logprobs)


def parse_chat(body: Any, model_names: tuple[str, ...], default_method: str,
               max_n: int = MAX_N) -> GenRequest:
    """Validate a POST /v1/chat/completions body; messages go through the chat template."""
    body = _object(body)
    if "messages" not in body or body["messages"] is None:
        raise invalid("messages", "you must provide messages", "missing_required_parameter")
    limit = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    top = _integer(body, "top_logprobs", None, minimum=0, maximum=MAX_TOP_LOGPROBS)
    logprobs = 0 if _flag(body, "logprobs") else None
    if top is not None:
        if logprobs is None:
            raise invalid("top_logprobs", "top_logprobs needs logprobs: true")
        logprobs = top
    return _request(body, "chat", (_messages(body["messages"]),), True, limit, model_names,
                    default_method, max_n, logprobs)


def _request(
    body: dict, kind: str, prompts: tuple, chat: bool, limit: str, model_names: tuple[str, ...],
    default_method: str, max_n: int, logprobs: int | None,
) -> GenRequest:
    _check_model(body.get("model"), model_names)
    _check_unsupported(body)
    method = body.get("method", default_method)
    if method is None:
        method = default_method
    if not isinstance(method, str) or method not in DRAFTERS:
        raise invalid("method", f"unknown method {method!r}; choose one of: {', '.join(DRAFTERS)}")
    stream = _flag(body, "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise invalid("stream_options", "stream_options must be an object")
    fields = dict(
        max_new_tokens=_integer(body, limit, DEFAULT_MAX_TOKENS, minimum=0, maximum=2**31 - 1),
        temperature=_number(body, "temperature", DEFAULT_TEMPERATURE, 0.0, 2.0, "in [0, 2] (0 = greedy)"),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, "in (0, 1]", open_low=True),
        top_k=_integer(body, "top_k", 0, minimum=0, maximum=2**31 - 1),
        seed=_integer(body, "seed", None, minimum=validate.SEED_MIN, maximum=validate.SEED_MAX),
        stop=_stop(body.get("stop")),
        budget=_integer(body, "budget", None, minimum=1, maximum=4096),
        logprobs=logprobs,
    )
    n = _integer(body, "n", 1, minimum=1)
    if n > max_n:
        raise invalid("n", f"n={n} is above this server's limit of {max_n} choices per prompt; ask for fewer "
                      "(or start the server with a larger --max-n)")
    try:
        config = GenerationConfig(**fields)
    except ValueError as err:  # anything the checks above let through
        raise invalid(None, str(err)) from None
    steps = _flag(options, "include_steps")
    gen = GenRequest(kind, prompts, chat, config, method, stream, bool(options.get("include_usage")), n, steps)
    if gen.beams:
        for name, bad in (("logprobs", logprobs is not None), ("stop", bool(config.stop)),
                          ("include_steps", steps)):
            if bad:
                raise invalid(name, f"{name} is not available with beams (n > 1 at temperature 0); "
                              "drop it, or send temperature > 0 for n independent samples", "unsupported_parameter")
    return gen


def _object(body: Any) -> dict:
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_type")
    return body


def _check_model(model: Any, names: tuple[str, ...]) -> None:
    if model is None:
        return  # a missing model means the served one
    if not isinstance(model, str) or model not in names:
        raise APIError(
            404, f"the model {model!r} does not exist; this server serves {' or '.join(map(repr, names))}",
            param="model", code="model_not_found",
        )


def _check_unsupported(body: dict) -> None:
    for name, neutral in NEUTRAL.items():
        value = body.get(name)
        if value is not None and not any(
            value == n and isinstance(value, bool) == isinstance(n, bool) for n in neutral
        ):
            raise invalid(name, f"{name}={value!r} is not supported by this server", "unsupported_parameter")


def _flag(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise invalid(name, f"{name} must be true or false, got {value!r}")
    return value


def _integer(
    body: dict, name: str, default: int | None, minimum: int | None = None, maximum: int | None = None
) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    try:
        return validate.integer(name, value, minimum, maximum)
    except ValueError as err:
        raise invalid(name, str(err)) from None


def _number(
    body: dict, name: str, default: float, low: float, high: float, expected: str, open_low: bool = False
) -> float:
    value = body.get(name)
    if value is None:
        return default
    try:
        return validate.number(name, value, low, high, open_low=open_low)
    except ValueError as err:
        raise invalid(name, f"{err}; {name} must be {expected}") from None


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise invalid("stop", f"stop must be a non-empty string or a list of them, got {value!r}")
    return tuple(stops)


def _prompts(value: Any) -> tuple:
    """A string, a list of token ids, or a non-empty list of those (a batch of prompts)."""
    if isinstance(value, list) and value and all(isinstance(p, (str, list)) for p in value):
        return tuple(_prompt(p, f"prompt[{i}]") for i, p in enumerate(value))
    return (_prompt(value, "prompt"),)


def _prompt(value: Any, param: str) -> str | list[int]:
    if isinstance(value, str):
        if not value.strip():
            raise invalid(param, f"the {param} is empty; pass some text to continue")
        return _utf8(value, param)
    if isinstance(value, list) and value and all(type(t) is int and t >= 0 for t in value):
        return list(value)
    raise invalid(param, f"{param} must be a non-empty string or a list of token ids")


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise invalid("messages", "messages must be a non-empty list of {role, content} objects")
    out = []
    for i, message in enumerate(value):
        param = f"messages[{i}]"
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) or not message["role"]:
            raise invalid(param, f"{param} must be an object with a string role and a content")
        role = "system" if message["role"] == "developer" else message["role"]
        out.append({"role": role, "content": _content(message.get("content"), param)})
    if not any(m["content"].strip() for m in out):
        raise invalid("messages", "the messages are empty; pass some text to continue")
    return out


def _content(content: Any, param: str) -> str:
    """A message's text: a string, null, or a list of {"type": "text", "text": ...} parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return _utf8(content, f"{param}.content")
    if isinstance(content, list):
        parts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise invalid(f"{param}.content", "only text content parts are supported",
                              "unsupported_parameter")
            parts.append(part["text"])
        return _utf8("".join(parts), f"{param}.content")
    raise invalid(f"{param}.content", "content must be a string or a list of text parts")


def _utf8(text: str, param: str) -> str:
    """JSON may carry lone surrogates (\\ud800), which no tokenizer can encode: a 400, not a 500."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise invalid(param, f"{param} is not valid Unicode (a lone surrogate at character {err.start}); "
                      "send UTF-8 text") from None
    return text


def check_prompt_size(prompt: Any, max_chars: int) -> None:
    """Refuse a prompt longer than max_chars characters before anything tokenizes it."""
    if isinstance(prompt, tuple):  # a request's prompts
        for one in prompt:
            check_prompt_size(one, max_chars)
        return
    if isinstance(prompt, str):
        size, param = len(prompt), "prompt"
    elif prompt and isinstance(prompt[0], dict):
        size, param = sum(len(m["content"]) + len(m["role"]) for m in prompt), "messages"
    else:
        size, param = len(prompt), "prompt"
    if size > max_chars:
        raise invalid(param, f"the {param} has {size} characters but this server takes at most {max_chars} "
                      "(a few per context-window token); shorten it", "context_length_exceeded")


def parse_json(raw: bytes) -> Any:
    """The request body as JSON; NaN and Infinity are refused like any other malformed JSON."""

    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not valid JSON")

    try:
        return json.loads(raw, parse_constant=refuse)
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        raise APIError(400, f"the request body is not valid JSON: {err}", code="invalid_json") from None
