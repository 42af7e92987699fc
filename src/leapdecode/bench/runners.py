"""Methods under test: this project's drafters and the peers, behind one small interface.

Every runner takes the same prompt token ids and the same max_new_tokens, decodes greedily,
stops on the same EOS ids (keeping the EOS token, as the engine does) and reports the new
token ids, the number of target forward passes that emitted tokens (`steps`) and the wall time.

    runner.generate(prompt_ids, max_new_tokens) -> Output(token_ids, steps, wall_s)

Peers:
- `hf-none`: this project's engine without a drafter on the transformers target (when the engine's
  own target is the native runtime, this is the column the runtime's gain is read against).
- `hf-greedy`, `hf-static`, `hf-static-reused`, `hf-prompt-lookup`, `hf-assisted`: transformers'
  own `generate` on the very model object the engine uses (dynamic cache;
  `cache_implementation="static"`, which transformers compiles on a GPU; one `StaticCache` made once
  for the run's longest question and passed to every call, which spares the per-call cache and
  recompilation; `prompt_lookup_num_tokens=10`; `assistant_model=` a draft model).
  Steps are counted with a forward hook on the target model.
- `llamacpp-greedy`, `llamacpp-prompt-lookup`: llama-cpp-python on the GGUF file the model was
  converted from (quantized weights, another numeric backend), greedy sampling (temperature 0),
  the second with `LlamaPromptLookupDecoding(num_pred_tokens=10)` as its draft model. Steps are
  llama.cpp `eval` calls: one for the prompt, then one per draft.
- `llama-server-greedy`, `llama-server-ngram`: llama.cpp's own server (the same vendored llama.cpp,
  built by scripts/build_llama_server.sh) on the GGUF file, one slot, `POST /completion` with the
  prompt's token ids at temperature 0 and no prompt cache; the second with its draftless n-gram
  speculation (`LLAMA_SERVER_NGRAM`). Steps are new tokens minus the drafts it reports accepted.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ..drafters import DRAFTERS

PROMPT_LOOKUP_TOKENS = 10

# peer method -> its family; a family's greedy run is the reference for `identical_to_own_greedy`
PEERS: dict[str, str] = {
    "hf-none": "leapdecode-hf",
    "hf-greedy": "hf",
    "hf-static": "hf",
    "hf-static-reused": "hf",
    "hf-prompt-lookup": "hf",
    "hf-assisted": "hf",
    "llamacpp-greedy": "llamacpp",
    "llamacpp-prompt-lookup": "llamacpp",
    "llama-server-greedy": "llama-server",
    "llama-server-ngram": "llama-server",
}
# llama-server's draftless speculation for `llama-server-ngram`: an n-gram map of the context
# (3-token keys, drafts of up to 10), the fastest of its n-gram modes on the dev questions
LLAMA_SERVER_NGRAM = ("--spec-type", "ngram-map-k", "--spec-ngram-map-k-size-n", "3",
                      "--spec-ngram-map-k-size-m", "10")
PEER_OPTIONS = {  # as recorded in results.json
    "hf-none": "leapdecode engine, method none, backend transformers",
    "hf-greedy": "model.generate(do_sample=False)",
    "hf-static": "model.generate(do_sample=False, cache_implementation='static')",
    "hf-static-reused": "cache = StaticCache(config, max_cache_len=LONGEST); cache.reset(); "
                        "model.generate(do_sample=False, past_key_values=cache)",
    "hf-prompt-lookup": f"model.generate(do_sample=False, prompt_lookup_num_tokens={PROMPT_LOOKUP_TOKENS})",
    "hf-assisted": "model.generate(do_sample=False, assistant_model=DRAFT)",
    "llamacpp-greedy": "Llama(logits_all=False).generate(temp=0, top_k=1)",
    "llamacpp-prompt-lookup": "Llama(logits_all=True, draft_model=LlamaPromptLookupDecoding("
                              f"num_pred_tokens={PROMPT_LOOKUP_TOKENS})).generate(temp=0, top_k=1)",
    "llama-server-greedy": "llama-server --parallel 1; POST /completion temperature=0",
    "llama-server-ngram": f"llama-server --parallel 1 {' '.join(LLAMA_SERVER_NGRAM)}; POST /completion temperature=0",
}
FAMILY_GREEDY = {"leapdecode": "none", "leapdecode-hf": "hf-none", "hf": "hf-greedy", "llamacpp": "llamacpp-greedy",
                 "llama-server": "llama-server-greedy"}
# optional package (import name) -> how to install it
OPTIONAL_PACKAGES = {
    "llama_cpp": "pip install 'leapdecode[llamacpp]' "
                 "(llama-cpp-python==0.3.36, built with the CMAKE_ARGS of scripts/test.sh)",
}
PEER_PACKAGES = {"llamacpp-greedy": "llama_cpp", "llamacpp-prompt-lookup": "llama_cpp"}


def all_methods() -> list[str]:
    return [*DRAFTERS, *PEERS]


def split_method(spec: str) -> tuple[str, dict[str, Any]]:
    """A method with drafter options after colons, so one run can compare settings
    (`budget` is the engine's draft tokens per step, the others go to the drafter):

    >>> split_method("draft-model:length=2:tree_width=2")
    ('draft-model', {'length': 2, 'tree_width': 2})
    >>> split_method("suffix:budget=auto")
    ('suffix', {'budget': 'auto'})
    """
    from ..options import parse_options

    name, *pairs = spec.split(":")
    if pairs and name in PEERS:
        raise ValueError(f"method {spec!r}: options after ':' are for this project's drafters, not {name!r}")
    return name, parse_options(pairs)


def family(method: str) -> str:
    return PEERS.get(method, "leapdecode")


def own_greedy(method: str) -> str:
    """The greedy method of `method`'s family (`none` for this project's drafters)."""
    return FAMILY_GREEDY[family(method)]


def has_package(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def check_methods(methods: Sequence[str], draft_model: str | None,
                  available: Callable[[str], bool] | None = None) -> None:
    """Raise ValueError for an unknown method, a missing draft model or a missing package
    (`available(import_name)` says whether a package is installed; default: has_package)."""
    available = available or has_package
    known = all_methods()
    for method in methods:
        name = split_method(method)[0]
        if name not in known:
            raise ValueError(f"unknown method {name!r}; choose from: {', '.join(known)}")
    if "hf-assisted" in methods and not draft_model:
        raise ValueError("method 'hf-assisted' needs a draft model: add --draft-model NAME")
    if any(family(m) == "llama-server" for m in methods):
        from .servers import BUILD_HINT, LLAMA_SERVER

        if not LLAMA_SERVER.exists():
            raise ValueError(BUILD_HINT)
    for method in methods:
        package = PEER_PACKAGES.get(method)
        if package and not available(package):
            raise ValueError(
                f"method {method!r} needs the optional package {package!r}; install it with: "
                f"{OPTIONAL_PACKAGES[package]}"
            )


@dataclass
class Output:
    token_ids: list[int]
    steps: int | None
    wall_s: float


def cut_at_eos(tokens: Iterable[int], eos_ids: set[int], limit: int) -> list[int]:
    """The first `limit` tokens, ending after the first EOS token if there is one."""
    out: list[int] = []
    for token in tokens:
        if len(out) >= limit:
            break
        out.append(int(token))
        if token in eos_ids:
            break
    return out


class EngineRunner:
    """One of this project's drafters, run by the engine."""

    def __init__(self, engine: Any, method: str, budget: int | str | None = None, name: str | None = None,
                 **options: Any):
        self.engine, self.name = engine, name or method
        self.drafter, own = split_method(method)
        self.budget = own.pop("budget", budget)  # `suffix:budget=4` overrides the run's --budget
        self.options = {**options, **own}  # the method's own options win over the run's

    def generate(self, prompt_ids: list[int], max_new_tokens: int) -> Output:
        from ..config import GenerationConfig

        config = GenerationConfig(max_new_tokens=max_new_tokens, budget=self.budget)
        start = time.perf_counter()
        result = self.engine.generate(prompt_ids, config, self.drafter, **self.options)
        wall = time.perf_counter() - start
        return Output(list(result.token_ids), result.stats.steps, wall)


