"""The native runtime: kernels against torch, bitwise batch invariance, NativeTarget vs transformers,
and end-to-end losslessness of every training-free drafter on it (bf16 and int8)."""

from __future__ import annotations

import json
from typing import Sequence

import pytest
import torch

from leapdecode import GenerationConfig
from leapdecode.drafters import Draft, Drafter
from leapdecode.engine import Engine
from leapdecode.models.native import load_native, unsupported_reason
from leapdecode.models.native.target import NativeTarget
from leapdecode.models.native import ops
from tests.conftest import tree_mask

torch.set_num_threads(2)
FORMATS = ["bfloat16", "int8", "w8a8", "w4a8"]


# ---- kernels -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def w_fp32():
    torch.manual_seed(0)
    return torch.randn(203, 96), torch.randn(203)  # odd out: exercises the 4-output tail


def test_linear_matches_torch(w_fp32):
    w, b = w_fp32
    x = torch.randn(7, 96)
    for fmt in ("float32", "int8"):
        weight = ops.make_weight(w, fmt, b)
        ref_w = weight.data.float() * (1 if weight.scale is None else weight.scale[:, None])
        assert torch.allclose(ops.linear(x, weight), x @ ref_w.T + b, atol=1e-4, rtol=1e-4), fmt
    weight = ops.make_weight(w, "bfloat16", b)  # x rounded to bfloat16 too; float32 sums, pair by pair
    xb, wb = x.to(torch.bfloat16).float(), weight.rows()
    assert torch.equal(wb, w.to(torch.bfloat16).float())
    acc = torch.zeros(x.shape[0], w.shape[0])
    for k in range(0, w.shape[1], 2):  # each product is exact in float32: adding it is the FMA's one rounding
        acc = acc + xb[:, k + 1, None] * wb[None, :, k + 1]
        acc = acc + xb[:, k, None] * wb[None, :, k]
    assert torch.equal(ops.linear(x, weight), acc + b)
    weight = ops.make_weight(w, "w8a8", b)  # each row of x quantized too: int8, scale max|x| / 127
    amax = x.abs().amax(dim=1, keepdim=True)
    xq = torch.round(x * (127 / amax)).clamp(-127, 127)
    ref = (xq @ weight.int8_rows().float().T) * (amax / 127) * weight.scale + b
    assert torch.allclose(ops.linear(x, weight), ref, atol=1e-4, rtol=1e-5)
    weight = ops.make_weight(w, "w4a8", b)  # 4-bit groups of 32 (s * q + m), x quantized as above
    deq = weight.rows()
    assert deq.shape == w.shape and (deq - w).abs().max() <= 0.6 * (w.max() - w.min()) / 15
    assert torch.allclose(ops.linear(x, weight), (xq * (amax / 127)) @ deq.T + b, atol=1e-4, rtol=1e-5)
    q4 = ops.make_weight(deq, "w4a8")  # a weight on the 4-bit grid (as GGUF's Q4_1 stores) comes back as itself
    assert torch.equal(q4.rows(), deq)


@pytest.mark.parametrize("fmt", ["float32", *FORMATS])
@pytest.mark.parametrize("d_in", [96, 104])  # 104 % 16 == 8: the 8-lane tail of the 16-lane kernels
def test_linear_rows_bitwise_invariant(w_fp32, fmt, d_in):
    w, b = w_fp32
    if d_in != w.shape[1]:
        w = torch.randn(w.shape[0], d_in)
    weight = ops.make_weight(w, fmt, b)
    x = torch.randn(32, d_in)
    alone = torch.cat([ops.linear(x[r:r + 1].contiguous(), weight) for r in range(32)])  # [32, out]
    for n in (8, 21, 32):  # 21: two-panel tiles for rows 0-15 (w8a8) or 0-19 (w4a8), one-panel ones after
        for start in range(0, 32, n):
            assert torch.equal(ops.linear(x[start:start + n].contiguous(), weight), alone[start:start + n])
    shifted = ops.linear(torch.cat([x[5:6], x[:5]]).contiguous(), weight)  # row 5 at position 0
    assert torch.equal(shifted[0], alone[5]) and torch.equal(shifted[1:], alone[:5])


