"""`leapdecode train-head`: self-distillation of a draft head from the target's own outputs.

    1. prompts (heads/corpus.py) -> the target's own continuations (greedy, and a share sampled),
       batched through transformers' generate; passages it writes first become prompts to work on;
    2. one teacher-forced pass per sequence keeps the target's final hidden states f (after the
       final norm, what its LM head reads) at every position;
    3. the head trains on (f, tokens): its logits over the draft vocabulary against the target's own
       distribution there (soft cross-entropy), plus a smooth-L1 pull of its feature towards f. The
       EAGLE head is trained over `unroll` steps in which deeper steps read the head's own earlier
       outputs instead of f, with the attention pattern drafting has (EAGLE-3's training-time test,
       arXiv 2503.01840), so a deep draft node sees in training what it sees when drafting.

Everything lands in --out: data.pt (stages 1-2, reused when present), ckpt.pt (resumed from),
head.safetensors, curve.png and log.json. Runs on CUDA or the CPU (a tiny setting runs in the tests).
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from . import corpus
from .model import EagleHead, HeadConfig, HeadFile, MedusaHeads, make_head, param_count


def _progress(total: int, desc: str, quiet: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="seq" if "generat" in desc else "step", disable=quiet,
                file=sys.stderr, dynamic_ncols=True)


def load_hf(model: str, device: str):
    """The target as transformers runs it (float32: the features drafting reads are float32 too)."""
    from ..models.registry import load_model

    hf, tokenizer = load_model(model, "float32", device)
    if not hasattr(getattr(hf, "model", None), "norm"):
        raise ValueError(f"train-head reads the final norm's output of {model} (model.model.norm), which this "
                         f"architecture ({type(hf).__name__}) does not have; train on a Llama, Qwen2 or Gemma3 model")
    return hf.eval(), tokenizer


@torch.inference_mode()
def generate(hf: Any, tokenizer: Any, prompts: list[str | list[dict]], max_new_tokens: int, batch: int, sample_share: float,
             seed: int, quiet: bool, desc: str) -> list[tuple[list[int], int]]:
    """(prompt + continuation ids, prompt length) per prompt (a user turn, or the messages of a
    conversation), the target's own continuation."""
    device = next(hf.parameters()).device
    rng = random.Random(seed)
    encoded = [tokenizer.apply_chat_template(p if isinstance(p, list) else [{"role": "user", "content": p}],
                                             add_generation_prompt=True, tokenize=True) for p in prompts]
    encoded = [list(e if isinstance(e, list) else e["input_ids"]) for e in encoded]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    eos = set(hf.generation_config.eos_token_id if isinstance(hf.generation_config.eos_token_id, list)
              else [hf.generation_config.eos_token_id])
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # similar lengths pad less
    results: dict[int, tuple[list[int], int]] = {}
    bar = _progress(len(encoded), desc, quiet)
    for start in range(0, len(order), batch):
        idx = order[start:start + batch]
        width = max(len(encoded[i]) for i in idx)
        ids = torch.tensor([[pad] * (width - len(encoded[i])) + encoded[i] for i in idx], device=device)
        mask = torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in idx], device=device)
        sampled = rng.random() < sample_share
        torch.manual_seed(rng.randrange(2**31))
        gen = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=sampled,
                          temperature=0.8 if sampled else None, top_p=0.95 if sampled else None, top_k=None,
                          pad_token_id=pad)
        for row, i in enumerate(idx):
            new = gen[row, width:].tolist()
            for j, t in enumerate(new):
                if t in eos:
                    new = new[:j + 1]
                    break
            results[i] = (encoded[i] + new, len(encoded[i]))
        bar.update(len(idx))
    bar.close()
    return [results[i] for i in range(len(encoded))]


@torch.inference_mode()
def features(hf: Any, sequences: list[list[int]], batch: int, quiet: bool) -> list[torch.Tensor]:
    """f [len, hidden] (bf16, on the CPU) per sequence: the final norm's output, teacher-forced."""
    device = next(hf.parameters()).device
    captured: list[torch.Tensor] = []
    hook = hf.model.norm.register_forward_hook(lambda mod, inp, out: captured.append(out))
    feats: list[torch.Tensor] = [None] * len(sequences)  # type: ignore[list-item]
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    bar = _progress(len(sequences), "target features", quiet)
    try:
        for start in range(0, len(order), batch):
            idx = order[start:start + batch]
            width = max(len(sequences[i]) for i in idx)
            ids = torch.tensor([sequences[i] + [0] * (width - len(sequences[i])) for i in idx], device=device)
            mask = torch.tensor([[1] * len(sequences[i]) + [0] * (width - len(sequences[i])) for i in idx],
                                device=device)
            captured.clear()
            hf.model(input_ids=ids, attention_mask=mask)
            f = captured[-1]
            for row, i in enumerate(idx):
                feats[i] = f[row, :len(sequences[i])].to(torch.bfloat16).cpu()
            bar.update(len(idx))
    finally:
        hook.remove()
        bar.close()
    return feats