class HFRunner:
    """transformers' `generate` on the engine's own model object, greedy."""

    def __init__(self, name: str, model: Any, eos_ids: set[int], static_len: int | None = None, **options: Any):
        """static_len: make one StaticCache of that many tokens and pass it, emptied, to every call."""
        self.name, self.model, self.eos_ids, self.options = name, model, set(eos_ids), options
        pad = getattr(model.generation_config, "pad_token_id", None)
        self.pad_id = pad if pad is not None else min(self.eos_ids)
        self.cache = None
        if static_len is not None:
            from transformers import StaticCache

            self.cache = StaticCache(config=model.config, max_cache_len=static_len)

    def generate(self, prompt_ids: list[int], max_new_tokens: int) -> Output:
        import torch

        ids = torch.tensor([prompt_ids], device=self.model.device)  # [1, n]
        calls = [0]
        options = dict(self.options)
        if self.cache is not None:
            options["past_key_values"] = self.cache
        hook = self.model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
        try:
            start = time.perf_counter()
            with torch.inference_mode():
                if self.cache is not None:
                    self.cache.reset()  # its tensors are inference tensors after the first call
                out = self.model.generate(
                    ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                    do_sample=False, eos_token_id=sorted(self.eos_ids), pad_token_id=self.pad_id,
                    **options,
                )  # [1, n + new]
            wall = time.perf_counter() - start
        finally:
            hook.remove()
        tokens = cut_at_eos(out[0, len(prompt_ids):].tolist(), self.eos_ids, max_new_tokens)
        return Output(tokens, calls[0], wall)


