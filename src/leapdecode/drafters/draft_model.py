"""`draft-model`: a small language model drafts for the target.

Classic speculative decoding (Leviathan et al. 2023, arXiv 2211.17192; Chen et al. 2023,
arXiv 2302.01318): a draft model much cheaper than the target proposes a few tokens one at a
time and the target checks them all in one pass. The draft model keeps its own KV cache in step
with the committed context, so each step feeds it only what it has not seen:

    committed:    P a b c      (the target accepted a and b, then added the bonus c)
    draft cache:  P a b x      (x was the draft's rejected guess)
    propose:      trim the cache to the longest common prefix (P a b), feed the catch-up (c),
                  then decode the chain one token at a time

Draft length (`length`):
- an integer: that many tokens per step (fewer when the engine's budget is smaller);
- "auto": SpecDec++'s stopping rule (Huang et al. 2024, arXiv 2405.19715) -- stop once the
  chance that some drafted token is rejected grows too large -- with the draft's own confidence
  (its top probability) standing in for SpecDec++'s trained acceptance head. Done online, with no
  training: the confidence is calibrated online by the observed acceptance per confidence bin,
  and the threshold comes from the measured cost of a draft pass against the throughput reached
  so far (the online length adaptivity PEARL argues for, Liu et al. 2024, arXiv 2408.11850).
  See `DraftLength`.

Tree (`tree_width` w > 1): at each depth where the draft is unsure, its next w - 1 candidates hang
beside the chain's token as leaves, so a wrong guess at depth d can still end in an accepted
token. They cost no extra draft pass (they come from the same distributions), only wider
verification.

Sampling: once the engine passes the sampling parameters (`configure`), draft tokens are drawn
from q, the draft's distribution warped exactly like the target's (temperature, top-k, top-p),
and `Draft.probs` carries q, so verification is Leviathan et al.'s rule. Tree siblings are then
drawn from q without replacement and verified by recursive rejection sampling (verify_multi.py).
Without `configure` the drafter proposes its argmax and no probs: a one-hot q, lossless too.

Another tokenizer: when `configure` sees that the draft's vocabulary differs from the target's,
the request is handed to `CrossTokenizerDrafter` (cross_tokenizer.py), which drafts through text.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from ..models.base import eos_ids_of
from ..models.hf import HFTarget
from ..models.llamacpp import LlamaCppTarget
from ..sampling import SamplingParams, make_generator, make_warp
from .base import EMPTY_DRAFT, Draft, Drafter, StepResult

# target model -> the packaged draft model used when none is named
DEFAULT_DRAFTS = {"qwen2.5-coder-1.5b": "qwen2.5-coder-0.5b"}

SIBLING_CONFIDENCE = 0.9  # add tree siblings at a depth only where the draft's top probability is below this
CATCH_UP_LOGITS = 16  # catch-ups up to this long run in one pass; longer ones are prefilled first
SEED_OFFSET = 0x5EED  # the draft's sampler must be independent of the engine's: never reuse its seed
BACKENDS = ("transformers", "native", "llamacpp")  # what runs the draft model

_LOADED: dict[tuple[str, str, str], tuple[Any, Any]] = {}  # (name, dtype, backend) -> (model, tokenizer)
# what "auto" learned (acceptance per confidence, costs), kept across requests for each pair
_LEARNED: dict[tuple, "DraftLength"] = {}


def load_draft(name: str, dtype: str = "float32", backend: str = "transformers") -> tuple[Any, Any]:
    """(model, tokenizer) of a draft model, loaded once per process for each (name, dtype, backend).

    backend "transformers": a transformers model in `dtype`; "native": leapdecode's own runtime
    (a NativeTarget in `dtype`, or transformers for an architecture it does not run); "llamacpp":
    a `LlamaCppTarget` on the model's GGUF file (its own quantized weights and kernels, with the
    torch thread count). The tokenizer is that of the model's transformers directory.
    """
    check_backend(backend)
    key = (name, dtype if backend != "llamacpp" else f"threads={torch.get_num_threads()}", backend)
    if key not in _LOADED:
        from ..models.registry import load_model, load_tokenizer, resolve

        try:
            if backend == "native":
                from ..models.native import load_native, unsupported_reason

                directory = resolve(name)
                if unsupported_reason(directory) is None:
                    target = load_native(directory, dtype, threads=torch.get_num_threads())
                    _LOADED[key] = (target, load_tokenizer(name))
                else:
                    _LOADED[key] = load_model(name, "bfloat16" if dtype == "int8" else dtype)
            elif backend == "transformers":
                _LOADED[key] = load_model(name, dtype)
            else:
                from ..models.llamacpp import locate_gguf

                _LOADED[key] = (LlamaCppTarget(locate_gguf(name), max_branches=1), load_tokenizer(name))
        except ValueError as err:  # ModelNotInstalled's message already names the install command
            raise type(err)(f"draft model: {err}") from None
        except OSError as err:
            raise ValueError(f"draft model {name!r} could not be loaded: {err}") from None
    return _LOADED[key]


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"draft-model option backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    return backend


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix.

    >>> common_prefix([1, 2, 3, 4], [1, 2, 5])
    2
    """
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class DraftLM:
    """A draft model whose KV cache follows a token sequence.

    `logits_after(context)` trims the cache to its longest common prefix with `context` and
    feeds only the rest; `extend(token)` appends one drafted token. Rejected draft tokens stay
    in the cache until the next `logits_after` trims them away.
    """

    def __init__(self, lm: HFTarget):
        self.lm = lm
        self.seen: list[int] = []  # the tokens whose KV entries the cache holds
        self.passes = 0  # forward passes, for tests and statistics
        self._extend_s = 0.0  # time in one-token passes since the last `take_extends`
        self._extends = 0

    @property
    def vocab_size(self) -> int:
        return self.lm.vocab_size

    @property
    def context_window(self) -> int:
        return self.lm.context_window

    def reset(self) -> None:
        self.lm.reset()
        self.seen = []

    def logits_after(self, context: Sequence[int]) -> torch.Tensor:
        """Next-token logits [vocab] after `context` (not empty)."""
        keep = min(common_prefix(self.seen, context), len(context) - 1)
        self.lm.trim(keep)
        new = list(context[keep:])
        if len(new) > CATCH_UP_LOGITS:  # a prompt: no logits needed but the last one's
            self.lm.prefill(new[:-1])
            self.passes += 1
            new = new[-1:]
        logits = self._pass(new)
        self.seen = list(context)
        return logits

    def extend(self, token: int) -> torch.Tensor:
        """Append one token; next-token logits [vocab] after it."""
        logits = self._pass([token])
        self.seen.append(token)
        return logits

    def _pass(self, tokens: list[int]) -> torch.Tensor:
        """Feed and commit `tokens`; logits [vocab] after the last. One-token passes are timed:
        they are the cost of a draft pass."""
        start = time.perf_counter()
        logits = self.lm.forward(tokens, torch.arange(len(tokens)), None)[-1]  # [vocab]
        self.lm.commit_all()
        self.passes += 1
        if len(tokens) == 1:
            self._extend_s += time.perf_counter() - start
            self._extends += 1
        return logits

    def take_extends(self) -> tuple[float, int]:
        """(seconds, count) of the one-token passes since the last call: the cost of a draft pass."""
        out = (self._extend_s, self._extends)
        self._extend_s, self._extends = 0.0, 0
        return out


