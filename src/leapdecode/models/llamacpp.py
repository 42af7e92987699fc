"""A llama.cpp target: the engine's forward / commit / trim over llama-cpp-python's C API.

llama.cpp's KV cache is a set of cells; each cell holds one token's keys and values, its
position and the set of sequence ids it belongs to. A token attends to the cells that share
its (first) sequence id and sit at a position no greater than its own. That is enough for
tree attention in ONE `llama_decode`:

- committed tokens live in sequence 0 at positions 0 .. length-1;
- a chain draft is appended to sequence 0; commit drops the rejected tail (`seq_rm`);
- a tree draft gives each root-to-leaf path its own sequence id 1 .. L. Before the pass the
  committed cells are added to all L sequences (`llama_memory_seq_cp`: metadata only in a
  unified cache); each input carries the ids of all the leaves below it. Input j then sees
  exactly the cache and its own ancestors, at position length + depth(j): the tree mask.
- commit(path) adds the path's cells to sequence 0 (they are the cells of any leaf below the
  path's end, at positions length .. length + len(path) - 1) and drops ids 1 .. L everywhere, so
  a rejected cell belongs to no sequence and is free again.

Example: inputs [root, a, b, c] with parents (-, root, a, root) form the paths root-a-b
(sequence 1) and root-c (sequence 2): root carries {1, 2}, a and b {1}, c {2}.

Cell order. Attention sums run over cells in cell order, and llama.cpp puts new tokens into
the first free cells. A rejected cell lying between two kept ones would be refilled by a later
token, out of position order, and the sums would no longer run in the order of a fresh
prefill (logits move at the rounding level, which llama.cpp's 8-bit activation quantization
can amplify to ~0.5). So tree inputs enter the batch depth first (a path through first children
takes one run of cells), and rejected subtrees lying before the last kept cell are held in a
sequence no input reads until the window needs their room.

This needs `kv_unified=True` (one cell in several sequences; with one buffer per sequence
llama.cpp finds no slot for such a token) and `n_seq_max` > the number of leaves.

    target = LlamaCppTarget("SmolLM2-135M-Instruct.Q4_1.gguf", threads=2)
    engine = Engine(target, tokenizer)   # the same interface as HFTarget
"""

from __future__ import annotations

import ctypes
import weakref
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

import numpy as np
import torch

from .base import Capabilities, PendingGuard, check_trim, eos_ids_of, threads_key

INSTALL = ("CMAKE_ARGS=\"-DGGML_NATIVE=ON -DCMAKE_C_FLAGS='-mno-amx-tile -mno-amx-int8' "
           "-DCMAKE_CXX_FLAGS='-mno-amx-tile -mno-amx-int8'\" pip install llama-cpp-python==0.3.36")
DEFAULT_N_CTX = 4096
MAX_BRANCHES = 128  # leaves per draft tree: the engine's largest auto budget is 128 nodes
GGUF_MAGIC = b"GGUF"
CTX_PAD = 256


def require_llama_cpp() -> ModuleType:
    """The ctypes module `llama_cpp.llama_cpp`, or a ValueError that names the install command."""
    try:
        import llama_cpp.llama_cpp as lib
        from llama_cpp import _logger
    except ImportError as err:
        raise ValueError(
            f"the llamacpp backend needs the llama-cpp-python package ({err}); install it with: {INSTALL}"
        ) from None
    _logger.set_verbose(False)  # llama.cpp logs every tensor while loading; keep errors only
    return lib


def is_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