class LlamaCppRunner:
    """llama-cpp-python on a GGUF file, greedy (temperature 0), optionally with prompt lookup."""

    def __init__(self, name: str, gguf: Path, eos_ids: set[int], threads: int, n_ctx: int,
                 prompt_lookup: bool = False):
        from llama_cpp import Llama

        self.name, self.eos_ids = name, set(eos_ids)
        self.drafts = _counting_prompt_lookup() if prompt_lookup else None
        # With a draft model, llama-cpp-python keeps the logits of every position whatever
        # `logits_all` says, but sizes its logits buffer by `logits_all`: False there breaks
        # prompts longer than one batch (512 tokens), so say True.
        self.llama = Llama(
            model_path=str(gguf), n_threads=threads, n_threads_batch=threads, n_ctx=n_ctx,
            logits_all=prompt_lookup, draft_model=self.drafts, verbose=False,
        )
        self.n_ctx = n_ctx

    def generate(self, prompt_ids: list[int], max_new_tokens: int) -> Output:
        if len(prompt_ids) + max_new_tokens > self.n_ctx:
            raise ValueError(
                f"{self.name}: a prompt of {len(prompt_ids)} tokens + {max_new_tokens} new tokens does "
                f"not fit llama.cpp's context of {self.n_ctx}"
            )
        self.llama.reset()  # no reuse of a cached prompt prefix: every run prefills in full
        if self.drafts is not None:
            self.drafts.calls = 0
        tokens: list[int] = []
        start = time.perf_counter()
        for token in self.llama.generate(prompt_ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0,
                                         repeat_penalty=1.0, reset=True):
            tokens.append(int(token))
            if token in self.eos_ids or len(tokens) >= max_new_tokens:
                break
        wall = time.perf_counter() - start
        # greedy: one eval per token; prompt lookup: the prompt's eval, then one per draft
        steps = len(tokens) if self.drafts is None else 1 + self.drafts.calls
        return Output(tokens, steps, wall)


class LlamaServerRunner:
    """llama.cpp's llama-server on a GGUF file (started here, one slot), greedy over HTTP."""

    def __init__(self, name: str, gguf: Path, eos_ids: set[int], threads: int, n_ctx: int,
                 extra: Sequence[str] = ()):
        import atexit

        from .servers import Started, free_port, llama_server_command

        self.name, self.eos_ids, self.n_ctx = name, set(eos_ids), n_ctx
        port = free_port()
        self.server = Started(llama_server_command(gguf, port, threads, 1, n_ctx, extra), f"http://127.0.0.1:{port}")
        self.url = self.server.__enter__()
        atexit.register(self.server.stop)

    def generate(self, prompt_ids: list[int], max_new_tokens: int) -> Output:
        import httpx

        if len(prompt_ids) + max_new_tokens > self.n_ctx:
            raise ValueError(f"{self.name}: a prompt of {len(prompt_ids)} tokens + {max_new_tokens} new tokens does "
                             f"not fit the context of {self.n_ctx}")
        body = {"prompt": list(prompt_ids), "n_predict": max_new_tokens, "temperature": 0.0, "top_k": 1,
                "cache_prompt": False, "return_tokens": True, "stream": False}
        start = time.perf_counter()
        reply = httpx.post(f"{self.url}/completion", json=body, timeout=600).json()
        wall = time.perf_counter() - start
        tokens = [int(t) for t in reply["tokens"]]
        if reply.get("stop_type") == "eos" and (not tokens or tokens[-1] not in self.eos_ids):
            tokens.append(min(self.eos_ids))  # it ends on EOS without returning it; the engine keeps it
        tokens = cut_at_eos(tokens, self.eos_ids, max_new_tokens)
        accepted = int(reply.get("timings", {}).get("draft_n_accepted") or 0)
        return Output(tokens, max(1, len(tokens) - accepted), wall)


def _counting_prompt_lookup() -> Any:
    """llama-cpp-python's prompt-lookup draft model (num_pred_tokens=10), counting its calls."""
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

    class CountingPromptLookup(LlamaPromptLookupDecoding):
        calls = 0

        def __call__(self, input_ids: Any, /, **kwargs: Any) -> Any:
            self.calls += 1
            return super().__call__(input_ids, **kwargs)

    return CountingPromptLookup(num_pred_tokens=PROMPT_LOOKUP_TOKENS)