def build_data(model: str, out: Path, n_prompts: int, n_passages: int, max_new_tokens: int, batch: int,
               device: str, sample_share: float, seed: int, quiet: bool) -> dict:
    """Stages 1-2 (see the module docstring), cached in out/data.pt. On CUDA through transformers'
    generate; on the CPU through leapdecode's own runtime (bfloat16, `batch` sequences a pass, the
    `auto` drafter: its greedy output is the runtime's plain greedy output), whose features are then
    exactly the ones drafting reads."""
    path = out / "data.pt"
    if path.exists():
        return torch.load(path, weights_only=False)
    make = _native_data if device == "cpu" else _hf_data
    stages = make(model, n_prompts, n_passages, max_new_tokens, batch, device, sample_share, seed, quiet)
    data = {**stages, **_target_weights(model)}
    out.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return data


def _prompts(run: Any, decode: Any, n_prompts: int, n_passages: int, seed: int) -> list[tuple[list[int], int]]:
    """The generation stages over `run(prompts, desc, may_sample)`: the corpus's prompts; then, with
    passages, (a) passages the target writes and a task on each, (b) questions it asks itself and
    its answers, (c) a second turn after some first answers."""
    first = list(dict.fromkeys(corpus.prompts(n_prompts, seed)))  # each distinct prompt once
    answers = run(first, "generating answers", True)
    seqs = list(answers)
    if n_passages:
        seeds = run(corpus.passage_seeds(n_passages, seed + 1), "generating passages", False)
        seqs += run(corpus.passage_prompts([decode(s[p:]) for s, p in seeds], seed + 2),
                    "generating answers on passages", True)
        asked = run(corpus.question_seeds(n_passages, seed + 3), "generating questions", False)
        questions = [q for q in (decode(s[p:]).strip() for s, p in asked) if len(q) > 10]
        seqs += run(questions, "generating answers to its questions", True)
        pairs = [(prompt, decode(s[p:])) for prompt, (s, p) in zip(first, answers)][:n_passages]
        seqs += run(corpus.follow_ups(pairs, seed + 4), "generating second turns", True)
    return [(s, p) for s, p in seqs if len(s) > p + 1]


def _hf_data(model: str, n_prompts: int, n_passages: int, max_new_tokens: int, batch: int, device: str,
             sample_share: float, seed: int, quiet: bool) -> dict:
    hf, tokenizer = load_hf(model, device)

    def run(prompts: list[Any], desc: str, sampled: bool) -> list[tuple[list[int], int]]:
        return generate(hf, tokenizer, prompts, max_new_tokens, batch, sample_share if sampled else 0.0, seed,
                        quiet, desc)

    seqs = _prompts(run, lambda ids: tokenizer.decode(ids, skip_special_tokens=True), n_prompts, n_passages, seed)
    sequences = [s for s, _ in seqs]
    return {"sequences": sequences, "prompt_lens": [p for _, p in seqs], "features": features(hf, sequences, batch, quiet)}


def _native_data(model: str, n_prompts: int, n_passages: int, max_new_tokens: int, batch: int, device: str,
                 sample_share: float, seed: int, quiet: bool) -> dict:
    from .. import load
    from ..config import GenerationConfig

    engine = load(model, "bfloat16", backend="native", batch=batch)
    rng = random.Random(seed)

    def run(prompts: list[Any], desc: str, sampled: bool) -> list[tuple[list[int], int]]:
        results: list[tuple[list[int], int]] = []
        bar = _progress(len(prompts), desc, quiet)
        for start in range(0, len(prompts), batch):
            chunk = prompts[start:start + batch]
            hot = sampled and rng.random() < sample_share
            config = GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.8 if hot else 0.0, top_p=0.95,
                                      seed=rng.randrange(2**31) if hot else None)
            for prompt, gen in zip(chunk, engine.generate_many(chunk, config, "auto" if not hot else "none")):
                ids = engine.encode(prompt)
                results.append((ids + gen.token_ids, len(ids)))
            bar.update(len(chunk))
        bar.close()
        return results

    decode = lambda ids: engine.tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    seqs = _prompts(run, decode, n_prompts, n_passages, seed)
    target = engine.target
    feats = []
    bar = _progress(len(seqs), "target features", quiet)
    with target.decoding():
        for s, _ in seqs:  # a prefill of the whole sequence: every position's feature
            target.reset()
            target.prefill(s)
            feats.append(target.hidden().to(torch.bfloat16))
            bar.update(1)
    bar.close()
    return {"sequences": [s for s, _ in seqs], "prompt_lens": [p for _, p in seqs], "features": feats}


