"""A KV cache for several rows that continue one prompt: the prompt is stored once.

Beam search and batched sampling run B rows that all start with the same prompt. Copying the
prompt's keys and values into each row costs B times the prompt's cache; here each layer keeps

    prefix:  [1, heads, P, head_dim]   the prompt, written once by the prefill
    suffix:  [B, heads, T, head_dim]   the tokens each row generated since

and hands the attention `cat(prefix.expand(B), suffix)`: the expand is a view, so the only
B-sized copy of the prompt is a temporary inside one layer's forward pass, freed before the
next layer runs. Reordering rows (beam search's parent selection) touches the suffix only.

    rows = SharedPrefix(model)
    logits = rows.prefill(prompt_ids)          # [vocab], after the last prompt token
    rows.select(torch.tensor([0, 0, 0, 0]))    # 4 rows, each a child of the prompt
    logits = rows.step(torch.tensor([a, b, c, d]))  # [4, vocab]
    rows.select(parents)                       # keep / duplicate rows, e.g. [0, 0, 2, 1]

The cache plugs into transformers through its public `Cache` / `CacheLayerMixin` API; the
model's files are used as they are.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

PREFILL_CHUNK = 512


class SharedPrefixLayer(CacheLayerMixin):
    """One layer: a batch-1 prefix shared by all rows, plus per-row suffixes."""

    is_compileable = False
    is_croppable = False

    def __init__(self, sliding: bool = False):
        super().__init__()
        self.is_sliding = sliding  # the mask builder applies the window; all keys are kept
        self.prefix_keys: torch.Tensor | None = None  # [1 or B, heads, P, head_dim]
        self.prefix_values: torch.Tensor | None = None
        self.keys: torch.Tensor | None = None  # suffix buffer [B, heads, capacity, head_dim]
        self.values: torch.Tensor | None = None
        self.suffix_len = 0
        self.copy_prefix = False

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    @property
    def prefix_len(self) -> int:
        return 0 if self.prefix_keys is None else self.prefix_keys.shape[-2]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        """Append [rows, heads, n, head_dim] states; return all keys and values of each row."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self.keys is None:  # still prefilling the prompt
            self.prefix_keys = _append(self.prefix_keys, key_states)
            self.prefix_values = _append(self.prefix_values, value_states)
            return self.prefix_keys, self.prefix_values
        n = key_states.shape[-2]
        if self.suffix_len + n > self.keys.shape[-2]:
            self._grow(self.suffix_len + n)
        end = self.suffix_len + n
        self.keys[:, :, self.suffix_len : end] = key_states
        self.values[:, :, self.suffix_len : end] = value_states
        self.suffix_len = end
        rows = key_states.shape[0]
        keys = torch.cat([self.prefix_keys.expand(rows, -1, -1, -1), self.keys[:, :, :end]], dim=-2)
        values = torch.cat([self.prefix_values.expand(rows, -1, -1, -1), self.values[:, :, :end]], dim=-2)
        return keys, values

    def start_rows(self, capacity: int, copy_prefix: bool = False) -> None:
        """End the prefill: one row with an empty suffix of room `capacity` (it grows if needed).
        copy_prefix gives every row its own copy of the prefix instead (the baseline that
        memory measurements compare against)."""
        heads, dim = self.prefix_keys.shape[1], self.prefix_keys.shape[-1]
        shape = (1, heads, max(capacity, 1), dim)
        self.keys = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.values = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.suffix_len = 0
        self.copy_prefix = copy_prefix

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Rows become the suffixes of rows `beam_idx` (any length: rows may fan out)."""
        index = beam_idx.to(self.keys.device)
        self.keys = self.keys.index_select(0, index)
        self.values = self.values.index_select(0, index)
        if self.copy_prefix:
            self.prefix_keys = self.prefix_keys.index_select(0, index)
            self.prefix_values = self.prefix_values.index_select(0, index)

    def _grow(self, needed: int) -> None:
        extra = max(needed, 2 * self.keys.shape[-2]) - self.keys.shape[-2]
        pad = (*self.keys.shape[:2], extra, self.keys.shape[-1])
        self.keys = torch.cat([self.keys, self.keys.new_zeros(pad)], dim=-2)
        self.values = torch.cat([self.values, self.values.new_zeros(pad)], dim=-2)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_seq_length(self) -> int:
        return self.prefix_len + self.suffix_len

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.__init__(self.is_sliding)

    def nbytes(self) -> int:
        """Bytes held: the prefix plus the used part of the suffixes."""
        tensors = [t for t in (self.prefix_keys, self.prefix_values) if t is not None]
        held = sum(t.numel() * t.element_size() for t in tensors)
        if self.keys is not None:
            held += 2 * self.keys[:, :, : self.suffix_len].numel() * self.keys.element_size()
        return held


def _append(old: torch.Tensor | None, new: torch.Tensor) -> torch.Tensor:
    return new if old is None else torch.cat([old, new], dim=-2)


class SharedPrefixCache(Cache):
    """One SharedPrefixLayer per decoder layer (sliding-window layers keep the flag so that
    transformers builds their windowed mask)."""

    def __init__(self, config: Any):
        config = config.get_text_config() if hasattr(config, "get_text_config") else config
        n_layers = config.num_hidden_layers
        kinds = getattr(config, "layer_types", None) or ["full_attention"] * n_layers
        super().__init__(layers=[SharedPrefixLayer(kind == "sliding_attention") for kind in kinds])

    def start_rows(self, capacity: int, copy_prefix: bool = False) -> None:
        for layer in self.layers:
            layer.start_rows(capacity, copy_prefix)

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers)


class SharedPrefix:
    """Rows of a transformers causal LM that all continue one prompt (see the module doc)."""

    def __init__(self, model: Any, copy_prefix: bool = False):
        self.model = model
        self.device = next(model.parameters()).device
        self.copy_prefix = copy_prefix  # one prefix copy per row: a baseline for memory measurements
        self.cache = SharedPrefixCache(model.config)
        self.rows = 0
        self.length = 0  # tokens per row: prompt + generated

    @torch.inference_mode()
    def prefill(self, prompt_ids: Sequence[int], capacity: int = 64) -> torch.Tensor:
        """Run the prompt once; return float logits [vocab] for the token after it. The cache then
        holds one row (the prompt); `select` fans it out."""
        logits = None
        for start in range(0, len(prompt_ids), PREFILL_CHUNK):
            chunk = torch.tensor([list(prompt_ids[start : start + PREFILL_CHUNK])], device=self.device)
            positions = torch.arange(start, start + chunk.shape[1], device=self.device)[None]
            out = self.model(input_ids=chunk, position_ids=positions, cache=self.cache,
                             use_cache=True, logits_to_keep=1)
            logits = out.logits[0, -1]
        self.length, self.rows = len(prompt_ids), 1
        self.cache.start_rows(capacity, self.copy_prefix)
        return logits.float()

    def select(self, parents: torch.Tensor) -> None:
        """Row i becomes a copy of row parents[i]; len(parents) is the new number of rows."""
        self.cache.reorder_cache(parents)
        self.rows = len(parents)

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row ([rows] ids); return float logits [rows, vocab]."""
        ids = tokens.to(self.device).view(self.rows, 1)
        positions = torch.full((self.rows, 1), self.length, device=self.device)
        out = self.model(input_ids=ids, position_ids=positions, cache=self.cache, use_cache=True)
        self.length += 1
        return out.logits[:, -1].float()

    @torch.inference_mode()
    def step_embeds(self, embeds: torch.Tensor) -> torch.Tensor:
        """Feed one input embedding per row ([rows, hidden]); return float logits [rows, vocab]."""
        positions = torch.full((self.rows, 1), self.length, device=self.device)
        out = self.model(inputs_embeds=embeds[:, None].to(self.device), position_ids=positions,
                         cache=self.cache, use_cache=True)
        self.length += 1
        return out.logits[:, -1].float()
