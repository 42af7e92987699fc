"""Drafting with a model of another tokenizer, through text.

The string-level route of Timor et al. 2025 (arXiv 2502.05202, "universal assisted generation"
in transformers): text is the one thing both tokenizers share. Each step:

 1. the target's committed tokens after the prompt are decoded to text;
 2. that text is re-encoded with the draft's tokenizer -- only a window at the end: tokens
    before it are frozen, so a step costs the same at token 10 and token 10,000 -- and the
    draft's KV cache is synced to it by longest common prefix (DraftLM);
 3. the draft model decodes a few tokens greedily; their text is re-encoded with the target's
    tokenizer, joined to the last committed target tokens, so that merges across the boundary
    come out as the target's tokenizer writes them;
 4. the last target token is dropped unless the draft ended its turn: its text may be the
    start of a longer token (the draft wrote "Hel", the target would write "Hello").

Verification is the target's own, so the output is exactly the target's whatever the draft
proposes: greedy output is token-identical to plain greedy. Under sampling the proposals are
deterministic (greedy draft tokens re-encoded), so `verify.sample` treats q as one-hot, which is
Leviathan et al.'s rule with a point-mass draft: lossless at any temperature. Matching the draft's
own distribution through a shared sub-vocabulary or an n-gram vocabulary map (Timor et al.'s
token-level methods; OmniDraft, arXiv 2507.02659) would raise acceptance under sampling; it is
not done here.

The prompt: when the target's prompt is one chat turn (optionally with a system message)
rendered by its chat template, the draft gets the same messages in its own template; otherwise
it reads the prompt's text.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import torch

from .base import EMPTY_DRAFT, Draft, Drafter, StepResult
from .draft_length import DraftLength
from .draft_lm import DraftLM, Level, decode_chain

WINDOW = 32  # draft tokens re-encoded each step at least; older ones are frozen
TAIL = 4  # committed target tokens re-encoded with the draft's text, for merges across the seam
PROBE = "Hello, world!\n  def f(x):\n\treturn x * 2  # café, naïve: 3.14 [ok] {a: 'b'}\n"
SENTINELS = ("\x00leapdecode-system\x00", "\x00leapdecode-user\x00")


def check_round_trip(tokenizer: Any, role: str, text: str = PROBE) -> None:
    """Text-level drafting needs decode(encode(text)) == text; fail loudly otherwise."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    back = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    if back != text:
        at = next((i for i, (a, b) in enumerate(zip(text, back)) if a != b), min(len(text), len(back)))
        raise ValueError(
            f"the {role} tokenizer does not reproduce text exactly ({text[at:at + 12]!r} comes back "
            f"as {back[at:at + 12]!r}), so a draft model with another tokenizer cannot be aligned "
            "to the target; use a draft model that shares the target's tokenizer"
        )


