"""Every drafter, end to end on the 135M model in float32 (transformers): token-identical to plain
greedy. Budgets and drafter state on the native runtime in bf16, token-identical to its `none`."""

import pytest

from leapdecode import GenerationConfig
from leapdecode.drafters import DRAFTERS, Drafter
from leapdecode.drafters.retrieval import build_store

from .conftest import give_pass_costs, pick_prompts

N = 32
DRAFTERS_HERE = ["prompt-lookup", "suffix", "ngram-adaptive", "token-recycling", "lookahead", "retrieval", "auto"]


@pytest.fixture(scope="module")
def prompts(dev_questions):
    return pick_prompts(dev_questions, per_subtask=1)[:3]  # mt_bench, translation, summarization


@pytest.fixture(scope="module")
def store(engine, dev_questions, tmp_path_factory):
    texts = [t for q in dev_questions[40:] for t in q["turns"]]
    path = tmp_path_factory.mktemp("store") / "store.npz"
    build_store([engine.tokenizer(t)["input_ids"] for t in texts]).save(path)
    return str(path)


def options(method, store):
    return {"store": store} if method == "retrieval" else {}


# drafters whose end-to-end identity test lives elsewhere: they need a second model or trained heads
COVERED_ELSEWHERE = {
    "none": "the reference itself",
    "draft-model": "tests/drafters/test_draft_model.py",
    "eagle": "tests/heads/test_heads.py (native runtime: the heads read its features)",
    "medusa": "tests/heads/test_heads.py (native runtime: the heads read its features)",
}


def test_every_registered_drafter_is_covered():
    assert set(DRAFTERS) == set(DRAFTERS_HERE) | set(COVERED_ELSEWHERE)


@pytest.mark.parametrize("method", DRAFTERS_HERE)
def test_identical_to_greedy(engine, reference, prompts, store, method):
    steps = tokens = 0
    for prompt in prompts[1:]:  # translation, and summarization's long prompt with much to copy
        out = engine.generate(prompt, GenerationConfig(max_new_tokens=N), method, **options(method, store))
        assert out.token_ids == reference(prompt, N), (method, prompt[:60])
        steps, tokens = steps + out.stats.steps, tokens + len(out.token_ids)
    assert steps <= tokens


@pytest.fixture(scope="module")
def native():
    """The engine on the native runtime in bf16, where every drafter's output is bitwise `none`'s
    (batch invariance): the budget and state tests below are about the engine and the drafters, not
    the backend, and run there at a fraction of a float32 transformers pass's cost."""
    import leapdecode

    engine = leapdecode.load("smollm2-135m", "bfloat16", backend="native")
    plain = {}

    def none(prompt):
        if prompt not in plain:
            plain[prompt] = engine.generate(prompt, GenerationConfig(max_new_tokens=N), "none").token_ids
        return plain[prompt]

    return engine, none


@pytest.mark.parametrize("budget", [1, 3, "auto"])
@pytest.mark.parametrize("method", ["token-recycling", "auto", "lookahead"])
def test_identical_at_other_budgets(native, prompts, method, budget, monkeypatch):
    engine, none = native
    give_pass_costs(engine, monkeypatch)
    prompt = prompts[1]
    out = engine.generate(prompt, GenerationConfig(max_new_tokens=N, budget=budget), method)
    assert out.token_ids == none(prompt)
    if budget != "auto":
        assert out.stats.drafted <= budget * out.stats.steps


def test_drafter_state_does_not_leak_between_requests(native, prompts):
    """token-recycling keeps its matrix across requests; the output must not depend on it."""
    from leapdecode.drafters import make_drafter

    engine, none = native
    drafter = make_drafter("token-recycling")
    for prompt in prompts[:2] + prompts[:1]:  # a fixed budget: the sized default differs by CPU
        out = engine.generate(prompt, GenerationConfig(max_new_tokens=N, budget=16), drafter)
        assert out.token_ids == none(prompt)


def test_default_budget_sized_to_the_machines_pass_costs(engine, reference, prompts, monkeypatch):
    """Where the target asks (the native runtime), a drafter's default budget follows the measured
    pass costs (budget.sized_default); given costs here, so the test does not depend on the CPU."""
    from leapdecode.budget import DEFAULT_SIZES
    from leapdecode.drafters import make_drafter

    monkeypatch.setattr(engine.target, "sizes_drafts", True, raising=False)  # as the native runtime's
    key = f"{engine.name}|{engine.target.cache_key}|sizes {DEFAULT_SIZES[0]}-{DEFAULT_SIZES[-1]}"
    drafter = make_drafter("suffix")
    monkeypatch.setitem(engine._pass_costs, key, {k: 1.0 + 0.02 * k for k in DEFAULT_SIZES})  # nearly flat
    assert engine.default_budget(drafter) == drafter.default_budget
    monkeypatch.setitem(engine._pass_costs, key, {k: 1.0 if k <= 4 else 0.3 * k for k in DEFAULT_SIZES})
    assert engine.default_budget(drafter) == 3
    out = engine.generate(prompts[0], GenerationConfig(max_new_tokens=N), drafter)
    assert out.token_ids == reference(prompts[0], N)
    assert out.stats.drafted <= 3 * out.stats.steps

    class OwnLength(Drafter):  # sizes each draft itself, as a draft model does: its cap stays
        default_budget, sizes_own_drafts = 8, True

    assert engine.default_budget(OwnLength()) == 8
    monkeypatch.setattr(engine.target, "sizes_drafts", False)  # a target that does not ask
    assert engine.default_budget(drafter) == drafter.default_budget
