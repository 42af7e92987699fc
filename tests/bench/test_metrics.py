"""Aggregation on literal records, every figure worked out by hand."""

import pytest

from leapdecode.bench.metrics import Record, aggregate, identical, question_speeds, tau


def records():
    R = Record
    return [
        # baseline "none": per-question speeds q1 4/2.0 = 2, q2 (2+4)/(1.0+1.0) = 3, q3 2/0.5 = 4
        R("none", 1, "qa", 1, [1, 2, 3, 4], 4, 2.0),
        R("none", 2, "mt_bench", 1, [5, 6], 2, 1.0),
        R("none", 2, "mt_bench", 2, [7, 8, 9, 10], 4, 1.0),
        R("none", 3, "qa", 1, [1, 1], 2, 0.5),
        # "pl": q1 4/1.0 = 4, q2 (2+4)/(0.5+0.5) = 6, q3 2/0.5 = 4
        R("pl", 1, "qa", 1, [1, 2, 3, 4], 2, 1.0),
        R("pl", 2, "mt_bench", 1, [5, 6], 1, 0.5),
        R("pl", 2, "mt_bench", 2, [7, 8, 9, 11], 2, 0.5),  # differs from none
        R("pl", 3, "qa", 1, [1, 2], 2, 0.5),  # differs from none
        # "alt": a second greedy reference, equal to pl on q3 and q2 turn 2 only
        R("alt", 1, "qa", 1, [9], None, 1.0),
        R("alt", 2, "mt_bench", 1, [9], None, 1.0),
        R("alt", 2, "mt_bench", 2, [7, 8, 9, 11], None, 1.0),
        R("alt", 3, "qa", 1, [1, 2], None, 1.0),
    ]


def test_question_speeds_sum_turns():
    speeds = question_speeds([r for r in records() if r.method == "pl"])
    assert speeds == {1: 4.0, 2: 6.0, 3: 4.0}


def test_overall():
    out = aggregate(records(), baseline="none", own_greedy={"pl": "alt"})
    pl = out["pl"]["overall"]
    # Spec-Bench: mean of per-question speeds, not total tokens / total time (that would be 1.8)
    assert pl["tokens_per_s"] == pytest.approx(14 / 3)
    assert out["none"]["overall"]["tokens_per_s"] == pytest.approx(3.0)
    assert pl["speedup"] == pytest.approx((14 / 3) / 3)
    assert pl["tau"] == pytest.approx(12 / 7)
    assert pl["identical"] == pytest.approx(2 / 4)
    assert pl["identical_to_own_greedy"] == pytest.approx(2 / 4)
    assert (pl["questions"], pl["outputs"], pl["new_tokens"]) == (3, 4, 12)
    assert pl["wall_s"] == pytest.approx(2.5)
    base = out["none"]["overall"]
    assert (base["speedup"], base["identical"], base["tau"]) == (1.0, 1.0, 1.0)
    assert base["identical_to_own_greedy"] is None  # no own greedy named for it


def test_subtasks():
    out = aggregate(records(), baseline="none", own_greedy={"pl": "alt"}, subtask_order=["mt_bench", "qa"])
    subs = out["pl"]["subtasks"]
    assert list(subs) == ["mt_bench", "qa"]
    assert subs["qa"]["speedup"] == pytest.approx(4 / 3)  # mean(4, 4) / mean(2, 4)
    assert subs["mt_bench"]["speedup"] == pytest.approx(2.0)  # 6 / 3
    assert subs["qa"]["tau"] == pytest.approx(6 / 4)
    assert subs["mt_bench"]["tau"] == pytest.approx(6 / 3)
    assert subs["qa"]["identical"] == pytest.approx(0.5)
    assert subs["mt_bench"]["identical"] == pytest.approx(0.5)
    assert subs["qa"]["identical_to_own_greedy"] == pytest.approx(0.5)  # q3 equal, q1 not
    assert subs["mt_bench"]["identical_to_own_greedy"] == pytest.approx(0.5)  # turn 2 equal, turn 1 not
    assert out["alt"]["overall"]["tau"] is None  # steps unknown


def test_identical_matches_question_and_turn():
    a = [Record("a", 1, "qa", 1, [1, 2], 1, 1.0), Record("a", 1, "qa", 2, [3], 1, 1.0)]
    b = [Record("b", 1, "qa", 2, [1, 2], 1, 1.0), Record("b", 1, "qa", 1, [3], 1, 1.0)]
    assert identical(a, b) == 0.0  # same token lists, but on the other turn
    assert identical(a, a) == 1.0
    assert identical(a, []) is None


def test_tau_and_record_dict():
    r = Record("a", 7, "qa", 1, [4, 5, 6], 2, 0.5, prompt_tokens=9)
    assert tau([r]) == 1.5
    d = r.as_dict()
    assert d["new_tokens"] == 3 and d["tokens_per_s"] == 6.0 and d["token_ids"] == [4, 5, 6]
    assert Record.from_dict(d) == r


def test_missing_baseline():
    with pytest.raises(ValueError, match="baseline 'x'"):
        aggregate(records(), baseline="x")
