"""The GPU target: a static KV cache written by slot, and verification passes replayed as CUDA graphs.

On a GPU one pass of a small model costs what its kernel launches cost, not what its arithmetic
costs: an eager pass of any size is host-bound. So the inputs of a pass are padded up to one of a
few fixed sizes, each size is captured once as a CUDA graph (over a torch.compile'd forward,
which fuses the many small kernels, or over the eager one) and replayed; a pass of a size with no
graph runs eagerly, with a one-time warning.

The cache holds `capacity` slots per layer, preallocated. Keys are stored with their rotary
position already applied, so attention does not care which slot holds which token: a boolean
vector `valid` marks the committed slots, and the mask of a pass is `valid` plus the draft's
tree mask over the slots the pass writes (`hw`, the high-water mark, onwards). Hence

- `commit(keep)` marks the kept inputs' slots valid and copies nothing;
- `trim(n)` moves the high-water mark back and clears the slots behind it;
- only when the slots run out does `compact()` gather the committed slots to the front, one
  on-device index copy per layer.

Invariants: every slot at or past `hw` is invalid, and committed tokens occupy increasing slots.

    target = StaticTarget(model.to("cuda", torch.bfloat16), max_len=2048)
    target.capture()                      # optional: capture every size now rather than on first use
    engine = Engine(target, tokenizer)    # the same interface as HFTarget
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Callable, Sequence

import numpy as np
import torch
from transformers import PreTrainedModel
from transformers.cache_utils import Cache, CacheLayerMixin

from .base import Capabilities, PendingGuard, check_trim, eos_ids_of, threads_key
from .hf import column_layout, install_column_layout

PREFILL_CHUNK = 256
DEFAULT_SIZES = (1, 2, 4, 8, 16, 32, 64, 128)


def require_cuda(device: str = "cuda") -> torch.device:
    """The CUDA device to run on, or a ValueError that says why there is none."""
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"a CUDA {torch.version.cuda} build"
        raise ValueError(
            f"--device {device} needs an NVIDIA GPU, but torch {torch.__version__} ({build}) sees none; "
            "run on a machine with a GPU and a CUDA build of torch, or use --device cpu"
        )
    return torch.device(device)


class _SlotLayer(CacheLayerMixin):
    """One layer's keys and values, [1, kv_heads, capacity, head_dim], written at `owner.slots`."""

    is_compileable = True
    is_sliding = False

    def __init__(self, owner: "SlotCache", keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.owner, self.keys, self.values = owner, keys, values
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        pass  # preallocated

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        # key_states: [1, kv_heads, n, head_dim], written to the n slots of this pass
        self.keys.index_copy_(2, self.owner.slots, key_states)
        self.values.index_copy_(2, self.owner.slots, value_states)
        span = self.owner.span
        return self.keys[:, :, :span], self.values[:, :, :span]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.owner.span, 0

    def get_seq_length(self) -> int:
        return self.owner.span

    def get_max_length(self) -> int:
        return self.keys.shape[2]


class SlotCache(Cache):
    """A transformers Cache whose layers are preallocated slot arrays.

    Before each model call the owner sets `slots` ([n] long: where the pass's n keys go) and
    `span` (how many leading slots attention reads; the mask the owner passes has that many
    columns).
    """

    def __init__(self, model: PreTrainedModel, capacity: int, dtype: torch.dtype, device: torch.device):
        config = model.config.get_text_config(decoder=True)
        if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True) is not False \
                and any(t != "full_attention" for t in getattr(config, "layer_types", None) or ["sliding"]):
            raise ValueError(
                f"the static GPU target supports full-attention models only; {config.model_type} has "
                "sliding-window layers (use the default CPU target)"
            )
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        shape = (1, kv_heads, capacity, head_dim)
        layers = []
        for _ in range(config.num_hidden_layers):
            keys = torch.zeros(shape, dtype=dtype, device=device)
            values = torch.zeros(shape, dtype=dtype, device=device)
            layers.append(_SlotLayer(self, keys, values))
        super().__init__(layers=layers)
        self.capacity = capacity
        self.slots = torch.zeros(0, dtype=torch.long, device=device)
        self.span = capacity

    def gather(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        """Copy slots `src` to slots `dst` in every layer ([m] long each, on the device)."""
        for layer in self.layers:
            layer.keys.index_copy_(2, dst, layer.keys.index_select(2, src))
            layer.values.index_copy_(2, dst, layer.values.index_select(2, src))


def _room_for_graphs(count: int):
    """Let dynamo keep a compiled graph per pass size of every target (its default keeps 8 per
    function, then silently runs it uncompiled)."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    return config.patch({name: max(getattr(config, name), 8 * count)})


class _Pass:
    """The fixed buffers of a padded pass of `size` inputs, and its CUDA graph once captured."""

    def __init__(self, size: int, device: torch.device):
        self.size = size
        cuda = device.type == "cuda"
        # row 0: token ids, then hw; row 1: positions, then unused
        self.ints_host = torch.zeros(2, size + 1, dtype=torch.long, pin_memory=cuda)
        self.tree_host = torch.zeros(size, size, dtype=torch.bool, pin_memory=cuda)
        self.ints = torch.zeros(2, size + 1, dtype=torch.long, device=device)
        self.tree = torch.eye(size, dtype=torch.bool, device=device)
        self.ints_np, self.tree_np = self.ints_host.numpy(), self.tree_host.numpy()
        self.eye = np.eye(size, dtype=bool)
        self.tril = np.tril(np.ones((size, size), dtype=bool))
        self.staged = torch.cuda.Event() if cuda else None  # the last copy out of staging has run
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: torch.Tensor | None = None  # [size, vocab], written by each replay


class StaticTarget:
    """A transformers causal LM over a static slot cache: forward(tokens, depths, mask) -> logits.

    Same interface as `HFTarget`. On a CUDA device, passes of the sizes in `sizes` (inputs padded
    up to the next size with masked-out dummies) are captured as CUDA graphs on first use, over a
    `torch.compile`d step when `compile` is true (one dynamic-shape graph for all sizes >= 2 unless
    `dynamic=False`); other sizes, and every pass on a CPU, run eagerly. `pad=True` runs the padded
    passes without graphs (to test them on a CPU). `max_len` bounds prompt plus output (the
    engine's context window); the cache holds `max_len` plus room for one pass or prefill chunk.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        max_len: int = 2048,
        sizes: Sequence[int] = DEFAULT_SIZES,
        graphs: bool | None = None,
        compile: bool | None = None,
        pad: bool | None = None,
        dynamic: bool = True,
        tokenizer: Any = None,
    ):
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.vocab_size = model.get_output_embeddings().weight.shape[0]
        self.eos_ids = eos_ids_of(model, tokenizer)
        self.n_params = model.num_parameters()
        self.column = install_column_layout(model)  # float32 on the CPU (the tests) computes as HFTarget
        window = int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30)
        self.context_window = min(window, max_len)
        self.sizes = tuple(sorted({int(s) for s in sizes}))
        if not self.sizes or self.sizes[0] < 1:
            raise ValueError(f"sizes must be positive integers, got {tuple(sizes)}")
        on_cuda = self.device.type == "cuda"
        self.graphs = on_cuda if graphs is None else graphs
        if self.graphs and not on_cuda:
            raise ValueError(f"CUDA graphs need the model on a CUDA device, not {self.device}")
        self.compile = self.graphs if compile is None else compile
        # padded passes are what graphs replay; `pad=True` alone runs them eagerly (tests on a CPU)
        self.pad = self.graphs or self.compile if pad is None else pad or self.graphs or self.compile
        headroom = max(self.sizes[-1], PREFILL_CHUNK)
        self.capacity = -(-(self.context_window + headroom) // 64) * 64
        self.cache = SlotCache(model, self.capacity, self.dtype, self.device)
        self.valid = torch.zeros(self.capacity, dtype=torch.bool, device=self.device)  # committed slots
        self._columns = torch.arange(self.capacity, device=self.device)  # [capacity]
        self._step_fn: Callable = self._step
        self.dynamic = dynamic
        if self.compile:
            # dynamic: one compiled graph for every size >= 2 (size 1 is specialised by dynamo anyway);
            # static: one per size. Both replay equally fast; dynamic compiles in about half the
            # time (docs/gpu.md, "What was tried and did not help").
            self._step_fn = torch.compile(self._step, fullgraph=True, dynamic=None if dynamic else False)
        self._passes: dict[int, _Pass] = {}
        self._pool = None
        self._warned: set[int] = set()
        self.capture_s = 0.0  # seconds spent compiling and capturing
        self.reset()

    # ---- the Target protocol ------------------------------------------------------------
    capabilities = Capabilities(hf_model=True)  # `.model` is the transformers model itself
    backend = "transformers"

    @property
    def cache_key(self) -> str:
        return f"{self.dtype}|{threads_key(self.device)}"

    def captured_sizes(self) -> list[int]:
        """The pass sizes whose graphs (or padded passes) exist so far, ascending."""
        return sorted(self._passes)

    def graph(self, size: int) -> Any:
        """The CUDA graph captured for passes of `size` inputs (torch.cuda.CUDAGraph), or None."""
        captured = self._passes.get(size)
        return None if captured is None else captured.graph

    @property
    def compact_cache(self) -> bool:
        """True when the committed tokens sit in slots 0..length-1 (after `compact`)."""
        return self._slots == list(range(self.length))

    def reset(self) -> None:
        self.length = 0  # committed tokens
        self._hw = 0  # first slot never written since the last compaction; all slots >= hw are invalid
        self._slots: list[int] = []  # slot of each committed token, increasing
        self._guard = PendingGuard()  # inputs of the last forward, not yet committed
        self._pending_hw = 0
        self.valid.fill_(False)

    @torch.inference_mode()
    def prefill(self, tokens: Sequence[int]) -> None:
        """Append and commit `tokens` (eager passes of up to PREFILL_CHUNK tokens)."""
        for start in range(0, len(tokens), PREFILL_CHUNK):
            chunk = list(tokens[start : start + PREFILL_CHUNK])
            self._begin(len(chunk))
            self._eager(chunk, torch.arange(len(chunk)), None, logits_to_keep=1)
            self._guard.start(len(chunk))
            self.commit_all()

    @torch.inference_mode()
    def forward(self, tokens: Sequence[int], depths: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Run inputs at positions length + depths. mask: [n, n] bool tree mask (None = causal).

        Returns float logits [n, vocab] (a fresh tensor: the graph's output buffer is reused).
        """
        tokens = list(tokens)
        n = len(tokens)
        size = self._size_for(n)
        self._begin(size or n)
        if size is None:
            logits = self._eager(tokens, depths, mask, logits_to_keep=0)  # [n, vocab]
        else:
            logits = self._replay(size, tokens, depths, mask)[:n]
        self._guard.start(n)
        return logits.float() if logits.dtype != torch.float32 else logits.clone()

    def commit(self, keep: Sequence[int]) -> None:
        """Keep inputs `keep` (ascending indices into the last forward): mark their slots valid."""
        self._guard.done()
        keep = list(keep)
        hw = self._pending_hw
        if keep:
            if keep == list(range(len(keep))):  # a prefix: one fill, no index upload
                self.valid[hw : hw + len(keep)] = True
            else:
                index = torch.tensor([hw + j for j in keep]).to(self.device, non_blocking=True)
                self.valid.index_fill_(0, index, True)
            self._slots.extend(hw + j for j in keep)
            self._hw = hw + keep[-1] + 1  # the rejected slots below stay invalid
        self.length += len(keep)

    def commit_all(self) -> None:
        self.commit(range(self._guard.pending))

    def trim(self, length: int) -> None:
        """Drop committed tokens beyond `length`: move the high-water mark back."""
        self._guard.check("trimming")
        check_trim(length, self.length)
        hw = self._slots[length - 1] + 1 if length else 0
        self.valid[hw : self._hw] = False
        del self._slots[length:]
        self._hw, self.length = hw, length

    def compact(self) -> None:
        """Move the committed tokens to slots 0..length-1 (an on-device gather per layer)."""
        self._guard.check("compacting")
        if self._slots != list(range(self.length)):
            src = torch.tensor(self._slots, device=self.device)
            dst = torch.arange(self.length, device=self.device)
            self.cache.gather(src, dst)
            self._slots = list(range(self.length))
        self.valid.fill_(False)
        self.valid[: self.length] = True
        self._hw = self.length

    # ---- padded passes and their graphs -------------------------------------------------
    def capture(self, sizes: Sequence[int] | None = None) -> float:
        """Compile and capture the passes of `sizes` (default: all) now; returns the seconds spent."""
        if not self.pad:
            return 0.0
        start = time.perf_counter()
        with torch.inference_mode():
            for size in sizes or self.sizes:
                self._pass(size)
        return time.perf_counter() - start

    def _size_for(self, n: int) -> int | None:
        """The padded size for n inputs, or None for an exact-size eager pass."""
        if not self.pad:
            return None
        for size in self.sizes:
            if size >= n:
                return size
        if n not in self._warned:
            self._warned.add(n)
            warnings.warn(
                f"StaticTarget: no captured pass for {n} inputs (largest size {self.sizes[-1]}); "
                "running it eagerly, which is much slower on a GPU",
                stacklevel=3,
            )
        return None

    def _begin(self, width: int) -> None:
        """Check that no forward is pending and make `width` free slots exist past hw."""
        self._guard.check("running another")
        if self.length + width > self.capacity:
            raise ValueError(
                f"{self.length} cached tokens + a pass of {width} inputs exceed this target's "
                f"capacity of {self.capacity} slots"
            )
        if self._hw + width > self.capacity:
            self.compact()
        self._pending_hw = self._hw

    def _replay(self, size: int, tokens: list[int], depths: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        p = self._pass(size)
        n = len(tokens)
        if p.staged is not None:
            p.staged.synchronize()  # the previous copies have left the staging buffers
        ints, tree = p.ints_np, p.tree_np  # numpy views of the (pinned) host staging
        ints[0, :n] = tokens
        ints[0, n:size] = tokens[0]  # dummies: any valid id; no real row attends to them
        ints[0, size] = self._hw
        ints[1, :n] = depths.cpu().numpy() + self.length
        ints[1, n:size] = self.length
        tree[:] = p.eye  # a dummy attends only to itself
        tree[:n, :n] = p.tril[:n, :n] if mask is None else mask.cpu().numpy()
        p.ints.copy_(p.ints_host, non_blocking=True)
        p.tree.copy_(p.tree_host, non_blocking=True)
        if p.graph is None:  # without CUDA graphs
            return self._step_fn(p.ints, p.tree)
        p.staged.record()
        p.graph.replay()
        return p.out

    def _pass(self, size: int) -> _Pass:
        if size in self._passes:
            return self._passes[size]
        start = time.perf_counter()
        p = _Pass(size, self.device)
        p.ints[0, size] = self._hw  # warm-up dummies land on free slots, never on committed ones
        if self.compile and self.dynamic and size > 1:
            for tensor, dim in ((p.ints, 1), (p.tree, 0), (p.tree, 1)):
                torch._dynamo.maybe_mark_dynamic(tensor, dim)
        with _room_for_graphs(len(self.sizes)):
            if self.graphs:
                self._capture(p)
            elif self.compile:
                with torch.inference_mode():
                    self._step_fn(p.ints, p.tree)  # compile now rather than inside a timed pass
        self._passes[size] = p
        self.capture_s += time.perf_counter() - start
        return p

    def _capture(self, p: _Pass) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):  # compile, autotune and warm up outside the capture
                self._step_fn(p.ints, p.tree)
        torch.cuda.current_stream().wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        p.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(p.graph, pool=self._pool):
            p.out = self._step_fn(p.ints, p.tree)
        torch.cuda.synchronize()

    def _step(self, ints: torch.Tensor, tree: torch.Tensor) -> torch.Tensor:
        """One padded pass, all on the device: ints [2, size + 1], tree [size, size] -> [size, vocab]."""
        size = tree.shape[0]
        hw = ints[0, -1]
        self.cache.slots = hw + torch.arange(size, device=ints.device)  # [size]
        rel = self._columns - hw  # [capacity] slot offset from hw
        inside = (rel >= 0) & (rel < size)
        from_tree = tree[:, rel.clamp(0, size - 1)]  # [size, capacity]
        allowed = self.valid[None, :] | (inside[None, :] & from_tree)
        additive = torch.zeros(allowed.shape, dtype=self.dtype, device=ints.device)
        additive = additive.masked_fill(~allowed, torch.finfo(self.dtype).min)
        with column_layout(self.column):
            out = self.model(
                input_ids=ints[0, :size][None],
                position_ids=ints[1, :size][None],
                attention_mask=additive[None, None],
                cache=self.cache,
                use_cache=True,
            )
        return out.logits[0]  # [size, vocab]

    # ---- eager passes ------------------------------------------------------------------
    def _eager(self, tokens: list[int], depths: torch.Tensor, mask: torch.Tensor | None, logits_to_keep: int) -> torch.Tensor:
        """An exact-size pass reading only the slots below hw + n."""
        n, hw = len(tokens), self._hw
        tree = self._tril(n) if mask is None else mask
        allowed = torch.cat([self.valid[:hw].expand(n, hw), tree.to(self.device)], dim=1)  # [n, hw + n]
        additive = torch.zeros(allowed.shape, dtype=self.dtype, device=self.device)
        additive.masked_fill_(~allowed, torch.finfo(self.dtype).min)
        self.cache.slots = torch.arange(hw, hw + n, device=self.device)
        self.cache.span = hw + n
        try:
            with column_layout(self.column):
                out = self.model(
                    input_ids=torch.tensor([tokens], device=self.device),
                    position_ids=(depths.to(self.device) + self.length)[None],
                    attention_mask=additive[None, None],
                    cache=self.cache,
                    use_cache=True,
                    logits_to_keep=logits_to_keep,
                )
        finally:
            self.cache.span = self.capacity
        return out.logits[0]  # [n or logits_to_keep, vocab]

    @staticmethod
    def _tril(n: int) -> torch.Tensor:
        return torch.ones(n, n, dtype=torch.bool).tril_()

