"""The decoding loop: draft, verify in one target pass, commit, stop.

The cache holds every committed token but the last one (the root). Each step feeds
`[root] + draft` to the target with tree attention, so one pass yields the distribution after
the root (used to check the first draft level, or to decode one token when the draft is empty)
and after every draft node.
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Sequence

import torch

from . import rowops, tree, verify
from .config import GenerationConfig
from .drafters import DEFAULT_METHOD, EMPTY_DRAFT, Draft, Drafter, StepResult, TargetInfo, make_drafter
from .budget import DEFAULT_SIZES, AutoBudget, cached_pass_costs, sized_default
from .models.base import Target, eos_ids_of  # noqa: F401  (eos_ids_of: re-exported for old imports)
from .sampling import make_generator, make_warp


@dataclass
class Stats:
    new_tokens: int = 0
    steps: int = 0  # target passes after the prompt
    accepted_hist: Counter = field(default_factory=Counter)  # accepted draft tokens per step
    drafted: int = 0  # draft tokens proposed in all
    prefill_s: float = 0.0
    wall_s: float = 0.0

    @property
    def tau(self) -> float:
        """Mean tokens emitted per step (accepted + 1)."""
        return self.new_tokens / self.steps if self.steps else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.wall_s if self.wall_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["accepted_hist"] = {str(k): v for k, v in sorted(self.accepted_hist.items())}
        out.update(tau=self.tau, tokens_per_s=self.tokens_per_s)
        return out

    def line(self) -> str:
        return (
            f"{self.new_tokens} tokens in {self.steps} steps, tau {self.tau:.2f}, "
            f"{self.tokens_per_s:.1f} tok/s, {self.wall_s:.2f} s"
        )


@dataclass(frozen=True)
class TokenLogprob:
    """A new token's log-probability under the target (before temperature, top-k and top-p),
    and the `k` most likely tokens at its position with theirs (GenerationConfig.logprobs)."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class Step:
    """One step as a watcher sees it (Stream.record_steps): what the draft offered, what was kept.

    `alternatives[i]` are the draft's other tokens at the position of `tokens[i]`: for an accepted
    token its siblings in the tree, for the bonus the draft tokens the target refused there.
    """

    tokens: tuple[int, ...]  # emitted: the accepted draft tokens, then the bonus
    drafted: int  # draft nodes fed to the pass (0: plain decoding)
    alternatives: tuple[tuple[int, ...], ...]  # one tuple per token of `tokens`

    @property
    def accepted(self) -> int:
        return len(self.tokens) - 1


@dataclass
class Generation:
    token_ids: list[int]  # new tokens only
    text: str
    finish_reason: str  # "stop" (EOS or stop string) or "length"
    stats: Stats
    logprobs: list[TokenLogprob] | None = None  # one per token when config.logprobs is set

    def as_dict(self) -> dict[str, Any]:
        out = {
            "text": self.text,
            "token_ids": self.token_ids,
            "finish_reason": self.finish_reason,
            **self.stats.as_dict(),
        }
        if self.logprobs is not None:
            out["logprobs"] = [asdict(lp) for lp in self.logprobs]
        return out


