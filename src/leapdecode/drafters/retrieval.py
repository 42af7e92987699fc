"""Retrieval drafter: draft what followed the context's end in a corpus (REST).

REST (He et al., NAACL 2024, arXiv 2311.08252) keeps a datastore of token sequences with a
suffix array. To draft, it finds the longest suffix of the context that occurs in the store,
gathers what followed its occurrences, and merges them into a trie weighted by frequency; the
most frequent nodes form the draft tree.

The store is the documents' tokens concatenated, each followed by a separator (-1), plus the
suffix array of that sequence, saved as two arrays in an .npz file.
"""

from __future__ import annotations

import bisect
import heapq
import os
import re
import zipfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .base import EMPTY_DRAFT, Draft, Drafter, DraftTrie, check_int

SEP = -1  # ends every document; never a token id, so no match runs across documents
_FORMAT_VERSION = 1
_HOW_TO_BUILD = "build one with `leapdecode index CORPUS --model M --out STORE` and pass its path"


def suffix_array(seq: np.ndarray) -> np.ndarray:
    """Start positions of the suffixes of `seq` in lexicographic order (a shorter prefix first).

    Prefix doubling with numpy sorts: O(n log n) per round, one round per doubling of the
    longest repeated substring.

    >>> suffix_array(np.array([2, 1, 2, 1])).tolist()   # 1 < 1 2 1 < 2 1 < 2 1 2 1
    [3, 1, 2, 0]
    """
    n = len(seq)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    rank = np.unique(seq, return_inverse=True)[1].astype(np.int64).reshape(-1)  # [n] dense ranks
    sa = np.argsort(rank, kind="stable")
    k = 1
    while k < n:
        second = np.zeros(n, dtype=np.int64)  # rank of the suffix k further on; 0 = past the end
        second[: n - k] = rank[k:] + 1
        key = rank * (n + 1) + second  # [n] orders suffixes by their first 2k tokens
        sa = np.argsort(key, kind="stable")
        sorted_key = key[sa]
        rank = np.empty(n, dtype=np.int64)
        rank[sa] = np.concatenate(([0], np.cumsum(sorted_key[1:] != sorted_key[:-1])))
        if rank[sa[-1]] == n - 1:  # all suffixes distinct: sorted
            break
        k *= 2
    return sa


class _Prefixes:
    """The suffix array seen as the sorted list of each suffix's first `m` tokens (for bisect)."""

    def __init__(self, tokens: np.ndarray, sa: np.ndarray, m: int) -> None:
        self.tokens, self.sa, self.m = tokens, sa, m

    def __len__(self) -> int:
        return len(self.sa)

    def __getitem__(self, i: int) -> list[int]:
        start = int(self.sa[i])
        return self.tokens[start : start + self.m].tolist()