@dataclass
class Level:
    """One depth of a drafted chain: the chain's token and any siblings beside it."""

    token: int
    confidence: float  # the draft's top probability here: its guess that the token is accepted
    siblings: tuple[int, ...] = ()
    # [1 + siblings, vocab]: the law q each token was drawn from; None for deterministic picks
    rows: torch.Tensor | None = None


class DraftLength:
    """How many tokens to draft: a fixed number, or chosen online ("auto").

    "auto" decides after each drafted token whether to draft another. Two ingredients:

    - the chance each drafted token is accepted, `accept_chance(confidence)`: the draft's top
      probability, calibrated online by a histogram of observed acceptance per confidence bin
      (SpecDec++, Huang et al. 2024, arXiv 2405.19715, predicts acceptance with a trained head;
      a draft model is rarely calibrated to its target, and when draft == target every bin
      goes to 1). With P_i the chance that the first i drafted tokens are all accepted, a chain
      of k tokens yields 1 + P_1 + ... + P_k tokens per step in expectation.
    - the cost of a step, measured online: `draft_s` per draft pass and `verify_s[n]`, the
      target step for n inputs. On a GPU verification is flat in n; on a CPU it grows in steps
      (float32 Qwen2.5-1.5B, 2 threads: 1-3 inputs cost the same, 4-6 about twice that).

    Drafting goes on while some longer chain promises more tokens per second than stopping now,
    with the tokens not drafted yet predicted at the running acceptance rate (the online length
    adaptivity that PEARL argues for, Liu et al. 2024, arXiv 2408.11850). Sizes never measured
    are taken to cost what the largest measured smaller size costs: optimistic, so they get
    tried, and then known. A fixed `threshold` replaces all this with SpecDec++'s rule: stop
    once P_k < threshold.
    """

    DECAY = 0.9  # weight of the past in the running cost estimates
    BINS = 10  # confidence bins of the acceptance histogram
    BIN_DECAY = 0.98  # weight of the past in the histogram and the running acceptance rate
    PRIOR = 2.0  # pseudo-observations per bin, at the bin's own confidence
    FREE = 1.05  # an input costing at most 5% more than one fewer is a free slot
    DRAFT_GUESS = 0.3  # a draft pass, in one-token target steps, until one is measured

    def __init__(self, length: int | str = 4, threshold: float | None = None, max_length: int = 12):
        if length == "auto":
            self.fixed = None
            self.max_length = max_length
        elif isinstance(length, int) and not isinstance(length, bool) and length >= 1:
            self.fixed = length
            self.max_length = length
        else:
            raise ValueError(f"draft-model option length must be an integer >= 1 or 'auto', got {length!r}")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"draft-model option max_length must be an integer >= 1, got {max_length!r}")
        if threshold is not None and (
            isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1
        ):
            raise ValueError(f"draft-model option threshold must be in (0, 1), got {threshold!r}")
        self.threshold = threshold
        centers = [(b + 0.5) / self.BINS for b in range(self.BINS)]
        self.hits = [self.PRIOR * c for c in centers]  # accepted guesses per confidence bin
        self.tries = [self.PRIOR] * self.BINS  # guesses the target looked at per bin
        self.rate = 0.6  # running acceptance rate of the guesses the target looked at
        self._draft_s: float | None = None  # seconds per one-token draft pass, once measured
        self.verify_s: dict[int, float] = {}  # inputs -> seconds per target step

    @property
    def settings(self) -> tuple:
        return (self.fixed, self.max_length, self.threshold)

    # ---- acceptance ---------------------------------------------------------------------
    def _bin(self, confidence: float) -> int:
        return min(self.BINS - 1, max(0, int(confidence * self.BINS)))

    def accept_chance(self, confidence: float) -> float:
        """Observed acceptance of guesses made with this confidence."""
        b = self._bin(confidence)
        return self.hits[b] / self.tries[b]

    def record(self, confidences: Sequence[float], accepted: int) -> None:
        """Positions 0..accepted-1 of a chain were accepted, position `accepted` (if drafted) was not."""
        for i, c in enumerate(confidences[: accepted + 1]):
            hit = 1.0 if i < accepted else 0.0
            b = self._bin(c)
            self.hits[b] = self.BIN_DECAY * self.hits[b] + hit
            self.tries[b] = self.BIN_DECAY * self.tries[b] + 1.0
            self.rate = self.BIN_DECAY * self.rate + (1 - self.BIN_DECAY) * hit

    # ---- cost ---------------------------------------------------------------------------
    def verify_cost(self, inputs: int) -> float:
        """Seconds of a target step with this many inputs (measured, or the largest measured
        smaller size's; 1.0 before anything is measured)."""
        known = [n for n in self.verify_s if n <= inputs]
        if known:
            return self.verify_s[max(known)]
        return min(self.verify_s.values()) if self.verify_s else 1.0

    def free_slots(self, inputs: int, most: int) -> int:
        """How many more inputs (up to `most`) a step of `inputs` inputs could take at no cost."""
        base, extra = self.verify_cost(inputs), 0
        while extra < most and self.verify_cost(inputs + extra + 1) <= self.FREE * base:
            extra += 1
        return extra

    def record_cost(self, extend_s: float, extends: int, step_s: float, inputs: int) -> None:
        """One step: `extends` one-token draft passes took `extend_s`; the target step with
        `inputs` inputs took `step_s`. (Only one-token draft passes count: a catch-up of several
        tokens is left out of the per-pass cost.)"""
        if extends:
            per_pass = extend_s / extends
            old_pass = self._draft_s
            self._draft_s = per_pass if old_pass is None else self.DECAY * old_pass + (1 - self.DECAY) * per_pass
        old = self.verify_s.get(inputs)
        self.verify_s[inputs] = step_s if old is None else self.DECAY * old + (1 - self.DECAY) * step_s

    @property
    def draft_s(self) -> float:
        """Seconds per draft pass: measured, or until then a guess of 0.3 one-token target steps."""
        if self._draft_s is not None:
            return self._draft_s
        return self.DRAFT_GUESS * self.verify_cost(1)

    # ---- the decision -------------------------------------------------------------------
    def keep_going(self, confidences: Sequence[float]) -> bool:
        """After drafting tokens with these confidences, draft one more?"""
        if self.fixed is not None:
            return len(confidences) < self.fixed
        if len(confidences) >= self.max_length:
            return False
        chance = 1.0
        survive = []  # P_1 .. P_k
        for c in confidences:
            chance *= self.accept_chance(c)
            survive.append(chance)
        if self.threshold is not None:
            return chance >= self.threshold
        return self._longer_pays(survive)

    def _longer_pays(self, survive: list[float]) -> bool:
        """Does some chain longer than k = len(survive) promise more tokens per second?"""
        k = len(survive)
        tokens = 1.0 + sum(survive)
        now = tokens / (k * self.draft_s + self.verify_cost(k + 1))
        chance = survive[-1]
        for longer in range(k + 1, self.max_length + 1):
            chance *= self.rate
            tokens += chance
            if tokens / (longer * self.draft_s + self.verify_cost(longer + 1)) > now:
                return True
        return False