class Engine:
    """A target model, its tokenizer and the loop that decodes with any drafter."""

    def __init__(self, target: Target, tokenizer: Any, name: str = "model"):
        self.target = target
        self.tokenizer = tokenizer
        self.name = name
        self.eos_ids = target.eos_ids
        self._pass_costs: dict[str, dict[int, float]] = {}

    @property
    def info(self) -> TargetInfo:
        """The target as drafters see it (`Drafter.configure`)."""
        target = self.target
        return TargetInfo(
            name=self.name, tokenizer=self.tokenizer, vocab_size=target.vocab_size, eos_ids=self.eos_ids,
            n_params=target.n_params, key=f"{self.name}|{target.cache_key}",
            backend=getattr(target, "backend", "transformers"),
            dtype=str(getattr(target, "dtype", "float32")).removeprefix("torch."),
            features=target if target.capabilities.features else None,
        )

    # ---- public API -------------------------------------------------------------------
    def encode(self, prompt: str | Sequence[int] | Sequence[dict], chat: bool = True) -> list[int]:
        """Prompt -> ids. A string is wrapped in the chat template as one user message unless
        chat=False; a list of {"role", "content"} messages always goes through the template;
        a list of ints is taken as ids."""
        if isinstance(prompt, str):
            if not prompt.strip():
                raise ValueError("the prompt is empty; pass some text to continue")
            if chat and getattr(self.tokenizer, "chat_template", None):
                ids = self._template([{"role": "user", "content": prompt}])
            else:
                ids = self.tokenizer(prompt)["input_ids"]
        elif prompt and isinstance(prompt[0], dict):
            if not getattr(self.tokenizer, "chat_template", None):
                raise ValueError(f"model {self.name!r} has no chat template; send a plain prompt instead")
            if not any(str(m.get("content", "")).strip() for m in prompt):
                raise ValueError("the messages are empty; pass some text to continue")
            ids = self._template(list(prompt))
        else:
            ids = [int(t) for t in prompt]
        if not ids:
            raise ValueError("the prompt is empty; pass some text to continue")
        return list(ids)

    def _template(self, messages: list[dict]) -> list[int]:
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(ids if isinstance(ids, list) else ids["input_ids"])

    def generate(
        self,
        prompt: str | Sequence[int],
        config: GenerationConfig | None = None,
        method: str | Drafter = DEFAULT_METHOD,
        chat: bool = True,
        **options: Any,
    ) -> Generation:
        """Decode to the end and return the whole Generation."""
        events = self.stream(prompt, config, method, chat, **options)
        events.deltas = False  # the text once at the end, not after every step
        for _ in events:
            pass
        return events.result

    def stream(
        self,
        prompt: str | Sequence[int],
        config: GenerationConfig | None = None,
        method: str | Drafter = DEFAULT_METHOD,
        chat: bool = True,
        **options: Any,
    ) -> "Stream":
        """An iterator of text deltas; `.result` holds the Generation once it is exhausted."""
        config = config or GenerationConfig()
        drafter = make_drafter(method, **options)
        drafter.configure(config.sampling, self.info)
        ids = self.encode(prompt, chat)
        if len(ids) >= self.target.context_window:
            raise ValueError(
                f"the prompt has {len(ids)} tokens but the model's context window is "
                f"{self.target.context_window}; shorten the prompt"
            )
        return Stream(self, ids, config, drafter)

    @property
    def slots(self) -> int:
        """Requests that can decode at once, their passes shared (1 on a target without sequences)."""
        return max(1, getattr(self.target, "sequences", 1) - 1)

    @contextmanager
    def session(self) -> Iterator["Engine"]:
        """An engine for one request. On a target with sequences (the native runtime's batching,
        models/native/batch.py) it runs on a free sequence whose passes join the other open
        sessions', each request's output bitwise its solo output; elsewhere it is this engine."""
        if self.slots < 2:
            yield self
            return
        with self.target.open_sequence() as sequence:
            engine = Engine(sequence, self.tokenizer, self.name)
            engine._pass_costs = self._pass_costs
            yield engine

    def generate_many(
        self,
        prompts: Sequence[str | Sequence[int]],
        config: GenerationConfig | None = None,
        method: str = DEFAULT_METHOD,
        chat: bool = True,
        **options: Any,
    ) -> list[Generation]:
        """Generate for every prompt, as many at once as the target has sequences (each with its
        own drafter and cache; together in each pass); one after another on other targets."""
        if isinstance(method, Drafter):
            raise ValueError("generate_many builds a drafter per prompt: pass the method's name, not an instance")

        def one(prompt: str | Sequence[int]) -> Generation:
            with self.session() as engine:
                return engine.generate(prompt, config, method, chat, **options)

        if self.slots < 2 or len(prompts) < 2:
            return [one(p) for p in prompts]
        with ThreadPoolExecutor(min(self.slots, len(prompts)), thread_name_prefix="leapdecode-batch") as pool:
            return list(pool.map(one, prompts))

    def pass_costs(self, sizes: tuple[int, ...] | None = None) -> dict[int, float]:
        """Seconds per verification pass by number of inputs (`sizes`, or budget.MEASURED: 5 rounds;
        `sizes` given: 2), measured once per machine setup and kept on disk."""
        from .models.registry import cache_dir

        key = f"{self.name}|{self.target.cache_key}" + (f"|sizes {sizes[0]}-{sizes[-1]}" if sizes else "")
        if key not in self._pass_costs:
            how = {"ks": sizes, "rounds": 2} if sizes else {}
            hold = getattr(self.target, "decoding", None)
            with hold() if hold else nullcontext():  # measured as the passes will run
                self._pass_costs[key] = cached_pass_costs(self.target, key, cache_dir() / "pass_costs.json", **how)
        return self._pass_costs[key]

    def default_budget(self, drafter: Drafter) -> int:
        """The drafter's default budget, sized for this machine where the target asks for it
        (`sizes_drafts`: the native CPU runtime, whose pass costs differ by CPU; budget.sized_default),
        except for a drafter whose own rule sizes each draft (a draft model's)."""
        default = drafter.default_budget
        if default <= 1 or drafter.sizes_own_drafts or not getattr(self.target, "sizes_drafts", False):
            return default
        return sized_default(self.pass_costs(DEFAULT_SIZES), default)

    # ---- the loop -----------------------------------------------------------------------
    def decode(
        self, prompt_ids: list[int], config: GenerationConfig, drafter: Drafter, stats: Stats,
        logprobs: list[TokenLogprob] | None = None, steps: list[Step] | None = None,
    ) -> Iterator[list[int]]:
        """Yield the tokens each step commits (accepted + bonus), forever; the caller stops.
        With config.logprobs set, each committed token's TokenLogprob is appended to `logprobs`;
        with a `steps` list, each step's Step is appended to it."""
        target = self.target

        hold = getattr(target, "decoding", None)  # what the target needs held while it decodes
        with hold() if hold else nullcontext():
            yield from self._loop(target, prompt_ids, config, drafter, stats, logprobs, steps)

    def _loop(self, target: Target, prompt_ids: list[int], config: GenerationConfig, drafter: Drafter,
              stats: Stats, logprobs: list[TokenLogprob] | None, steps: list[Step] | None
              ) -> Iterator[list[int]]:
        greedy = config.sampling.greedy
        warp = None if greedy else make_warp(config.sampling)
        generator = None if greedy else make_generator(config.sampling.seed)
        auto = AutoBudget(self.pass_costs()) if config.budget == "auto" else None
        budget = config.budget or self.default_budget(drafter)
        cap = getattr(target, "draft_cap", None)
        shared = getattr(target, "shared_load", None)

        start = time.perf_counter()
        target.reset()
        drafter.reset(prompt_ids)
        target.prefill(prompt_ids[:-1])
        stats.prefill_s = time.perf_counter() - start
        context = list(prompt_ids)
        while True:
            room = target.context_window - len(context) - 1
            if room < 0:
                return
            # never draft past max_new_tokens: the bonus always comes on top of the draft
            remaining = config.max_new_tokens - (len(context) - len(prompt_ids)) - 1
            if auto:  # on a batching target, sized for the pass it shares with the others
                want = auto.choose(*shared()) if shared else auto.choose()
            else:  # a batching target shares each pass's rows among the requests
                want = min(budget, cap()) if cap else budget
            limit = max(0, min(want, room, remaining))
            draft = _clean(drafter.propose(context, limit), target.vocab_size, limit) if limit else EMPTY_DRAFT
            layout = tree.layout(draft)
            inputs = [context[-1], *draft.tokens]
            logits = target.forward(inputs, layout.depths, layout.mask)  # [n + 1, vocab]
            if greedy:
                path, bonus = verify.greedy(rowops.argmax(logits), inputs, layout.children)
            else:
                path, bonus = verify.sample(
                    warp(logits), inputs, layout.children, generator, draft.probs
                )
            target.commit([0, *path])
            emitted = [inputs[j] for j in path] + [bonus]
            if logprobs is not None and config.logprobs is not None:
                logprobs.extend(_logprobs(logits[[0, *path]], emitted, config.logprobs))
            if steps is not None:
                steps.append(_step(inputs, layout.children, path, emitted))
            context.extend(emitted)
            stats.steps += 1
            stats.drafted += len(draft)
            stats.accepted_hist[len(path)] += 1
            if auto:
                auto.update(limit, [j - 1 for j in path])  # unfilled nodes count as rejected
            drafter.observe(
                StepResult(draft, [j - 1 for j in path], emitted[:-1], bonus, context, inputs, logits)
            )
            yield emitted


