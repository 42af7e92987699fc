"""Trained heads: a tiny `train-head` run on the CPU, its heads' drafts against plain decoding
(token ids, bf16 on the batch-invariant runtime), and the errors of a head that does not fit."""

from __future__ import annotations

import shutil

import pytest
import torch

import leapdecode
from leapdecode import GenerationConfig
from leapdecode.drafters import EMPTY_DRAFT, Drafter
from leapdecode.heads.model import HeadFile
from leapdecode.heads.train import train

from ..conftest import give_pass_costs

TINY = dict(prompts=6, passages=2, max_new_tokens=12, gen_batch=8, steps=4, batch=4, max_len=64, vocab=512,
            quiet=True)
PROMPTS = ["Write a short story about a dragon.", "Explain how rain forms, briefly.",
           "def fibonacci(n):\n    # return the n-th Fibonacci number"]
SHALLOW = {"eagle": {"depth": 3}}  # a shallower tree: the same checks in less time


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    """An eagle and a medusa head trained a few steps on the packaged model's own outputs."""
    root = tmp_path_factory.mktemp("heads")
    eagle = train("smollm2-135m", "eagle", root / "eagle", **TINY)
    (root / "medusa").mkdir()
    shutil.copy(root / "eagle" / "data.pt", root / "medusa" / "data.pt")  # stages 1-2 reused
    medusa = train("smollm2-135m", "medusa", root / "medusa", medusa_heads=3, **TINY)
    return {"eagle": eagle, "medusa": medusa}


@pytest.fixture(scope="module")
def native():
    return leapdecode.load("smollm2-135m", "bfloat16", backend="native", max_len=512)


def test_train_head_writes_a_loadable_head_and_its_curve(heads):
    for kind, path in heads.items():
        file = HeadFile.load(path)
        assert file.config.kind == kind and file.config.model == "smollm2-135m"
        assert file.vocab.numel() == 512 and file.config.trained["steps"] == TINY["steps"]
        assert (path.parent / "curve.png").stat().st_size > 0
        assert (path.parent / "ckpt.pt").exists()


@pytest.mark.parametrize("kind,budget", [("eagle", None), ("eagle", "auto"), ("medusa", 3)])
def test_head_drafts_keep_greedy_output_bitwise(native, heads, kind, budget, monkeypatch):
    give_pass_costs(native, monkeypatch)
    config = GenerationConfig(max_new_tokens=32, budget=budget)
    drafted = 0
    for prompt in PROMPTS[::2]:
        plain = native.generate(prompt, config, "none")
        out = native.generate(prompt, config, kind, head=str(heads[kind]), **SHALLOW.get(kind, {}))
        assert out.token_ids == plain.token_ids
        drafted += out.stats.drafted
    assert drafted > 0  # the head did draft


def test_eagle_sampling_is_reproducible_and_drafts_chains(native, heads):
    config = GenerationConfig(max_new_tokens=24, temperature=0.8, seed=7)
    a = native.generate(PROMPTS[0], config, "eagle", head=str(heads["eagle"]))
    b = native.generate(PROMPTS[0], config, "eagle", head=str(heads["eagle"]))
    assert a.token_ids == b.token_ids and a.stats.drafted > 0


def test_heads_in_a_shared_pass_equal_solo(heads):
    engine = leapdecode.load("smollm2-135m", "bfloat16", backend="native", max_len=256, batch=3)
    config = GenerationConfig(max_new_tokens=16)
    solo = [engine.generate(p, config, "eagle", head=str(heads["eagle"]), depth=3).token_ids for p in PROMPTS]
    many = engine.generate_many(PROMPTS, config, "eagle", head=str(heads["eagle"]), depth=3)
    assert [g.token_ids for g in many] == solo


