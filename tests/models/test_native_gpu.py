"""The native runtime on a GPU (gpu.py, triton_kernels.py): float32 logits against transformers,
bf16 rows bitwise the same whatever the pass, and every drafter's greedy ids equal `none`'s.

They run where Triton runs: on CUDA, or on the CPU through Triton's interpreter
(TRITON_INTERPRET=1, tiny model only). The end-to-end test needs the real SmolLM2-135M: the
packaged one, or a GGUF file named by LEAPDECODE_TEST_GGUF."""

from __future__ import annotations

import json
import os
from importlib.util import find_spec

import pytest
import torch

from leapdecode.models.native.gpu import gpu_unsupported_reason
from tests.conftest import tree_mask

CUDA = torch.cuda.is_available()
pytestmark = pytest.mark.skipif(
    find_spec("triton") is None or not (CUDA or os.environ.get("TRITON_INTERPRET") == "1"),
    reason="needs triton and a CUDA GPU (or TRITON_INTERPRET=1)")
DEVICE = "cuda" if CUDA else "cpu"
PROMPT = [1, 43, 198, 156, 205, 28, 63, 59, 46, 47, 2, 198, 1, 52, 91, 198, 7, 8, 9, 10]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 2-layer random Llama with grouped-query attention, saved as a transformers directory."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    model = AutoModelForCausalLM.from_config(config).eval()
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    return path, model


def _target(directory, dtype, **kw):
    """Passes of 8 rows, prefill passes of 16, attention in chunks of 32 keys: the tests' prompts
    and chains span several of each."""
    from leapdecode.models.native.gpu import NativeGpuTarget

    return NativeGpuTarget(directory, dtype, max_len=128, device=DEVICE, width=8, prefill_width=16,
                           graphs=CUDA, chunk=32, **kw)


def test_float32_equals_transformers_for_trees_commits_and_chains(tiny):
    from leapdecode.models.hf import HFTarget

    directory, model = tiny
    ours, ref = _target(directory, "float32"), HFTarget(model)
    parents, tokens = [-1, 0, 0, 1, 3, 2], [17, 18, 19, 20, 21, 22]
    mask, depths = tree_mask(parents)
    for step in [(tokens, depths, mask, [0, 1, 3, 4]),  # a tree; keep a path that is not a prefix
                 (list(range(30, 50)), torch.arange(20), None, list(range(13))),  # a chain wider than a pass
                 ([5], torch.zeros(1, dtype=torch.long), None, [0])]:
        pair = []
        for t in (ours, ref):
            if t.length == 0:
                t.prefill(PROMPT)
            pair.append(t.forward(step[0], step[1], step[2]).cpu())
            t.commit(step[3])
        assert torch.allclose(pair[0], pair[1], atol=1e-4), (pair[0] - pair[1]).abs().max()
        assert ours.length == ref.length


def test_bfloat16_rows_bitwise_whatever_the_pass(tiny):
    t = _target(tiny[0], "bfloat16")
    chain = list(range(100, 120))  # 20 inputs: three passes of width 8

    def run(tokens, depths, mask, keep=()):
        t.reset()
        t.prefill(PROMPT)
        out = t.forward(tokens, depths, mask).cpu()
        t.commit(list(keep))
        return out

    wide = run(chain, torch.arange(20), None)
    for k in range(20):  # one at a time, each after the previous ones were committed
        t.reset()
        t.prefill(PROMPT + chain[:k])
        alone = t.forward([chain[k]], torch.zeros(1, dtype=torch.long), None).cpu()
        t.commit([])
        assert torch.equal(alone[0], wide[k]), k
    parents = [-1, -1, 0, 0, 2, 2, 4]  # chain[0] -> chain[1] -> chain[2] -> chain[3] with siblings
    mask, depths = tree_mask(parents)
    tree = run([chain[0], 7, chain[1], 8, chain[2], 9, chain[3]], depths, mask, keep=[0, 2, 4])
    for node, row in ((0, 0), (2, 1), (4, 2), (6, 3)):
        assert torch.equal(tree[node], wide[row]), node
    after = t.forward([chain[3]], torch.zeros(1, dtype=torch.long), None).cpu()  # the path was committed
    t.commit([])
    assert torch.equal(after[0], wide[3])


def test_bad_input(tmp_path, tiny):
    from leapdecode.models.native.gpu import NativeGpuTarget

    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["Gemma3ForCausalLM"]}))
    assert "Llama and Qwen2 models, not Gemma3ForCausalLM" in gpu_unsupported_reason(tmp_path, "bfloat16")
    assert "bfloat16 or float32, not int8" in gpu_unsupported_reason(tiny[0], "int8")
    with pytest.raises(ValueError, match="not int8"):
        NativeGpuTarget(tiny[0], "int8", device=DEVICE)
    t = _target(tiny[0], "bfloat16")
    with pytest.raises(ValueError, match="at least one token"):
        t.forward([], torch.zeros(0, dtype=torch.long), None)
    with pytest.raises(ValueError, match="raise max_len"):
        t.prefill(list(range(300)))


# ---- end to end on the real model ---------------------------------------------------------
METHODS = ["prompt-lookup", "suffix", "token-recycling", "lookahead", "ngram-adaptive", "auto"]


@pytest.fixture(scope="module")
def real():
    from leapdecode.engine import Engine
    from leapdecode.models import registry
    from leapdecode.models.native.gpu import NativeGpuTarget

    if not CUDA:
        pytest.skip("the 135M model through Triton's interpreter takes too long")
    source = os.environ.get("LEAPDECODE_TEST_GGUF", "smollm2-135m")
    try:
        directory = registry.resolve(source)
    except registry.ModelNotInstalled as e:
        pytest.skip(str(e))
    target = NativeGpuTarget(directory, "bfloat16", max_len=2048)
    return Engine(target, registry.load_tokenizer(source), name="smollm2-135m")


def test_every_drafter_identical_to_none_in_bfloat16(real, dev_questions):
    from leapdecode import GenerationConfig
    from tests.conftest import pick_prompts

    config = GenerationConfig(max_new_tokens=96, logprobs=2)
    prompts = ["Repeat after me: the quick brown fox jumps over the lazy dog. The quick brown fox",
               *pick_prompts(dev_questions, 1)]
    for prompt in prompts:
        plain = real.generate(prompt, config, "none")
        for method in METHODS:
            got = real.generate(prompt, config, method)
            assert got.token_ids == plain.token_ids, (method, prompt[:40])
            assert got.logprobs == plain.logprobs, (method, prompt[:40])
