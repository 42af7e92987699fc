"""k independent samples in one batch over the shared prompt cache: the baseline that beam,
diverse-beam and superposed outputs are compared against.

Each row samples from the warped distribution (temperature, top-k, top-p; see sampling.py)
with its own draws from one seeded generator, so the k outputs are independent samples.
A row that ends (EOS) leaves the batch. Output.score is the row's summed model log-probability
(of the unwarped distribution) / new_tokens ** length_penalty, outputs ranked by it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..sampling import SamplingParams, make_generator, make_warp
from .beam import check_int, check_prompt
from .cache import SharedPrefix
from .outputs import Output, make_output
from ..models.base import hf_model_of


@dataclass(frozen=True)
class SampleConfig:
    num_samples: int = 4
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    length_penalty: float = 1.0

    def __post_init__(self) -> None:
        check_int("num_samples", self.num_samples, 1, "pass -n 1 or more")
        check_int("max_new_tokens", self.max_new_tokens, 1, "pass --max-new-tokens 1 or more")
        if SamplingParams(self.temperature, self.top_k, self.top_p, self.seed).greedy:
            raise ValueError("sampling needs temperature > 0 (k greedy samples would all be equal)")


def sample_k(engine: Any, prompt_ids: Sequence[int], config: SampleConfig) -> list[Output]:
    check_prompt(engine, prompt_ids, config.max_new_tokens)
    warp = make_warp(SamplingParams(config.temperature, config.top_k, config.top_p, config.seed))
    generator = make_generator(config.seed)
    k = config.num_samples
    rows = SharedPrefix(hf_model_of(engine.target, "sampling several outputs"))
    logits = rows.prefill(prompt_ids, config.max_new_tokens)[None].expand(k, -1)  # [k, vocab]
    rows.select(torch.zeros(k, dtype=torch.long))
    tokens: list[list[int]] = [[] for _ in range(k)]
    logprob = [0.0] * k
    live = list(range(k))  # sample index of each batch row
    for step in range(config.max_new_tokens):
        picked = torch.multinomial(warp(logits), 1, generator=generator)[:, 0]  # [rows]
        gained = torch.log_softmax(logits, -1).gather(1, picked[:, None])[:, 0]
        keep = []
        for row, (s, token) in enumerate(zip(live, picked.tolist())):
            tokens[s].append(token)
            logprob[s] += gained[row].item()
            if token not in engine.eos_ids:
                keep.append(row)
        if not keep or step + 1 == config.max_new_tokens:
            break
        live = [live[r] for r in keep]
        rows.select(torch.tensor(keep))
        logits = rows.step(picked[keep])
    scored = sorted(((lp / len(t) ** config.length_penalty, t) for lp, t in zip(logprob, tokens)),
                    key=lambda x: x[0], reverse=True)
    return [make_output(engine.tokenizer, engine.eos_ids, t, score) for score, t in scored]
