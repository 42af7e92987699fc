"""`draft-model`: a small language model drafts for the target.

Classic speculative decoding (Leviathan et al. 2023, arXiv 2211.17192; Chen et al. 2023,
arXiv 2302.01318): a draft model much cheaper than the target proposes a few tokens one at a
time and the target checks them all in one pass. The draft model keeps its own KV cache in step
with the committed context, so each step feeds it only what it has not seen:

    committed:    P a b c      (the target accepted a and b, then added the bonus c)
    draft cache:  P a b x      (x was the draft's rejected guess)
    propose:      trim the cache to the longest common prefix (P a b), feed the catch-up (c),
                  then decode the chain one token at a time

(draft_lm.py). The draft model runs where the target runs (the same backend and dtype) unless
the options `backend` and `dtype` say otherwise.

Draft length (`length`):
- an integer: that many tokens per step (fewer when the engine's budget is smaller);
- "auto": SpecDec++'s stopping rule (Huang et al. 2024, arXiv 2405.19715) -- stop once the
  chance that some drafted token is rejected grows too large -- with the draft's own confidence
  (its top probability) standing in for SpecDec++'s trained acceptance head. Done online, with no
  training: the confidence is calibrated online by the observed acceptance per confidence bin,
  and the threshold comes from the measured cost of a draft pass against the throughput reached
  so far (the online length adaptivity PEARL argues for, Liu et al. 2024, arXiv 2408.11850).
  See `DraftLength` (draft_length.py).

Tree (`tree_width` w > 1): at each depth where the draft is unsure, its next w - 1 candidates hang
beside the chain's token as leaves, so a wrong guess at depth d can still end in an accepted
token. They cost no extra draft pass (they come from the same distributions), only wider
verification.

Sampling: once the engine passes the sampling parameters (`configure`), draft tokens are drawn
from q, the draft's distribution warped exactly like the target's (temperature, top-k, top-p),
and `Draft.probs` carries q, so verification is Leviathan et al.'s rule. Tree siblings are then
drawn from q without replacement and verified by recursive rejection sampling (verify_multi.py).
Without `configure` the drafter proposes its argmax and no probs: a one-hot q, lossless too.

Copies (`copy` n > 0): where the context's end already occurred earlier, at least n tokens long,
the continuation of that earlier occurrence is proposed instead (a suffix automaton's match, as
`suffix` drafts) and the draft model does not run for that step; its cache catches up at its next
draft. SAM-Decoding (Hu et al., ACL 2025, arXiv 2411.10666) pairs such copies with an auxiliary
drafter the same way: long matches are accepted almost whole and cost nothing to draft. (Not
with a draft of another tokenizer, which drafts through text.)

Window (`window` w > 0): the draft model reads only the prompt's last w tokens (then everything
generated after them), so a long prompt costs the draft a prefill of w tokens instead of all of
them; the target still reads, and verifies against, the whole context, so the output is unchanged.
Drafting from a short window of recent context is the idea MagicDec (Sadhukhan et al. 2024,
arXiv 2408.11049) applies to long prompts, there with a StreamingLLM cache. The copies above still
search the whole context. (Not with a draft of another tokenizer.)

Another tokenizer: when `configure` sees that the draft's vocabulary differs from the target's,
the request is handed to `CrossTokenizerDrafter` (cross_tokenizer.py), which drafts through text.
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Callable, Sequence

import torch

from ..models.base import eos_ids_of
from ..models.loading import DRAFT_BACKENDS, as_target, load_draft
from ..sampling import SamplingParams, make_generator, make_warp
from .base import EMPTY_DRAFT, Draft, Drafter, StepResult, TargetInfo, check_int
from .cross_tokenizer import CrossTokenizerDrafter
from .draft_length import DraftLength
from .draft_lm import DraftLM, Level, decode_chain, pad_vocab
from .suffix import SuffixDrafter

# target model -> the packaged draft model used when none is named
DEFAULT_DRAFTS = {"qwen2.5-coder-1.5b": "qwen2.5-coder-0.5b"}

SIBLING_CONFIDENCE = 0.9  # add tree siblings at a depth only where the draft's top probability is below this
SEED_OFFSET = 0x5EED  # the draft's sampler must be independent of the engine's: never reuse its seed

# what "auto" learned (acceptance per confidence, costs), kept across requests for each pair
_LEARNED: dict[tuple, DraftLength] = {}


class DraftModelDrafter(Drafter):
    """A small causal LM drafts a chain (or a shallow tree) for the target.

        make_drafter("draft-model", model="qwen2.5-coder-0.5b")             # fixed length 4
        make_drafter("draft-model", model="qwen2.5-coder-0.5b", length="auto", tree_width=2)
        make_drafter("draft-model", model="qwen2.5-coder-0.5b", length="auto", copy=8)  # copies first
        make_drafter("draft-model", model="qwen2.5-coder-0.5b", window=256)  # the prompt's last 256 tokens

    `model` is a packaged name, a transformers directory or .gguf file (loaded at the first
    `configure`, on the target's backend and dtype unless `backend`/`dtype` are given), a
    (model, tokenizer) pair, or a Target or transformers model (then the tokenizer is assumed to
    be the target's). None picks the packaged draft for the target when there is one (DEFAULT_DRAFTS).
    """

    name = "draft-model"

    def __init__(
        self,
        model: str | tuple[Any, Any] | Any | None = None,
        length: int | str = 4,
        tree_width: int = 1,
        dtype: str | None = None,
        threshold: float | None = None,
        max_length: int = 12,
        backend: str | None = None,
        copy: int = 0,
        window: int = 0,
    ):
        if isinstance(tree_width, bool) or not isinstance(tree_width, int) or tree_width < 1:
            raise ValueError(f"draft-model option tree_width must be an integer >= 1, got {tree_width!r}")
        if backend is not None and backend not in DRAFT_BACKENDS:
            raise ValueError(f"draft-model option backend must be one of {', '.join(DRAFT_BACKENDS)}, got {backend!r}")
        self.backend, self.dtype = backend, dtype  # None: the target's
        self.length = DraftLength(length, threshold, max_length)
        self.tree_width = tree_width
        self._copy = SuffixDrafter(min_match=check_int("draft-model", "copy", copy, 0, 8)) if copy else None
        self.window = check_int("draft-model", "window", window, 0, 256)  # 0: the whole prompt
        self._cut = 0  # the context tokens the draft model skips in this request
        self.model_name: str | None = model if isinstance(model, str) else None
        self.lm: DraftLM | None = None
        self.tokenizer: Any = None
        self.target_vocab: int | None = None
        self.sampling = SamplingParams()
        self._warp: Callable[[torch.Tensor], torch.Tensor] | None = None
        self._generator: torch.Generator | None = None
        self._cross: Drafter | None = None  # set when the target's tokenizer differs
        self._chain_nodes: list[int] = []  # the last draft's chain nodes and their confidences
        self._confidences: list[float] = []
        self._extends = (0.0, 0)  # (seconds, count) of the last draft's one-token passes
        self._proposed_at = 0.0
        self._loaded_as: tuple[str, str] | None = None  # (backend, dtype) a named model was loaded with
        if model is not None and self.model_name is None:
            self._bind(model)

    sizes_own_drafts = True  # its length rule stops each draft; the default is only its cap

    @property
    def default_budget(self) -> int:
        return self.length.max_length * self.tree_width

    # ---- set-up -------------------------------------------------------------------------
    def _bind(self, model: tuple[Any, Any] | Any) -> None:
        lm, self.tokenizer = model if isinstance(model, tuple) and len(model) == 2 else (model, None)
        try:
            self.lm = DraftLM(as_target(lm))
        except ValueError:
            raise ValueError(
                "draft-model option model must be a model name, a (model, tokenizer) pair, a Target "
                f"or a transformers model, got {type(lm).__name__}"
            ) from None

    def _load(self, name: str, backend: str, dtype: str) -> None:
        self.model_name, self._loaded_as = name, (backend, dtype)
        self._bind(load_draft(name, dtype, backend))

    def configure(self, sampling: SamplingParams, target: TargetInfo | None = None) -> None:
        """Called by the engine at the start of each request, before `reset`.

        With the sampling parameters the drafter samples from q and reports it; with the target's
        description it loads the draft model (the default pair when none is named), checks sizes,
        and switches to text-level drafting when the target's tokenizer differs from the draft's.
        """
        self.sampling = sampling
        self._warp = None if sampling.greedy else make_warp(sampling)
        seed = None if sampling.seed is None else sampling.seed + SEED_OFFSET
        self._generator = None if sampling.greedy else make_generator(seed)
        if target is None:
            return
        if self.lm is None:
            name = self.model_name or DEFAULT_DRAFTS.get(target.name)
            if name is None:
                raise ValueError(self._no_model_message(target.name))
            self._load(name, self.backend or target.backend, self.dtype or target.dtype)
        self.target_vocab = target.vocab_size
        self._warn_if_larger(target.n_params)
        # the engine builds a drafter per request: keep what the length policy learned per pair
        draft_key = self.model_name or id(self.lm.lm)
        key = (draft_key, self._loaded_as, target.key, self.length.settings)
        self.length = _LEARNED.setdefault(key, self.length)
        self._cross = None
        if self.tokenizer is not None and not same_vocabulary(self.tokenizer, target.tokenizer):
            self._cross = CrossTokenizerDrafter(
                self.lm, self.tokenizer, target.tokenizer, self.length,
                target_eos=_target_eos(target), draft_eos=self.lm.lm.eos_ids | eos_ids_of(None, self.tokenizer),
            )

    def _no_model_message(self, target: str | None = None) -> str:
        pairs = ", ".join(f"{d} for {t}" for t, d in DEFAULT_DRAFTS.items())
        return (
            f"draft-model needs a draft model{f' for {target!r}' if target else ''}: pass "
            f"model=NAME (CLI: --draft-model NAME); packaged pairs: {pairs}"
        )

    def _warn_if_larger(self, target: int) -> None:
        draft = self.lm.lm.n_params
        if draft > target:
            warnings.warn(
                f"the draft model ({draft / 1e6:.0f}M parameters) is larger than the target "
                f"({target / 1e6:.0f}M): output is unchanged but decoding will likely be slower "
                "than without a draft; pick a smaller draft model",
                stacklevel=3,
            )

    # ---- the protocol -------------------------------------------------------------------
    def reset(self, prompt: Sequence[int]) -> None:
        if self._copy is not None:
            self._copy.reset(prompt)
        if self._cross is not None:
            self._cross.reset(prompt)
        self._cut = max(0, len(prompt) - self.window) if self.window else 0
        # the draft cache is kept: the next propose trims it to what the new prompt shares

    def propose(self, context: Sequence[int], budget: int) -> Draft:
        if self.lm is None:  # never configured: a named model on transformers, as loaded alone
            if self.model_name is None:
                raise ValueError(self._no_model_message())
            self._load(self.model_name, self.backend or "transformers", self.dtype or "float32")
        if self._cross is not None:
            return self._cross.propose(context, budget)
        self._chain_nodes, self._confidences = [], []
        if self._copy is not None:
            copied = self._copy.propose(context, budget)
            if self._copy.match_length >= self._copy.min_match:
                return copied
        seen = context[self._cut:]
        if len(seen) + budget >= self.lm.context_window:
            return EMPTY_DRAFT
        self.lm.take_extends()
        levels = decode_chain(self.lm, seen, min(budget, self.length.max_length), self.length, self._pick)
        draft = self._assemble(levels, budget)
        self._extends = self.lm.take_extends()
        self._proposed_at = time.perf_counter()
        return draft

    def observe(self, result: StepResult) -> None:
        if self._cross is not None:
            self._cross.observe(result)
            return
        if not self._chain_nodes:
            return
        accepted = 0
        for node, chain_node in zip(result.path, self._chain_nodes):
            if node != chain_node:
                break
            accepted += 1
        self.length.record(self._confidences, accepted)
        self._chain_nodes = []  # this draft is done: a step without one must not count it again
        step_s = time.perf_counter() - self._proposed_at
        self.length.record_cost(*self._extends, step_s, len(result.inputs))

    # ---- drafting -----------------------------------------------------------------------
    def _pick(self, logits: torch.Tensor) -> Level:
        """The chain's token at one depth (argmax, or a draw from q) and its siblings."""
        logits = logits[: self.target_vocab]  # [V]: ids both vocabularies have (None: all)
        if self._warp is None:
            probs = torch.softmax(logits.float(), dim=-1)  # [V]
            top = torch.topk(probs, self.tree_width)
            tokens = top.indices.tolist()
            confidence = float(top.values[0])
            n = 1 if confidence >= SIBLING_CONFIDENCE else self.tree_width
            return Level(tokens[0], confidence, tuple(tokens[1:n]))
        from ..verify_multi import sample_without_replacement

        q = pad_vocab(self._warp(logits), self.target_vocab or logits.shape[-1])  # [vocab]
        confidence = float(q.max())
        # how many tokens to draw is decided from q alone, never from the draws (lossless)
        n = 1 if confidence >= SIBLING_CONFIDENCE else self.tree_width
        tokens, rows = sample_without_replacement(q, n, self._generator)
        return Level(tokens[0], confidence, tuple(tokens[1:]), rows)

    def _assemble(self, levels: list[Level], budget: int) -> Draft:
        """Chain first, then siblings shallowest first while the budget lasts.

        Node order: each depth's chain token, then its siblings (parents precede children, and
        verification tries a node's children in node order, which is the order they were drawn).
        """
        room = budget - len(levels)
        if self.length.fixed is None:  # auto: siblings only where verification costs nothing more
            room = self.length.free_slots(len(levels) + 1, room)
        tokens: list[int] = []
        parents: list[int] = []
        rows: list[torch.Tensor] = []
        parent = -1
        for level in levels:
            siblings = level.siblings[: max(0, room)]
            room -= len(siblings)
            self._chain_nodes.append(len(tokens))
            self._confidences.append(level.confidence)
            for i, token in enumerate((level.token, *siblings)):
                tokens.append(token)
                parents.append(parent)
                if level.rows is not None:
                    rows.append(level.rows[i])
            parent = self._chain_nodes[-1]
        probs = torch.stack(rows) if rows else None  # [n, vocab]
        return Draft(tuple(tokens), tuple(parents), probs)


def same_vocabulary(draft_tokenizer: Any, target_tokenizer: Any) -> bool:
    """True when every draft token id means the same string to the target's tokenizer."""
    if draft_tokenizer is target_tokenizer:
        return True
    key = (id(draft_tokenizer), id(target_tokenizer))
    known = _SAME.get(key)
    if known is not None and known[0] is draft_tokenizer and known[1] is target_tokenizer:
        return known[2]  # a vocabulary is a dict of ~150k entries: compare once per pair
    draft, target = draft_tokenizer.get_vocab(), target_tokenizer.get_vocab()
    same = all(target.get(token) == i for token, i in draft.items())
    _SAME[key] = (draft_tokenizer, target_tokenizer, same)
    return same


_SAME: dict[tuple[int, int], tuple[Any, Any, bool]] = {}


def _target_eos(target: TargetInfo) -> int | None:
    """The end-of-turn id to propose when the draft ends its turn."""
    eos = getattr(target.tokenizer, "eos_token_id", None)
    return eos if eos is not None and eos in target.eos_ids else None
