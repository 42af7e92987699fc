"""`token-recycling`: draft from the target's own discarded top-k candidates.

Token Recycling (Luo et al., ACL 2025, arXiv 2408.08696). Every verification pass already
computes the target's distribution after every draft node; plain decoding keeps one token of
each and throws the rest away. Token Recycling keeps the top-k of each in an adjacency matrix

    M[token] = the k likeliest successors of `token`, best first      # [vocab, k]

overwritten by every pass (the latest context wins), and kept across requests by default (the
paper's "hot start"). To draft, it walks M breadth-first from the last committed token along a
static tree template, a list of rank paths as in Medusa: the node with path (r1, ..., rd) gets
token M[parent's token][rd]. No draft model, no training, a few MB of memory.

Differences from the paper's code, none of which affects losslessness:
- unknown rows of M (tokens never seen as an input) hold -1, and their nodes are left out
  instead of drafting token 0;
- the draft is cut to the engine's budget by dropping the template's least promising nodes
  (`order_template`), and nodes whose token repeats a sibling's are dropped with their subtree.
"""

from __future__ import annotations

import heapq
from typing import Callable, Sequence

import torch

from .. import rowops
from .base import EMPTY_DRAFT, Draft, Drafter, DraftTrie, StepResult

RankPath = tuple[int, ...]

UNKNOWN = -1  # an entry of M with no candidate yet


def rank_acceptance(rank: int) -> float:
    """A rough chance that the target's choice is its rank-`rank` candidate (0 = the argmax).

    Used only to order tree nodes: rank 0 dominates, the tail falls off like 1/rank. With k = 8 it
    grows an 80-node tree of the paper's shape (widths 8, 20, 25, 17, 7, ... against the paper's
    8, 21, 25, 15, 8, 3): wide at depths 1-2, deepest along rank 0.
    """
    return 0.5 if rank == 0 else 0.12 / rank


def _priority(path: RankPath) -> tuple[float, int, RankPath]:
    """Sort key, best first: estimated acceptance of the whole path, then shallower, then by ranks.

    Every factor of the product is below 1, so a parent always sorts before its children.
    """
    score = 1.0
    for rank in path:
        score *= rank_acceptance(rank)
    return (-score, len(path), path)


def default_template(size: int = 80, k: int = 8) -> list[RankPath]:
    """The `size` rank paths (ranks < k) of highest estimated acceptance, best first.

    >>> default_template(4, k=2)
    [(0,), (0, 0), (0, 0, 0), (1,)]
    """
    frontier = [_priority((rank,)) for rank in range(k)]
    heapq.heapify(frontier)
    chosen: list[RankPath] = []
    while frontier and len(chosen) < size:
        _, _, path = heapq.heappop(frontier)
        chosen.append(path)
        for rank in range(k):
            heapq.heappush(frontier, _priority(path + (rank,)))
    return chosen


def order_template(template: Sequence[Sequence[int]]) -> list[RankPath]:
    """The template's paths, best first (parents always before their children).

    >>> order_template([(1,), (0, 1), (0,), (0, 0)])
    [(0,), (0, 0), (1,), (0, 1)]
    """
    return sorted((tuple(path) for path in template), key=_priority)


def truncate_template(template: Sequence[Sequence[int]], budget: int) -> list[RankPath]:
    """The `budget` most promising paths of a template; still a tree (each parent is kept).

    >>> truncate_template([(0,), (1,), (0, 0), (0, 1), (1, 0)], 3)
    [(0,), (0, 0), (1,)]
    """
    return order_template(template)[: max(budget, 0)]


def template_parents(ordered: Sequence[RankPath]) -> list[int]:
    """Index of each path's parent in `ordered`, -1 for depth 1.

    >>> template_parents([(0,), (0, 0), (1,), (0, 1)])
    [-1, 0, -1, 0]
    """
    index = {path: i for i, path in enumerate(ordered)}
    return [index[path[:-1]] if len(path) > 1 else -1 for path in ordered]


def validate_template(template: Sequence[Sequence[int]], k: int) -> list[RankPath]:
    """The template as tuples, or ValueError naming what to fix."""
    paths = [tuple(path) for path in template]
    if not paths:
        raise ValueError("token-recycling template is empty; give at least one path such as (0,)")
    seen: set[RankPath] = set()
    for path in paths:
        if not path or any(isinstance(r, bool) or not isinstance(r, int) for r in path):
            raise ValueError(f"token-recycling template path {path!r} must be a non-empty tuple of ints")
        if any(not 0 <= r < k for r in path):
            raise ValueError(
                f"token-recycling template path {path!r} has a rank outside [0, k={k}); raise k or fix the path"
            )
        if path in seen:
            raise ValueError(f"token-recycling template lists path {path!r} twice; remove the duplicate")
        seen.add(path)
    for path in paths:
        if len(path) > 1 and path[:-1] not in seen:
            raise ValueError(f"token-recycling template path {path!r} has no parent; add {path[:-1]!r}")
    return paths


