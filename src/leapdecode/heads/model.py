"""Trained draft heads over the target's own features: EAGLE-style and Medusa.

Notation: token x_t sits at position t; f_t is the target's final hidden state there, after the
final norm (the LM head's input, so the target's next-token logits are W f_t with W its LM head).

- **EAGLE head** (Li et al., arXiv 2401.15077, 2406.16858, 2503.01840): one decoder layer that reads
  u_p = fc([f_{p-1}; e(x_p)]) (the feature before position p and the embedding of the token at p),
  attends causally over the earlier positions' entries, and predicts g_p ~ f_p. Its logits come
  from rows of the target's own LM head (a draft vocabulary: the tokens the target emits most),
  so the head ships only its layer. Drafting one level deeper feeds g_p back in place of f_p.
- **Medusa heads** (Cai et al., arXiv 2401.10774): head k (k = 1..K) maps f_t through one residual
  SiLU block to g ~ the feature that predicts x_{t+1+k}: the target's own row predicts x_{t+1},
  head k guesses k tokens past it, all from the same f_t.

Both run in float32 torch on any device. `HeadFile` is what ships: weights, the draft vocabulary,
and the model they were trained for.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

KINDS = ("eagle", "medusa")


@dataclass
class HeadConfig:
    kind: str  # "eagle" | "medusa"
    model: str  # the target it was trained for (a packaged name or a directory)
    vocab_size: int  # the target's vocabulary
    hidden: int
    heads: int = 0  # eagle: the decoder layer's attention heads
    kv_heads: int = 0
    head_dim: int = 0
    inter: int = 0  # eagle: the MLP's width
    eps: float = 1e-5
    rope_theta: float = 10000.0
    medusa_heads: int = 0  # medusa: K
    draft_vocab: int = 0  # rows of the target's LM head the head's logits use
    trained: dict[str, Any] = field(default_factory=dict)  # how: command, data, steps, figures


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """x: [..., n, d] rotated by positions [n] (the rotate-half convention of Llama)."""
    d = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d)
    angles = positions.to(torch.float32)[:, None] * inv[None]  # [n, d/2]
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    half = d // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
    return x * cos + rotated * sin


def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
    """Grouped-query attention: q [..., heads, n, d] over keys/values [..., kv_heads, m, d] with
    allowed [n, m] (None = all) -> [..., heads, n, d]. Drafting's few queries (no batch dims) take
    three plain matrix products, which cost a fraction of the fused kernel's call on one thread;
    training's long batched sequences take the fused kernel."""
    if q.dim() > 3:
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed, enable_gqa=q.shape[-3] != keys.shape[-3])
    heads, n, d = q.shape
    kv = keys.shape[0]
    scores = q.reshape(kv, heads // kv * n, d) @ keys.transpose(1, 2) * d ** -0.5  # [kv, group * n, m]
    if allowed is not None:
        scores = scores.masked_fill(~allowed.repeat(heads // kv, 1), float("-inf"))
    return (torch.softmax(scores, -1) @ values).reshape(heads, n, d)


class EagleHead(nn.Module):
    """fc + one pre-norm decoder layer (GQA attention with rope, SiLU-gated MLP); q/k/v and
    gate/up fused, so a draft level costs six linear layers and the logits."""

    def __init__(self, cfg: HeadConfig):
        super().__init__()
        self.cfg = cfg
        h, d = cfg.hidden, cfg.head_dim
        self.fc = nn.Linear(2 * h, h, bias=False)
        self.attn_norm = nn.Parameter(torch.ones(h))
        self.qkv = nn.Linear(h, (cfg.heads + 2 * cfg.kv_heads) * d, bias=False)  # q | k | v
        self.o = nn.Linear(cfg.heads * d, h, bias=False)
        self.mlp_norm = nn.Parameter(torch.ones(h))
        self.gate_up = nn.Linear(h, 2 * cfg.inter, bias=False)
        self.down = nn.Linear(cfg.inter, h, bias=False)
        self.out_norm = nn.Parameter(torch.ones(h))

    def entries(self, feats: torch.Tensor, embeds: torch.Tensor, positions: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """For inputs [..., n, h]: (residual u, q, k, v) with q [..., heads, n, d], k/v [..., kv, n, d]."""
        cfg = self.cfg
        u = self.fc(torch.cat([feats, embeds], -1))
        x = rms_norm(u, self.attn_norm, cfg.eps)
        shape, d = x.shape[:-1], cfg.head_dim
        q, k, v = self.qkv(x).split([cfg.heads * d, cfg.kv_heads * d, cfg.kv_heads * d], -1)
        q = q.reshape(*shape, cfg.heads, d).transpose(-2, -3)
        k = k.reshape(*shape, cfg.kv_heads, d).transpose(-2, -3)
        v = v.reshape(*shape, cfg.kv_heads, d).transpose(-2, -3)
        return u, rope(q, positions, cfg.rope_theta), rope(k, positions, cfg.rope_theta), v

    def finish(self, u: torch.Tensor, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
               allowed: torch.Tensor | None) -> torch.Tensor:
        """Attention of q over keys/values (allowed: [n, m] bool, None = all), then the MLP: g [..., n, h]."""
        cfg = self.cfg
        att = attend(q, keys, values, allowed).transpose(-2, -3).reshape(*u.shape[:-1], cfg.heads * cfg.head_dim)
        u = u + self.o(att)
        gate, up = self.gate_up(rms_norm(u, self.mlp_norm, cfg.eps)).chunk(2, -1)
        u = u + self.down(F.silu(gate) * up)
        return rms_norm(u, self.out_norm, cfg.eps)


class MedusaHeads(nn.Module):
    """K residual SiLU blocks over f_t; block k's output stands in for f_{t+k}."""

    def __init__(self, cfg: HeadConfig):
        super().__init__()
        self.cfg = cfg
        self.blocks = nn.ModuleList(nn.Linear(cfg.hidden, cfg.hidden) for _ in range(cfg.medusa_heads))
        for block in self.blocks:  # start as the identity: head k first guesses the next token again
            nn.init.zeros_(block.weight)
            nn.init.zeros_(block.bias)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """feats [..., h] -> [K, ..., h]."""
        return torch.stack([feats + F.silu(block(feats)) for block in self.blocks])


def make_head(cfg: HeadConfig) -> nn.Module:
    if cfg.kind not in KINDS:
        raise ValueError(f"unknown head kind {cfg.kind!r}; choose one of: {', '.join(KINDS)}")
    return EagleHead(cfg) if cfg.kind == "eagle" else MedusaHeads(cfg)


@dataclass
class HeadFile:
    """A trained head: config, weights, and the draft vocabulary (token ids into the target's)."""

    config: HeadConfig
    state: dict[str, torch.Tensor]
    vocab: torch.Tensor  # [draft_vocab] int64

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        tensors = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in self.state.items()}
        tensors["draft_vocab"] = self.vocab.to(torch.int32).contiguous()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata={"leapdecode_head": json.dumps(asdict(self.config))})
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "HeadFile":
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise ValueError(f"head file {path} does not exist; train one with `leapdecode train-head`")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = (f.metadata() or {}).get("leapdecode_head")
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            config = HeadConfig(**json.loads(meta))
            vocab = tensors.pop("draft_vocab").long()
            state = {k: v.float() for k, v in tensors.items()}
            make_head(config).load_state_dict(state)  # every weight there, with its shape
        except Exception as err:  # noqa: BLE001 (a corrupt or foreign file: any parse error)
            raise ValueError(f"head file {path} is corrupt or not a leapdecode head ({type(err).__name__}: "
                             f"{str(err).splitlines()[0][:120] if str(err) else ''}); train it again with "
                             f"`leapdecode train-head`") from None
        return cls(config, state, vocab)

    def check_target(self, vocab_size: int, hidden: int, name: str) -> None:
        """A one-line error when the head was trained for another model."""
        cfg = self.config
        if cfg.vocab_size != vocab_size or cfg.hidden != hidden:
            raise ValueError(
                f"this {cfg.kind} head was trained for {cfg.model} (vocabulary {cfg.vocab_size}, hidden size "
                f"{cfg.hidden}), not for {name} (vocabulary {vocab_size}, hidden size {hidden}); train one for "
                f"it with `leapdecode train-head --model {name} --kind {cfg.kind}`")

    def module(self, device: str | torch.device = "cpu") -> nn.Module:
        head = make_head(self.config)
        head.load_state_dict(self.state)
        return head.to(device).eval()


SHIPPED = Path(__file__).parent / "shipped"


def shipped_head(model: str, kind: str) -> Path | None:
    """The head shipped in the package for a packaged model, if any."""
    path = SHIPPED / f"{Path(model).name}-{kind}.safetensors"
    return path if path.is_file() else None


def param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


