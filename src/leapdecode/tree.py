"""Draft tree -> attention mask, positions and paths for one verification pass.

A verification pass feeds `[root] + draft.tokens`: the root is the last committed token (the
one the cache does not hold yet), node i of the draft is input i + 1. Each input may attend to
the whole cache and to its own ancestors in the tree, itself included.

Example: tokens (a, b, c, d) with parents (-1, 0, 0, 2) is the tree

    root ─ a ─ b
             └ c ─ d

inputs [root, a, b, c, d], depths [0, 1, 2, 2, 3], paths to the leaves [a, b] and [a, c, d].
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from .drafters.base import Draft


@dataclass(frozen=True)
class TreeLayout:
    depths: torch.Tensor  # [n + 1] depth of each input, root = 0
    mask: torch.Tensor | None  # [n + 1, n + 1] bool, True = may attend; None for a chain (causal)
    children: tuple[tuple[int, ...], ...]  # children[j] = inputs whose parent is input j


@lru_cache(maxsize=256)
def build(parents: tuple[int, ...] | None, n: int) -> TreeLayout:
    """Layout for a draft of `n` nodes with the given parents (None = chain). Cached per shape."""
    if parents is None or all(p == i - 1 for i, p in enumerate(parents)):
        children = tuple((j + 1,) if j < n else () for j in range(n + 1))
        return TreeLayout(torch.arange(n + 1), None, children)
    input_parent = [-1] + [p + 1 for p in parents]  # parent input index of each input
    mask = torch.zeros(n + 1, n + 1, dtype=torch.bool)
    depths = [0] * (n + 1)
    kids: list[list[int]] = [[] for _ in range(n + 1)]
    mask[0, 0] = True
    for j in range(1, n + 1):
        parent = input_parent[j]
        mask[j] = mask[parent]
        mask[j, j] = True
        depths[j] = depths[parent] + 1
        kids[parent].append(j)
    return TreeLayout(torch.tensor(depths), mask, tuple(tuple(k) for k in kids))


def layout(draft: Draft) -> TreeLayout:
    return build(None if draft.is_chain else draft.parents, len(draft))


def leaf_paths(parents: tuple[int, ...]) -> list[list[int]]:
    """Root-to-leaf paths as lists of draft node indices."""
    n = len(parents)
    has_child = [False] * n
    for p in parents:
        if p >= 0:
            has_child[p] = True
    paths = []
    for leaf in range(n):
        if has_child[leaf]:
            continue
        path, node = [], leaf
        while node >= 0:
            path.append(node)
            node = parents[node]
        paths.append(path[::-1])
    return paths


def from_paths(paths: list[tuple[int, ...]]) -> tuple[list[tuple[int, ...]], tuple[int, ...]]:
    """Medusa-style description: a list of token paths -> (unique node paths, parents).

    Every prefix of a path becomes a node; nodes are ordered by depth, then first appearance.
    """
    seen: dict[tuple[int, ...], None] = {}
    for path in paths:
        for d in range(1, len(path) + 1):
            seen.setdefault(tuple(path[:d]), None)
    ordered = sorted(seen, key=len)  # stable: ties keep first appearance
    nodes = {path: i for i, path in enumerate(ordered)}
    parents = tuple(nodes[p[:-1]] if len(p) > 1 else -1 for p in ordered)
    return ordered, parents
