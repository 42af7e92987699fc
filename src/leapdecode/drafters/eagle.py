"""`eagle` and `medusa`: trained heads (heads/) draft from the target's own hidden states.

The verification pass already computes the target's final hidden state f for every input, so
the features of the accepted tokens come for free (`TargetInfo.features`, the FeatureSource of
models/base.py); a head costs a fraction of a pass. Both keep their own state per request.

- `eagle` (EAGLE, Li et al., arXiv 2401.15077; dynamic trees of EAGLE-2, arXiv 2406.16858): the
  head keeps one entry per committed position. A greedy step grows a tree level by level: the
  `topk` best nodes of the newest level (by the product of their path's head probabilities) are
  expanded at once, each child scored by its path; the draft is the `budget` best nodes of the
  whole tree (a node's score never exceeds its parent's, so the set is closed under ancestors).
  Sampled decoding drafts a chain, each token drawn from the head's warped distribution q,
  reported as `Draft.probs` so that verification keeps the target's distribution exactly.
- `medusa` (Medusa, Cai et al., arXiv 2401.10774): from the last accepted token's feature, head k
  guesses the token k places past the bonus; the draft tree takes the `budget` best paths of the
  heads' top-`topk` candidates (scored by the sum of their log-probabilities), under greedy
  decoding and, with one-hot q (siblings are distinct guesses), under sampling.

A head file is loaded once per process; a packaged model's shipped head is found by name.
"""

from __future__ import annotations

import heapq
import weakref
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..heads.model import EagleHead, HeadFile, MedusaHeads, shipped_head
from .base import EMPTY_DRAFT, Draft, Drafter, StepResult, TargetInfo, check_int

_FILES: dict[str, HeadFile] = {}  # path -> loaded head file


def load_head(kind: str, head: str | None, target: TargetInfo | None) -> tuple[HeadFile, Any]:
    """(head file, the target's FeatureSource), or a one-line error that names the fix."""
    if target is None or target.features is None:
        backend = target.backend if target is not None else "this"
        raise ValueError(f"the {kind} method drafts from the target's hidden states, which the {backend} backend "
                         f"does not expose; run it on the native runtime (--backend native)")
    path = Path(head) if head else shipped_head(target.name, kind)
    if path is None:
        raise ValueError(f"no {kind} head ships for {target.name}; train one with `leapdecode train-head --model "
                         f"{target.name} --kind {kind} --out DIR` and pass --opt head=DIR/head.safetensors")
    key = str(Path(path).resolve())
    if key not in _FILES:
        _FILES[key] = HeadFile.load(Path(path))
    file = _FILES[key]
    if file.config.kind != kind:
        raise ValueError(f"{path} is a {file.config.kind} head, not a {kind} head; use --method {file.config.kind}")
    file.check_target(target.vocab_size, target.features.hidden_size, target.name)
    return file, target.features


class _Kernel(nn.Module):
    """A linear layer run by the target's own kernels (FeatureSource.linear)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x.reshape(-1, x.shape[-1])).view(*x.shape[:-1], -1)


# A head's layers run in 8 bits whatever the target's format: a draft level reads half the bytes
# of bf16, and a head's precision can change what it guesses, never the output.
HEAD_DTYPE = "int8"


def _on_target_kernels(module: nn.Module, features: Any) -> nn.Module:
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            weight = child.weight.detach()
            fn = features.linear(weight, HEAD_DTYPE)
            if child.bias is not None:
                bias, inner = child.bias.detach().float(), fn
                fn = lambda x, inner=inner, bias=bias: inner(x) + bias  # noqa: E731
            setattr(module, name, _Kernel(fn))
        else:
            _on_target_kernels(child, features)
    return module


_ON_KERNELS: "weakref.WeakKeyDictionary[Any, dict[int, tuple]]" = weakref.WeakKeyDictionary()


def _kernels_of(file: HeadFile, features: Any) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
    """The head's module and its draft-vocabulary logits (g [n, h] -> [n, V']) on the target's
    kernels, converted once per (head file, target)."""
    made = _ON_KERNELS.setdefault(features, {})
    if id(file) not in made:
        made[id(file)] = (_on_target_kernels(file.module(), features),
                          features.linear(features.head_rows(file.vocab), HEAD_DTYPE))
    return made[id(file)]


class _HeadDrafter(Drafter):
    """What both heads share: the head file, the draft vocabulary's logits, sampling."""

    kind = ""

    def __init__(self, head: str | None = None, topk: int = 4):
        self.head_path = head
        self.topk = check_int(self.kind, "topk", topk, 1, 4)

    def configure(self, sampling: Any, target: TargetInfo | None = None) -> None:
        file, self.features = load_head(self.kind, self.head_path, target)
        self.sampling = sampling
        self.module, self.logits = _kernels_of(file, self.features)
        self.vocab = file.vocab  # draft vocabulary -> target ids
        self.vocab_size = target.vocab_size
        self.generator = torch.Generator()
        if not sampling.greedy:
            from ..sampling import make_warp

            self.warp = make_warp(sampling)
            self.generator.manual_seed(sampling.seed if sampling.seed is not None else torch.seed())

    def _log_probs(self, g: torch.Tensor) -> torch.Tensor:
        """g [n, h] -> [n, V'] log-probabilities over the draft vocabulary."""
        return torch.log_softmax(self.logits(g), dim=-1)


