"""Beam search whose beams share the prompt's KV cache, with transformers' exact semantics.

At each step every live beam proposes every token; the best 2 * num_beams continuations (more
when the model has several EOS ids, so that num_beams of them never end) are ranked by their
summed log-probability. Among the top num_beams of them, those that end (EOS, or the
max_new_tokens-th token) join the finished pool with score `logprob / length ** length_penalty`
(length counts new tokens, EOS included); the best num_beams that do not end live on.

The search stops when `early_stopping` says so:
- True: as soon as num_beams hypotheses are finished;
- False: when the pool is full and the best live beam, scored at its current length, cannot
  beat the pool's worst (transformers' default heuristic);
- "never": as False, but scoring the live beam at max_new_tokens when length_penalty > 0,
  which is the exact stopping rule of textbook beam search;
and always at max_new_tokens. These are the rules of transformers' `generate(num_beams=...)`,
against which tests/decoding checks sequences and scores.

`BeamGroup` holds the bookkeeping of one search and knows nothing of the model; `run_groups`
feeds any number of groups from one batch of rows over a shared prompt cache (see cache.py);
diverse_beam.py reuses both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from .cache import SharedPrefix
from .outputs import Output, make_output
from ..models.base import hf_model_of


@dataclass(frozen=True)
class BeamConfig:
    num_beams: int = 4
    num_return_sequences: int | None = None  # None = num_beams
    length_penalty: float = 1.0  # > 0 favours longer outputs, < 0 shorter
    early_stopping: bool | str = False  # True, False or "never" (see the module doc)
    max_new_tokens: int = 64

    def __post_init__(self) -> None:
        check_int("num_beams", self.num_beams, 1, "pass --num-beams 1 or more")
        check_counts(self.num_return_sequences, self.num_beams, "num_beams", self.max_new_tokens)
        if isinstance(self.length_penalty, bool) or not isinstance(self.length_penalty, (int, float)):
            raise ValueError(f"length_penalty must be a number, got {self.length_penalty!r}")
        if not (self.early_stopping is True or self.early_stopping is False or self.early_stopping == "never"):
            raise ValueError(f"early_stopping must be True, False or 'never', got {self.early_stopping!r}")

    @property
    def n(self) -> int:
        return self.num_beams if self.num_return_sequences is None else self.num_return_sequences


def check_int(name: str, value: Any, low: int, fix: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}; {fix}")


def check_counts(n: int | None, k: int, k_name: str, max_new_tokens: int) -> None:
    """num_return_sequences n (None = all k) within 1..k, and max_new_tokens >= 1."""
    check_int("max_new_tokens", max_new_tokens, 1, "pass --max-new-tokens 1 or more")
    if n is not None:
        check_int("num_return_sequences", n, 1, "pass -n 1 or more")
        if n > k:
            raise ValueError(
                f"num_return_sequences ({n}) cannot exceed {k_name} ({k}); "
                f"lower -n or raise --num-beams to at least {n}"
            )


@dataclass
class Hypothesis:
    tokens: list[int]
    score: float  # the ranking score: (steered) log-probability / length ** length_penalty
    logprob: float  # the model's own summed log-probability of `tokens`


@dataclass
class BeamGroup:
    """The bookkeeping of one beam search of `num_beams` beams, model-free.

    Live rows are kept best first: `tokens[i]` (new tokens), `scores[i]` (the summed selection
    score) and `logprobs[i]` (the model's summed log-probability; equal to the score unless a
    penalty steered the selection). It starts with one row, the empty continuation.
    """

    num_beams: int
    max_new_tokens: int
    eos_ids: frozenset[int]
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    tokens: list[list[int]] = field(default_factory=lambda: [[]])
    scores: torch.Tensor = field(default_factory=lambda: torch.zeros(1))  # [rows]
    logprobs: torch.Tensor = field(default_factory=lambda: torch.zeros(1))  # [rows]
    finished: list[Hypothesis] = field(default_factory=list)  # best first, at most num_beams
    improvable: bool = True
    done: bool = False

    def step(self, log_probs: torch.Tensor, penalty: torch.Tensor | None = None) -> torch.Tensor:
        """Advance one token. log_probs: [rows, vocab] model log-probabilities after each live row;
        penalty: [vocab] or [rows, vocab], subtracted for selection only. Returns the parents
        [new rows] (indices into the old rows) of the new live rows."""
        generated = len(self.tokens[0]) + 1  # length of every candidate
        vocab = log_probs.shape[-1]
        steered = log_probs if penalty is None else log_probs - penalty
        keep = max(2, 1 + len(self.eos_ids)) * self.num_beams
        totals = (self.scores[:, None] + steered).reshape(-1)  # [rows * vocab]
        cand_scores, flat = torch.topk(totals, min(keep, totals.numel()))  # best first
        parents, cand_tokens = flat // vocab, flat % vocab
        cand_logprobs = self.logprobs[parents] + log_probs.reshape(-1)[flat]
        ends = torch.tensor([t in self.eos_ids for t in cand_tokens.tolist()], dtype=torch.bool)
        ends |= generated >= self.max_new_tokens

        self._finish(cand_scores, cand_logprobs, parents, cand_tokens, ends, generated)
        live = (~ends).nonzero().squeeze(-1)[: self.num_beams]
        self.tokens = [self.tokens[p] + [t] for p, t in zip(parents[live].tolist(), cand_tokens[live].tolist())]
        self.scores, self.logprobs = cand_scores[live], cand_logprobs[live]
        self._update_done(generated, bool(ends.all()))
        return parents[live]

    def _finish(self, scores, logprobs, parents, tokens, ends, length: int) -> None:
        """Ending candidates ranked within the top num_beams join the pool, while it can improve."""
        full = len(self.finished) == self.num_beams
        if not self.improvable or (full and self.early_stopping is True):
            return
        norm = length**self.length_penalty
        for rank in range(min(self.num_beams, len(tokens))):
            if ends[rank]:
                self.finished.append(Hypothesis(
                    self.tokens[int(parents[rank])] + [int(tokens[rank])],
                    (scores[rank] / norm).item(),  # float32 arithmetic, as transformers
                    logprobs[rank].item(),
                ))
        self.finished.sort(key=lambda h: h.score, reverse=True)
        del self.finished[self.num_beams :]

    def _update_done(self, generated: int, all_ended: bool) -> None:
        full = len(self.finished) == self.num_beams
        if self.improvable and full and len(self.scores):
            never = self.early_stopping == "never"
            best_length = self.max_new_tokens if never and self.length_penalty > 0 else generated
            best_possible = (self.scores[0] / best_length**self.length_penalty).item()
            self.improvable = best_possible > self.finished[-1].score
        self.done = all_ended or not self.improvable or (full and self.early_stopping is True)

    def results(self) -> list[Hypothesis]:
        return list(self.finished)


# penalty(group index, group, rows chosen by earlier groups at this step) -> [vocab] / [rows, vocab] / None;
# a chosen row is the token list of a live hypothesis, its last token chosen at this step
Penalty = Callable[[int, BeamGroup, list[list[int]]], "torch.Tensor | None"]


def run_groups(model: Any, prompt_ids: Sequence[int], groups: list[BeamGroup],
               penalty: Penalty | None = None, copy_prefix: bool = False,
               after_prefill: Callable[[], None] | None = None) -> list[BeamGroup]:
    """Run beam groups to the end on one batch of rows that share the prompt's cache.

    Each step: every unfinished group takes its rows' log-probabilities (in order, so that a
    penalty can see the tokens earlier groups just chose), picks its new rows, and the batch
    is rebuilt from all groups' parents for one forward pass. copy_prefix and after_prefill
    serve memory measurements (a copy of the prompt per row; a hook once the prompt is in)."""
    capacity = max(g.max_new_tokens for g in groups)
    rows = SharedPrefix(model, copy_prefix)
    logits = rows.prefill(prompt_ids, capacity)[None]  # [1, vocab]: every group starts here
    if after_prefill:
        after_prefill()
    spans = {g: (0, 1) for g in range(len(groups))}  # group -> its rows in `logits`
    while True:
        index: list[int] = []
        feed: list[int] = []
        chosen: list[list[int]] = []  # rows picked by the groups before this one
        new_spans = {}
        for g, group in enumerate(groups):
            if group.done:
                continue
            start, stop = spans[g]
            log_probs = torch.log_softmax(logits[start:stop], dim=-1)  # [rows, vocab]
            parents = group.step(log_probs, penalty(g, group, chosen) if penalty else None)
            chosen += group.tokens
            if group.done:
                continue
            new_spans[g] = (len(index), len(index) + len(parents))
            index += [start + p for p in parents.tolist()]
            feed += [tokens[-1] for tokens in group.tokens]
        if not index:
            return groups
        spans = new_spans
        rows.select(torch.tensor(index))
        logits = rows.step(torch.tensor(feed))  # [rows, vocab]


def check_prompt(engine: Any, prompt_ids: Sequence[int], max_new_tokens: int) -> None:
    if len(prompt_ids) + max_new_tokens > engine.target.context_window:
        raise ValueError(
            f"the prompt has {len(prompt_ids)} tokens and {max_new_tokens} new ones do not fit the "
            f"model's context window of {engine.target.context_window}; shorten the prompt or "
            "lower --max-new-tokens"
        )


def ranked_outputs(engine: Any, hypotheses: list[Hypothesis], n: int, length_penalty: float,
                   by_logprob: bool = False) -> list[Output]:
    """The best n hypotheses as Outputs. by_logprob ranks (and scores) them by the model's own
    length-normalised log-probability instead of their selection score."""
    def model_score(h: Hypothesis) -> float:
        return h.logprob / len(h.tokens) ** length_penalty

    key = model_score if by_logprob else (lambda h: h.score)
    best = sorted(hypotheses, key=key, reverse=True)[:n]
    return [make_output(engine.tokenizer, engine.eos_ids, h.tokens, key(h)) for h in best]


def beam_search(engine: Any, prompt_ids: Sequence[int], config: BeamConfig) -> list[Output]:
    """Beam search; Output.score is transformers' `sequences_scores`:
    summed log-probability / new_tokens ** length_penalty."""
    check_prompt(engine, prompt_ids, config.max_new_tokens)
    group = BeamGroup(config.num_beams, config.max_new_tokens, frozenset(engine.eos_ids),
                      config.length_penalty, config.early_stopping)
    run_groups(hf_model_of(engine.target, "beam search"), prompt_ids, [group])
    return ranked_outputs(engine, group.results(), config.n, config.length_penalty)
