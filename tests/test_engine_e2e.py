"""End to end on the packaged 135M model in float32: output token-identical to plain greedy."""

from typing import Sequence

import pytest

from leapdecode import GenerationConfig
from leapdecode.drafters import Draft, Drafter

from .conftest import pick_prompts

N = 32


@pytest.fixture(scope="module")
def prompts(dev_questions):
    return pick_prompts(dev_questions, per_subtask=1)  # 6 prompts, 1 per subtask


def test_greedy_identical_to_transformers(engine, reference, prompts):
    """The engine's plain decoding on one question of each subtask; the drafters on three of them:
    tests/test_drafters_e2e.py."""
    assert len(prompts) == 6
    for prompt in prompts:
        out = engine.generate(prompt, GenerationConfig(max_new_tokens=N), "none")
        assert out.token_ids == reference(prompt, N), prompt[:60]
        assert out.stats.steps == len(out.token_ids)


class Oracle(Drafter):
    """Proposes a fixed continuation (e.g. the reference) wherever the context is inside it."""

    def __init__(self, prompt_len: int, continuation: Sequence[int], tail: Sequence[int] = ()):
        self.prompt_len, self.tokens = prompt_len, list(continuation) + list(tail)

    def propose(self, context, budget):
        assert budget >= 1, "the engine asks for a draft only when there is room for one"
        done = len(context) - self.prompt_len
        return Draft(tuple(self.tokens[done: done + budget]))


class AlwaysWrong(Drafter):
    """A tree of guesses none of which is the reference token."""

    def __init__(self, prompt_len: int, reference: Sequence[int]):
        self.prompt_len, self.ref = prompt_len, list(reference)

    def propose(self, context, budget):
        done = len(context) - self.prompt_len
        truth = self.ref[done] if done < len(self.ref) else 0
        wrong = [(truth + k) % 49152 for k in (1, 2, 3)]
        chain = [(truth + 7) % 49152, (truth + 8) % 49152]
        return Draft(tuple(wrong + chain), (-1, -1, -1, 0, 3))


SHORT = "What is the capital of France? Answer in one sentence."


def test_always_wrong_drafter_changes_nothing(engine, reference):
    ids = engine.encode(SHORT)
    ref = reference(SHORT, 32)
    out = engine.generate(ids, GenerationConfig(max_new_tokens=32, budget=5), AlwaysWrong(len(ids), ref))
    assert out.token_ids == ref
    assert out.stats.accepted_hist == {0: out.stats.steps}


def test_eos_inside_accepted_run(engine, reference):
    ids = engine.encode(SHORT)
    ref = reference(SHORT, 40)
    assert ref[-1] in engine.eos_ids, "the reference answer should end with EOS"
    drafter = Oracle(len(ids), ref, tail=[100, 200, 300])  # junk after EOS
    out = engine.generate(ids, GenerationConfig(max_new_tokens=40, budget=30), drafter)
    assert out.token_ids == ref
    assert out.finish_reason == "stop"
    assert out.stats.steps == 1  # the whole answer, EOS included, came in one pass


def test_stop_string_inside_accepted_run(engine, reference):
    ids = engine.encode(SHORT)
    ref = reference(SHORT, 40)
    full = engine.tokenizer.decode(ref, skip_special_tokens=True)
    stop = "France"
    assert stop in full
    out = engine.generate(ids, GenerationConfig(max_new_tokens=40, budget=30, stop=(stop,)), Oracle(len(ids), ref))
    assert out.text == full[: full.index(stop)]
    assert out.finish_reason == "stop"
    assert stop in engine.tokenizer.decode(out.token_ids) and out.token_ids == ref[: len(out.token_ids)]
    streamed = "".join(engine.stream(ids, GenerationConfig(max_new_tokens=40, budget=30, stop=(stop,)),
                                     Oracle(len(ids), ref)))
    assert streamed == out.text


@pytest.mark.parametrize("n", [0, 1, 2])
@pytest.mark.parametrize("method", ["none", "prompt-lookup"])
def test_max_new_tokens_edges(engine, reference, n, method):
    ids = engine.encode(SHORT)
    ref = reference(SHORT, 40)
    drafter = Oracle(len(ids), ref) if method == "prompt-lookup" else method
    out = engine.generate(ids, GenerationConfig(max_new_tokens=n, budget=8), drafter)
    assert out.token_ids == ref[:n]
    assert out.finish_reason == "length"
    # the oracle's draft covers all n tokens in one pass; plain decoding needs one pass per token
    assert out.stats.steps == (min(n, 1) if method == "prompt-lookup" else n)


def test_streaming_concatenates_to_text(engine):
    stream = engine.stream(SHORT, GenerationConfig(max_new_tokens=24), "prompt-lookup")
    assert "".join(stream) == stream.result.text
    assert stream.result.stats.new_tokens == len(stream.result.token_ids)
    out = engine.generate(SHORT, GenerationConfig(max_new_tokens=24), "prompt-lookup")  # text once, at the end
    assert (out.text, out.token_ids) == (stream.result.text, stream.result.token_ids)


def test_sampling_is_seeded_and_respects_top_k(engine):
    cfg = GenerationConfig(max_new_tokens=24, temperature=0.8, top_k=5, seed=7)
    a = engine.generate(SHORT, cfg, "prompt-lookup")
    b = engine.generate(SHORT, cfg, "prompt-lookup")
    assert a.token_ids == b.token_ids and len(a.token_ids) > 0


@pytest.mark.parametrize(
    "prompt, cfg, message",
    [
        ("   ", {}, "prompt is empty"),
        ("hi " * 9000, {}, "context window"),
        ("hi", {"max_new_tokens": -1}, "max_new_tokens"),
        ("hi", {"temperature": -0.5}, "temperature"),
        ("hi", {"top_p": 0.0}, "top_p"),
        ("hi", {"budget": 0}, "budget"),
    ],
)
def test_bad_input_is_a_value_error(engine, prompt, cfg, message):
    with pytest.raises(ValueError, match=message):
        engine.generate(prompt, GenerationConfig(**cfg), "none")


def test_unknown_method(engine):
    with pytest.raises(ValueError, match="unknown method"):
        engine.generate("hi", GenerationConfig(), "magic")