class EagleDrafter(_HeadDrafter):
    name = kind = "eagle"
    default_budget = 12

    def __init__(self, head: str | None = None, depth: int = 4, topk: int = 4):
        super().__init__(head, topk)
        self.depth = check_int("eagle", "depth", depth, 1, 6)

    def reset(self, prompt: Sequence[int]) -> None:
        cfg = self.module.cfg
        self.pending: list[torch.Tensor] = []  # features not yet read by an entry
        self.prefilled = False
        self.entries = 0  # head entries made: positions 1..entries (entry p reads f_{p-1} and x_p)
        self.k_cache = torch.zeros(cfg.kv_heads, 0, cfg.head_dim)
        self.v_cache = torch.zeros(cfg.kv_heads, 0, cfg.head_dim)

    @torch.inference_mode()
    def propose(self, context: Sequence[int], budget: int) -> Draft:
        if not self.prefilled:  # the first step: keep the prefill's features (positions 0 ..
            # len(prompt) - 2) before this step's pass replaces them
            self.pending.append(self.features.hidden())
            self.prefilled = True
        g = self._commit_entries(context)
        if g is None:
            return EMPTY_DRAFT
        if self.sampling.greedy:
            return self._tree(g, len(context) - 1, budget)
        return self._chain(g, len(context) - 1, budget)

    def observe(self, result: StepResult) -> None:
        if not self.prefilled:  # the first step drafted nothing (budget 0), so the prompt's features
            # were never read and are gone now: the head's entries start at this step's root
            self.prefilled = True
            self.entries = len(result.context) - len(result.accepted) - 2  # the root's position
        rows = [0, *(i + 1 for i in result.path)]  # the root and the accepted nodes: committed now
        self.pending.append(self.features.hidden()[rows])

    def _commit_entries(self, context: Sequence[int]) -> torch.Tensor | None:
        """Entries for the positions whose feature before them is known now; the last one's g."""
        feats = torch.cat(self.pending) if self.pending else torch.zeros(0, self.module.cfg.hidden)
        self.pending = []
        n = feats.shape[0]
        if n == 0:
            return None
        start = self.entries + 1
        positions = torch.arange(start, start + n)
        tokens = torch.tensor([context[p] for p in positions.tolist()])
        head = self.module
        u, q, k, v = head.entries(feats, self.features.embed(tokens), positions)
        keys, values = torch.cat([self.k_cache, k], 1), torch.cat([self.v_cache, v], 1)
        past = self.k_cache.shape[1]
        allowed = torch.ones(n, past + n, dtype=torch.bool)
        allowed[:, past:] = torch.ones(n, n, dtype=torch.bool).tril()
        g = head.finish(u, q, keys, values, allowed)
        self.k_cache, self.v_cache = keys, values
        self.entries += n
        return g[-1:]

    def _tree(self, g_root: torch.Tensor, last: int, budget: int) -> Draft:
        """EAGLE-2's dynamic tree: expand the topk best nodes of each level, keep the best nodes.
        A draft of `budget` nodes holds at most `budget` levels and `budget` children of a node, so
        the tree is grown no deeper or wider than that (a small budget costs few head passes)."""
        head, k, levels = self.module, min(self.topk, budget), min(self.depth, budget)
        tokens: list[int] = []  # node -> draft-vocabulary index
        parents: list[int] = []
        scores: list[float] = []
        tree_k, tree_v = [], []
        ancestors: dict[int, list[int]] = {-1: []}  # node -> the entries of its ancestors and itself
        logp = self._log_probs(g_root)[0]
        top = logp.topk(k)
        frontier = []
        for value, index in zip(top.values.tolist(), top.indices.tolist()):
            tokens.append(index), parents.append(-1), scores.append(value)
            frontier.append(len(tokens) - 1)
        g_of = {-1: g_root[0]}
        for depth in range(1, levels):
            expand = heapq.nlargest(k, frontier, key=lambda i: scores[i])
            w = len(expand)
            feats = torch.stack([g_of[parents[i]] for i in expand])
            embeds = self.features.embed(self.vocab[[tokens[i] for i in expand]])
            positions = torch.full((w,), last + depth)
            u, q, kk, vv = head.entries(feats, embeds, positions)
            past, made = self.k_cache.shape[1], len(tree_k)
            keys = torch.cat([self.k_cache, *tree_k, kk], 1)
            values = torch.cat([self.v_cache, *tree_v, vv], 1)
            allowed = torch.zeros(w, past + made + w, dtype=torch.bool)
            allowed[:, :past] = True
            for row, node in enumerate(expand):
                for entry in ancestors[parents[node]]:
                    allowed[row, past + entry] = True
                allowed[row, past + made + row] = True
            g = head.finish(u, q, keys, values, allowed)
            for row, node in enumerate(expand):
                ancestors[node] = ancestors[parents[node]] + [made + row]
                g_of[node] = g[row]
                tree_k.append(kk[:, row:row + 1])
                tree_v.append(vv[:, row:row + 1])
            logp = self._log_probs(g)
            top = logp.topk(k, dim=-1)
            frontier = []
            for row, node in enumerate(expand):
                for value, index in zip(top.values[row].tolist(), top.indices[row].tolist()):
                    tokens.append(index), parents.append(node), scores.append(scores[node] + value)
                    frontier.append(len(tokens) - 1)
        chosen = sorted(heapq.nlargest(budget, range(len(tokens)), key=lambda i: scores[i]))
        kept = {-1}
        new_index: dict[int, int] = {-1: -1}
        out_tokens, out_parents = [], []
        for node in chosen:  # by index: parents come first
            if parents[node] in kept:
                kept.add(node)
                new_index[node] = len(out_tokens)
                out_tokens.append(int(self.vocab[tokens[node]]))
                out_parents.append(new_index[parents[node]])
        return Draft(tuple(out_tokens), tuple(out_parents))

    def _chain(self, g: torch.Tensor, last: int, budget: int) -> Draft:
        """Sampling: each token drawn from the head's warped distribution, q reported."""
        head = self.module
        k_ctx, v_ctx = self.k_cache, self.v_cache
        out_tokens, probs = [], []
        for depth in range(1, min(self.depth, budget) + 1):
            q_small = self.warp(self.logits(g))[0]  # [V']
            index = int(torch.multinomial(q_small, 1, generator=self.generator))
            q = torch.zeros(self.vocab_size)
            q[self.vocab] = q_small
            token = int(self.vocab[index])
            out_tokens.append(token)
            probs.append(q)
            if depth == min(self.depth, budget):
                break
            u, qq, kk, vv = head.entries(g, self.features.embed(torch.tensor([token])),
                                         torch.tensor([last + depth]))
            k_ctx, v_ctx = torch.cat([k_ctx, kk], 1), torch.cat([v_ctx, vv], 1)
            g = head.finish(u, qq, k_ctx, v_ctx, None)
        return Draft(tuple(out_tokens), None, torch.stack(probs))