def test_weights_moved_to_huge_pages_compute_the_same(w_fp32):
    w, b = w_fp32
    x = torch.randn(5, 96)
    weights = [ops.make_weight(w, fmt, b) for fmt in ("bfloat16", "w8a8", "w4a8")]
    before = [(weight.data.clone(), ops.linear(x, weight)) for weight in weights]
    ops.to_huge_pages(weights)
    for weight, (data, y) in zip(weights, before):
        assert weight.data.data_ptr() % 64 == 0 and weight.data.dtype == data.dtype
        assert torch.equal(weight.data, data) and torch.equal(ops.linear(x, weight), y)
    assert ops.huge_empty(100).data_ptr() % ops.HUGE_PAGE == 0


def test_rowops_argmax_and_topk_of_the_kernels():
    """Each row's argmax on the kernels is torch's (the first of tied maxima; -0 and +0 equal; a row
    of -inf; a NaN row answered by torch), and the top k is ordered by value, ties by lower index."""
    from leapdecode import rowops
    from leapdecode.models.native.build import kernels

    kernels()  # loaded: rowops takes the kernels from now on
    torch.manual_seed(3)
    x = torch.randint(-4, 4, (6, 37)).float()  # many ties; 37: past the 32-wide sweep and the 8-wide one
    x[1] = float("-inf")
    x[2, :] = 0.0
    x[2, 5], x[2, 9] = -0.0, 1.0
    x[3, 36] = 9.0  # the largest in the tail
    wide = torch.randn(4, 1000)
    for rows in (x, wide, x[2:3]):
        assert rowops._kernels(rows) is not None
        assert rowops.argmax(rows) == rows.argmax(-1).tolist()
        for k in (1, 5, 37 if rows.shape[1] == 37 else 64):
            assert torch.equal(rowops.topk(rows, k), torch.sort(-rows, dim=-1, stable=True).indices[:, :k])
    nan = x.clone()
    nan[4, 7] = float("nan")
    assert rowops.argmax(nan) == nan.argmax(-1).tolist() and rowops.argmax(nan)[4] == 7
    assert torch.equal(rowops.topk(nan, 3), nan.topk(3, dim=-1).indices)
    assert rowops._kernels(x.T) is None and rowops._kernels(x.double()) is None  # torch's turn