@dataclass
class Setup:
    """What the runners share: the engine (its model, tokenizer and EOS ids) and the options."""

    engine: Any
    budget: int | None = None  # draft tokens per step for this project's drafters
    draft_model: Any = None  # a loaded transformers model, for hf-assisted
    draft_name: str | None = None  # its name, for the draft-model drafter
    dtype: str = "float32"
    gguf: Path | None = None  # the model's GGUF file, for the llama.cpp peers
    threads: int = 2
    n_ctx: int = 4096  # llama.cpp context size
    model: str | None = None  # the model's name, to load its transformers twin
    device: str = "cpu"
    backend: str = "transformers"  # the engine's target: transformers, native or llamacpp
    _hf_engine: Any = None
    _hf_model: Any = None

    @property
    def hf_dtype(self) -> str:
        """The dtype of the transformers peers (8-bit weights exist on the native runtime only)."""
        from ..models.registry import QUANTIZED

        return "bfloat16" if self.dtype in QUANTIZED else self.dtype

    def hf_engine(self) -> Any:
        """An engine on the transformers target: the engine itself, or a twin loaded once."""
        if self._hf_engine is None:
            if getattr(self.engine.target, "model", None) is not None and self.backend == "transformers":
                self._hf_engine = self.engine
            else:
                if self.model is None:
                    raise ValueError("the transformers peers need the model's name")
                import leapdecode

                self._hf_engine = leapdecode.load(self.model, self.hf_dtype, self.device, backend="transformers")
        return self._hf_engine

    def hf_model(self) -> Any:
        """The transformers model of the transformers peers: the engine's own where it has one,
        else loaded once (on CUDA without the engine's compiled StaticTarget around it)."""
        if self._hf_model is None:
            self._hf_model = getattr((self._hf_engine or self.engine).target, "model", None)
            if self._hf_model is None:
                if self.model is None:
                    raise ValueError("the transformers peers need the model's name")
                from ..models.registry import load_model

                self._hf_model = load_model(self.model, self.hf_dtype, self.device)[0]
        return self._hf_model


def _llamacpp(name: str, setup: Setup, prompt_lookup: bool) -> LlamaCppRunner:
    if setup.gguf is None:
        raise ValueError(f"method {name!r} needs the model's GGUF file: pass a packaged model or a .gguf")
    return LlamaCppRunner(name, setup.gguf, setup.engine.eos_ids, setup.threads, setup.n_ctx, prompt_lookup)


def _llama_server(name: str, setup: Setup, extra: Sequence[str]) -> LlamaServerRunner:
    if setup.gguf is None:
        raise ValueError(f"method {name!r} needs the model's GGUF file: pass a packaged model or a .gguf")
    return LlamaServerRunner(name, setup.gguf, setup.engine.eos_ids, setup.threads, setup.n_ctx, extra)


PEER_RUNNERS: dict[str, Callable[[Setup], Any]] = {
    "hf-none": lambda s: EngineRunner(s.hf_engine(), "none", name="hf-none"),
    "hf-greedy": lambda s: HFRunner("hf-greedy", s.hf_model(), s.engine.eos_ids),
    "hf-prompt-lookup": lambda s: HFRunner("hf-prompt-lookup", s.hf_model(), s.engine.eos_ids,
                                           prompt_lookup_num_tokens=PROMPT_LOOKUP_TOKENS),
    "hf-static": lambda s: HFRunner("hf-static", s.hf_model(), s.engine.eos_ids, cache_implementation="static"),
    "hf-static-reused": lambda s: HFRunner("hf-static-reused", s.hf_model(), s.engine.eos_ids, static_len=s.n_ctx),
    "hf-assisted": lambda s: HFRunner("hf-assisted", s.hf_model(), s.engine.eos_ids, assistant_model=s.draft_model),
    "llamacpp-greedy": lambda s: _llamacpp("llamacpp-greedy", s, prompt_lookup=False),
    "llamacpp-prompt-lookup": lambda s: _llamacpp("llamacpp-prompt-lookup", s, prompt_lookup=True),
    "llama-server-greedy": lambda s: _llama_server("llama-server-greedy", s, ()),
    "llama-server-ngram": lambda s: _llama_server("llama-server-ngram", s, LLAMA_SERVER_NGRAM),
}
assert set(PEER_RUNNERS) == set(PEERS)


def build_runners(methods: Sequence[str], setup: Setup) -> list[Any]:
    """Runners for `methods`, in order."""
    return [PEER_RUNNERS[m](setup) if m in PEERS else _engine_runner(m, setup) for m in methods]


def _engine_runner(method: str, setup: Setup) -> EngineRunner:
    # a draft model runs where the target runs (its backend and dtype)
    options = {"model": setup.draft_name} if split_method(method)[0] == "draft-model" else {}
    return EngineRunner(setup.engine, method, setup.budget, **options)