def _target_weights(model: str) -> dict:
    """What the head reads of the target: embeddings, LM head, final norm, last layer, config."""
    from safetensors.torch import load_file

    from ..models.registry import resolve

    directory = resolve(model)
    cfg = json.loads((directory / "config.json").read_text())
    t: dict[str, torch.Tensor] = {}
    for file in sorted(directory.glob("*.safetensors")):
        t.update(load_file(str(file)))
    gemma = "Gemma" in cfg["architectures"][0]
    embed = t["model.embed_tokens.weight"].float()
    layers = cfg["num_hidden_layers"]
    prefix = f"model.layers.{layers - 1}."
    rope = cfg.get("rope_parameters") or {}
    return {
        "embed": embed * (cfg["hidden_size"] ** 0.5 if gemma else 1.0),
        "lm_head": t.get("lm_head.weight", t["model.embed_tokens.weight"]).float(),
        "final_norm": t["model.norm.weight"].float(),
        "last_layer": {k[len(prefix):]: v.float() for k, v in t.items() if k.startswith(prefix)},
        "config": {"vocab_size": embed.shape[0], "hidden": cfg["hidden_size"], "heads": cfg["num_attention_heads"],
                   "kv_heads": cfg["num_key_value_heads"],
                   "head_dim": cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"],
                   "inter": cfg["intermediate_size"], "eps": float(cfg["rms_norm_eps"]),
                   "rope_theta": float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0)))},
        "norm_offset": 1.0 if gemma else 0.0,
    }


def draft_vocab(sequences: list[list[int]], size: int, vocab_size: int) -> torch.Tensor:
    """The `size` tokens the target emits most often in its own continuations, ascending ids."""
    counts = torch.zeros(vocab_size, dtype=torch.long)
    for s in sequences:
        counts += torch.bincount(torch.tensor(s), minlength=vocab_size)[:vocab_size]
    size = min(size, vocab_size)
    return counts.topk(size).indices.sort().values


def _init_from_target(head: EagleHead, data: dict) -> None:
    """Start the head's layer as a copy of the target's last decoder layer (same shapes)."""
    last, cfg = data["last_layer"], head.cfg
    offset = data["norm_offset"]
    with torch.no_grad():
        qkv = [last.get(f"self_attn.{x}_proj.weight") for x in "qkv"]
        if all(w is not None for w in qkv):
            head.qkv.weight.copy_(torch.cat(qkv))
        for name, param in {"self_attn.o_proj.weight": head.o.weight, "mlp.down_proj.weight": head.down.weight}.items():
            if name in last and last[name].shape == param.shape:
                param.copy_(last[name])
        if "mlp.gate_proj.weight" in last:
            head.gate_up.weight.copy_(torch.cat([last["mlp.gate_proj.weight"], last["mlp.up_proj.weight"]]))
        for name, param in (("input_layernorm.weight", head.attn_norm),
                            ("post_attention_layernorm.weight", head.mlp_norm)):
            if name in last and "pre_feedforward_layernorm.weight" not in last:
                param.copy_(last[name] + offset)
        head.out_norm.copy_(data["final_norm"] + offset)
        h = cfg.hidden  # u starts as the feature itself: the layer first refines f
        head.fc.weight.zero_()
        head.fc.weight[:, :h].copy_(torch.eye(h))
        head.fc.weight[:, h:].normal_(0, 0.02)


def _batch(data: dict, idx: list[int], max_len: int, device: str) -> tuple[torch.Tensor, ...]:
    """tokens [B, T], features [B, T, h], valid [B, T] and prompt lengths [B] of the sequences idx
    (cut to max_len; a prompt length of 0 where data.pt predates them)."""
    seqs = [data["sequences"][i][:max_len] for i in idx]
    width = max(len(s) for s in seqs)
    tokens = torch.zeros(len(seqs), width, dtype=torch.long)
    feats = torch.zeros(len(seqs), width, data["config"]["hidden"])
    valid = torch.zeros(len(seqs), width, dtype=torch.bool)
    for row, (i, s) in enumerate(zip(idx, seqs)):
        tokens[row, :len(s)] = torch.tensor(s)
        feats[row, :len(s)] = data["features"][i][:len(s)].float()
        valid[row, :len(s)] = True
    lens = data.get("prompt_lens") or [0] * len(data["sequences"])
    prompt = torch.tensor([lens[i] for i in idx])
    return tokens.to(device), feats.to(device), valid.to(device), prompt.to(device)


