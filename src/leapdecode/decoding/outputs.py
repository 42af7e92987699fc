"""What every multi-output decoder returns: a list of Output, best first."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence


@dataclass(frozen=True)
class Output:
    text: str
    token_ids: list[int]  # new tokens only; an ending EOS is included, as in Engine.generate
    score: float  # the mode's ranking score (see each mode's docstring); higher is better
    finish_reason: str = "length"  # "stop" (ended with EOS) or "length"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_output(tokenizer: Any, eos_ids: set[int], tokens: Sequence[int], score: float) -> Output:
    tokens = [int(t) for t in tokens]
    finish = "stop" if tokens and tokens[-1] in eos_ids else "length"
    return Output(tokenizer.decode(tokens, skip_special_tokens=True), tokens, float(score), finish)
