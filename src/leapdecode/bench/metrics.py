"""Per-output records and their aggregation, with Spec-Bench's definitions.

Spec-Bench (Xia et al. 2024, arXiv 2401.07851) measures a method on a question as the tokens
it generated over all turns divided by the wall time of all turns, averages that over the
questions, and divides by the same average of the baseline:

    speedup = mean_q(tokens_q / seconds_q of the method) / mean_q(tokens_q / seconds_q of the baseline)

tau (mean accepted length) is tokens emitted per target forward pass over all steps,
sum(new tokens) / sum(steps). `identical` is the fraction of outputs (question, turn) whose token
ids equal the baseline's for the same question and turn.

    records = [Record("none", 1, "qa", 1, [5, 6], steps=2, wall_s=0.2), ...]
    summary = aggregate(records, baseline="none")
    summary["prompt-lookup"]["overall"]["speedup"]
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from statistics import mean
from typing import Any, Iterable, Mapping, Sequence


@dataclass
class Record:
    """One generated output: a method's answer to one turn of one question."""

    method: str
    question_id: int | str
    subtask: str
    turn: int  # 1-based
    token_ids: list[int] = field(repr=False)
    steps: int | None  # target forward passes that emitted tokens; None when unknown
    wall_s: float  # median over repeats
    prompt_tokens: int = 0

    @property
    def new_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.wall_s if self.wall_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        token_ids = out.pop("token_ids")
        out.update(new_tokens=self.new_tokens, tokens_per_s=self.tokens_per_s, token_ids=token_ids)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Record":
        return cls(d["method"], d["question_id"], d["subtask"], d["turn"], list(d["token_ids"]),
                   d["steps"], d["wall_s"], d.get("prompt_tokens", 0))


def question_speeds(records: Iterable[Record]) -> dict[int | str, float]:
    """question_id -> tokens over all turns / seconds over all turns (Spec-Bench's per-question speed)."""
    tokens: dict[int | str, int] = defaultdict(int)
    seconds: dict[int | str, float] = defaultdict(float)
    for r in records:
        tokens[r.question_id] += r.new_tokens
        seconds[r.question_id] += r.wall_s
    return {q: tokens[q] / seconds[q] if seconds[q] > 0 else 0.0 for q in tokens}


def tau(records: Sequence[Record]) -> float | None:
    """Tokens per step over all records; None when any record has no step count."""
    if not records or any(r.steps is None for r in records):
        return None
    steps = sum(r.steps for r in records)  # type: ignore[misc]
    return sum(r.new_tokens for r in records) / steps if steps else None


def identical(records: Sequence[Record], reference: Sequence[Record]) -> float | None:
    """Fraction of `records` whose token ids equal the reference's for the same question and
    turn (records without a reference counterpart are left out); None when nothing matches."""
    ref = {(r.question_id, r.turn): r.token_ids for r in reference}
    pairs = [(r.token_ids, ref[(r.question_id, r.turn)]) for r in records if (r.question_id, r.turn) in ref]
    if not pairs:
        return None
    return sum(a == b for a, b in pairs) / len(pairs)


def summarize(records: Sequence[Record], baseline: Sequence[Record],
              own_greedy: Sequence[Record] | None = None) -> dict[str, Any]:
    """The metrics of one method on one group of questions (a subtask, or all)."""
    speeds = question_speeds(records)
    base_speeds = question_speeds(baseline)
    common = [q for q in speeds if q in base_speeds]
    base_mean = mean(base_speeds[q] for q in common) if common else 0.0
    tokens_per_s = mean(speeds.values()) if speeds else 0.0
    speedup = mean(speeds[q] for q in common) / base_mean if base_mean > 0 else None
    return {
        "questions": len(speeds),
        "outputs": len(records),
        "new_tokens": sum(r.new_tokens for r in records),
        "wall_s": sum(r.wall_s for r in records),
        "tokens_per_s": tokens_per_s,
        "speedup": speedup,
        "tau": tau(records),
        "identical": identical(records, baseline),
        "identical_to_own_greedy": None if own_greedy is None else identical(records, own_greedy),
    }


def aggregate(records: Sequence[Record], baseline: str,
              own_greedy: Mapping[str, str | None] | None = None,
              subtask_order: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """{method: {"overall": summary, "subtasks": {subtask: summary}}} for every method in
    `records`; `own_greedy[method]` names the greedy run of the method's own family (or None)."""
    by_method: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        by_method[r.method].append(r)
    if baseline not in by_method:
        raise ValueError(f"the baseline {baseline!r} has no results")
    own_greedy = own_greedy or {}
    subtasks = list(subtask_order) + sorted({r.subtask for r in records} - set(subtask_order))

    def pick(rs: Sequence[Record], subtask: str | None) -> list[Record]:
        return [r for r in rs if subtask is None or r.subtask == subtask]

    out: dict[str, dict[str, Any]] = {}
    for method, rs in by_method.items():
        greedy = own_greedy.get(method)
        greedy_rs = by_method.get(greedy) if greedy else None

        def one(subtask: str | None) -> dict[str, Any]:
            return summarize(pick(rs, subtask), pick(by_method[baseline], subtask),
                             None if greedy_rs is None else pick(greedy_rs, subtask))

        out[method] = {
            "overall": one(None),
            "subtasks": {s: one(s) for s in subtasks if any(r.subtask == s for r in rs)},
        }
    return out