def decode(tokenizer: Any, ids: Sequence[int]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def continuation_ids(tokenizer: Any, tail: Sequence[int], text: str) -> list[int]:
    """Ids that continue the committed `tail` with `text`, as `tokenizer` would write them.

    The tail is re-encoded together with the text so that the pre-tokenizer sees the same
    context as it would in one piece; when that re-encoding no longer starts with the tail
    (the text merged into the tail's last token), the text is encoded on its own.
    """
    tail = list(tail)
    joined = encode(tokenizer, decode(tokenizer, tail) + text)
    if joined[: len(tail)] == tail:
        return joined[len(tail) :]
    return encode(tokenizer, text)


def chat_messages(text: str, tokenizer: Any) -> list[dict] | None:
    """The messages of a prompt rendered by `tokenizer`'s chat template (one user turn, with or
    without a system message), or None when the text has another shape."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    system, user = SENTINELS
    shapes = (
        [{"role": "user", "content": user}],
        [{"role": "system", "content": system}, {"role": "user", "content": user}],
    )
    for shape in shapes:
        try:
            rendered = tokenizer.apply_chat_template(shape, add_generation_prompt=True, tokenize=False)
        except Exception:  # a template without a system role, say: try the next shape
            continue
        found = _match(rendered, text, [m["content"] for m in shape])
        if found is not None:
            return [{"role": m["role"], "content": c} for m, c in zip(shape, found)]
    return None


def _match(rendered: str, text: str, sentinels: list[str]) -> list[str] | None:
    """Fill the sentinels of `rendered` from `text` (the literal pieces between them must match)."""
    pieces, rest = [], rendered
    for s in sentinels:
        before, found, rest = rest.partition(s)
        if not found:
            return None
        pieces.append(before)
    pieces.append(rest)
    if len(text) < len(pieces[0]) + len(pieces[-1]):
        return None
    if not text.startswith(pieces[0]) or not text.endswith(pieces[-1]):
        return None
    body = text[len(pieces[0]) : len(text) - len(pieces[-1])]
    values = []
    for literal in pieces[1:-1]:
        value, found, body = body.partition(literal)
        if not found:
            return None
        values.append(value)
    values.append(body)
    return values


class CrossTokenizerDrafter(Drafter):
    """A draft model with its own tokenizer drafting for the target through text.

    Built by DraftModelDrafter.configure when the two vocabularies differ; usable directly:

        CrossTokenizerDrafter(DraftLM(as_target(draft_model)), draft_tokenizer, target_tokenizer)
    """

    name = "draft-model"

    def __init__(
        self,
        lm: DraftLM,
        draft_tokenizer: Any,
        target_tokenizer: Any,
        length: DraftLength | None = None,
        target_eos: int | None = None,
        draft_eos: frozenset[int] = frozenset(),
    ):
        check_round_trip(draft_tokenizer, "draft model's")
        check_round_trip(target_tokenizer, "target model's")
        self.lm = lm
        self.draft_tok = draft_tokenizer
        self.target_tok = target_tokenizer
        self.length = length or DraftLength()
        self.target_eos = target_eos
        self.draft_eos = frozenset(draft_eos) | _turn_end_ids(draft_tokenizer)
        self.reset([])

    sizes_own_drafts = True  # its length rule stops each draft; the default is only its cap

    @property
    def default_budget(self) -> int:
        return self.length.max_length

    def reset(self, prompt: Sequence[int]) -> None:
        self._prompt_len = len(prompt)
        self._draft_prompt = self._translate_prompt(prompt) if prompt else []
        self._frozen_ids: list[int] = []
        self._frozen_text = ""
        self._last: tuple[list[float], list[int], int] | None = None

    def _translate_prompt(self, prompt: Sequence[int]) -> list[int]:
        text = decode(self.target_tok, prompt)
        messages = chat_messages(text, self.target_tok)
        if messages is not None and getattr(self.draft_tok, "chat_template", None):
            ids = self.draft_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            return list(ids if isinstance(ids, list) else ids["input_ids"])
        return list(self.draft_tok(text)["input_ids"])  # with the draft's BOS, if it uses one

    def _draft_context(self, text: str) -> list[int]:
        """Draft ids for the prompt and the generated `text`: frozen ids + a re-encoded window."""
        if not text.startswith(self._frozen_text):  # never expected: the text only grows
            self._frozen_ids, self._frozen_text = [], ""
        fresh = text[len(self._frozen_text) :]
        if not getattr(self.draft_tok, "is_fast", False):
            return self._draft_prompt + encode(self.draft_tok, text)
        enc = self.draft_tok(fresh, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
        if len(ids) > 2 * WINDOW:
            cut = len(ids) - WINDOW
            # freeze only at a clean seam: the token starts where the previous one ends
            while cut > 0 and offsets[cut][0] != offsets[cut - 1][1]:
                cut -= 1
            if cut > 0:
                self._frozen_ids += ids[:cut]
                self._frozen_text += fresh[: offsets[cut][0]]
                ids = ids[cut:]
        return self._draft_prompt + self._frozen_ids + ids

    def propose(self, context: Sequence[int], budget: int) -> Draft:
        self._last = None
        if not self._draft_prompt:
            return EMPTY_DRAFT
        text = decode(self.target_tok, context[self._prompt_len :]).rstrip("\ufffd")  # no half characters
        draft_context = self._draft_context(text)
        if len(draft_context) + budget + 1 >= self.lm.context_window:
            return EMPTY_DRAFT
        self.lm.take_extends()
        # one draft token more than the budget: the last target token is usually dropped
        levels = decode_chain(self.lm, draft_context, min(budget + 1, self.length.max_length),
                              self.length, self._pick, self.draft_eos)
        tokens = self._to_target(context, draft_context, levels)[:budget]
        self._last = ([lv.confidence for lv in levels], self._draft_ends(draft_context, levels),
                      self.lm.take_extends())
        self._proposed_at = time.perf_counter()
        return Draft(tuple(tokens))

    def _pick(self, logits: torch.Tensor) -> Level:
        probs = torch.softmax(logits.float(), dim=-1)  # [draft vocab]
        confidence, token = probs.max(dim=-1)
        return Level(int(token), float(confidence))

    def _to_target(self, context: Sequence[int], draft_context: list[int], levels: list[Level]) -> list[int]:
        """Target ids for the drafted text (the target's EOS too, when the draft ended its turn)."""
        drafted = [lv.token for lv in levels]
        ends = bool(drafted) and drafted[-1] in self.draft_eos
        if ends:
            drafted = drafted[:-1]
        seam = draft_context[-TAIL:]
        before = decode(self.draft_tok, seam)
        joined = decode(self.draft_tok, seam + drafted)
        new_text = joined[len(before) :] if joined.startswith(before) else decode(self.draft_tok, drafted)
        cut = new_text.find("\ufffd")
        if cut >= 0:  # an unfinished character: the text stops before it
            new_text, ends = new_text[:cut], False
        ids = continuation_ids(self.target_tok, context[-TAIL:], new_text) if new_text else []
        if not ends:
            return ids[:-1]
        return ids + ([self.target_eos] if self.target_eos is not None else [])

    def _draft_ends(self, draft_context: list[int], levels: list[Level]) -> list[int]:
        """Character offset where each draft token's text ends, from the start of the draft text."""
        seam = draft_context[-TAIL:]
        base = len(decode(self.draft_tok, seam))
        ends, tokens = [], list(seam)
        for lv in levels:
            tokens.append(lv.token)
            ends.append(len(decode(self.draft_tok, tokens)) - base)
        return ends

    def observe(self, result: StepResult) -> None:
        if self._last is None:
            return
        (confidences, ends, extends), self._last = self._last, None
        # draft tokens count as accepted when the accepted target text covers them
        accepted_chars = len(decode(self.target_tok, result.accepted))
        proposed_chars = len(decode(self.target_tok, result.draft.tokens))
        tried = sum(1 for e in ends if e <= proposed_chars) or 1
        accepted = sum(1 for e in ends[:tried] if e <= accepted_chars)
        self.length.record(confidences[:tried], accepted)
        step_s = time.perf_counter() - self._proposed_at
        self.length.record_cost(*extends, step_s, len(result.inputs))


def _turn_end_ids(tokenizer: Any) -> frozenset[int]:
    """Ids that end a turn in the draft's vocabulary: its EOS and the usual end-of-turn tokens."""
    ids = set()
    if isinstance(getattr(tokenizer, "eos_token_id", None), int):
        ids.add(tokenizer.eos_token_id)
    unknown = getattr(tokenizer, "unk_token_id", None)
    for text in ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|endoftext|>"):
        token_id = tokenizer.convert_tokens_to_ids(text)
        if isinstance(token_id, int) and token_id != unknown:
            ids.add(token_id)
    return frozenset(ids)