class TreeSlots:
    """How a tree pass lays out in llama.cpp: sequence ids, batch order, cells to hold back.

    Built from the [n, n] tree mask alone. Inputs go into the batch (hence into consecutive
    free cells) in depth-first order, first child first, so that a path through first children
    (the drafters' best guesses) occupies one run of cells after the cache.
    """

    def __init__(self, mask: torch.Tensor, depths: Sequence[int]):
        allowed = mask.to(torch.bool).cpu().numpy()  # [n, n]
        n = len(allowed)
        self.depths = list(depths)
        self.parent = [_parent(allowed[j], j, self.depths) for j in range(n)]
        self.leaves = np.flatnonzero(allowed.sum(0) == 1)  # inputs that are nobody's ancestor
        below = allowed[self.leaves].T  # [n, leaves]: input j lies on the path to leaf i
        self.seqs = [(np.flatnonzero(row) + 1).tolist() for row in below]  # sequence ids 1 .. L
        self.size = allowed.sum(0).tolist()  # nodes in each input's subtree, itself included
        self.order = _depth_first(self.parent)  # inputs in batch order
        self.slot = [0] * n
        for i, j in enumerate(self.order):
            self.slot[j] = i

    def held(self, keep: list[int]) -> list[int]:
        """Roots of the rejected subtrees that lie in cells before the last kept input: freeing
        them would leave holes that later tokens fill, out of position order, and the order of
        the attention sums would then differ from a cache prefilled in one go."""
        if not keep:
            return []
        kept, last = set(keep), self.slot[keep[-1]]
        return [u for u in range(len(self.parent))
                if u not in kept and self.parent[u] in kept and self.slot[u] < last]


def _parent(row: np.ndarray, j: int, depths: Sequence[int]) -> int:
    """The deepest proper ancestor of input j (-1 for a root)."""
    ancestors = [k for k in np.flatnonzero(row) if k != j]
    return max(ancestors, key=lambda k: depths[k]) if ancestors else -1


def _depth_first(parent: list[int]) -> list[int]:
    children: list[list[int]] = [[] for _ in parent]
    roots = []
    for j, p in enumerate(parent):
        (children[p] if p >= 0 else roots).append(j)
    order, stack = [], roots[::-1]
    while stack:
        j = stack.pop()
        order.append(j)
        stack.extend(children[j][::-1])
    return order