def test_kernels_of_avx2_only_cpus():
    """The 8-lane build (what AVX2-only machines compile) passes the kernel tests here too."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "LEAPDECODE_NATIVE_AVX2": "1"}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                          "-k", "linear_ or attention_matches or rowops"], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-2000:]
    assert " passed" in run.stdout and "failed" not in run.stdout


def _reference_attention(q, k, v, visible, weights=torch.float32):  # q [n, h, d], k/v [kv, slots, d], visible [n, slots]
    """weights: the dtype the unnormalized softmax weights are rounded to before they weight the values"""
    group = q.shape[1] // k.shape[0]
    k, v = k.repeat_interleave(group, 0), v.repeat_interleave(group, 0)  # [h, slots, d]
    scores = torch.einsum("nhd,hsd->nhs", q, k) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(~visible[:, None], float("-inf"))
    p = (scores - scores.amax(-1, keepdim=True)).exp()
    return torch.einsum("nhs,hsd->nhd", p.to(weights).float(), v) / p.sum(-1, keepdim=True)


@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.bfloat16])
def test_attention_matches_reference_and_is_order_invariant(kv_dtype):
    torch.manual_seed(1)
    kv, h, d, slots, cached = 2, 6, 16, 40, 20
    k, v = torch.randn(kv, slots, d).to(kv_dtype), torch.randn(kv, slots, d).to(kv_dtype)
    q = torch.randn(5, h, d)
    # a tree: 0 root; 1, 2 children of 0; 3 child of 1; 4 child of 3 (pass inputs at slots 20..24)
    parents = [-1, 0, 0, 1, 3]
    mask = torch.zeros(5, 5, dtype=torch.bool)
    for j, p in enumerate(parents):
        mask[j, j] = True
        if p >= 0:
            mask[j] |= mask[p]
    from leapdecode.models.native.target import _visible
    extra, count = _visible(mask, 5, cached)
    tree = ops.attention(q, k, v, cached, extra, count, d ** -0.5)
    visible = torch.zeros(5, slots, dtype=torch.bool)
    visible[:, :cached] = True
    visible[:, cached:cached + 5] = mask
    # with a bfloat16 cache the queries and the softmax weights are rounded to bfloat16 too; sums are float32
    ref = _reference_attention(q.to(kv_dtype).float(), k.float(), v.float(), visible, weights=kv_dtype)
    assert torch.allclose(tree, ref, atol=1e-5)
    # node 4's path 0,1,3,4 laid out as a chain at the same slots gives the same bits
    chain_k, chain_v = k.clone(), v.clone()
    path = [0, 1, 3, 4]
    chain_k[:, cached:cached + 4], chain_v[:, cached:cached + 4] = k[:, [cached + i for i in path]], v[:, [cached + i for i in path]]
    e, c = _visible(None, 4, cached)
    chain = ops.attention(q[path].contiguous(), chain_k, chain_v, cached, e, c, d ** -0.5)
    assert torch.equal(chain[3], tree[4])
    # and alone after its ancestors were committed (cached + 3 slots, itself the one extra key)
    e1, c1 = _visible(None, 1, cached + 3)
    alone = ops.attention(q[4:5].contiguous(), chain_k, chain_v, cached + 3, e1, c1, d ** -0.5)
    assert torch.equal(alone[0], tree[4])


# ---- the target on smollm2-135m ----------------------------------------------------------
@pytest.fixture(scope="module")
def directory():
    from leapdecode.models import registry
    return registry.resolve("smollm2-135m")


@pytest.fixture(scope="module")
def targets(directory):
    return {fmt: load_native(directory, fmt, max_len=1024, threads=2) for fmt in ["float32", *FORMATS]}


@pytest.fixture(scope="module")
def tokenizer():
    from leapdecode.models import registry
    return registry.load_tokenizer("smollm2-135m")


PROMPT = list(range(300, 340))


def test_float32_close_to_transformers_and_greedy_equal(directory, targets):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    t = targets["float32"]
    t.reset()
    t.prefill(PROMPT[:-1])
    logits = t.forward(PROMPT[-1:], torch.zeros(1, dtype=torch.long), None)
    t.commit([0])
    with torch.inference_mode():
        ref = model(torch.tensor([PROMPT])).logits[0, -1]
        assert torch.allclose(logits[0], ref, atol=1e-3)
        ids, last = list(PROMPT), PROMPT[-1]
        ref_out = model.generate(torch.tensor([PROMPT]), max_new_tokens=16, do_sample=False)[0, len(PROMPT):].tolist()
    ours = []
    for _ in range(16):
        last = int(logits[0].argmax())
        ours.append(last)
        logits = t.forward([last], torch.zeros(1, dtype=torch.long), None)
        t.commit([0])
    assert ours == ref_out


@pytest.mark.parametrize("fmt", FORMATS)
def test_logits_bitwise_at_any_width_and_shape(targets, fmt):
    t = targets[fmt]
    chain = [5000 + i for i in range(32)]

    def run(tokens, depths, mask):
        t.reset()
        t.prefill(PROMPT)
        out = t.forward(tokens, depths, mask)
        t.commit([])
        return out

    wide = run(chain, torch.arange(32), None)  # [32, vocab]
    assert torch.equal(run(chain[:1], torch.zeros(1, dtype=torch.long), None)[0], wide[0])
    assert torch.equal(run(chain[:8], torch.arange(8), None), wide[:8])
    # a tree holding chain[0..2] as the path 0 -> 2 -> 4, with distractor siblings
    parents = [-1, -1, 0, 0, 2, 2]
    tokens = [chain[0], 7, chain[1], 8, chain[2], 9]
    mask, depths = tree_mask(parents)
    tree = run(tokens, depths, mask)
    for node, row in ((0, 0), (2, 1), (4, 2)):
        assert torch.equal(tree[node], wide[row])


@pytest.mark.parametrize("fmt", FORMATS)
def test_commit_path_then_logits_equal_fresh_prefill(targets, fmt):
    t = targets[fmt]
    parents, tokens = [-1, -1, 0, 0, 2], [11, 12, 13, 14, 15]
    mask, depths = tree_mask(parents)
    t.reset()
    t.prefill(PROMPT)
    t.forward(tokens, depths, mask)
    t.commit([0, 2, 4])  # path 11 -> 13 -> 15
    after = t.forward([99], torch.zeros(1, dtype=torch.long), None)
    t.commit([0])
    t.reset()
    t.prefill(PROMPT + [11, 13, 15])
    fresh = t.forward([99], torch.zeros(1, dtype=torch.long), None)
    t.commit([0])
    assert torch.equal(after, fresh)
    t.trim(len(PROMPT) + 1)
    assert t.length == len(PROMPT) + 1
    for bad in ([t.vocab_size], [-1]):  # the kernel reads embedding rows unchecked: refused before
        with pytest.raises(ValueError, match="token ids must lie in"):
            t.forward(bad, torch.zeros(1, dtype=torch.long), None)
    assert t.length == len(PROMPT) + 1


# ---- end to end --------------------------------------------------------------------------
METHODS = ["prompt-lookup", "suffix", "token-recycling", "lookahead", "ngram-adaptive", "auto"]
PROMPTS = ["Repeat after me: the quick brown fox jumps over the lazy dog. The quick brown fox",
           "Write a Python function that returns the sum of a list of numbers."]


class AlwaysWrong(Drafter):
    """Every guess is off by one from what the target will say next (known from the plain run)."""

    def __init__(self, prompt_len: int, reference: Sequence[int]):
        self.prompt_len, self.ref = prompt_len, list(reference)

    def propose(self, context, budget):
        done = len(context) - self.prompt_len
        truth = self.ref[done] if done < len(self.ref) else 0
        return Draft(((truth + 1) % 49152, (truth + 2) % 49152, (truth + 3) % 49152), (-1, -1, 1))


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_drafter_identical_to_none(targets, tokenizer, dev_questions, fmt):
    """bf16 and the 8-bit-activation formats: each drafter's passes have other widths and tree shapes than `none`'s,
    and the ids are still equal (batch invariance), on a literal prompt (and a dev question in
    bf16); so are the tokens' log-probabilities, bit for bit."""
    from tests.conftest import pick_prompts

    engine = Engine(targets[fmt], tokenizer, name="smollm2-135m")
    config = GenerationConfig(max_new_tokens=48, logprobs=2)
    dev = pick_prompts(dev_questions, 1)
    # a dev question in bf16; the 8-bit formats' dev-question runs are the bench's `identical` column
    for prompt in [PROMPTS[0], dev[5]] if fmt == "bfloat16" else [PROMPTS[0]]:
        plain = engine.generate(prompt, config, "none")
        assert len(plain.token_ids) > 0 and [lp.token for lp in plain.logprobs] == plain.token_ids
        for method in METHODS:
            got = engine.generate(prompt, config, method)
            assert got.token_ids == plain.token_ids, (fmt, method, prompt[:30])
            assert got.logprobs == plain.logprobs, (fmt, method, prompt[:30])
        ids = engine.encode(prompt)
        wrong = engine.generate(ids, GenerationConfig(max_new_tokens=48, budget=3), AlwaysWrong(len(ids), plain.token_ids))
        assert wrong.token_ids == plain.token_ids