def _logprobs(rows: torch.Tensor, tokens: list[int], k: int) -> list[TokenLogprob]:
    """Row i holds the target's logits before tokens[i]."""
    log_probs = torch.log_softmax(rows.float(), dim=-1)
    chosen = log_probs[torch.arange(len(tokens)), torch.tensor(tokens)].tolist()
    if k == 0:
        return [TokenLogprob(t, lp) for t, lp in zip(tokens, chosen)]
    values, ids = log_probs.topk(k, dim=-1)
    return [TokenLogprob(t, lp, tuple(zip(i, v))) for t, lp, i, v in
            zip(tokens, chosen, ids.tolist(), values.tolist())]


def _step(inputs: list[int], children: tuple[tuple[int, ...], ...], path: list[int], emitted: list[int]) -> Step:
    """The Step of a pass: emitted[i] was chosen after input along[i] (the root, then the accepted
    path), and that input's children in the tree are what the draft offered at that position.

    >>> _step([5, 7, 8, 9], ((1, 3), (2,), (), ()), [1], [7, 4]).alternatives  # root ─ 7 ─ 8, root ─ 9
    ((9,), (8,))
    """
    along = [0, *path]
    alternatives = tuple(tuple(dict.fromkeys(inputs[c] for c in children[j] if inputs[c] != token))
                         for j, token in zip(along, emitted))
    return Step(tuple(emitted), len(inputs) - 1, alternatives)


