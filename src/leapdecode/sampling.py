"""Logits -> next-token probabilities: temperature, top-k, top-p.

`make_sampler(temperature, top_k, top_p)` returns a callable that turns logits [..., vocab] into
probabilities [..., vocab] of the distribution the model samples from. Temperature 0 means greedy;
the greedy path never builds probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

Warp = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0
    top_k: int = 0  # 0 = no limit
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.temperature, (int, float)) or self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 = no limit), got {self.top_k!r}")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def make_warp(params: SamplingParams) -> Warp:
    """Return logits [..., vocab] -> probabilities [..., vocab] for sampled decoding."""
    if params.greedy:
        raise ValueError("greedy decoding has no sampling distribution; use argmax")

    def warp(logits: torch.Tensor) -> torch.Tensor:
        scores = logits.float() / params.temperature
        if params.top_k and params.top_k < scores.shape[-1]:
            kth = torch.topk(scores, params.top_k, dim=-1).values[..., -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if params.top_p < 1.0:
            sorted_scores, order = torch.sort(scores, dim=-1, descending=True)
            sorted_probs = torch.softmax(sorted_scores, dim=-1)
            # drop a token when the tokens ranked above it already cover top_p
            drop_sorted = (torch.cumsum(sorted_probs, dim=-1) - sorted_probs) >= params.top_p
            drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
            scores = scores.masked_fill(drop, float("-inf"))
        return torch.softmax(scores, dim=-1)

    return warp


def make_generator(seed: int | None) -> torch.Generator:
    gen = torch.Generator()
    gen.manual_seed(seed if seed is not None else torch.seed())
    return gen