# ---- bad input ---------------------------------------------------------------------------
def test_unsupported_architecture_and_bad_dtype(tmp_path, directory):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["MambaForCausalLM"]}))
    assert "MambaForCausalLM is not supported by the native runtime" in unsupported_reason(tmp_path)
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 60,
                                                 "num_attention_heads": 5}))
    assert "head size that is a multiple of 8, this model's is 12" in unsupported_reason(odd)
    with pytest.raises(ValueError, match="use --backend hf"):
        load_native(tmp_path)
    with pytest.raises(ValueError, match="float32, bfloat16, int8"):
        load_native(directory, "float16")
    with pytest.raises(ValueError, match="kv_dtype 'float16' is not one of bfloat16, float32"):
        NativeTarget(directory, kv_dtype="float16")
    with pytest.raises(ValueError, match="unknown device 'tpu'; choose cpu or cuda"):
        load_native(directory, device="tpu")
    with pytest.raises(ValueError, match="batches requests on the CPU only"):
        load_native(directory, device="cuda", sequences=2)
    assert unsupported_reason(directory) is None


# ---- choosing the runtime ------------------------------------------------------------------
def test_pick_backend(tmp_path, directory):
    from leapdecode import pick_backend

    notes = []
    assert pick_backend("auto", str(directory), "bfloat16", notice=notes.append) == "native"
    assert pick_backend("auto", str(directory), "int8") == "native"
    assert pick_backend("auto", str(directory), "float32", device="cuda") == "transformers"
    assert pick_backend("hf", str(directory), "float32") == "transformers"
    assert pick_backend("native", str(directory), "float32") == "native"
    assert notes == []
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["MambaForCausalLM"]}))
    assert pick_backend("auto", str(tmp_path), "bfloat16", notice=notes.append) == "transformers"
    assert len(notes) == 1 and "MambaForCausalLM" in notes[0] and "transformers" in notes[0]
    with pytest.raises(ValueError, match="int8 needs the native runtime"):
        pick_backend("auto", str(tmp_path), "int8")
    with pytest.raises(ValueError, match="unknown backend"):
        pick_backend("onnx", str(directory), "float32")


