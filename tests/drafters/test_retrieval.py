import random

import numpy as np
import pytest

from leapdecode.drafters.base import Draft
from leapdecode.drafters.retrieval import (
    SEP,
    RetrievalDrafter,
    Store,
    build_store,
    build_store_from_text,
    frequency_trie,
    suffix_array,
)

DOCS = [[1, 2, 3, 4, 9], [1, 2, 3, 5], [8, 1, 2, 3, 4, 9, 9]]


def assert_valid_tree(draft, budget):
    assert len(draft) <= budget
    seen = set()
    for i, (tok, p) in enumerate(zip(draft.tokens, draft.parent_list())):
        assert -1 <= p < i
        assert (p, tok) not in seen
        seen.add((p, tok))


def test_suffix_array_matches_sorting_on_random_lists():
    rng = random.Random(0)
    for _ in range(50):
        seq = [rng.randrange(-1, 4) for _ in range(rng.randrange(1, 60))]
        expected = sorted(range(len(seq)), key=lambda i: seq[i:])
        assert suffix_array(np.array(seq)).tolist() == expected


def test_store_layout_and_find():
    store = build_store(DOCS)
    assert store.tokens.tolist() == [1, 2, 3, 4, 9, SEP, 1, 2, 3, 5, SEP, 8, 1, 2, 3, 4, 9, 9, SEP]
    assert store.num_documents == 3
    lo, hi = store.find([2, 3])
    assert sorted(store.sa[lo:hi].tolist()) == [1, 7, 13]
    lo, hi = store.find([3, 5, 8])
    assert lo == hi  # no match across documents
    assert build_store([[], [7]]).tokens.tolist() == [7, SEP]


def test_find_matches_brute_force():
    rng = random.Random(1)
    docs = [[rng.randrange(4) for _ in range(rng.randrange(1, 30))] for _ in range(8)]
    store = build_store(docs)
    flat = store.tokens.tolist()
    for _ in range(100):
        pat = [rng.randrange(4) for _ in range(rng.randrange(1, 4))]
        lo, hi = store.find(pat)
        starts = sorted(store.sa[lo:hi].tolist())
        assert starts == [i for i in range(len(flat)) if flat[i : i + len(pat)] == pat]


def test_frequency_trie_keeps_most_frequent_with_parents():
    conts = [[4, 5], [4, 5], [4, 6], [7]]
    assert frequency_trie(conts, 3) == ([4, 5, 7], [-1, 0, -1])
    assert frequency_trie(conts, 10) == ([4, 5, 7, 6], [-1, 0, -1, 0])
    assert frequency_trie(conts, 0) == ([], [])
    assert frequency_trie([], 5) == ([], [])


def test_drafts_frequency_weighted_tree():
    d = RetrievalDrafter(build_store(DOCS))
    draft = d.propose([7, 7, 1, 2, 3], 3)  # "1 2 3" is followed by 4 9 (twice) and 5 (once)
    assert draft.tokens == (4, 9, 5)
    assert draft.parents == (-1, 0, -1)
    assert d.match_length == 3
    assert d.propose([7, 7, 1, 2, 3], 10).tokens == (4, 9, 5, 9)  # 9 9 only in the third doc


def test_prefers_the_longest_matching_suffix():
    store = build_store([[5, 6, 7, 1], [6, 7, 2], [6, 7, 2], [0, 6, 7, 2]])
    d = RetrievalDrafter(store)
    assert d.propose([5, 6, 7], 1).tokens == (1,)  # "5 6 7" beats the more frequent "6 7"
    assert d.match_length == 3
    assert d.propose([9, 6, 7], 1).tokens == (2,)
    assert d.match_length == 2


def test_short_or_unknown_context():
    d = RetrievalDrafter(build_store(DOCS))
    assert d.propose([3], 4) == Draft()  # shorter than min_suffix
    assert d.propose([6, 6, 6], 4) == Draft()
    assert d.match_length == 0
    assert d.propose([4, 9, 9], 4) == Draft()  # found only at a document's end


def test_draft_len_and_max_candidates():
    d = RetrievalDrafter(build_store(DOCS), draft_len=1)
    assert d.propose([1, 2, 3], 10).tokens == (4, 5)
    one = RetrievalDrafter(build_store([[1, 2, 3]] * 5 + [[1, 2, 4]] * 5), max_candidates=1)
    assert len(one.propose([1, 2], 10)) == 1