def decode_chain(
    lm: DraftLM,
    context: Sequence[int],
    limit: int,
    length: DraftLength,
    pick: Callable[[torch.Tensor], Level],
    stop_tokens: frozenset[int] = frozenset(),
) -> list[Level]:
    """Draft up to `limit` levels after `context`: one draft pass per level, no pass after the
    last one (its token is only fed next step, if the target accepts it)."""
    levels: list[Level] = []
    logits = lm.logits_after(context)
    while True:
        level = pick(logits)
        levels.append(level)
        if len(levels) >= limit or level.token in stop_tokens:
            return levels
        if not length.keep_going([lv.confidence for lv in levels]):
            return levels
        logits = lm.extend(level.token)


def pad_vocab(probs: torch.Tensor, vocab: int) -> torch.Tensor:
    """[..., n] -> [..., vocab]: cut or zero-pad the last axis (draft and target vocabularies
    differ by padding rows)."""
    n = probs.shape[-1]
    if n >= vocab:
        return probs[..., :vocab]
    return torch.nn.functional.pad(probs, (0, vocab - n))


def model_size(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


class DraftModelDrafter(Drafter):
    """A small causal LM drafts a chain (or a shallow tree) for the target.

        make_drafter("draft-model", model="qwen2.5-coder-0.5b")             # fixed length 4
        make_drafter("draft-model", model="qwen2.5-coder-0.5b", length="auto", tree_width=2)

    `model` is a packaged name, a transformers directory or .gguf file, a (model, tokenizer)
    pair, or an HFTarget (then the tokenizer is assumed to be the target's). None picks the
    packaged draft for the engine's model when there is one (DEFAULT_DRAFTS).
    """

    name = "draft-model"

    def __init__(
        self,
        model: str | tuple[Any, Any] | HFTarget | None = None,
        length: int | str = 4,
        tree_width: int = 1,
        dtype: str = "float32",
        threshold: float | None = None,
        max_length: int = 12,
        backend: str = "transformers",
    ):
        if isinstance(tree_width, bool) or not isinstance(tree_width, int) or tree_width < 1:
            raise ValueError(f"draft-model option tree_width must be an integer >= 1, got {tree_width!r}")
        self.backend = check_backend(backend)
        self.length = DraftLength(length, threshold, max_length)
        self.tree_width = tree_width
        self.dtype = dtype
        self.model_name: str | None = None
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
        if model is not None:
            self._bind(model)

    @property
    def default_budget(self) -> int:
        return self.length.max_length * self.tree_width

    # ---- set-up -------------------------------------------------------------------------
    def _bind(self, model: str | tuple[Any, Any] | HFTarget) -> None:
        if isinstance(model, str):
            self.model_name = model
            model = load_draft(model, self.dtype, self.backend)
        if isinstance(model, HFTarget):
            self.lm, self.tokenizer = DraftLM(model), None
        elif isinstance(model, tuple) and len(model) == 2:
            lm = model[0] if hasattr(model[0], "prefill") else HFTarget(model[0])  # a Target already
            self.lm, self.tokenizer = DraftLM(lm), model[1]
        else:
            raise ValueError(
                "draft-model option model must be a model name, a (model, tokenizer) pair or an "
                f"HFTarget, got {type(model).__name__}"
            )

    def configure(self, sampling: SamplingParams, engine: Any = None) -> None:
        """Called by the engine at the start of each request, before `reset`.

        With the sampling parameters the drafter samples from q and reports it; with the engine
        it picks a default draft model, checks sizes, and switches to text-level drafting when
        the target's tokenizer differs from the draft's.
        """
        self.sampling = sampling
        self._warp = None if sampling.greedy else make_warp(sampling)
        seed = None if sampling.seed is None else sampling.seed + SEED_OFFSET
        self._generator = None if sampling.greedy else make_generator(seed)
        if engine is None:
            return
        if self.lm is None:
            name = DEFAULT_DRAFTS.get(getattr(engine, "name", ""))
            if name is None:
                raise ValueError(self._no_model_message(engine))
            self._bind(name)
        self.target_vocab = engine.target.vocab_size
        self._warn_if_larger(engine.target.n_params)
        # the engine builds a drafter per request: keep what the length policy learned per pair
        draft_key = self.model_name or id(self.lm.lm)
        key = (draft_key, self.dtype, self.backend, id(engine.target), self.length.settings)
        self.length = _LEARNED.setdefault(key, self.length)
        self._cross = None
        if self.tokenizer is not None and not same_vocabulary(self.tokenizer, engine.tokenizer):
            from .cross_tokenizer import CrossTokenizerDrafter

            self._cross = CrossTokenizerDrafter(
                self.lm, self.tokenizer, engine.tokenizer, self.length,
                target_eos=_target_eos(engine), draft_eos=self.lm.lm.eos_ids | eos_ids_of(None, self.tokenizer),
            )

    def _no_model_message(self, engine: Any = None) -> str:
        target = getattr(engine, "name", None)
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
        if self._cross is not None:
            self._cross.reset(prompt)
        # the draft cache is kept: the next propose trims it to what the new prompt shares

    def propose(self, context: Sequence[int], budget: int) -> Draft:
        if self.lm is None:
            raise ValueError(self._no_model_message())
        if self._cross is not None:
            return self._cross.propose(context, budget)
        self._chain_nodes, self._confidences = [], []
        if budget < 1 or len(context) + budget >= self.lm.context_window:
            return EMPTY_DRAFT
        self.lm.take_extends()
        levels = decode_chain(self.lm, context, min(budget, self.length.max_length), self.length, self._pick)
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


def _target_eos(engine: Any) -> int | None:
    """The end-of-turn id to propose when the draft ends its turn."""
    eos = getattr(engine.tokenizer, "eos_token_id", None)
    return eos if eos is not None and eos in engine.eos_ids else None
