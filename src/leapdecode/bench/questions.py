"""Spec-Bench questions: load a jsonl file, check it line by line, pick subtasks.

One question per line, as in Spec-Bench (Xia et al. 2024, arXiv 2401.07851):

    {"question_id": 81, "category": "writing", "turns": ["Compose ...", "Rewrite ..."]}

The eight MT-bench categories together form the `mt_bench` subtask; every other category is a
subtask of its own (translation, summarization, qa, math_reasoning, rag). Every turn of a
question is run, each later turn with the earlier answers in its context.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable, Sequence

MT_BENCH_CATEGORIES = (
    "writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities",
)
# Spec-Bench's subtask order (its leaderboard's columns)
SUBTASKS = ("mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag")


def default_questions_path() -> Path:
    """The 240-question dev set shipped with the package."""
    return Path(str(resources.files("leapdecode.bench") / "data" / "specbench_dev.jsonl"))


def subtask_of(category: str) -> str:
    return "mt_bench" if category in MT_BENCH_CATEGORIES else category


@dataclass(frozen=True)
class Question:
    question_id: int | str
    category: str
    turns: tuple[str, ...]
    line: int  # 1-based line number in the file, for messages
    reference: tuple[str, ...] = ()  # the first turn's reference answers, where the file has them

    @property
    def subtask(self) -> str:
        return subtask_of(self.category)


def load_questions(path: str | Path) -> list[Question]:
    """Read and check a questions file; any problem raises ValueError naming the line."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"questions file {str(path)!r} does not exist")
    questions: list[Question] = []
    first_line: dict[int | str, int] = {}
    with open(path, encoding="utf-8") as f:
        for number, text in enumerate(f, start=1):
            if not text.strip():
                continue
            question = parse_line(text, f"{path}:{number}", number)
            if question.question_id in first_line:
                raise ValueError(
                    f"{path}:{number}: question_id {question.question_id!r} already used on line "
                    f"{first_line[question.question_id]}"
                )
            first_line[question.question_id] = number
            questions.append(question)
    if not questions:
        raise ValueError(f"questions file {str(path)!r} holds no questions")
    return questions


def parse_line(text: str, where: str, number: int = 0) -> Question:
    """One jsonl line -> Question; `where` prefixes every error (e.g. 'file.jsonl:12')."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: bad JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for key in ("question_id", "category", "turns"):
        if key not in record:
            raise ValueError(f"{where}: missing {key!r}")
    qid = record["question_id"]
    if isinstance(qid, bool) or not isinstance(qid, (int, str)):
        raise ValueError(f"{where}: question_id must be an integer or a string, got {qid!r}")
    category = record["category"]
    if not isinstance(category, str) or not category.strip():
        raise ValueError(f"{where}: category must be a non-empty string, got {category!r}")
    turns = record["turns"]
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"{where}: turns must be a non-empty list of strings")
    for i, turn in enumerate(turns):
        if not isinstance(turn, str) or not turn.strip():
            raise ValueError(f"{where}: turn {i + 1} must be a non-empty string, got {turn!r}")
    return Question(qid, category, tuple(turns), number, first_references(record.get("reference")))


def first_references(reference: object) -> tuple[str, ...]:
    """The first turn's reference answers: Spec-Bench stores one per turn, or (rag) a list of
    acceptable answers for the first.

    >>> first_references([["a", "b"]]), first_references(["one", "two"]), first_references(None)
    (('a', 'b'), ('one',), ())
    """
    if not isinstance(reference, list) or not reference:
        return ()
    first = reference[0]
    return tuple(str(r) for r in first) if isinstance(first, list) else (str(first),)


def select_questions(
    questions: Sequence[Question], categories: Iterable[str] | None = None, limit_per_category: int | None = None
) -> list[Question]:
    """Keep the questions of the named subtasks (or single MT-bench categories), then the first
    `limit_per_category` of each subtask, in file order."""
    present = {q.subtask for q in questions} | {q.category for q in questions}
    wanted = None
    if categories is not None:
        wanted = set(categories)
        unknown = sorted(wanted - present)
        if unknown:
            raise ValueError(
                f"unknown categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(map(repr, unknown))}; "
                f"this file has: {', '.join(ordered_subtasks(present))}"
            )
    chosen: list[Question] = []
    per_subtask: dict[str, int] = {}
    for q in questions:
        if wanted is not None and q.subtask not in wanted and q.category not in wanted:
            continue
        if limit_per_category is not None and per_subtask.get(q.subtask, 0) >= limit_per_category:
            continue
        per_subtask[q.subtask] = per_subtask.get(q.subtask, 0) + 1
        chosen.append(q)
    return chosen


def round_robin(questions: Sequence[Question]) -> list[Question]:
    """The first question of each subtask, then the second of each, and so on, so a run that
    stops early still covers every subtask."""
    by_subtask: dict[str, list[Question]] = {}
    for q in questions:
        by_subtask.setdefault(q.subtask, []).append(q)
    columns = [by_subtask[s] for s in ordered_subtasks(by_subtask)]
    return [col[i] for i in range(max(map(len, columns), default=0)) for col in columns if i < len(col)]


def ordered_subtasks(names: Iterable[str]) -> list[str]:
    """Spec-Bench's subtasks first, in its order, then any others alphabetically."""
    names = set(names)
    return [s for s in SUBTASKS if s in names] + sorted(names - set(SUBTASKS))
