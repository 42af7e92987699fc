"""Diverse beam search (Vijayakumar et al. 2016, arXiv 1610.02424).

The num_beams beams are split into G groups of num_beams / G. At every step the groups choose
in turn; group g ranks its candidates by

    summed log-probability  -  lambda * Delta(token, tokens chosen by groups 0..g-1 at this step)

where Delta is the Hamming diversity of the paper (how many times an earlier group picked the
token at this step) or, with `diversity_ngram` n > 1, the n-gram diversity (how many times an
earlier group's beam ended this step with the same n-gram: the beam's last n-1 tokens plus the
candidate). Within a group the steered score accumulates, as in the paper's Algorithm 1 where
the augmented log-probabilities feed beam search; each group then follows beam.py's rules.

All groups advance in one batch of rows over one shared prompt cache. The returned outputs are
pooled over groups and ranked by the model's own score, summed log-probability /
new_tokens ** length_penalty (the penalty steers the search, it is not the model's opinion).
With lambda = 0 the groups do not interact: the result is G independent beam searches of
num_beams / G beams.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from .beam import BeamConfig, BeamGroup, check_prompt, ranked_outputs, run_groups
from .outputs import Output
from ..models.base import hf_model_of


@dataclass(frozen=True)
class DiverseBeamConfig(BeamConfig):
    beam_groups: int | None = None  # None = num_beams (one beam per group)
    diversity: float = 0.5  # lambda, the penalty per repeat; 0 = independent groups
    diversity_ngram: int = 1  # 1 = Hamming diversity; n > 1 = n-gram diversity

    def __post_init__(self) -> None:
        super().__post_init__()
        groups = self.groups
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise ValueError(f"beam_groups must be an integer >= 1, got {groups!r}; pass --beam-groups 1 or more")
        if self.num_beams % groups:
            divisors = [d for d in range(1, self.num_beams + 1) if self.num_beams % d == 0]
            raise ValueError(
                f"beam_groups ({groups}) must divide num_beams ({self.num_beams}); use --beam-groups "
                f"{' or '.join(map(str, divisors))}, or make --num-beams a multiple of {groups}"
            )
        lam = self.diversity
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam < 0:
            raise ValueError(f"diversity (lambda) must be a number >= 0 (0 = independent groups), got {lam!r}")
        n = self.diversity_ngram
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"diversity_ngram must be an integer >= 1 (1 = Hamming), got {n!r}")

    @property
    def groups(self) -> int:
        return self.num_beams if self.beam_groups is None else self.beam_groups


def hamming_penalty(earlier: Sequence[Sequence[int]], vocab: int, strength: float) -> torch.Tensor:
    """[vocab] penalty: strength * how many earlier rows end with each token.

    >>> hamming_penalty([[5, 7], [1, 7], [2, 3]], vocab=8, strength=0.5)[[3, 7, 5]].tolist()
    [0.5, 1.0, 0.0]
    """
    last = torch.tensor([row[-1] for row in earlier if row], dtype=torch.long)
    return strength * torch.bincount(last, minlength=vocab).float()


def ngram_penalty(rows: Sequence[Sequence[int]], earlier: Sequence[Sequence[int]], n: int,
                  vocab: int, strength: float) -> torch.Tensor:
    """[len(rows), vocab] penalty: for row r and token x, strength * how many earlier rows end
    with the n-gram (r's last n-1 tokens, x). Rows shorter than n-1 tokens compare what they
    have, so the first steps reduce to Hamming diversity.

    >>> ngram_penalty([[1, 2], [9, 9]], [[4, 2, 3], [2, 5]], n=2, vocab=6, strength=1.0).tolist()
    [[0.0, 0.0, 0.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]]
    """
    penalty = torch.zeros(len(rows), vocab)
    for r, row in enumerate(rows):
        context = tuple(row[len(row) - min(n - 1, len(row)) :])
        for other in earlier:
            if len(other) > len(context) and tuple(other[len(other) - 1 - len(context) : -1]) == context:
                penalty[r, other[-1]] += strength
    return penalty


def diverse_beam_search(engine: Any, prompt_ids: Sequence[int], config: DiverseBeamConfig) -> list[Output]:
    """Diverse beam search; Output.score is the model's length-normalised log-probability."""
    check_prompt(engine, prompt_ids, config.max_new_tokens)
    per_group = config.num_beams // config.groups
    groups = [
        BeamGroup(per_group, config.max_new_tokens, frozenset(engine.eos_ids), config.length_penalty,
                  config.early_stopping)
        for _ in range(config.groups)
    ]
    vocab = engine.target.vocab_size

    def penalty(g: int, group: BeamGroup, earlier: list[list[int]]) -> torch.Tensor | None:
        if not earlier or config.diversity == 0:
            return None
        if config.diversity_ngram == 1:
            return hamming_penalty(earlier, vocab, config.diversity)
        return ngram_penalty(group.tokens, earlier, config.diversity_ngram, vocab, config.diversity)

    run_groups(hf_model_of(engine.target, "diverse beam search"), prompt_ids, groups, penalty)
    pooled = [h for group in groups for h in group.results()]
    return ranked_outputs(engine, pooled, config.n, config.length_penalty, by_logprob=True)