def _clean(draft: Draft, vocab_size: int, budget: int) -> Draft:
    """Drop nodes past the budget or with ids outside the vocabulary (and their subtrees):
    a drafter can waste a step but never change the output."""
    if len(draft) <= budget and all(0 <= t < vocab_size for t in draft.tokens):
        return draft
    parents = draft.parent_list()
    kept: dict[int, int] = {}  # old index -> new index
    for i, (token, parent) in enumerate(zip(draft.tokens, parents)):
        if len(kept) < budget and 0 <= token < vocab_size and (parent == -1 or parent in kept):
            kept[i] = len(kept)
    tokens = tuple(draft.tokens[i] for i in kept)
    new_parents = tuple(-1 if parents[i] == -1 else kept[parents[i]] for i in kept)
    probs = None if draft.probs is None else draft.probs[list(kept)]
    return Draft(tokens, new_parents, probs)


class Stream:
    """Runs the loop and applies the stop rules; iterating yields text deltas."""

    def __init__(self, engine: Engine, prompt_ids: list[int], config: GenerationConfig, drafter: Drafter):
        self.engine, self.prompt_ids, self.config, self.drafter = engine, prompt_ids, config, drafter
        self.result: Generation | None = None
        self.tokens: list[int] = []  # the new tokens so far (a stop string may still cut the last)
        self.logprobs: list[TokenLogprob] = []  # theirs, while decoding (config.logprobs)
        self.steps: list[Step] | None = None  # every step so far, once record_steps() asked for them
        # False: no text until the end (the last delta is all of it), and without stop strings no
        # detokenizing after each step (which decodes every token so far: 70 us a step at 200 tokens)
        self.deltas = True
        if config.budget == "auto":
            engine.pass_costs()  # measured (once) before the clock starts
        elif config.budget is None:
            engine.default_budget(drafter)  # likewise the costs that size the default (once)

    def record_steps(self) -> "Stream":
        """Record each step in `.steps` while decoding (call before iterating). A stop rule may
        keep fewer tokens than the last step emitted: `.tokens` says how many were kept."""
        self.steps = []
        return self

    def __iter__(self) -> Iterator[str]:
        engine, config = self.engine, self.config
        stats, tokens, sent = Stats(), [], ""
        finish, text = "length", ""
        logprobs = None if config.logprobs is None else self.logprobs
        start = time.perf_counter()
        each_step = self.deltas or bool(config.stop)  # the text after every step
        if config.max_new_tokens > 0:
            for emitted in engine.decode(self.prompt_ids, config, self.drafter, stats, logprobs, self.steps):
                finish, cut = self._stop_index(tokens, emitted)
                tokens.extend(emitted[:cut])
                if each_step:
                    text = engine.tokenizer.decode(tokens, skip_special_tokens=True)
                if config.stop:
                    text, hit = _cut_at_stop(text, config.stop)
                    if hit:
                        tokens = _tokens_for_text(engine.tokenizer, tokens, config.stop)
                        finish = "stop"
                self.tokens = tokens
                if finish == "stop" or len(tokens) >= config.max_new_tokens:
                    break
                safe = _safe_prefix(text, config.stop) if self.deltas else ""
                if len(safe) > len(sent):
                    yield safe[len(sent) :]
                    sent = safe
            else:  # the context window is full
                finish = "length"
        if not each_step:
            text = engine.tokenizer.decode(tokens, skip_special_tokens=True)
        stats.wall_s = time.perf_counter() - start
        stats.new_tokens = len(tokens)
        self.tokens = tokens
        if logprobs is not None:
            del logprobs[len(tokens):]  # the tokens cut by EOS, max_new_tokens or a stop string
        if len(text) > len(sent) and text.startswith(sent):
            yield text[len(sent) :]
        self.result = Generation(tokens, text, finish, stats, logprobs)

    def _stop_index(self, tokens: list[int], emitted: list[int]) -> tuple[str, int]:
        """How many of `emitted` to keep, and whether EOS ended it."""
        room = self.config.max_new_tokens - len(tokens)
        for i, token in enumerate(emitted[:room]):
            if token in self.engine.eos_ids and not self.config.ignore_eos:
                return "stop", i + 1
        return "length", room


def _cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """Cut `text` before the earliest stop string."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


def _tokens_for_text(tokenizer: Any, tokens: list[int], stops: Sequence[str]) -> list[int]:
    """The shortest prefix of `tokens` whose text contains a stop string."""
    for n in range(1, len(tokens) + 1):
        if _cut_at_stop(tokenizer.decode(tokens[:n], skip_special_tokens=True), stops)[1]:
            return tokens[:n]
    return tokens


def _safe_prefix(text: str, stops: Sequence[str]) -> str:
    """Text that can be sent now: hold back a partial UTF-8 character and any tail that could
    still grow into a stop string."""
    text = text.rstrip("\ufffd")
    hold = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                hold = max(hold, k)
                break
    return text[: len(text) - hold]
