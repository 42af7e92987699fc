"""The diversity benchmark: question selection, references, and one tiny run of every mode."""

import argparse

from leapdecode.bench.questions import Question, first_references
from leapdecode.bench.diversity import BENCH_MODES, load_questions, run_bench, table


def test_question_selection_and_references():
    questions = load_questions(per_subtask=1)
    assert len(questions) == 6
    categories = {q.category for q in questions}
    assert {"translation", "summarization", "qa", "math_reasoning", "rag"} <= categories
    assert first_references([["a", "b"]]) == ("a", "b")  # rag: several answers
    assert first_references(["one", "two"]) == ("one",)  # first turn only
    assert first_references(None) == ()
    assert any(q.reference for q in questions)  # the dev set has reference answers


def test_tiny_run_of_every_mode(engine):
    args = argparse.Namespace(model="smollm2-135m", dtype="float32", k=2, max_new_tokens=4, beam_groups=None,
                              diversity=0.5, temperature=0.8, top_p=0.95, seed=0, per_subtask=1)
    question = Question(1, "qa", ("Name a color.",), 1, ("Blue.",))
    result = run_bench(engine, [question], BENCH_MODES, args, log=lambda s: None)
    for mode in BENCH_MODES:
        s = result["summary"][mode]
        assert 0 <= s["unique"] <= 1 and 0 <= s["best_bleu"] <= 1 and s["with_reference"] == 1
        assert s["s_per_output"] > 0 and s["passes_per_output"] > 0
        assert len(result["rows"][0]["modes"][mode]["outputs"]) == 2
    # k separate decodes pay k prefills and k passes per token; one superposed pass serves k drafts
    assert result["summary"]["sample-seq"]["passes_per_output"] > result["summary"]["superposed"]["passes_per_output"]
    assert "superposed" in table(result)