class LlamaCppTarget:
    """A GGUF model run by llama.cpp, seen as: forward(tokens, depths, mask) -> logits, commit, trim."""

    device = "cpu"
    capabilities = Capabilities(hf_model=False)
    backend = "llamacpp"

    def __init__(self, gguf: str | Path, threads: int | None = None, n_ctx: int = DEFAULT_N_CTX,
                 max_branches: int = MAX_BRANCHES, flash_attn: bool = True, tokenizer: Any = None):
        """flash_attn: on, as llama.cpp's own default (`auto`) resolves on the CPU. It also makes a
        pass of fewer than 64 inputs compute each row exactly as a one-token pass does while the
        cache is short (without it, attention for one query runs other kernels); see
        docs/llamacpp.md. tokenizer: adds its eos token to the file's (optional)."""
        lib = self.lib = require_llama_cpp()
        path = Path(gguf)
        if not is_gguf(path):
            raise ValueError(f"{path} is not a GGUF file: --backend llamacpp needs a GGUF model")
        from .packaged import check_gguf

        check_gguf(path)  # a truncated file: one line with the sizes, not a failed load
        self.threads = int(threads or torch.get_num_threads())
        self.max_branches = max_branches
        self.held_seq = max_branches + 1  # rejected cells kept occupied, visible to no input
        if n_ctx < 1:
            raise ValueError(f"n_ctx (the context size in tokens) must be >= 1, got {n_ctx}")
        lib.llama_backend_init()
        self._model = lib.llama_model_load_from_file(str(path).encode(), lib.llama_model_default_params())
        if not self._model:
            raise ValueError(f"llama.cpp could not load {path}; is it a complete GGUF file?")
        self._ctx = lib.llama_init_from_model(self._model, self._context_params(n_ctx, flash_attn))
        if not self._ctx:
            lib.llama_model_free(self._model)
            raise ValueError(f"llama.cpp could not create a context of {n_ctx} tokens for {path}")
        self.n_batch = lib.llama_n_batch(self._ctx)
        self._batch = lib.llama_batch_init(self.n_batch, 0, max_branches + 1)
        self._finalizer = weakref.finalize(self, _free, lib, self._batch, self._ctx, self._model)
        self._mem = lib.llama_get_memory(self._ctx)
        vocab = lib.llama_model_get_vocab(self._model)
        self.vocab_size = lib.llama_vocab_n_tokens(vocab)
        self.context_window = lib.llama_n_ctx(self._ctx)
        eos = lib.llama_vocab_eos(vocab)
        self.eos_ids = frozenset([eos] if eos >= 0 else []) | eos_ids_of(None, tokenizer)
        self.n_params = int(lib.llama_model_n_params(self._model))
        self.description = f"llama.cpp model ({_describe(lib, self._model)})"
        self.path = path
        self.length = 0  # committed tokens in the cache, all in sequence 0
        self.held = 0  # cells held back in sequence `held_seq`
        self._guard = PendingGuard()
        self._pending: _Pass | None = None

    @property
    def cache_key(self) -> str:
        return f"gguf/threads={self.threads}|{threads_key(self.device)}"

    def _context_params(self, n_ctx: int, flash_attn: bool) -> Any:
        lib = self.lib
        params = lib.llama_context_default_params()
        # llama.cpp pads the cache to a multiple of 256 cells but clamps n_batch to the n_ctx
        # asked for: ask for the padded size, so that a pass may fill the whole window
        params.n_ctx = -(-n_ctx // CTX_PAD) * CTX_PAD
        params.n_seq_max = self.max_branches + 2  # sequence 0, one per leaf, the held cells
        params.kv_unified = True  # a cell shared by several branches needs one buffer for all
        params.n_threads = params.n_threads_batch = self.threads
        params.flash_attn_type = (lib.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn
                                  else lib.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        # logits for every input of a pass; llama.cpp reserves room for n_seq_max outputs at
        # start and aborts the process when that exceeds n_outputs_max (e.g. a small n_ctx)
        params.n_outputs_max = max(params.n_batch, params.n_seq_max)
        params.n_outputs_max_per_seq = 0  # = n_outputs_max (the default 1 is meant for sampling)
        return params

    def close(self) -> None:
        """Free the llama.cpp context and model now (also done when the target is collected)."""
        self._finalizer()

    # ---- the target interface -----------------------------------------------------------
    def reset(self) -> None:
        self.lib.llama_memory_clear(self._mem, False)  # metadata only: cells become free
        self.length = self.held = 0
        self._guard.clear()
        self._pending = None

    def prefill(self, tokens: Sequence[int]) -> None:
        """Append and commit `tokens` (no logits: the engine feeds the last token later)."""
        self._guard.check("prefilling")
        tokens = [int(t) for t in tokens]
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start : start + self.n_batch]
            self._make_room(len(chunk))
            self._fill(chunk, range(self.length, self.length + len(chunk)), None, logits=False)
            self._decode(len(chunk))
            self.length += len(chunk)

    def forward(self, tokens: Sequence[int], depths: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Run inputs at positions length + depths in ONE llama_decode. mask: [n, n] bool tree
        mask (row j True on j's ancestors and j itself), None = a causal chain.

        Returns float32 logits [n, vocab], row j = the distribution after input j.
        """
        self._guard.check("running another")
        tokens = [int(t) for t in tokens]
        n = len(tokens)
        if not 0 < n <= self.n_batch:
            raise ValueError(f"a pass takes 1 to {self.n_batch} inputs, got {n}")
        depths = [int(d) for d in depths]
        self._make_room(n)
        if mask is None:
            self._fill(tokens, [self.length + d for d in depths], None, logits=True)
            self._decode(n)
            self._guard.start(n)
            self._pending = _Pass(depths, None)
            return self._logits(n)
        slots = TreeSlots(mask, depths)
        if len(slots.leaves) > self.max_branches:
            raise ValueError(f"a draft tree with {len(slots.leaves)} leaves needs max_branches >= "
                             f"{len(slots.leaves)} (this target was made with {self.max_branches})")
        for s in range(1, len(slots.leaves) + 1):
            self.lib.llama_memory_seq_cp(self._mem, 0, s, -1, -1)  # the cache, seen by branch s
        order = slots.order
        self._fill([tokens[j] for j in order], [self.length + depths[j] for j in order],
                   [slots.seqs[j] for j in order], logits=True)
        self._decode(n)
        self._guard.start(n)
        self._pending = _Pass(depths, mask, slots)
        return self._logits(n)[slots.slot]  # [n, vocab], back in input order

    def commit(self, keep: Sequence[int]) -> None:
        """Keep the cells of inputs `keep` (ascending indices into the last forward, a path from
        input 0, or empty); afterwards the cache holds exactly the committed tokens, in sequence 0."""
        self._guard.check_pending()
        keep = [int(k) for k in keep]
        self._pending.check_path(keep)
        slots = self._pending.slots
        if slots is None:  # a chain: drop the tail of sequence 0
            self._remove(0, self.length + len(keep))
        else:
            self._commit_tree(slots, keep)
        self.length += len(keep)
        self._guard.done()
        self._pending = None

    def _commit_tree(self, slots: TreeSlots, keep: list[int]) -> None:
        lib, mem, start = self.lib, self._mem, self.length
        for u in slots.held(keep):  # u's subtree = the cells of u's leaves from u's depth on
            for s in slots.seqs[u]:
                lib.llama_memory_seq_cp(mem, s, self.held_seq, start + slots.depths[u], -1)
            self.held += slots.size[u]
        if keep:  # the path's cells are exactly branch s's cells at these positions
            branch = slots.seqs[keep[-1]][0]
            lib.llama_memory_seq_cp(mem, branch, 0, start, start + len(keep))
        for s in range(1, len(slots.leaves) + 1):
            self._remove(s, -1)  # a cell in no sequence any more is free again

    def commit_all(self) -> None:
        if self._pending is None:
            return
        if self._pending.slots is not None:
            raise RuntimeError("commit_all() is for chains; commit a path of a tree with commit(keep)")
        self.commit(range(len(self._pending.depths)))

    def trim(self, length: int) -> None:
        """Drop committed tokens beyond `length`."""
        self._guard.check("trimming")
        check_trim(length, self.length)
        self._remove(0, length)
        self.length = length

    # ---- llama.cpp plumbing ---------------------------------------------------------------
    def _make_room(self, n: int) -> None:
        """Free the held cells when the next n tokens would not fit beside them (later passes may
        then fill those holes: still correct, only the order of the sums changes)."""
        if self.held and self.length + self.held + n > self.context_window:
            self._remove(self.held_seq, -1)
            self.held = 0

    def _fill(self, tokens: list[int], positions: Sequence[int], seqs: list[list[int]] | None,
              logits: bool) -> None:
        batch = self._batch
        batch.n_tokens = len(tokens)
        for i, (token, pos) in enumerate(zip(tokens, positions)):
            batch.token[i] = token
            batch.pos[i] = pos
            ids = seqs[i] if seqs is not None else (0,)
            batch.n_seq_id[i] = len(ids)
            row = batch.seq_id[i]
            for k, s in enumerate(ids):
                row[k] = s
            batch.logits[i] = logits

    def _decode(self, n: int) -> None:
        rc = self.lib.llama_decode(self._ctx, self._batch)
        if rc == 1:
            raise RuntimeError(f"llama.cpp found no room for {n} more tokens in its KV cache of "
                               f"{self.context_window} (holding {self.length}); make the context larger")
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with code {rc} on a batch of {n} tokens")

    def _logits(self, n: int) -> torch.Tensor:
        ptr = self.lib.llama_get_logits(self._ctx)  # rows in batch order
        rows = np.ctypeslib.as_array(ptr, shape=(n, self.vocab_size))  # [n, vocab] view of llama.cpp's buffer
        return torch.from_numpy(rows.copy())  # [n, vocab] float32; the buffer is reused by the next pass

    def _remove(self, seq: int, start: int) -> None:
        """Drop sequence `seq` from every cell at position >= start (-1: all of them)."""
        if not self.lib.llama_memory_seq_rm(self._mem, seq, start, -1):
            raise RuntimeError(f"llama.cpp could not remove positions >= {start} of sequence {seq}")


class _Pass:
    """What commit() needs to know about the last forward."""

    def __init__(self, depths: list[int], mask: torch.Tensor | None, slots: TreeSlots | None = None):
        self.depths, self.mask, self.slots = depths, mask, slots

    def check_path(self, keep: list[int]) -> None:
        """`keep` must be input 0 and its descendants down one path: the cells to keep then lie
        at consecutive positions, as the next pass expects."""
        n = len(self.depths)
        ok = all(0 <= k < n and self.depths[k] == i for i, k in enumerate(keep))
        if ok and self.mask is None:
            ok = keep == list(range(len(keep)))
        elif ok:
            ok = all(bool(self.mask[b, a]) for a, b in zip(keep, keep[1:]))
        if not ok:
            raise ValueError(f"commit({keep}) is not a path from input 0 of the last forward")


def _describe(lib: ModuleType, model: Any) -> str:
    buf = ctypes.create_string_buffer(256)
    lib.llama_model_desc(model, buf, len(buf))
    return buf.value.decode(errors="replace")


def _free(lib: ModuleType, batch: Any, ctx: Any, model: Any) -> None:
    lib.llama_batch_free(batch)
    lib.llama_free(ctx)
    lib.llama_model_free(model)


# ---- loading ------------------------------------------------------------------------------
def locate_gguf(model: str) -> Path:
    """The GGUF file of a packaged model name or a .gguf path; ValueError for anything else."""
    from .packaged import PACKAGED, gguf_path
    from .registry import cache_dir

    if model in PACKAGED:
        return gguf_path(PACKAGED[model], cache_dir())  # ModelNotInstalled (a ValueError) names the pip command
    path = Path(model).expanduser()
    if path.is_dir():
        raise ValueError(f"model {model!r} is a directory: --backend llamacpp needs a GGUF model "
                         f"(a packaged name such as {next(iter(PACKAGED))!r}, or a .gguf file); "
                         "use --backend transformers for a transformers directory")
    if path.is_file():
        if not is_gguf(path):
            raise ValueError(f"{model!r} is not a GGUF file: --backend llamacpp needs a GGUF model")
        return path
    raise ValueError(f"unknown model {model!r}: --backend llamacpp needs a GGUF model: one of "
                     f"{', '.join(PACKAGED)} or a .gguf file")


def load_tokenizer(model: str, gguf: Path) -> Any:
    """The transformers tokenizer of the same model: the converted directory of a packaged model,
    or the tokenizer stored in a .gguf file itself (the weights are never converted)."""
    from transformers import AutoTokenizer

    from .packaged import PACKAGED
    from .registry import resolve

    if model in PACKAGED:
        return AutoTokenizer.from_pretrained(resolve(model), local_files_only=True)
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)


def load_llamacpp(model: str, threads: int | None = None, n_ctx: int = DEFAULT_N_CTX,
                  max_branches: int = MAX_BRANCHES) -> tuple[LlamaCppTarget, Any]:
    """(target, tokenizer): llama.cpp running `model` (a packaged name or a .gguf file).

    threads: llama.cpp threads for single tokens and batches (default: torch.get_num_threads()).
    """
    require_llama_cpp()  # fail on a missing package before touching any file
    gguf = locate_gguf(model)
    tokenizer = load_tokenizer(model, gguf)
    target = LlamaCppTarget(gguf, threads=threads, n_ctx=n_ctx, max_branches=max_branches, tokenizer=tokenizer)
    return target, tokenizer