def test_head_errors_name_the_fix(native, heads, tmp_path, engine):
    with pytest.raises(ValueError, match="native runtime"):  # transformers exposes no features here
        engine.generate("Hi", GenerationConfig(max_new_tokens=4), "eagle", head=str(heads["eagle"]))
    with pytest.raises(ValueError, match="is a medusa head"):
        native.generate("Hi", GenerationConfig(max_new_tokens=4), "eagle", head=str(heads["medusa"]))
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(heads["eagle"].read_bytes()[:5000])
    with pytest.raises(ValueError, match="corrupt or not a leapdecode head"):
        native.generate("Hi", GenerationConfig(max_new_tokens=4), "eagle", head=str(corrupt))
    foreign = HeadFile.load(heads["eagle"])
    foreign.config.vocab_size, foreign.config.model = 1000, "another-model"
    foreign.save(tmp_path / "foreign.safetensors")
    with pytest.raises(ValueError, match="trained for another-model"):
        native.generate("Hi", GenerationConfig(max_new_tokens=4), "eagle", head=str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ValueError, match="does not exist"):
        native.generate("Hi", GenerationConfig(max_new_tokens=4), "eagle", head=str(tmp_path / "missing"))


def test_train_head_cli_errors(tmp_path, capsys):
    from leapdecode.cli import main

    assert main(["train-head", "--kind", "eagle", "--out", str(tmp_path), "--steps", "0"]) == 2
    assert "--steps must be >= 1" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["train-head", "--kind", "eagle", "--out", str(tmp_path / "file"), "--prompts", "1",
                 "--passages", "0", "--max-new-tokens", "4", "--steps", "1", "--quiet"]) == 2
    assert "is a file" in capsys.readouterr().err


def test_shipped_heads_load_by_name_and_keep_output(native):
    """The heads shipped for smollm2-135m are found without --opt head=; `auto` drafts its tree with
    Token Recycling's unless told `tree=eagle`, small drafts included (the head's levels cost more
    than they gain there: docs/heads.md)."""
    from leapdecode.drafters import make_drafter
    from leapdecode.drafters.eagle import EagleDrafter
    from leapdecode.heads.model import shipped_head

    assert shipped_head("smollm2-135m", "eagle") and shipped_head("smollm2-135m", "medusa")
    config = GenerationConfig(max_new_tokens=24)
    plain = native.generate(PROMPTS[1], config, "none")
    for method, options, budget in (("eagle", {}, None), ("medusa", {}, None), ("auto", {}, 3), ("auto", {}, 8),
                                    ("auto", {"tree": "eagle"}, 8)):
        out = native.generate(PROMPTS[1], GenerationConfig(max_new_tokens=24, budget=budget), method, **options)
        assert out.token_ids == plain.token_ids and out.stats.drafted > 0, (method, options, budget)
    for tree in ("auto", "recycling"):
        auto = make_drafter("auto", tree=tree)
        auto.configure(config.sampling, native.info)
        assert auto.eagle is None and auto.recycle is not None, tree
    head = make_drafter("auto", tree="eagle")
    head.configure(config.sampling, native.info)
    assert isinstance(head.eagle, EagleDrafter) and head.recycle is None
    with pytest.raises(ValueError, match="tree must be one of auto, recycling, eagle"):
        make_drafter("auto", tree="oak")


class _SkipsFirst(Drafter):
    """Drafts nothing at the first step without asking the head (as a budget of 0 would)."""

    def __init__(self, inner: Drafter):
        self.inner, self.first = inner, True

    def configure(self, sampling, target=None):
        self.inner.configure(sampling, target)

    def reset(self, prompt):
        self.inner.reset(prompt)
        self.first = True

    def propose(self, context, budget):
        if self.first:
            self.first = False
            return EMPTY_DRAFT
        return self.inner.propose(context, budget)

    def observe(self, result):
        self.inner.observe(result)


@pytest.mark.parametrize("kind", ["eagle", "medusa"])
def test_heads_after_a_first_step_without_draft(native, kind):
    from leapdecode.drafters import make_drafter

    config = GenerationConfig(max_new_tokens=24)
    plain = native.generate(PROMPTS[0], config, "none")
    out = native.generate(PROMPTS[0], config, _SkipsFirst(make_drafter(kind)))
    assert out.token_ids == plain.token_ids and out.stats.drafted > 0
