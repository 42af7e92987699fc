"""Cross-tokenizer drafting: text alignment on literal strings with the packaged tokenizers, then
Gemma 3 270M (another tokenizer) drafting for the 135M target: output identical to plain greedy."""

import pytest
import torch
from transformers import AutoTokenizer

from leapdecode import GenerationConfig
from leapdecode.drafters.cross_tokenizer import (
    WINDOW,
    CrossTokenizerDrafter,
    chat_messages,
    check_round_trip,
    continuation_ids,
    decode,
    encode,
)
from leapdecode.drafters.draft_model import DraftModelDrafter
from leapdecode.models.registry import resolve
from tests.conftest import pick_prompts

PROMPTS = ["Write a short poem about the sea.", "What is 17 * 23? Explain step by step.",
           "List three uses of Python dictionaries."]


@pytest.fixture(scope="module")
def tokenizers():
    return {name: AutoTokenizer.from_pretrained(resolve(name), local_files_only=True)
            for name in ("smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b")}


def run(engine, drafter, prompt, config):
    """The engine calls `configure` at request start; calling it here too keeps these tests
    independent of that wiring (configure is idempotent)."""
    drafter.configure(config.sampling, engine.info)
    return engine.generate(prompt, config, drafter)


# ---- text alignment -------------------------------------------------------------------------
def test_continuation_keeps_the_committed_tail(tokenizers):
    tok = tokenizers["qwen2.5-coder-0.5b"]
    tail = encode(tok, "def add(a, b):\n")
    ids = continuation_ids(tok, tail, "    return a + b")
    assert decode(tok, tail + ids) == "def add(a, b):\n    return a + b"
    assert ids == encode(tok, "def add(a, b):\n    return a + b")[len(tail):]


def test_continuation_after_a_word_cut_in_the_middle(tokenizers):
    tok = tokenizers["smollm2-135m"]
    tail = encode(tok, "The quick brown fox jum")
    ids = continuation_ids(tok, tail, "ps over")
    assert decode(tok, tail + ids) == "The quick brown fox jumps over"


@pytest.mark.parametrize("name", ["qwen2.5-coder-0.5b", "smollm2-135m"])
def test_chat_messages_recovered_from_a_rendered_prompt(tokenizers, name):
    tok = tokenizers[name]
    for messages in (
        [{"role": "user", "content": "Hi there,\nhow are you?"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2 + 2?"}],
    ):
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert chat_messages(text, tok) == messages
    assert chat_messages("just some text", tok) is None
    assert chat_messages("anything", tokenizers["gemma3-270m"]) is None  # base model: no template


def test_prompt_translated_into_the_drafts_template(tokenizers):
    qwen, smol = tokenizers["qwen2.5-coder-0.5b"], tokenizers["smollm2-135m"]
    drafter = CrossTokenizerDrafter(None, smol, qwen)
    messages = [{"role": "user", "content": "Name a color."}]
    prompt = qwen.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    prompt = prompt if isinstance(prompt, list) else prompt["input_ids"]
    drafter.reset(prompt)
    assert decode(smol, drafter._draft_prompt) == smol.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False)
    raw = encode(qwen, "Once upon a time")
    drafter.reset(raw)  # not a chat prompt: the draft reads the text (with its own BOS, if any)
    assert decode(smol, drafter._draft_prompt).endswith("Once upon a time")


def test_draft_context_freezes_old_tokens_and_keeps_the_text(tokenizers):
    smol, gemma = tokenizers["smollm2-135m"], tokenizers["gemma3-270m"]
    drafter = CrossTokenizerDrafter(None, gemma, smol)
    drafter.reset(encode(smol, "Tell me a story."))
    words = " ".join(f"word{i}, and" for i in range(60))
    for end in range(10, len(words), 37):  # the text grows as the target commits tokens
        ids = drafter._draft_context(words[:end])
        assert decode(gemma, ids[len(drafter._draft_prompt):]) == words[:end]
    assert len(drafter._frozen_ids) > WINDOW  # old tokens were frozen, not re-encoded
    assert decode(gemma, drafter._frozen_ids) == drafter._frozen_text


class Lowercasing:
    """A tokenizer that loses case: text cannot be aligned through it."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text.lower()]}

    def decode(self, ids, **_):
        return "".join(map(chr, ids))


def test_unalignable_vocabulary_is_a_clear_error(tokenizers):
    with pytest.raises(ValueError, match="cannot be aligned"):
        check_round_trip(Lowercasing(), "draft model's")
    with pytest.raises(ValueError, match="cannot be aligned"):
        CrossTokenizerDrafter(None, Lowercasing(), tokenizers["smollm2-135m"])


# ---- end to end: Gemma 3 270M drafting for SmolLM2 135M -------------------------------------
@pytest.fixture(scope="module")
def gemma_drafter():
    return DraftModelDrafter("gemma3-270m", length=4)


def test_greedy_output_is_identical_with_another_tokenizer(engine, reference, gemma_drafter):
    with pytest.warns(UserWarning, match="larger than the target"):
        gemma_drafter.configure(GenerationConfig().sampling, engine.info)
    assert isinstance(gemma_drafter._cross, CrossTokenizerDrafter)
    accepted = 0
    for prompt in PROMPTS[:2]:
        out = run(engine, gemma_drafter, prompt, GenerationConfig(max_new_tokens=16))
        assert out.token_ids == reference(prompt, 16)
        accepted += sum(k * v for k, v in out.stats.accepted_hist.items())
    assert accepted > 0  # the alignment works: some drafted target tokens were right


def test_cross_proposals_are_target_ids_without_probs(engine, gemma_drafter):
    config = GenerationConfig(max_new_tokens=8, temperature=0.7, seed=1)
    gemma_drafter.configure(config.sampling, engine.info)
    prompt = engine.encode(PROMPTS[0])
    gemma_drafter.reset(prompt)
    draft = gemma_drafter.propose(prompt, 6)
    assert draft.probs is None  # deterministic proposals: verified with a one-hot q
    assert len(draft) <= 6 and all(0 <= t < engine.target.vocab_size for t in draft.tokens)
    out = run(engine, gemma_drafter, PROMPTS[0], config)
    assert len(out.token_ids) == 8


# ---- the real target (slow) -----------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("draft", ["smollm2-135m", "gemma3-270m"])
def test_cross_tokenizer_for_qwen_identical(dev_questions, draft):
    import leapdecode

    torch.set_num_threads(2)
    target = leapdecode.load("qwen2.5-coder-1.5b", dtype="float32")
    for prompt in pick_prompts(dev_questions, 1)[:2]:
        plain = target.generate(prompt, GenerationConfig(max_new_tokens=32), "none")
        out = run(target, DraftModelDrafter(draft, length=4), prompt, GenerationConfig(max_new_tokens=32))
        assert out.token_ids == plain.token_ids