def test_profile_command(tmp_path, capsys):
    from leapdecode.cli import main

    out = tmp_path / "prof"
    assert main(["profile", "--ks", "2,1", "--context", "8", "--repeat", "1", "--out", str(out)]) == 0
    result = json.loads((out / "profile.json").read_text())
    rows = result["passes"]
    assert [r["k"] for r in rows] == [1, 2] and result["bandwidth_gb_s"] > 0
    for r in rows:
        assert r["linear_ms"] > 0 and r["attention_ms"] > 0 and r["floor_ms"] > 0
        assert r["linear_ms"] + r["attention_ms"] <= r["ms"] * 1.05
        assert r["x_floor"] == pytest.approx(r["ms"] / r["floor_ms"])
        assert r["arith_floor_ms"] > 0
        assert r["x_max_floor"] == pytest.approx(r["ms"] / max(r["floor_ms"], r["arith_floor_ms"]))
    # every weight once per input; keys seen: 8 cached + 1 (k = 1), 2 * 8 + 1 + 2 (k = 2)
    assert rows[1]["macs"]["linear"] == 2 * rows[0]["macs"]["linear"]
    assert rows[0]["macs"]["scores"] * 19 == rows[1]["macs"]["scores"] * 9 == rows[1]["macs"]["values"] * 9
    assert min(result["macs_per_s"].values()) > 0 and set(result["macs_per_s"]) == {"linear", "scores", "values"}
    assert rows[0]["x_pass_of_1"] == 1.0
    assert (out / "profile.png").read_bytes()[:4] == b"\x89PNG"
    assert "| k | ms/pass | linear | attention | rest | floor | x floor | arith floor | x max floor |" in capsys.readouterr().out
    assert main(["profile", "--ks", "0,1"]) == 2
    assert "--ks takes integers >= 1" in capsys.readouterr().err