def build_tree(
    root: int,
    successors: Callable[[int], Sequence[int]],
    paths: Sequence[RankPath],
    parents: Sequence[int],
    budget: int,
) -> tuple[list[int], list[int]]:
    """Expand an ordered template from `root`; returns (tokens, parents) of at most `budget` nodes.

    `paths` must list parents first (as `order_template` does) and `parents` index into it.
    `successors(token)` gives a token's candidates, best first, UNKNOWN where there are none.
    A node is dropped, with its subtree, when its candidate is UNKNOWN or repeats a sibling's token.

    >>> table = {5: [7, 8], 7: [9, 9], 8: [-1, -1]}
    >>> paths = [(0,), (0, 0), (1,), (0, 1), (1, 0)]
    >>> build_tree(5, table.__getitem__, paths, template_parents(paths), budget=10)
    ([7, 9, 8], [-1, 0, -1])
    """
    trie = DraftTrie(budget)
    kept: list[int] = [-2] * len(paths)  # template index -> draft index; -2 = dropped
    node_token: list[int] = [0] * len(paths)
    for i, path in enumerate(paths):
        if trie.full:
            break
        parent = parents[i]
        if parent == -1:
            draft_parent, parent_token = -1, root
        else:
            draft_parent = kept[parent]
            if draft_parent == -2:
                continue
            parent_token = node_token[parent]
        token = int(successors(parent_token)[path[-1]])
        node = None if token == UNKNOWN else trie.add(draft_parent, token, share=False)
        if node is not None:
            kept[i], node_token[i] = node, token
    return trie.tokens, trie.parents


class TokenRecyclingDrafter(Drafter):
    """Drafts a tree from an adjacency matrix of the target's recent top-k successors.

    Options: `k` candidates kept per token (8); `template`, a list of rank paths (None: the
    80-node `default_template(80, k)`); `keep_across_requests` keeps M over `reset` (True, the
    paper's hot start); `vocab_size` (None: learned from the first logits seen; until then the
    drafter proposes nothing).
    """

    name = "token-recycling"
    default_budget = 80

    def __init__(
        self,
        *,
        k: int = 8,
        template: Sequence[Sequence[int]] | None = None,
        keep_across_requests: bool = True,
        vocab_size: int | None = None,
    ):
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"token-recycling option k must be an integer >= 1, got {k!r}")
        if not isinstance(keep_across_requests, bool):
            raise ValueError(
                f"token-recycling option keep_across_requests must be True or False, got {keep_across_requests!r}"
            )
        if vocab_size is not None and (
            isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1
        ):
            raise ValueError(
                f"token-recycling option vocab_size must be a positive integer or None, got {vocab_size!r}"
            )
        paths = default_template(80, k) if template is None else validate_template(template, k)
        self.k = k
        self.keep_across_requests = keep_across_requests
        self.paths = order_template(paths)  # best first, parents before children
        self.parents = template_parents(self.paths)
        self.matrix: torch.Tensor | None = None  # [vocab, k] long, UNKNOWN where not yet seen
        if vocab_size is not None:
            self._init_matrix(vocab_size)

    def _init_matrix(self, vocab_size: int) -> None:
        self.matrix = torch.full((vocab_size, self.k), UNKNOWN, dtype=torch.long)

    def reset(self, prompt: Sequence[int]) -> None:
        if not self.keep_across_requests and self.matrix is not None:
            self.matrix.fill_(UNKNOWN)

    def propose(self, context: Sequence[int], budget: int) -> Draft:
        matrix = self.matrix
        if matrix is None or not context:
            return EMPTY_DRAFT
        root = int(context[-1])
        if not 0 <= root < matrix.shape[0]:
            return EMPTY_DRAFT
        rows: dict[int, list[int]] = {}  # token -> its row of M as Python ints, read once per step

        def successors(token: int) -> list[int]:
            row = rows.get(token)
            if row is None:
                row = rows[token] = matrix[token].tolist()
            return row

        tokens, parents = build_tree(root, successors, self.paths, self.parents, budget)
        return Draft(tuple(tokens), tuple(parents)) if tokens else EMPTY_DRAFT

    def observe(self, result: StepResult) -> None:
        logits = result.logits  # [n + 1, vocab]
        vocab = logits.shape[-1]
        if self.matrix is None or self.matrix.shape[0] != vocab:
            self._init_matrix(vocab)  # first step, or a target with another vocabulary
        assert self.matrix is not None
        if len(result.inputs) != logits.shape[0]:
            raise ValueError(
                f"StepResult has {len(result.inputs)} inputs but {logits.shape[0]} logits rows"
            )
        # One row per distinct input token. Rows on the committed path (root, then accepted nodes)
        # come last so that they win over rejected nodes: their context is the real one.
        on_path = [0] + [node + 1 for node in result.path]
        path_set = set(on_path)
        order = [j for j in range(len(result.inputs)) if j not in path_set] + on_path
        row_of: dict[int, int] = {}
        for j in order:
            token = int(result.inputs[j])
            if 0 <= token < vocab:
                row_of[token] = j
        width = min(self.k, vocab)
        top = rowops.topk(logits, width).cpu()  # [n + 1, width], best first
        updated = torch.tensor(list(row_of), dtype=torch.long)
        self.matrix[updated, :width] = top[list(row_of.values())]
