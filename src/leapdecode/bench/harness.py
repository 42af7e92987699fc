"""The benchmark loop: every method on every turn of every question, interleaved.

Order is question-major: for each question and turn, each method runs (`repeat` rounds of all
methods), so a burst of load from other processes slows all methods alike instead of one
method's whole run. The method order rotates by one each question, so no method always runs
right after the same other one. The caller passes the questions round-robin over subtasks, so a
run stopped early still covers every subtask. Each method keeps its own conversation: a later
turn sees that method's own earlier answers as the assistant messages, as in Spec-Bench.
"""

from __future__ import annotations

import sys
from statistics import median
from typing import Any, Sequence

from .metrics import Record
from .questions import Question

WARMUP_TOKENS = 32


def run_benchmark(engine: Any, runners: Sequence[Any], questions: Sequence[Question], max_new_tokens: int,
                  repeat: int = 1, warmup: int = 1, progress: bool = True) -> tuple[list[Record], str | None]:
    """Records of every (question, turn, method), with the median wall time over `repeat` runs,
    and why the run stopped early (None when it finished). Interrupted (Ctrl-C, or SIGTERM turned
    into KeyboardInterrupt by the caller) or broken by a failing method, it returns the questions
    finished so far, each with every method's outputs."""
    from tqdm import tqdm

    runners = list(runners)
    if warmup and questions:
        prompt = engine.encode([{"role": "user", "content": questions[0].turns[0]}])
        for runner in runners:
            for _ in range(warmup):
                runner.generate(prompt, min(max_new_tokens, WARMUP_TOKENS))
    total = sum(len(q.turns) for q in questions) * len(runners) * repeat
    records: list[Record] = []
    with tqdm(total=total, desc="bench", unit="gen", file=sys.stderr, disable=not progress) as bar:
        for index, question in enumerate(questions):
            shift = index % len(runners)
            try:
                records += _run_question(engine, runners[shift:] + runners[:shift], question, max_new_tokens,
                                         repeat, bar)
            except (KeyboardInterrupt, MethodFailed) as err:
                if not records:
                    raise
                return records, "interrupted" if isinstance(err, KeyboardInterrupt) else str(err)
    return records, None


class MethodFailed(RuntimeError):
    """A method raised while generating; the message names the method, question and turn."""


def _run_question(engine: Any, order: Sequence[Any], question: Question, max_new_tokens: int, repeat: int,
                  bar: Any) -> list[Record]:
    """Every turn of one question for every method (in `order`); each method keeps its own
    conversation, so a later turn sees that method's own earlier answers."""
    records: list[Record] = []
    history: dict[str, list[dict[str, str]]] = {r.name: [] for r in order}
    for turn, text in enumerate(question.turns, start=1):
        bar.set_postfix_str(f"q {question.question_id} turn {turn}")
        prompts = {}
        for r in order:
            history[r.name].append({"role": "user", "content": text})
            prompts[r.name] = engine.encode(history[r.name])
        outputs: dict[str, list[Any]] = {r.name: [] for r in order}
        for _ in range(repeat):
            for r in order:
                try:
                    outputs[r.name].append(r.generate(prompts[r.name], max_new_tokens))
                except Exception as err:
                    raise MethodFailed(f"{r.name} failed on question {question.question_id} turn {turn} "
                                       f"({len(prompts[r.name])} prompt tokens): {type(err).__name__}: {err}") from err
                bar.update()
        for r in order:
            record = _record(r.name, question, turn, prompts[r.name], outputs[r.name])
            records.append(record)
            answer = engine.tokenizer.decode(record.token_ids, skip_special_tokens=True).strip()
            history[r.name].append({"role": "assistant", "content": answer})
    return records


def _record(method: str, question: Question, turn: int, prompt: list[int], outputs: list[Any]) -> Record:
    first = outputs[0]
    if any(o.token_ids != first.token_ids for o in outputs[1:]):
        print(f"leapdecode bench: warning: {method} gave different outputs on repeats of question "
              f"{question.question_id} turn {turn}; keeping the first", file=sys.stderr)
    wall = median(o.wall_s for o in outputs)
    return Record(method, question.question_id, question.subtask, turn, list(first.token_ids),
                  first.steps, wall, len(prompt))


def context_needed(engine: Any, questions: Sequence[Question], max_new_tokens: int) -> int:
    """A context size that holds the longest conversation: all of a question's turns plus an
    answer of max_new_tokens per turn (with room for re-tokenized answers), in steps of 256."""
    longest = 0
    for q in questions:
        messages: list[dict[str, str]] = []
        for text in q.turns:
            messages += [{"role": "user", "content": text}, {"role": "assistant", "content": "x"}]
        ids = engine.encode(messages[:-1])
        longest = max(longest, len(ids) + len(q.turns) * (max_new_tokens + 16) + 64)
    return -(-longest // 256) * 256


def machine_info() -> dict[str, Any]:
    """The CPU, its count and the current load (other processes make timings noisy)."""
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "logical_cpus": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version()}
    if hasattr(os, "getloadavg"):
        info["loadavg_start"] = [round(x, 2) for x in os.getloadavg()]
    return info


PACKAGES = ("leapdecode", "torch", "transformers", "numpy", "llama_cpp_python")


def versions(packages: Sequence[str] = PACKAGES) -> dict[str, str]:
    """Installed versions of the packages that matter to the numbers."""
    import importlib.metadata as metadata

    out = {}
    for name in packages:
        try:
            out[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            pass
    return out
