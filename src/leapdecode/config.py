"""GenerationConfig: what a request asks for, validated once with errors that name the fix."""

from __future__ import annotations

from dataclasses import dataclass, field

from . import validate
from .sampling import SamplingParams

MAX_NEW_TOKENS = 2**31 - 1
MAX_TOP_LOGPROBS = 20  # alternatives per token a request may ask for (the OpenAI chat API's limit)


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    budget: int | str | None = None  # draft tokens per step; None = the drafter's default; "auto"
    ignore_eos: bool = False
    logprobs: int | None = None  # None: none; k: each new token's log-probability and the top k
    sampling: SamplingParams = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_new_tokens", validate.integer(
            "max_new_tokens", self.max_new_tokens, 0, MAX_NEW_TOKENS, example=128))
        if self.budget is not None and self.budget != "auto":
            object.__setattr__(self, "budget", validate.integer(
                "budget (draft tokens per step)", self.budget, 1, 4096, example=8))
        if self.logprobs is not None:
            object.__setattr__(self, "logprobs", validate.integer(
                "logprobs (alternatives per token)", self.logprobs, 0, MAX_TOP_LOGPROBS, example=5))
        if self.stop is None:
            stop: tuple = ()
        elif isinstance(self.stop, str):
            stop = (self.stop,)
        elif isinstance(self.stop, (list, tuple)):
            stop = tuple(self.stop)
        else:
            raise ValueError(f"stop must be a string or a list of strings, got {self.stop!r}")
        if any(not isinstance(s, str) or not s or _has_surrogate(s) for s in stop):
            raise ValueError(f"stop strings must be non-empty strings, got {self.stop!r}")
        object.__setattr__(self, "stop", stop)
        object.__setattr__(
            self, "sampling", SamplingParams(self.temperature, self.top_k, self.top_p, self.seed)
        )


def _has_surrogate(text: str) -> bool:
    """Lone surrogates (e.g. from undecodable argv bytes) cannot be encoded as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
