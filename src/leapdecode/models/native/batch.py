"""Several requests in one pass: sequences of a shared NativeTarget that batch their passes.

    target = NativeTarget(directory, "bfloat16", max_len=2048, sequences=17)
    with target.open_sequence() as seq:      # a Target of its own: one region of the cache
        Engine(seq, tokenizer).generate(...)  # on its own thread, beside the others

Each open sequence is a full Target (reset, prefill, forward, commit, trim) over its own region
of the cache. Its `forward` (and each chunk of its prefill) waits until every open sequence has
handed in its inputs, then one of them runs a single pass over all of them (`NativeTarget.run`)
and each gets its own rows back. The runtime's rows do not depend on the pass (width, tree shape,
the other sequences' inputs, where the region sits), so every sequence's output is bitwise its
solo output. A sequence that is busy elsewhere (drafting, decoding text) holds the pass back
until it hands in its inputs or closes; that is the price of a lockstep batch.

`draft_cap` shares a pass among the sequences: with `rows` rows per pass and s open sequences,
each drafts at most rows // s - 1 nodes, so that more requests mean shorter drafts rather than
slower passes.
"""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Iterator, Sequence

import torch

from ..base import check_trim

if TYPE_CHECKING:
    from .target import NativeTarget, Part, Region

PREFILL_CHUNK = 64  # prompt tokens per pass while other sequences decode beside it
ROWS = 32  # rows per pass that `draft_cap` shares among the open sequences


class Batcher:
    """Hands out the sequences of a NativeTarget and runs their passes together."""

    def __init__(self, target: "NativeTarget", rows: int = ROWS):
        self.target = target
        self.rows = rows
        self._free = list(target.regions[1:])  # region 0 is the target's own (its Target protocol)
        self._open: set[SequenceTarget] = set()
        self._pending: dict[SequenceTarget, list] = {}  # sequence -> [part, result, error, done]
        self._cond = threading.Condition()

    @property
    def open_count(self) -> int:
        return len(self._open)

    @contextmanager
    def sequence(self) -> Iterator["SequenceTarget"]:
        with self._cond:
            if not self._free:
                raise RuntimeError(f"all {len(self.target.regions) - 1} sequences are in use")
            seq = SequenceTarget(self, self._free.pop())
            self._open.add(seq)
        try:
            yield seq
        finally:
            with self._cond:
                self._open.discard(seq)
                self._pending.pop(seq, None)
                seq.region.guard.clear()
                self._free.append(seq.region)
                self._maybe_run()

    def run(self, seq: "SequenceTarget", part: "Part") -> torch.Tensor | None:
        """Hand in `part` and wait for the pass that carries it; its rows' logits (or None)."""
        with self._cond:
            slot = [part, None, None, False]
            self._pending[seq] = slot
            self._maybe_run()
            while not slot[3]:
                self._cond.wait()
        if slot[2] is not None:
            raise slot[2]
        return slot[1]

    def _maybe_run(self) -> None:
        """Run the pass once every open sequence has handed in its inputs (lock held)."""
        if not self._pending or len(self._pending) < len(self._open):
            return
        slots = []
        for s in self._pending.values():  # a part that cannot run fails alone
            try:
                self.target.check_part(s[0])
                slots.append(s)
            except (ValueError, RuntimeError) as err:
                s[2], s[3] = err, True
        self._pending.clear()
        try:
            results = self.target.run([s[0] for s in slots]) if slots else []
            for s, result in zip(slots, results):
                s[1] = result
        except Exception as err:  # out of memory, say: every sequence of the pass sees it
            for s in slots:
                s[2] = err
        for s in slots:
            s[3] = True
        self._cond.notify_all()

    def draft_cap(self) -> int:
        return max(0, self.rows // max(1, len(self._open)) - 1)

    def load_besides(self, seq: "SequenceTarget") -> tuple[int, int]:
        """(rows, tokens kept) of the other open sequences' last passes: what a step of `seq`
        shares its pass with (`--budget auto` sizes the draft for the whole pass)."""
        with self._cond:
            others = [s for s in self._open if s is not seq]
            return sum(s.last_rows for s in others), sum(s.last_kept for s in others)


class SequenceTarget:
    """One region of a NativeTarget's cache as a Target; its passes join the open sequences'."""

    backend = "native"

    def __init__(self, batcher: Batcher, region: "Region"):
        owner = batcher.target
        self.batcher, self.region, self.owner = batcher, region, owner
        self.vocab_size, self.context_window = owner.vocab_size, owner.context_window
        self.eos_ids, self.n_params, self.dtype = owner.eos_ids, owner.n_params, owner.dtype
        self.cache_key, self.capabilities = owner.cache_key, owner.capabilities
        self.last_rows = self.last_kept = 0  # this sequence's last pass: rows fed, tokens kept
        self.hidden_size = owner.hidden_size
        self._hidden: list[torch.Tensor] = []  # as NativeTarget's: the last prefill's or forward's
        region.length = 0
        region.guard.clear()

    @property
    def length(self) -> int:
        return self.region.length

    def reset(self) -> None:
        self.region.length = 0
        self.region.guard.clear()
        self._hidden = []

    def prefill(self, tokens: Sequence[int]) -> None:
        from .target import Part

        self._hidden = []
        for start in range(0, len(tokens), PREFILL_CHUNK):
            chunk = list(tokens[start:start + PREFILL_CHUNK])
            self.last_rows, self.last_kept = len(chunk), 0
            part = Part(self.region, chunk, torch.arange(len(chunk)), None, head=False)
            self.batcher.run(self, part)
            self.commit_all()
            self._hidden.append(part.hidden)

    def forward(self, tokens: Sequence[int], depths: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        from .target import Part

        self.last_rows = len(tokens)
        part = Part(self.region, list(tokens), depths, mask, head=True)
        logits = self.batcher.run(self, part)
        self._hidden = [part.hidden]
        return logits

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.owner.embed(ids)

    def head_rows(self, ids: torch.Tensor) -> torch.Tensor:
        return self.owner.head_rows(ids)

    def linear(self, weight: torch.Tensor, dtype: str | None = None):
        return self.owner.linear(weight, dtype)

    def hidden(self) -> torch.Tensor:
        return self.owner.final_norm(self._hidden)

    def commit(self, keep: Sequence[int]) -> None:
        self.owner.commit_region(self.region, keep)
        self.last_kept = len(keep)  # the step's new tokens: accepted + bonus

    def commit_all(self) -> None:
        self.region.length += self.region.guard.done()

    def trim(self, length: int) -> None:
        self.region.guard.check("trimming")
        check_trim(length, self.region.length)
        self.region.length = length

    def draft_cap(self) -> int:
        """The most draft nodes a step may carry now (the pass's rows shared by the open sequences)."""
        return self.batcher.draft_cap()

    def decoding(self) -> AbstractContextManager:
        return self.owner.decoding()

    def shared_load(self) -> tuple[int, int]:
        return self.batcher.load_besides(self)
