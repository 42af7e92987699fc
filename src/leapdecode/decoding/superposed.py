"""Superposed decoding (Shen et al. 2024, arXiv 2405.18400): k drafts for the cost of one.

The k drafts are never run separately. Each step feeds the model ONE input embedding, the
superposition of the drafts' last-token embeddings weighted by the drafts' probabilities,

    e = sum_i w_i * E[last token of draft i],      w = softmax(draft scores)

and takes from the one next-token distribution p its top m tokens (renormalised). Which token
suits which draft cannot be read off p, so each draft i rescores the candidates with an n-gram
model over its own text (prompt + draft), interpolated geometrically as in the paper:

    log q_i(x) = (1 - alpha) * log p(x) + alpha * log p_ngram(x | draft i)

The k * m extensions (draft i + x, score_i + log q_i(x)) are ranked; the best k that do not end
live on, ending ones (EOS or max_new_tokens) join a pool of finished drafts. The KV cache holds
the superposed states: one row, however large k is.

The n-gram model here is deliberately small: counts of the prompt's tokens plus an optional
corpus (token sequences), Jelinek-Mercer interpolation of orders 2 to `ngram_order`, smoothed
toward uniform over the candidates; its context is the draft's own tokens only (not the
prompt's tail, which would pull every draft into copying the chat template). A draft with no
seen context gets a uniform n-gram term, i.e. the language model decides alone. The paper uses
n-gram models of a large web corpus; a bigger corpus plugs in through `corpus`.

alpha defaults to 0.25, below the paper's tuned 0.54: with counts of the prompt alone instead of
a web-scale corpus, a heavier n-gram term drags the drafts into repeating the prompt.

Output.score is the draft's summed log q / new_tokens ** length_penalty: a ranking score of the
interpolated model, not the language model's own likelihood.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch

from .beam import BeamGroup, check_counts, check_int, check_prompt, ranked_outputs
from .cache import SharedPrefix
from .outputs import Output
from ..models.base import hf_model_of


class NGramModel:
    """Next-token evidence from counts of token sequences, over a set of candidate tokens.

    For each order c = 1 .. order-1 whose context (the last c tokens) was seen, the counts of
    what followed it are mixed with weight w_c (Jelinek-Mercer interpolation); the mixture is
    smoothed with a uniform share `floor` over the candidates. Without any seen context the
    answer is uniform: no evidence, no preference.

    >>> lm = NGramModel([[1, 2, 3, 1, 2, 4]], order=3)
    >>> [round(p, 3) for p in lm.probs([1, 2], [3, 4, 0]).tolist()]
    [0.483, 0.483, 0.033]
    >>> lm.probs([7], [3, 4]).tolist()
    [0.5, 0.5]
    """

    def __init__(self, sequences: Iterable[Sequence[int]], order: int = 4, floor: float = 0.1):
        if order < 2:
            raise ValueError(f"ngram order must be >= 2, got {order}")
        self.order, self.floor = order, floor
        self.weights = [0.0] + [2.0**c for c in range(order - 1)]  # by context length: trust longer ones
        self.next: list[dict[tuple[int, ...], Counter]] = [defaultdict(Counter) for _ in range(order)]
        for seq in sequences:
            self.add(seq)

    def add(self, seq: Sequence[int]) -> None:
        seq = list(seq)
        for c in range(1, self.order):
            for i in range(c, len(seq)):
                self.next[c][tuple(seq[i - c : i])][seq[i]] += 1

    def probs(self, context: Sequence[int], candidates: Sequence[int]) -> torch.Tensor:
        """[len(candidates)] probabilities of each candidate after `context` (they sum to 1)."""
        mixed, used = torch.zeros(len(candidates)), 0.0
        for c in range(1, min(self.order, len(context) + 1)):
            following = self.next[c].get(tuple(context[len(context) - c :]))
            if following:
                seen = sum(following.values())
                mixed += self.weights[c] * torch.tensor([following[t] / seen for t in candidates])
                used += self.weights[c]
        uniform = torch.full((len(candidates),), 1.0 / len(candidates))
        if used == 0 or mixed.sum() == 0:
            return uniform
        mixed /= mixed.sum()
        return (1 - self.floor) * mixed + self.floor * uniform


@dataclass(frozen=True)
class SuperposedConfig:
    num_drafts: int = 4  # k
    num_return_sequences: int | None = None  # None = num_drafts
    max_new_tokens: int = 64
    alpha: float = 0.25  # weight of the n-gram model in the geometric interpolation
    top_m: int | None = None  # candidate tokens per step; None = 3 * num_drafts
    ngram_order: int = 4
    length_penalty: float = 1.0

    def __post_init__(self) -> None:
        check_int("num_drafts", self.num_drafts, 1, "pass --num-beams 1 or more")
        check_counts(self.num_return_sequences, self.num_drafts, "num_drafts", self.max_new_tokens)
        if not isinstance(self.alpha, (int, float)) or not 0 <= self.alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha!r}")
        if self.top_m is not None:
            check_int("top_m", self.top_m, 2 * self.num_drafts, "keep at least 2 candidates per draft")
        check_int("ngram_order", self.ngram_order, 2, "use 2 (bigrams) or more")

    @property
    def n(self) -> int:
        return self.num_drafts if self.num_return_sequences is None else self.num_return_sequences

    @property
    def m(self) -> int:
        return self.top_m or 3 * self.num_drafts


def candidate_scores(lm_probs: torch.Tensor, ngram_probs: torch.Tensor, alpha: float) -> torch.Tensor:
    """Geometric interpolation: lm_probs [m], ngram_probs [k, m] -> log q [k, m]."""
    return (1 - alpha) * torch.log(lm_probs)[None] + alpha * torch.log(ngram_probs)


def superposed_decode(engine: Any, prompt_ids: Sequence[int], config: SuperposedConfig,
                      corpus: Iterable[Sequence[int]] = ()) -> list[Output]:
    """k drafts from one forward pass per step (see the module doc)."""
    check_prompt(engine, prompt_ids, config.max_new_tokens)
    model = hf_model_of(engine.target, "superposed decoding")
    ngrams = NGramModel([list(prompt_ids), *corpus], config.ngram_order)
    embed = model.get_input_embeddings()
    # BeamGroup does the bookkeeping (live drafts, finished pool, stopping); its early-stopping
    # heuristic only ends the search when no live draft can beat the pool.
    drafts = BeamGroup(config.num_drafts, config.max_new_tokens, frozenset(engine.eos_ids),
                       config.length_penalty)
    rows = SharedPrefix(model)
    logits = rows.prefill(prompt_ids, config.max_new_tokens)  # [vocab]
    rows.select(torch.zeros(1, dtype=torch.long))
    while True:
        probs = torch.softmax(logits, dim=-1)
        top_probs, top_tokens = torch.topk(probs, min(config.m, probs.numel()))  # [m]
        top_probs = top_probs / top_probs.sum()
        tokens = top_tokens.tolist()
        ngram = torch.stack([ngrams.probs(d, tokens) for d in drafts.tokens])  # [k, m]
        log_q = torch.full((len(drafts.tokens), probs.numel()), -math.inf)  # [k, vocab]
        log_q[:, top_tokens] = candidate_scores(top_probs, ngram, config.alpha)
        drafts.step(log_q)
        if drafts.done:
            break
        weights = torch.softmax(drafts.scores, dim=0)  # [k]
        last = torch.tensor([d[-1] for d in drafts.tokens], device=rows.device)
        with torch.inference_mode():
            mixed = (weights.to(rows.device, model.dtype)[:, None] * embed(last)).sum(0)  # [hidden]
        logits = rows.step_embeds(mixed[None])[0]  # [vocab]
    return ranked_outputs(engine, drafts.results(), config.n, config.length_penalty)