def _soft_ce(logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    return -(torch.softmax(target_logits, -1) * torch.log_softmax(logits, -1)).sum(-1)


def eagle_loss(head: EagleHead, embed: torch.Tensor, rows: torch.Tensor, tokens: torch.Tensor,
               feats: torch.Tensor, valid: torch.Tensor, prompt: torch.Tensor, unroll: int
               ) -> tuple[torch.Tensor, list[float]]:
    """Loss over `unroll` steps and each step's top-1 agreement with the target (acceptance proxy):
    the loss over every position, the agreement over the answers' (a prompt's system text is easy
    to guess and is never drafted).

    Entry i (position i + 1) reads (f_i, e(x_{i+1})) at step 0; at step s it reads the step s-1
    output of entry i - 1 and attends to step-0 entries <= i - s and its own chain's entries at
    steps 1..s (i - s + t at step t): what a depth s + 1 draft node sees. It predicts f_{i+1}.
    """
    B, T, h = feats.shape
    n = T - 1
    e = embed[tokens[:, 1:]]  # [B, n, h]
    target = feats[:, 1:]  # f_{i+1}
    ok = valid[:, 1:]  # entry i exists and its target is real
    answer = ok & (torch.arange(n, device=feats.device)[None] + 2 >= prompt[:, None])  # it guesses x_{i+2}
    target_logits = target @ rows.T
    positions = torch.arange(1, T, device=feats.device)
    i = torch.arange(n, device=feats.device)
    keys, values, losses, agree = [], [], [], []
    prev = feats[:, :-1]  # step 0 reads the true features
    total = feats.new_zeros(())
    for s in range(unroll):
        if s:
            prev = torch.cat([torch.zeros_like(g[:, :1]), g[:, :-1]], 1)  # g^{s-1} of entry i - 1
        u, q, k, v = head.entries(prev, e, positions)
        keys.append(k)
        values.append(v)
        allowed = [(i[None, :] <= i[:, None] - s)]  # step 0 block
        for t in range(1, s + 1):
            allowed.append(i[None, :] == i[:, None] - s + t)
        allowed = torch.cat(allowed, 1)
        g = head.finish(u, q, torch.cat(keys, 2), torch.cat(values, 2), allowed)
        rows_ok = ok & (i >= s)[None]
        logits = g @ rows.T
        ce = _soft_ce(logits, target_logits)[rows_ok].mean()
        reg = F.smooth_l1_loss(g[rows_ok], target[rows_ok])
        total = total + (0.8 ** s) * (ce + reg)
        agree.append(float((logits.argmax(-1) == target_logits.argmax(-1))[rows_ok & answer].float().mean()))
    return total, agree


def medusa_loss(head: MedusaHeads, rows: torch.Tensor, feats: torch.Tensor, valid: torch.Tensor,
                prompt: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """Head k on f_t against the target's distribution from f_{t+k} (agreement over answers)."""
    g = head(feats)  # [K, B, T, h]
    total, agree = feats.new_zeros(()), []
    target_logits = feats @ rows.T
    for k in range(g.shape[0]):
        shift = k + 1
        if feats.shape[1] <= shift:
            break
        ok = valid[:, shift:]
        answer = ok & (torch.arange(ok.shape[1], device=feats.device)[None] + shift + 1 >= prompt[:, None])
        logits = g[k, :, :-shift] @ rows.T
        t = target_logits[:, shift:]
        total = total + (0.8 ** k) * _soft_ce(logits, t)[ok].mean()
        agree.append(float((logits.argmax(-1) == t.argmax(-1))[answer].float().mean()))
    return total, agree


def train(model: str, kind: str, out: Path, *, prompts: int = 4000, passages: int = 1000,
          max_new_tokens: int = 256, gen_batch: int = 64, steps: int = 2000, batch: int = 16, max_len: int = 640,
          lr: float = 1e-3, unroll: int = 3, medusa_heads: int = 4, vocab: int = 4096, device: str = "cpu",
          sample_share: float = 0.25, seed: int = 0, quiet: bool = False, name: str | None = None,
          command: str = "") -> Path:
    """Train a head for `model` into out/head.safetensors (see the module docstring); resumable."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; pass a directory")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    data = build_data(model, out, prompts, passages, max_new_tokens, gen_batch, device, sample_share, seed, quiet)
    c = data["config"]
    held = max(1, len(data["sequences"]) // 20)  # the last 5% are held out for the curve
    train_idx = list(range(len(data["sequences"]) - held))
    test_idx = list(range(len(data["sequences"]) - held, len(data["sequences"])))
    if not train_idx:
        raise ValueError("too few training sequences; raise --prompts")
    ids = draft_vocab([data["sequences"][i] for i in train_idx], vocab, c["vocab_size"])
    cfg = HeadConfig(kind=kind, model=name or model, vocab_size=c["vocab_size"], hidden=c["hidden"], heads=c["heads"],
                     kv_heads=c["kv_heads"], head_dim=c["head_dim"], inter=c["inter"], eps=c["eps"],
                     rope_theta=c["rope_theta"], medusa_heads=medusa_heads if kind == "medusa" else 0,
                     draft_vocab=len(ids))
    head = make_head(cfg)
    if kind == "eagle":
        _init_from_target(head, data)
    head.to(device)
    embed, rows = data["embed"].to(device), data["lm_head"][ids].to(device)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.0)
    start, log = 0, []
    ckpt = out / "ckpt.pt"
    if ckpt.exists():  # resume
        state = torch.load(ckpt, weights_only=False, map_location=device)
        head.load_state_dict(state["head"])
        opt.load_state_dict(state["opt"])
        start, log = state["step"], state["log"]

    def lr_at(step: int) -> float:
        warm = max(1, steps // 20)
        return lr * min(1.0, (step + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / steps)))

    def loss_of(idx: list[int]) -> tuple[torch.Tensor, list[float]]:
        tokens, feats, valid, prompt = _batch(data, idx, max_len, device)
        if kind == "eagle":
            return eagle_loss(head, embed, rows, tokens, feats, valid, prompt, unroll)
        return medusa_loss(head, rows, feats, valid, prompt)

    rng = random.Random(seed + start)
    bar = _progress(steps, f"training {kind} head", quiet)
    bar.update(start)
    every = max(1, steps // 40)
    began = time.time()
    for step in range(start, steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss, _ = loss_of(rng.sample(train_idx, min(batch, len(train_idx))))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        opt.step()
        bar.update(1)
        if (step + 1) % every == 0 or step + 1 == steps:
            with torch.no_grad():
                test_loss, agree = loss_of(test_idx[:64])
            log.append({"step": step + 1, "loss": float(loss.detach()), "test_loss": float(test_loss), "agree": agree})
            bar.set_postfix(loss=f"{float(test_loss):.3f}", top1=f"{agree[0]:.2f}")
            torch.save({"head": head.state_dict(), "opt": opt.state_dict(), "step": step + 1, "log": log}, ckpt)
    bar.close()
    cfg.trained = {"command": command, "sequences": len(train_idx), "held_out": len(test_idx),
                   "tokens": sum(len(data["sequences"][i]) for i in train_idx), "steps": steps, "batch": batch,
                   "lr": lr, "unroll": unroll if kind == "eagle" else 0, "device": device,
                   "seconds": round(time.time() - began, 1), "final": log[-1] if log else {},
                   "params": param_count(head)}
    path = out / "head.safetensors"
    HeadFile(cfg, {k: v.detach().cpu() for k, v in head.state_dict().items()}, ids).save(path)
    (out / "log.json").write_text(json.dumps({"config": asdict(cfg), "log": log}, indent=1))
    _plot(log, kind, out / "curve.png")
    return path


def _plot(log: list[dict], kind: str, path: Path) -> None:
    if not log:
        return
    try:
        import matplotlib
    except ImportError:
        print(f"matplotlib is not installed: {path.name} skipped (log.json has the curve)", file=sys.stderr)
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in log]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.plot(steps, [r["loss"] for r in log], label="train")
    a.plot(steps, [r["test_loss"] for r in log], label="held out")
    a.set_xlabel("step"), a.set_ylabel("loss"), a.legend(), a.set_title(f"{kind} head: loss")
    for k in range(len(log[-1]["agree"])):
        name = f"depth {k + 1}" if kind == "eagle" else f"head {k + 1}"
        b.plot(steps, [r["agree"][k] for r in log], label=name)
    b.set_xlabel("step"), b.set_ylabel("top-1 = target's (held-out answers)"), b.set_ylim(0, 1), b.legend()
    b.set_title("agreement with the target")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