def test_random_drafts_are_valid_trees():
    rng = random.Random(2)
    docs = [[rng.randrange(5) for _ in range(rng.randrange(1, 40))] for _ in range(20)]
    d = RetrievalDrafter(build_store(docs), max_candidates=16, draft_len=5)
    for _ in range(100):
        ctx = [rng.randrange(5) for _ in range(rng.randrange(0, 10))]
        budget = rng.randrange(0, 25)
        draft = d.propose(ctx, budget)
        assert_valid_tree(draft, budget)


def test_save_load_round_trip(tmp_path):
    store = build_store(DOCS)
    path = tmp_path / "store.npz"
    store.save(path)
    loaded = Store.load(path)
    assert np.array_equal(loaded.tokens, store.tokens)
    assert np.array_equal(loaded.sa, store.sa)
    from_path = RetrievalDrafter(str(path))
    assert from_path.propose([1, 2, 3], 4) == RetrievalDrafter(store).propose([1, 2, 3], 4)
    odd = tmp_path / "store.bin"  # saved at exactly the given path
    store.save(odd)
    assert Store.load(odd).tokens.tolist() == store.tokens.tolist()


def test_load_rejects_other_files(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a store")
    with pytest.raises(ValueError, match="leapdecode index"):
        Store.load(junk)
    with pytest.raises(ValueError):
        Store.load(tmp_path / "missing.npz")
    other = tmp_path / "other.npz"
    np.savez(other, a=np.arange(3))
    with pytest.raises(ValueError):
        RetrievalDrafter(str(other))


class WordTokenizer:
    """Whitespace tokenizer with an encode() method."""

    def __init__(self):
        self.vocab = {}

    def encode(self, text, add_special_tokens=True):
        return [self.vocab.setdefault(w, len(self.vocab)) for w in text.split()]


class CallOnlyTokenizer:
    """Hugging Face style: __call__ on a string or a list, returning a mapping."""

    def __init__(self):
        self.inner = WordTokenizer()

    def __call__(self, text, add_special_tokens=True):
        if isinstance(text, list):
            return {"input_ids": [self.inner.encode(t) for t in text]}
        return {"input_ids": self.inner.encode(text)}


@pytest.mark.parametrize("tokenizer_cls", [WordTokenizer, CallOnlyTokenizer])
def test_build_store_from_text(tmp_path, tokenizer_cls):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on\nthe mat\n\n\nthe cat ran away\n\n", encoding="utf-8")
    out = tmp_path / "store.npz"
    store = build_store_from_text(corpus, tokenizer_cls(), out)
    assert store.num_documents == 2
    assert Store.load(out).tokens.tolist() == store.tokens.tolist()
    by_line = build_store_from_text(corpus, tokenizer_cls(), out, split="line")
    assert by_line.num_documents == 3
    # ids: the 0, cat 1, sat 2, on 3, mat 4, ran 5; "the cat" -> sat or ran
    draft = RetrievalDrafter(store, draft_len=1).propose([0, 1], 4)
    assert sorted(draft.tokens) == [2, 5]


def test_build_store_from_text_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty"):
        build_store_from_text(empty, WordTokenizer(), tmp_path / "s.npz")
    with pytest.raises(ValueError, match="cannot read"):
        build_store_from_text(tmp_path / "nope.txt", WordTokenizer(), tmp_path / "s.npz")
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\xfa")
    with pytest.raises(ValueError, match="cannot read"):
        build_store_from_text(binary, WordTokenizer(), tmp_path / "s.npz")
    with pytest.raises(ValueError):
        build_store_from_text(empty, WordTokenizer(), tmp_path / "s.npz", split="page")
    with pytest.raises(ValueError):
        build_store_from_text(empty, object(), tmp_path / "s.npz")


def test_build_store_errors():
    with pytest.raises(ValueError):
        build_store([])
    with pytest.raises(ValueError):
        build_store([[], []])
    with pytest.raises(ValueError):
        build_store([[1, -2]])


def test_missing_store_says_how_to_build_one():
    with pytest.raises(ValueError, match="leapdecode index CORPUS --model M --out STORE"):
        RetrievalDrafter()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_suffix": 0},
        {"min_suffix": 0},
        {"min_suffix": 5, "max_suffix": 4},
        {"max_candidates": 0},
        {"draft_len": 0},
        {"draft_len": "8"},
    ],
)
def test_bad_options_raise(kwargs):
    with pytest.raises(ValueError):
        RetrievalDrafter(build_store(DOCS), **kwargs)
    with pytest.raises(ValueError):
        RetrievalDrafter(42)


def test_name():
    assert RetrievalDrafter.name == "retrieval"
