"""Loading and checking Spec-Bench question files (tiny literal jsonl files)."""

import json

import pytest

from leapdecode.bench.questions import (
    default_questions_path, load_questions, ordered_subtasks, round_robin, select_questions, subtask_of,
)


def write(tmp_path, lines):
    path = tmp_path / "q.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def q(qid, category, *turns):
    return json.dumps({"question_id": qid, "category": category, "turns": list(turns)})


GOOD = [
    q(81, "writing", "Write a poem.", "Now shorter."),
    q(101, "reasoning", "Think."),
    q(201, "translation", "Translate: Hallo"),
    "",  # blank lines are skipped
    q(202, "translation", "Translate: Welt"),
    q("rag-1", "rag", "Context ... question?"),
]


def test_loads_good_file(tmp_path):
    questions = load_questions(write(tmp_path, GOOD))
    assert [x.question_id for x in questions] == [81, 101, 201, 202, "rag-1"]
    assert questions[0].turns == ("Write a poem.", "Now shorter.")
    assert [x.subtask for x in questions] == ["mt_bench", "mt_bench", "translation", "translation", "rag"]
    assert questions[3].line == 5  # the blank line still counts


def test_subtasks():
    assert subtask_of("coding") == "mt_bench"
    assert subtask_of("qa") == "qa"
    assert ordered_subtasks({"rag", "zeta", "mt_bench", "alpha"}) == ["mt_bench", "rag", "alpha", "zeta"]


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ('{"question_id": 2, "category": "qa", "turns": ["x"]', "bad JSON"),
        ('{"question_id": 2, "category": "qa"}', "missing 'turns'"),
        ('{"question_id": 2, "turns": ["x"]}', "missing 'category'"),
        ('{"category": "qa", "turns": ["x"]}', "missing 'question_id'"),
        ('{"question_id": 2, "category": "qa", "turns": []}', "turns must be a non-empty list"),
        ('{"question_id": 2, "category": "qa", "turns": "x"}', "turns must be a non-empty list"),
        ('{"question_id": 2, "category": "qa", "turns": ["x", 3]}', "turn 2 must be a non-empty string"),
        ('{"question_id": 2, "category": "", "turns": ["x"]}', "category must be"),
        ('{"question_id": [2], "category": "qa", "turns": ["x"]}', "question_id must be"),
        ('["not", "an", "object"]', "expected a JSON object"),
        ('{"question_id": 1, "category": "qa", "turns": ["again"]}', "already used on line 1"),
    ],
)
def test_bad_line_is_named(tmp_path, bad_line, message):
    path = write(tmp_path, [q(1, "qa", "fine"), "", bad_line, q(3, "qa", "fine")])
    with pytest.raises(ValueError) as err:
        load_questions(path)
    assert f"{path}:3:" in str(err.value)
    assert message in str(err.value)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_questions(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="holds no questions"):
        load_questions(write(tmp_path, ["", "  "]))


def test_select_filters_and_limits(tmp_path):
    questions = load_questions(write(tmp_path, GOOD))
    assert [x.question_id for x in select_questions(questions, None, 1)] == [81, 201, "rag-1"]
    assert [x.question_id for x in select_questions(questions, ["translation"], None)] == [201, 202]
    assert [x.question_id for x in select_questions(questions, ["mt_bench", "rag"], 5)] == [81, 101, "rag-1"]
    assert [x.question_id for x in select_questions(questions, ["reasoning"])] == [101]  # one MT-bench category
    with pytest.raises(ValueError, match="unknown category 'poetry'"):
        select_questions(questions, ["poetry", "rag"])


def test_shipped_dev_set():
    questions = load_questions(default_questions_path())
    assert len(questions) == 240
    counts = {}
    for x in questions:
        counts[x.subtask] = counts.get(x.subtask, 0) + 1
    assert counts == {s: 40 for s in ["mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag"]}
    assert all(len(x.turns) == 2 for x in questions if x.subtask == "mt_bench")


def test_round_robin_order(tmp_path):
    questions = load_questions(write(tmp_path, GOOD))
    assert [x.question_id for x in round_robin(questions)] == [81, 201, "rag-1", 101, 202]
    assert round_robin([]) == []
