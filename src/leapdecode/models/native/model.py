"""Llama / Qwen2 / Gemma3 weights from a transformers directory, fused (qkv, gate|up) into native formats."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from .ops import Weight, make_weight

SUPPORTED = {"LlamaForCausalLM": "Llama", "Qwen2ForCausalLM": "Qwen2", "Gemma3ForCausalLM": "Gemma3"}


def unsupported_reason(directory: Path) -> str | None:
    config_path = Path(directory) / "config.json"
    if not config_path.exists():
        return f"{directory} has no config.json"
    cfg = json.loads(config_path.read_text())
    arch = (cfg.get("architectures") or ["unknown"])[0]
    if arch not in SUPPORTED:
        return f"architecture {arch} is not supported by the native runtime ({', '.join(SUPPORTED.values())}); use --backend hf"
    heads = cfg.get("num_attention_heads") or 1
    head_dim = cfg.get("head_dim") or (cfg.get("hidden_size") or 0) // heads
    if head_dim % 8:  # attention's vectors (csrc/kernels.c)
        return (f"the native runtime needs a head size that is a multiple of 8, this model's is {head_dim}; "
                "use --backend hf")
    return None


@dataclass
class Layer:
    attn_norm: torch.Tensor  # [hidden]
    qkv: Weight  # [(heads + 2 kv_heads) * head_dim, hidden]
    o: Weight  # [hidden, heads * head_dim]
    mlp_norm: torch.Tensor  # [hidden]
    gate_up: Weight  # [2 * intermediate, hidden]
    down: Weight  # [hidden, intermediate]
    post_attn_norm: torch.Tensor | None = None  # Gemma3: norms after attention and after the MLP
    post_mlp_norm: torch.Tensor | None = None
    q_norm: torch.Tensor | None = None  # Gemma3: per-head norms of q and k [head_dim]
    k_norm: torch.Tensor | None = None
    window: int = 0  # sliding-window attention over this many positions (0 = global)
    rope_theta: float | None = None  # this layer's rope base, if not the model's


@dataclass
class Model:
    config: dict
    embed: torch.Tensor  # [vocab, hidden] float32 (lookup is an exact copy)
    layers: list[Layer]
    norm: torch.Tensor  # [hidden]
    head: Weight  # [vocab, hidden]
    heads: int
    kv_heads: int
    head_dim: int
    eps: float
    rope_theta: float
    n_params: int
    act: int = 0  # 0 silu, 1 gelu-tanh
    norm_offset: float = 0.0  # Gemma's norms scale by (1 + w)
    attn_scale: float | None = None  # default head_dim ** -0.5
    embed_scale: float = 1.0  # Gemma multiplies the embeddings by sqrt(hidden)

    def linears(self) -> list[Weight]:
        """Every linear layer's weight in the order a pass reads them: each layer's qkv, o, gate_up
        and down, then the head."""
        return [w for layer in self.layers for w in (layer.qkv, layer.o, layer.gate_up, layer.down)] + [self.head]


def _tensors(directory: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(Path(directory).glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    return tensors


def load_model(directory: Path, fmt: str) -> Model:
    cfg = json.loads((Path(directory) / "config.json").read_text())
    gemma = cfg["architectures"][0] == "Gemma3ForCausalLM"
    t = _tensors(directory)
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    rope = cfg.get("rope_parameters") or {}
    theta = float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    if gemma:  # one rope base per layer type
        theta = float(rope.get("full_attention", {}).get("rope_theta", cfg.get("rope_theta", 1e6)))
        local = float(rope.get("sliding_attention", {}).get("rope_theta", cfg.get("rope_local_base_freq", 1e4)))
        types = cfg.get("layer_types") or [
            "full_attention" if (i + 1) % cfg.get("_sliding_window_pattern", 6) == 0 else "sliding_attention"
            for i in range(cfg["num_hidden_layers"])]

    def norm(name: str) -> torch.Tensor:
        return t[name].float().contiguous()

    layers = []
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        qkv = torch.cat([t[p + f"self_attn.{x}_proj.weight"] for x in "qkv"])
        bias = None
        if p + "self_attn.q_proj.bias" in t:  # Qwen2
            bias = torch.cat([t[p + f"self_attn.{x}_proj.bias"] for x in "qkv"])
        gate_up = torch.cat([t[p + "mlp.gate_proj.weight"], t[p + "mlp.up_proj.weight"]])
        layer = Layer(norm(p + "input_layernorm.weight"), make_weight(qkv, fmt, bias),
                      make_weight(t[p + "self_attn.o_proj.weight"], fmt),
                      norm(p + ("pre_feedforward_layernorm" if gemma else "post_attention_layernorm") + ".weight"),
                      make_weight(gate_up, fmt), make_weight(t[p + "mlp.down_proj.weight"], fmt))
        if gemma:  # norms after attention and after the MLP, per-head q/k norms, local layers
            layer.post_attn_norm = norm(p + "post_attention_layernorm.weight")
            layer.post_mlp_norm = norm(p + "post_feedforward_layernorm.weight")
            layer.q_norm, layer.k_norm = norm(p + "self_attn.q_norm.weight"), norm(p + "self_attn.k_norm.weight")
            if types[i] == "sliding_attention":
                layer.window, layer.rope_theta = int(cfg["sliding_window"]), local
            else:
                layer.rope_theta = theta
        layers.append(layer)
    embed = t["model.embed_tokens.weight"].float().contiguous()
    head = t.get("lm_head.weight", embed)
    n_params = sum(v.numel() for k, v in t.items() if k != "lm_head.weight" or "lm_head.weight" in t)
    model = Model(cfg, embed, layers, norm("model.norm.weight"), make_weight(head, fmt),
                  heads, kv_heads, head_dim, float(cfg["rms_norm_eps"]), theta, n_params)
    if gemma:
        model.act, model.norm_offset = 1, 1.0  # gelu-tanh; norms scale by (1 + w)
        model.attn_scale = float(cfg["query_pre_attn_scalar"]) ** -0.5
        model.embed_scale = float(cfg["hidden_size"]) ** 0.5
    return model
