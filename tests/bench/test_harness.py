"""The run loop on fake runners (no model): interleaving, multi-turn contexts, early stops."""

import json

import pytest

from leapdecode.bench.harness import MethodFailed, run_benchmark
from leapdecode.bench.questions import Question
from leapdecode.bench.runners import Output


class FakeTokenizer:
    def decode(self, ids, skip_special_tokens=True):
        return "".join(map(chr, ids))


class FakeEngine:
    """encode: messages -> the characters of their JSON, so a prompt can be read back."""

    tokenizer = FakeTokenizer()

    def encode(self, messages):
        return [ord(c) for c in json.dumps(messages)]


class FakeRunner:
    def __init__(self, name, log, fail_on=None):
        self.name, self.log, self.fail_on, self.calls = name, log, fail_on, 0

    def generate(self, prompt_ids, max_new_tokens):
        self.calls += 1
        messages = json.loads(FakeTokenizer().decode(prompt_ids))
        self.log.append((self.name, messages))
        if self.fail_on and self.fail_on in messages[-1]["content"]:
            if self.fail_on == "stop":
                raise KeyboardInterrupt
            raise ValueError("boom")
        answer = f" {self.name} says {self.calls} "[:max_new_tokens]
        return Output([ord(c) for c in answer], steps=1, wall_s=0.5 * self.calls)


QUESTIONS = [Question(1, "writing", ("Hi?", "More?"), 1), Question(2, "qa", ("Who?",), 2),
             Question(3, "qa", ("stop here",), 3)]


def test_interleaved_multi_turn():
    log = []
    runners = [FakeRunner("a", log), FakeRunner("b", log)]
    records, stopped = run_benchmark(FakeEngine(), runners, QUESTIONS[:2], 50, repeat=1, warmup=1, progress=False)
    assert stopped is None
    # warm-up first (each method once), then question-major with the order rotated per question
    assert [name for name, _ in log] == ["a", "b", "a", "b", "a", "b", "b", "a"]
    turn2 = {name: messages for name, messages in log[4:6]}
    # each method's second turn holds its own first answer, stripped
    assert turn2["a"] == [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "a says 2"},
                          {"role": "user", "content": "More?"}]
    assert turn2["b"][1]["content"] == "b says 2"
    assert [(r.method, r.question_id, r.turn, r.subtask) for r in records] == [
        ("a", 1, 1, "mt_bench"), ("b", 1, 1, "mt_bench"), ("a", 1, 2, "mt_bench"), ("b", 1, 2, "mt_bench"),
        ("b", 2, 1, "qa"), ("a", 2, 1, "qa")]
    assert records[0].wall_s == 1.0 and records[0].steps == 1
    assert records[0].prompt_tokens == len(json.dumps([{"role": "user", "content": "Hi?"}]))


def test_repeat_takes_the_median():
    runners = [FakeRunner("a", [])]
    records, _ = run_benchmark(FakeEngine(), runners, QUESTIONS[1:2], 50, repeat=3, warmup=0, progress=False)
    assert records[0].wall_s == 1.0  # median of 0.5, 1.0, 1.5
    assert runners[0].calls == 3


@pytest.mark.parametrize("trigger, reason", [("stop", "interrupted"), ("boom", "b failed on question 3 turn 1")])
def test_early_stop_keeps_finished_questions(trigger, reason):
    questions = [*QUESTIONS[:2], Question(3, "qa", (trigger,), 3)]
    runners = [FakeRunner("a", []), FakeRunner("b", [], fail_on=trigger)]
    records, stopped = run_benchmark(FakeEngine(), runners, questions, 50, warmup=0, progress=False)
    assert reason in stopped
    assert sorted({r.question_id for r in records}) == [1, 2]  # question 3 is dropped for all methods
    assert len(records) == 6


def test_failure_before_any_result_raises():
    runners = [FakeRunner("a", [], fail_on="boom")]
    with pytest.raises(MethodFailed, match="a failed on question 9 turn 1"):
        run_benchmark(FakeEngine(), runners, [Question(9, "qa", ("boom",), 1)], 50, warmup=0, progress=False)