class MedusaDrafter(_HeadDrafter):
    name = kind = "medusa"
    default_budget = 12

    def reset(self, prompt: Sequence[int]) -> None:
        self.feature: torch.Tensor | None = None  # f of the last token before the bonus
        self.prefilled = False

    @torch.inference_mode()
    def propose(self, context: Sequence[int], budget: int) -> Draft:
        if not self.prefilled:
            hidden = self.features.hidden()
            self.feature = hidden[-1:] if hidden.shape[0] else None
            self.prefilled = True
        if self.feature is None:
            return EMPTY_DRAFT
        # f at the position before the bonus predicted the bonus; head k stands in for the
        # feature k places on, whose row predicts the token k past the bonus
        logp = self._log_probs(self.module(self.feature)[:, 0])  # [K, V']
        top = logp.topk(self.topk, dim=-1)
        values, indices = top.values.tolist(), top.indices.tolist()
        # best paths: a node is (score, level, candidate, parent); children of the best first
        tokens, parents, heap = [], [], [(-values[0][c], 0, c, -1) for c in range(self.topk)]
        heapq.heapify(heap)
        while heap and len(tokens) < budget:
            neg, level, c, parent = heapq.heappop(heap)
            node = len(tokens)
            tokens.append(int(self.vocab[indices[level][c]]))
            parents.append(parent)
            if level + 1 < len(values):
                for c2 in range(self.topk):
                    heapq.heappush(heap, (neg - values[level + 1][c2], level + 1, c2, node))
        return Draft(tuple(tokens), tuple(parents))

    def observe(self, result: StepResult) -> None:
        self.prefilled = True  # (also when the first step drafted nothing: the prefill's row is stale)
        self.feature = self.features.hidden()[[result.path[-1] + 1 if result.path else 0]]
