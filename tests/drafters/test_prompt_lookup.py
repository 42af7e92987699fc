import pytest

from leapdecode.drafters import make_drafter
from leapdecode.drafters.prompt_lookup import PromptLookupDrafter, lookup


def test_longest_match_wins_over_later_short_match():
    # suffix [2, 3]: matched at index 1 -> continuation [4, 5]; the unigram 3 also occurs at 6
    assert lookup([1, 2, 3, 4, 5, 9, 3, 7, 2, 3], max_ngram=2, max_tokens=2) == [4, 5]


def test_latest_occurrence_wins():
    assert lookup([1, 2, 5, 1, 2, 6, 1, 2], max_ngram=2, max_tokens=1) == [6]


def test_min_ngram_respected():
    assert lookup([1, 2, 9, 3, 2], max_ngram=3, min_ngram=2) == []
    assert lookup([1, 2, 9, 3, 2], max_ngram=3, min_ngram=1, max_tokens=5) == [9, 3, 2]


def test_no_match_and_short_context():
    assert lookup([5, 6, 7]) == []
    assert lookup([5]) == []
    assert lookup([]) == []


def test_continuation_may_overlap_suffix():
    # repeating pattern: suffix [1, 1] matches at 0 -> continuation runs to the end
    assert lookup([1, 1, 1], max_ngram=2, max_tokens=5) == [1]


def test_drafter_respects_budget():
    d = PromptLookupDrafter()
    assert d.propose([1, 2, 3, 4, 5, 6, 1, 2], 3).tokens == (3, 4, 5)


def test_drafter_index_answers_as_lookup_while_the_context_grows():
    import random

    rng = random.Random(5)
    for max_ngram, min_ngram in ((4, 1), (3, 2)):
        d = PromptLookupDrafter(max_ngram=max_ngram, min_ngram=min_ngram)
        context = [rng.randrange(6) for _ in range(20)]
        for step in range(60):
            want = lookup(context, max_ngram, min_ngram, 5)
            assert list(d.propose(context, 5).tokens) == want, (step, context)
            if step == 30:
                context = [rng.randrange(6) for _ in range(25)]  # another context: the index starts over
            else:
                context = context + [rng.randrange(6) for _ in range(rng.randrange(4))]


@pytest.mark.parametrize("opts", [dict(max_ngram=0), dict(min_ngram=3, max_ngram=2), dict(max_ngram="3")])
def test_bad_options(opts):
    with pytest.raises(ValueError):
        make_drafter("prompt-lookup", **opts)


def test_unknown_method_and_option():
    with pytest.raises(ValueError, match="unknown method"):
        make_drafter("nope")
    with pytest.raises(ValueError, match="bad option"):
        make_drafter("prompt-lookup", wrong=1)
