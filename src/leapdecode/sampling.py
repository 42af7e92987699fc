"""Logits -> next-token probabilities: temperature, top-k, top-p.

`make_sampler(temperature, top_k, top_p)` returns a callable that turns logits [..., vocab] into
probabilities [..., vocab] of the distribution the model samples from. Temperature 0 (or below GREEDY_BELOW) means greedy;
the greedy path never builds probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from . import validate

Warp = Callable[[torch.Tensor], torch.Tensor]

# Below this temperature decoding is greedy (argmax), the T -> 0 limit of sampling. Above it the
# warp divides in float64 after subtracting the row maximum, so logits/T never overflows to inf
# or produces NaN: (l - max) / T <= 0 for every finite T >= GREEDY_BELOW and finite logits.
GREEDY_BELOW = 1e-5
MAX_TEMPERATURE = 1e4


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0
    top_k: int = 0  # 0 = no limit
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        t = validate.number("temperature", self.temperature, 0.0, MAX_TEMPERATURE, example=0.7)
        object.__setattr__(self, "temperature", t)
        object.__setattr__(self, "top_k", validate.integer("top_k", self.top_k, 0, 2**31 - 1, example=50))
        object.__setattr__(self, "top_p", validate.number("top_p", self.top_p, 0.0, 1.0, open_low=True,
                                                          example=0.9))
        if self.seed is not None:
            object.__setattr__(self, "seed", validate.integer("seed", self.seed, validate.SEED_MIN,
                                                              validate.SEED_MAX, example=1234))

    @property
    def greedy(self) -> bool:
        """Temperatures below GREEDY_BELOW are greedy: the limit of sampling as T -> 0."""
        return self.temperature < GREEDY_BELOW


def make_warp(params: SamplingParams) -> Warp:
    """Return logits [..., vocab] -> probabilities [..., vocab] for sampled decoding."""
    if params.greedy:
        raise ValueError("greedy decoding has no sampling distribution; use argmax")

    def warp(logits: torch.Tensor) -> torch.Tensor:
        shifted = logits.double() - logits.double().amax(dim=-1, keepdim=True)
        scores = shifted / params.temperature  # <= 0 everywhere; float64 keeps tiny T finite
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
        return torch.softmax(scores, dim=-1).float()

    return warp


def make_generator(seed: int | None) -> torch.Generator:
    gen = torch.Generator()
    gen.manual_seed(seed if seed is not None else torch.seed())
    return gen