def test_draft_model_on_the_native_runtime(targets, tokenizer):
    """A native draft model (here the target's own weights in int8) drafts for a bf16 target."""
    from leapdecode.models.loading import load_draft
    from leapdecode.models.native import NativeTarget

    draft = load_draft("smollm2-135m", "int8", "native")
    assert isinstance(draft[0], NativeTarget)
    engine = Engine(targets["bfloat16"], tokenizer, name="smollm2-135m")
    config = GenerationConfig(max_new_tokens=32)
    plain = engine.generate(PROMPTS[1], config, "none")
    out = engine.generate(PROMPTS[1], config, "draft-model", model=draft, length=3)
    assert out.token_ids == plain.token_ids
    assert out.stats.steps < plain.stats.steps  # the int8 twin agrees with the bf16 target often


def test_a_named_draft_model_runs_like_its_target(targets, tokenizer):
    from leapdecode.drafters.draft_model import DraftModelDrafter
    from leapdecode.models.native import NativeTarget
    from leapdecode.sampling import SamplingParams

    engine = Engine(targets["bfloat16"], tokenizer, name="smollm2-135m")
    assert (engine.info.backend, engine.info.dtype) == ("native", "bfloat16")
    drafter = DraftModelDrafter("smollm2-135m")
    drafter.configure(SamplingParams(), engine.info)
    assert isinstance(drafter.lm.lm, NativeTarget) and drafter.lm.lm.dtype == "bfloat16"
    explicit = DraftModelDrafter("smollm2-135m", backend="native", dtype="int8")
    explicit.configure(SamplingParams(), engine.info)
    assert explicit.lm.lm.dtype == "int8"


def test_gemma3_float32_matches_transformers_and_bf16_drafts_are_invariant():
    """Gemma3's extra parts (post norms, q/k norms, (1 + w) norms, sliding windows with their own
    rope base, gelu, scaled embeddings) against transformers, then batch invariance in bf16."""
    from transformers import AutoModelForCausalLM

    from leapdecode.models import registry

    directory = registry.resolve("gemma3-270m")
    prompt = list(range(1000, 1030))
    t = load_native(directory, "float32", max_len=256, threads=2)
    t.prefill(prompt[:-1])
    logits = t.forward(prompt[-1:], torch.zeros(1, dtype=torch.long), None)
    t.commit([0])
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    with torch.inference_mode():
        ref = model(torch.tensor([prompt])).logits[0, -1]
        ref_out = model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False)[0, len(prompt):].tolist()
    assert torch.allclose(logits[0], ref, atol=2e-3), (logits[0] - ref).abs().max()
    ours = []
    for _ in range(8):
        ours.append(int(logits[0].argmax()))
        logits = t.forward(ours[-1:], torch.zeros(1, dtype=torch.long), None)
        t.commit([0])
    assert ours == ref_out
    long = [(37 * i) % 5000 + 300 for i in range(600)]  # past the 512-token sliding window
    t = load_native(directory, "float32", max_len=640, threads=2)
    t.prefill(long[:-1])
    logits = t.forward(long[-1:], torch.zeros(1, dtype=torch.long), None)
    with torch.inference_mode():
        assert torch.allclose(logits[0], model(torch.tensor([long])).logits[0, -1], atol=2e-3)
    engine = Engine(load_native(directory, "bfloat16", max_len=512, threads=2),
                    registry.load_tokenizer("gemma3-270m"), name="gemma3-270m")
    config = GenerationConfig(max_new_tokens=32)
    plain = engine.generate(PROMPTS[0], config, "none").token_ids
    for method in ("prompt-lookup", "auto"):
        assert engine.generate(PROMPTS[0], config, method).token_ids == plain, method
