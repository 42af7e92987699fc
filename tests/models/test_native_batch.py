"""Several sequences in one native pass: each row bitwise what its sequence's solo pass gives,
and every request of `generate_many` equal to its solo output."""

from __future__ import annotations

import threading

import pytest
import torch

from leapdecode import GenerationConfig
from leapdecode.engine import Engine
from leapdecode.models import registry
from leapdecode.models.native import load_native
from leapdecode.models.native.target import Part
from tests.conftest import pick_prompts


@pytest.fixture(scope="module")
def tokenizer():
    return registry.load_tokenizer("smollm2-135m")


@pytest.fixture(scope="module")
def solo():
    return load_native(registry.resolve("smollm2-135m"), "bfloat16", max_len=512, threads=2)


@pytest.fixture(scope="module")
def batched():
    return load_native(registry.resolve("smollm2-135m"), "bfloat16", max_len=512, threads=2, sequences=5)


def _solo_logits(target, prefix, tokens, depths, mask):
    target.reset()
    target.prefill(prefix)
    out = target.forward(tokens, depths, mask).clone()
    target.commit([])
    return out


def test_a_pass_of_several_sequences_gives_each_its_solo_rows(solo, batched):
    """Two regions with different contexts, a chain and a tree, beside a prefill chunk."""
    a, b, c = batched.regions[1], batched.regions[2], batched.regions[3]
    for region, prefix in ((a, list(range(300, 340))), (b, list(range(500, 517)))):
        region.length = 0
        batched.run([Part(region, prefix, torch.arange(len(prefix)), None, head=False)])
        batched.commit_region(region, range(len(prefix)))
    c.length = 0
    tree = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 0, 1]], dtype=torch.bool)
    parts = [Part(a, [7, 8, 9], torch.arange(3), None, head=True),
             Part(c, list(range(900, 930)), torch.arange(30), None, head=False),
             Part(b, [11, 12, 13], torch.tensor([0, 1, 1]), tree, head=True)]
    out = batched.run(parts)
    assert out[1] is None
    assert torch.equal(out[0], _solo_logits(solo, list(range(300, 340)), [7, 8, 9], torch.arange(3), None))
    assert torch.equal(out[2], _solo_logits(solo, list(range(500, 517)), [11, 12, 13], torch.tensor([0, 1, 1]), tree))
    for region, keep in ((a, [0, 1]), (c, range(30)), (b, [0, 2])):
        batched.commit_region(region, keep)
    assert (a.length, b.length, c.length) == (42, 19, 30)


def test_generate_many_equals_solo_for_every_request(solo, batched, tokenizer, dev_questions):
    """Six requests on four sequences (two wait for a free one), with drafts, plain decoding and
    an early EOS mixed: each output is token for token its solo output."""
    prompts = sorted(pick_prompts(dev_questions, 1), key=len)[:3]
    prompts += ["Say hi.", "Repeat: one two three one two three one two", prompts[0]]
    config = GenerationConfig(max_new_tokens=40)
    solo_engine = Engine(solo, tokenizer, name="smollm2-135m")
    batch_engine = Engine(batched, tokenizer, name="smollm2-135m")
    assert batch_engine.slots == 4
    for method in ("auto", "none"):
        alone = [solo_engine.generate(p, config, method).token_ids for p in prompts]
        together = batch_engine.generate_many(prompts, config, method)
        assert [g.token_ids for g in together] == alone, method


def test_a_pass_waits_for_every_open_sequence_and_a_close_releases_it(batched):
    first_cm, second_cm = batched.open_sequence(), batched.open_sequence()
    first, second = first_cm.__enter__(), second_cm.__enter__()
    assert first.region is not second.region
    done = threading.Event()
    worker = threading.Thread(target=lambda: (first.prefill([1, 2, 3]), done.set()))
    worker.start()
    assert not done.wait(0.5)  # `second` is open and has handed in nothing: the pass waits
    second_cm.__exit__(None, None, None)  # closing it lets `first` run alone
    worker.join(timeout=30)
    assert done.is_set() and first.length == 3
    first_cm.__exit__(None, None, None)
    opened = [batched.open_sequence() for _ in range(4)]
    for o in opened:
        o.__enter__()
    with pytest.raises(RuntimeError, match="sequences are in use"):
        batched.open_sequence().__enter__()
    for o in opened:
        o.__exit__(None, None, None)


def test_sequences_opened_at_once_get_distinct_regions_and_a_bad_part_fails_alone(batched):
    barrier, got, errors = threading.Barrier(4), [], []

    def open_and_prefill(tokens):
        barrier.wait(10)
        with batched.open_sequence() as seq:
            got.append(seq.region.index)
            barrier.wait(10)  # all four open before any pass: each pass waits for all of them
            try:
                seq.prefill(tokens)
                seq.forward([1] * 600, torch.arange(600), None)  # past this sequence's 512 slots
            except ValueError as err:
                errors.append(str(err))
            barrier.wait(10)  # every sequence stays open until all four have run

    threads = [threading.Thread(target=open_and_prefill, args=([5 + i] * (3 + i),)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(got) == [1, 2, 3, 4]
    assert len(errors) == 4 and all("holds 512 tokens per sequence" in e for e in errors)
