import random

import pytest

from leapdecode.drafters.base import Draft, Drafter
from leapdecode.drafters.suffix import SuffixAutomaton, SuffixDrafter, suffix_draft


def brute_match(seq):
    """(length, end) of the longest suffix occurring earlier, at its most recent occurrence."""
    n = len(seq)
    for length in range(n - 1, 0, -1):
        suffix = seq[n - length :]
        for start in range(n - length - 1, -1, -1):
            if seq[start : start + length] == suffix:
                return length, start + length - 1
    return 0, -1


def brute_draft(seq, k):
    length, end = brute_match(seq)
    if length == 0:
        return []
    ext = list(seq)
    for j in range(k):
        ext.append(ext[end + 1 + j])
    return ext[len(seq) :]


def test_copies_the_continuation():
    d = SuffixDrafter()
    d.reset([1, 2, 3, 4, 1, 2])
    draft = d.propose([1, 2, 3, 4, 1, 2], 2)
    assert draft.tokens == (3, 4)
    assert draft.parents is None
    assert d.match_length == 2


def test_continues_periodically_past_the_end():
    d = SuffixDrafter()
    assert d.propose([1, 2, 3, 4, 1, 2], 6).tokens == (3, 4, 1, 2, 3, 4)
    assert d.propose([7, 7, 7], 4).tokens == (7, 7, 7, 7)


def test_follows_the_most_recent_occurrence():
    assert suffix_draft([1, 2, 7, 1, 2, 8, 1, 2], 2) == [8, 1]


def test_no_match_gives_empty_draft():
    d = SuffixDrafter()
    assert len(d.propose([1, 2, 3], 5)) == 0
    assert d.match_length == 0
    assert len(d.propose([], 5)) == 0


def test_min_match():
    ctx = [5, 1, 2, 9, 3, 1]  # only "1" repeats
    assert len(SuffixDrafter().propose(ctx, 4)) == 0
    assert SuffixDrafter(min_match=1).propose(ctx, 3).tokens == (2, 9, 3)


def test_max_draft():
    ctx = [1, 2, 3, 4, 5, 1, 2]
    d = SuffixDrafter(max_draft=3)
    assert d.propose(ctx, 10).tokens == (3, 4, 5)
    assert d.match_length == 2
    assert d.propose(ctx, 10).tokens == (3, 4, 5)
    assert d.propose(ctx, 2).tokens == (3, 4)


class Recorder(Drafter):
    name = "recorder"

    def __init__(self):
        self.calls = []

    def reset(self, prompt):
        self.calls.append(("reset", list(prompt)))

    def propose(self, context, budget):
        self.calls.append(("propose", budget))
        return Draft(tokens=(42,))

    def observe(self, result):
        self.calls.append(("observe", result))


def test_fallback_gets_short_matches_and_forwarded_calls():
    fb = Recorder()
    d = SuffixDrafter(fallback=fb)
    d.reset([1, 2, 3])
    assert d.propose([1, 2, 3], 4).tokens == (42,)
    assert d.propose([1, 2, 3, 1, 2], 4).tokens == (3, 1, 2, 3)  # long enough: no fallback
    d.observe("step")
    assert fb.calls == [("reset", [1, 2, 3]), ("propose", 4), ("observe", "step")]


def test_incremental_equals_bulk_and_brute_force():
    rng = random.Random(0)
    for trial in range(40):
        seq = [rng.randrange(3 if trial % 2 else 6) for _ in range(rng.randrange(1, 90))]
        online = SuffixAutomaton()
        for i, t in enumerate(seq):
            online.extend(t)
            prefix = seq[: i + 1]
            assert (online.match_length, online.match_end) == brute_match(prefix), prefix
        bulk = SuffixAutomaton(seq)  # long lists take the bulk path
        assert (bulk.match_length, bulk.match_end) == brute_match(seq)
        assert bulk._end == online._end
        assert bulk.continuation(7) == online.continuation(7) == brute_draft(seq, 7)


def test_bulk_then_online_extension_stays_exact():
    rng = random.Random(1)
    seq = [rng.randrange(4) for _ in range(300)]
    sam = SuffixAutomaton(seq[:100])
    for i in range(100, 300):
        sam.extend(seq[i])
        if i % 7 == 0:
            assert (sam.match_length, sam.match_end) == brute_match(seq[: i + 1])
    sam.extend_many(seq[:50])  # a long chunk mid-sequence: bulk path with old states present
    assert (sam.match_length, sam.match_end) == brute_match(seq + seq[:50])


def test_drafter_fed_incrementally_matches_fresh_drafter():
    rng = random.Random(2)
    seq = [rng.randrange(4) for _ in range(120)]
    live = SuffixDrafter(min_match=1)
    live.reset(seq[:10])
    pos = 10
    while pos < len(seq):
        pos += rng.randrange(1, 5)  # accepted tokens plus bonus arrive a few at a time
        ctx = seq[:pos]
        got = live.propose(ctx, 6)
        assert got == SuffixDrafter(min_match=1).propose(ctx, 6)
        assert list(got.tokens) == brute_draft(ctx, 6)


def test_context_that_is_not_a_continuation_rebuilds():
    d = SuffixDrafter()
    d.reset([1, 2, 3, 1, 2])
    assert d.propose([1, 2, 3, 1, 2], 1).tokens == (3,)
    assert d.propose([9, 8, 9, 8, 9], 2).tokens == (8, 9)
    assert d.propose([9, 8], 2) == Draft()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_match": 0},
        {"min_match": "2"},
        {"min_match": True},
        {"max_draft": 0},
        {"max_draft": 2.5},
        {"fallback": "ngram"},
    ],
)
def test_bad_options_raise(kwargs):
    with pytest.raises(ValueError):
        SuffixDrafter(**kwargs)


def test_options_are_keyword_only():
    with pytest.raises(TypeError):
        SuffixDrafter(2)
    assert SuffixDrafter.name == "suffix"
