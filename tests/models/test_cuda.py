"""The static slot-cache target on the CPU, without graphs or compilation: the same logits as
HFTarget for chains and trees, after non-prefix commits, trims and compactions (float32), and the
same greedy output through the Engine. The CUDA graphs themselves run in scripts/gpu_measure.py."""

import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from leapdecode import tree
from leapdecode.config import GenerationConfig
from leapdecode.drafters import Draft
from leapdecode.engine import Engine
from leapdecode.models.cuda import StaticTarget, require_cuda
from leapdecode.models.hf import HFTarget

PROMPT = [1, 4093, 198, 19556, 905, 28, 638, 359, 346, 47, 2, 198, 1, 520, 9531, 198]
TREE = Draft((504, 3575, 282, 4649, 17, 314, 260), (-1, 0, 0, -1, 3, 4, 2))


@pytest.fixture(scope="module")
def tiny():
    """A 2-layer random llama with grouped-query attention: fast enough to replay long scripts."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    return AutoModelForCausalLM.from_config(config).eval()


def run_pair(targets, tokens, depths, mask):
    """The same forward on every target; returns their logits."""
    return [t.forward(tokens, depths, mask) for t in targets]


def assert_same(logits, atol=1e-4):
    for other in logits[1:]:
        assert other.shape == logits[0].shape
        assert torch.allclose(other, logits[0], atol=atol), (other - logits[0]).abs().max()


@pytest.mark.parametrize("pad", [False, True])
def test_tree_and_chain_logits_equal_hf_target(engine, pad):
    hf = engine.target
    static = StaticTarget(hf.model, max_len=64, sizes=(1, 4, 8, 16), pad=pad)
    targets = [hf, static]
    for t in targets:
        t.reset()
        t.prefill(PROMPT[:-1])
    lay = tree.layout(TREE)
    assert_same(run_pair(targets, [PROMPT[-1], *TREE.tokens], lay.depths, lay.mask))
    for t in targets:
        t.commit([0, 4, 5, 6])  # root, then nodes 3, 4, 5: a branch that is not a prefix
    assert static.length == hf.length == len(PROMPT) + 3
    assert_same(run_pair(targets, [9, 10, 11], torch.arange(3), None))  # a chain
    for t in targets:
        t.commit([0, 1])
    assert_same(run_pair(targets, [12], torch.zeros(1, dtype=torch.long), None))
    for t in targets:
        t.commit([])


def test_trim_compact_and_refill_equal_a_fresh_prefill(tiny):
    reference = HFTarget(tiny)
    static = StaticTarget(tiny, max_len=64, sizes=(1, 2, 4, 8), pad=True)
    draft = Draft((50, 51, 52, 53, 54), (-1, 0, 0, -1, 3))
    lay = tree.layout(draft)
    static.prefill(list(range(5, 25)))
    for step in range(6):  # tree steps that keep a non-prefix path leave holes in the slots
        static.forward([7 + step, *draft.tokens], lay.depths, lay.mask)
        static.commit([0, 4, 5])
    committed = list(range(5, 25)) + [t for s in range(6) for t in (7 + s, 53, 54)]
    assert static.length == len(committed) and static._slots != list(range(static.length))
    static.trim(30)
    committed = committed[:30]
    reference.prefill(committed)
    assert_same(run_pair([reference, static], [3, 4], torch.arange(2), None))
    for t in (reference, static):
        t.commit([0])
    static.compact()
    assert static._slots == list(range(static.length)) and static.valid.sum() == static.length == 31
    assert_same(run_pair([reference, static], [5, 6, 7], torch.arange(3), None))


def test_slots_run_out_then_compaction_keeps_logits(tiny):
    """Tree steps that keep the last input leave holes; the target compacts by itself when the
    slots run out and stays exact."""
    reference = HFTarget(tiny)
    static = StaticTarget(tiny, max_len=32, sizes=(1, 8), pad=True)
    lay = tree.layout(Draft((1, 2, 3), (-1, 0, -1)))  # input 3 hangs off the root
    for t in (reference, static):
        t.prefill(list(range(10, 20)))
    compactions = 0
    for step in range(90):  # 8 slots written and 4 used per step: far past the capacity
        hw = static._hw
        logits = run_pair([reference, static], [20 + step % 7, 1, 2, 3], lay.depths, lay.mask)
        for t in (reference, static):
            t.commit([0, 3])
        compactions += static._hw < hw
        if step % 15 == 0:
            assert_same(logits)
    assert compactions >= 1 and static.capacity < 90 * 4
    assert static.length == reference.length == 190
    assert_same(run_pair([reference, static], [5], torch.zeros(1, dtype=torch.long), None))


@pytest.mark.parametrize("method", ["token-recycling"])  # a tree drafter: chains are a special case
def test_greedy_generation_through_the_engine_equals_hf_target(engine, method):
    static_engine = Engine(StaticTarget(engine.target.model, max_len=128), engine.tokenizer)
    config = GenerationConfig(max_new_tokens=16)
    for prompt in ("List three colours.", "Repeat after me: the cat sat on the mat. the cat sat on the mat."):
        expected = engine.generate(prompt, config, method="none").token_ids
        assert static_engine.generate(prompt, config, method=method).token_ids == expected, prompt


def test_a_pass_larger_than_every_size_runs_eagerly_with_one_warning(tiny):
    static = StaticTarget(tiny, max_len=64, sizes=(1, 2), pad=True)
    reference = HFTarget(tiny)
    for t in (reference, static):
        t.prefill([5, 6, 7])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            assert_same(run_pair([reference, static], [1, 2, 3], torch.arange(3), None))
            for t in (reference, static):
                t.commit([])
    assert [str(w.message) for w in caught if "no captured pass" in str(w.message)] == [
        "StaticTarget: no captured pass for 3 inputs (largest size 2); running it eagerly, "
        "which is much slower on a GPU"
    ]


def test_bad_use_fails_loudly(tiny):
    static = StaticTarget(tiny, max_len=16, sizes=(1, 4))
    static.prefill([1, 2, 3])
    static.forward([4], torch.zeros(1, dtype=torch.long), None)
    with pytest.raises(RuntimeError, match="commit"):
        static.forward([4], torch.zeros(1, dtype=torch.long), None)
    static.commit_all()
    with pytest.raises(ValueError, match="cannot trim"):
        static.trim(9)
    with pytest.raises(ValueError, match="CUDA graphs need"):
        StaticTarget(tiny, graphs=True)
    with pytest.raises(ValueError, match="sizes"):
        StaticTarget(tiny, sizes=(0, 4))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when there is no GPU")
def test_require_cuda_without_a_gpu_names_the_fix():
    with pytest.raises(ValueError, match="needs an NVIDIA GPU.*--device cpu"):
        require_cuda()
