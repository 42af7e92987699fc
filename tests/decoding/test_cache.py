"""The shared-prefix cache: rows that fan out and reorder give the logits of a fresh forward
pass over each row's full text, and the prompt is stored once."""

import torch

from leapdecode.decoding.cache import SharedPrefix


def test_rows_match_fresh_forward(engine):
    model = engine.target.model
    ids = engine.encode("What is the capital of France?")
    rows = SharedPrefix(model)
    first = rows.prefill(ids, capacity=1)  # capacity 1: the suffix buffer has to grow
    rows.select(torch.tensor([0, 0, 0]))
    rows.step(torch.tensor([5, 17, 300]))
    rows.select(torch.tensor([2, 0, 0]))  # rows: 300 / 5 / 5
    last = rows.step(torch.tensor([9, 9, 11]))
    with torch.inference_mode():
        fresh = [model(torch.tensor([ids + seq])).logits[0, -1].float()
                 for seq in ([], [300, 9], [5, 9], [5, 11])]
    assert torch.allclose(first, fresh[0], atol=1e-3)
    for r in range(3):
        assert torch.allclose(last[r], fresh[r + 1], atol=1e-3), r


def test_prompt_is_stored_once(engine):
    ids = engine.encode("Tell me a story about a dragon and a knight.")
    sizes = {}
    for copy in (False, True):
        rows = SharedPrefix(engine.target.model, copy_prefix=copy)
        rows.prefill(ids, capacity=4)
        prompt_bytes = rows.cache.nbytes()
        rows.select(torch.zeros(8, dtype=torch.long))
        rows.step(torch.arange(8))
        sizes[copy] = rows.cache.nbytes() / prompt_bytes
    assert sizes[False] < 1.5  # one prompt + 8 one-token suffixes
    assert sizes[True] > 7.9  # the baseline: 8 prompts