class Store:
    """A token datastore: documents concatenated with separators, and their suffix array."""

    def __init__(self, tokens: np.ndarray, sa: np.ndarray) -> None:
        tokens, sa = np.asarray(tokens), np.asarray(sa)
        if tokens.ndim != 1 or sa.shape != tokens.shape or len(tokens) == 0:
            raise ValueError(
                f"a store needs 1-D tokens and suffix array of one non-zero length, got "
                f"{tokens.shape} and {sa.shape}; {_HOW_TO_BUILD}"
            )
        if not np.issubdtype(tokens.dtype, np.integer) or not np.issubdtype(sa.dtype, np.integer):
            raise ValueError(f"store arrays must be integers; {_HOW_TO_BUILD}")
        if tokens[-1] != SEP or sa.min() < 0 or sa.max() >= len(tokens):
            raise ValueError(f"store arrays are inconsistent; {_HOW_TO_BUILD}")
        self.tokens = tokens  # [n] token ids, SEP after each document
        self.sa = sa  # [n] suffix start positions in sorted order

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def num_documents(self) -> int:
        return int(np.count_nonzero(self.tokens == SEP))

    def find(self, pattern: Sequence[int]) -> tuple[int, int]:
        """The suffix-array range [lo, hi) of the suffixes that start with `pattern`."""
        pattern = [int(t) for t in pattern]
        prefixes = _Prefixes(self.tokens, self.sa, len(pattern))
        lo = bisect.bisect_left(prefixes, pattern)
        return lo, bisect.bisect_right(prefixes, pattern, lo)

    def continuations(
        self, pattern: Sequence[int], max_candidates: int, length: int
    ) -> list[list[int]]:
        """Up to `length` tokens after up to `max_candidates` occurrences of `pattern`.

        The occurrences are spread evenly over the suffix-array range; as that range is sorted
        by what follows, each continuation is drawn about as often as it occurs.
        """
        lo, hi = self.find(pattern)
        if hi == lo or max_candidates <= 0 or length <= 0:
            return []
        k = min(max_candidates, hi - lo)
        picks = self.sa[lo + np.arange(k) * (hi - lo) // k]  # [k] occurrence starts
        cols = picks[:, None].astype(np.int64) + len(pattern) + np.arange(length)  # [k, length]
        window = self.tokens[np.minimum(cols, len(self.tokens) - 1)]  # the last token is SEP
        before_sep = np.cumprod(window != SEP, axis=1).astype(bool)  # [k, length]
        return [row[mask].tolist() for row, mask in zip(window, before_sep)]

    def save(self, path: str | os.PathLike) -> None:
        """Write the store as an .npz file at exactly `path`."""
        with open(path, "wb") as f:
            np.savez(f, tokens=self.tokens, suffix_array=self.sa, version=np.array(_FORMAT_VERSION))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Store":
        try:
            with np.load(path, allow_pickle=False) as data:
                version = int(data["version"])
                tokens, sa = data["tokens"], data["suffix_array"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            raise ValueError(f"cannot load a store from {path}: {e}; {_HOW_TO_BUILD}") from e
        if version != _FORMAT_VERSION:
            raise ValueError(
                f"store {path} has format {version}, expected {_FORMAT_VERSION}; rebuild it"
            )
        return cls(tokens, sa)


def build_store(token_lists: Iterable[Sequence[int]]) -> Store:
    """Build a store from documents given as token-id lists (empty documents are skipped)."""
    parts: list[np.ndarray] = []
    for i, doc in enumerate(token_lists):
        arr = np.asarray(doc, dtype=np.int64).reshape(-1)
        if arr.size and arr.min() < 0:
            raise ValueError(f"document {i} has a negative token id; token ids must be >= 0")
        if arr.size:
            parts += [arr, np.array([SEP], dtype=np.int64)]
    if not parts:
        raise ValueError("no tokens to index: pass at least one non-empty token list")
    tokens = np.concatenate(parts)
    small = tokens.max() < np.iinfo(np.int32).max
    tokens = tokens.astype(np.int32 if small else np.int64)
    sa = suffix_array(tokens)
    return Store(tokens, sa.astype(np.int32 if len(tokens) < np.iinfo(np.int32).max else np.int64))


def _read_documents(corpus_path: str | os.PathLike, split: str) -> list[str]:
    try:
        text = Path(corpus_path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read corpus {corpus_path}: {e}; pass a UTF-8 text file") from e
    pieces = re.split(r"\n\s*\n", text) if split == "paragraph" else text.splitlines()
    docs = [p.strip() for p in pieces if p.strip()]
    if not docs:
        raise ValueError(f"corpus {corpus_path} is empty: it has no non-blank {split}s")
    return docs


def _ids_of(out: Any) -> Any:
    """Token ids from a tokenizer's output: a list, or a mapping with 'input_ids'."""
    if hasattr(out, "keys") and "input_ids" in out:
        out = out["input_ids"]
    return out.tolist() if hasattr(out, "tolist") else out


def _is_id_lists(ids: Any, n: int) -> bool:
    return (
        isinstance(ids, (list, tuple))
        and len(ids) == n
        and all(isinstance(doc, (list, tuple)) for doc in ids)
        and all(isinstance(t, int) for doc in ids for t in doc)
    )


def _tokenize(tokenizer: Any, docs: list[str]) -> list[list[int]]:
    """Token ids of each document, via a batched call when the tokenizer supports one."""
    if callable(tokenizer):
        try:  # a Hugging Face tokenizer encodes a whole list at once
            ids = _ids_of(tokenizer(docs, add_special_tokens=False))
            if _is_id_lists(ids, len(docs)):
                return [list(doc) for doc in ids]
        except Exception:  # noqa: BLE001 - the one-by-one path below reports real errors
            pass
    encode = getattr(tokenizer, "encode", None) or (tokenizer if callable(tokenizer) else None)
    if encode is None:
        name = type(tokenizer).__name__
        raise ValueError(f"tokenizer {name} has no encode() and is not callable; pass a tokenizer")
    out = []
    for doc in docs:
        try:
            ids = _ids_of(encode(doc, add_special_tokens=False))
        except TypeError:
            ids = _ids_of(encode(doc))
        out.append([int(t) for t in ids])
    return out


def build_store_from_text(
    corpus_path: str | os.PathLike,
    tokenizer: Any,
    out_path: str | os.PathLike,
    *,
    split: str = "paragraph",
) -> Store:
    """Tokenize a UTF-8 text file and save its store at `out_path`.

    Documents are the file's paragraphs (separated by blank lines) or, with split="line", its
    lines. `tokenizer` is a Hugging Face tokenizer or anything with `encode(text)` or
    `__call__(text)` returning token ids.
    """
    if split not in ("paragraph", "line"):
        raise ValueError(f"split must be 'paragraph' or 'line', got {split!r}")
    docs = _read_documents(corpus_path, split)
    token_lists = _tokenize(tokenizer, docs)
    if not any(token_lists):
        raise ValueError(f"corpus {corpus_path} tokenizes to no tokens; check the tokenizer")
    store = build_store(token_lists)
    store.save(out_path)
    return store


def frequency_trie(
    continuations: Iterable[Sequence[int]], budget: int
) -> tuple[list[int], list[int]]:
    """Merge continuations into a trie and keep its `budget` most frequent nodes.

    A node's count is how many continuations pass through it, so a child never outranks its
    parent; ties go to the shallower node, then to the first seen. Returns (tokens, parents)
    with parents[i] < i and -1 for nodes right after the context.

    >>> frequency_trie([[4, 5], [4, 5], [4, 6], [7]], 3)   # counts: 4:3, 4-5:2, 4-6:1, 7:1
    ([4, 5, 7], [-1, 0, -1])
    """
    children: list[dict[int, int]] = [{}]  # trie node 0 is the context's end
    count, token, parent, depth = [0], [SEP], [-1], [0]
    for seq in continuations:
        node = 0
        for t in seq:
            child = children[node].get(t)
            if child is None:
                child = children[node][t] = len(count)
                children.append({})
                count.append(0)
                token.append(int(t))
                parent.append(node)
                depth.append(depth[node] + 1)
            count[child] += 1
            node = child

    draft = DraftTrie(budget)
    draft_index = {0: -1}  # trie node -> draft node
    heap = [(-count[c], depth[c], c) for c in children[0].values()]
    heapq.heapify(heap)
    while heap and not draft.full:
        _, _, node = heapq.heappop(heap)
        draft_index[node] = draft.add(draft_index[parent[node]], token[node])
        for c in children[node].values():
            heapq.heappush(heap, (-count[c], depth[c], c))
    return draft.tokens, draft.parents



class RetrievalDrafter(Drafter):
    """REST drafter: a frequency-weighted trie of what followed the context in a corpus.

    Options:
        store: a `Store`, or the path of one saved by `Store.save` / `leapdecode index`.
        max_suffix: longest context suffix looked up (default 16).
        min_suffix: shortest context suffix looked up (default 2).
        max_candidates: most occurrences merged into the trie (default 64).
        draft_len: deepest draft node (default 8).

    `match_length` is the suffix length matched by the last `propose` (0 when none).
    """

    name = "retrieval"

    def __init__(
        self,
        store: Store | str | os.PathLike | None = None,
        *,
        max_suffix: int = 16,
        min_suffix: int = 2,
        max_candidates: int = 64,
        draft_len: int = 8,
    ) -> None:
        if store is None:
            raise ValueError(f"the retrieval drafter needs a store: {_HOW_TO_BUILD} as store=")
        if isinstance(store, (str, os.PathLike)):
            store = Store.load(store)
        if not isinstance(store, Store):
            raise ValueError(f"store must be a Store or a path, got {type(store).__name__}")
        self.store = store
        self.max_suffix = check_int("retrieval", "max_suffix", max_suffix, 1, 16)
        self.min_suffix = check_int("retrieval", "min_suffix", min_suffix, 1, 2)
        if self.min_suffix > self.max_suffix:
            raise ValueError(
                f"min_suffix ({min_suffix}) must not exceed max_suffix ({max_suffix}); "
                "lower min_suffix or raise max_suffix"
            )
        self.max_candidates = check_int("retrieval", "max_candidates", max_candidates, 1, 64)
        self.draft_len = check_int("retrieval", "draft_len", draft_len, 1, 8)
        self.match_length = 0

    def propose(self, context: Sequence[int], budget: int) -> Draft:
        self.match_length = 0
        longest = min(self.max_suffix, len(context))
        if longest < self.min_suffix:
            return EMPTY_DRAFT
        tail = [int(t) for t in context[len(context) - longest :]]
        m = self._longest_match(tail)
        # the longest match may sit only at documents' ends; shorter ones may still continue
        for length in range(m, self.min_suffix - 1, -1):
            conts = self.store.continuations(tail[-length:], self.max_candidates, self.draft_len)
            if any(conts):
                self.match_length = length
                tokens, parents = frequency_trie(conts, budget)
                return Draft(tokens=tokens, parents=parents)
        return EMPTY_DRAFT

    def _longest_match(self, tail: list[int]) -> int:
        """Longest suffix length of `tail` (>= min_suffix) found in the store, else 0.

        If a suffix occurs, so does every shorter one, so a binary search over lengths suffices.
        """
        def occurs(m: int) -> bool:
            lo, hi = self.store.find(tail[-m:])
            return hi > lo

        low, high = self.min_suffix, len(tail)
        if not occurs(low):
            return 0
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (mid, high) if occurs(mid) else (low, mid - 1)
        return low
