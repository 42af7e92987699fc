"""The target adapter: tree attention and cache compaction against fresh causal passes (float32)."""

import torch

from leapdecode import tree
from leapdecode.drafters import Draft
from leapdecode.models.hf import column_layout

PROMPT = [1, 4093, 198, 19556, 905, 28, 638, 359, 346, 47, 2, 198, 1, 520, 9531, 198]


def fresh_logits(model, ids):
    """A plain causal pass in the layout HFTarget's passes use (the column one in float32)."""
    with torch.inference_mode(), column_layout():
        return model(torch.tensor([ids])).logits[0].float()  # [len, vocab]


def run_tree(target, committed, draft):
    target.reset()
    target.prefill(committed[:-1])
    lay = tree.layout(draft)
    return target.forward([committed[-1], *draft.tokens], lay.depths, lay.mask).float()


# A tree pass and the causal passes it stands for have different sizes, which round differently
# (BLAS blocking; ~1e-5 of logits about 20 in size): 5e-4 allows that, while a wrong mask or
# position moves logits by whole units.
ATOL = 5e-4


def test_tree_logits_equal_causal_logits_along_each_path(engine):
    target = engine.target
    draft = Draft((504, 3575, 282, 4649, 17, 314, 260), (-1, 0, 0, -1, 3, 4, 2))
    logits = run_tree(target, PROMPT, draft)
    target.commit([0])
    parents = draft.parent_list()
    for node in range(len(draft)):
        path, j = [], node
        while j >= 0:
            path.append(draft.tokens[j])
            j = parents[j]
        expected = fresh_logits(target.model, PROMPT + path[::-1])[-1]
        assert torch.allclose(logits[node + 1], expected, atol=ATOL), node
    root_expected = fresh_logits(target.model, PROMPT)[-1]
    assert torch.allclose(logits[0], root_expected, atol=ATOL)


def test_compaction_round_trip_equals_fresh_prefill(engine):
    target = engine.target
    draft = Draft((504, 3575, 282, 4649, 17), (-1, 0, -1, 2, 3))
    run_tree(target, PROMPT, draft)
    target.commit([0, 3, 4, 5])  # root, then nodes 2, 3, 4: a branch that is not a prefix
    committed = PROMPT + [282, 4649, 17]
    assert target.length == len(committed)
    nxt = target.forward([9], torch.tensor([0]), None).float()[0]
    target.commit_all()
    assert torch.allclose(nxt, fresh_logits(target.model, committed + [9])[-1], atol=1e-4)


def test_trim_then_append_equals_fresh_prefill(engine):
    target = engine.target
    target.reset()
    target.prefill(PROMPT)
    target.trim(len(PROMPT) - 5)
    logits = target.forward(PROMPT[-5:], torch.arange(5), None).float()
    target.commit_all()
    assert torch.allclose(logits, fresh_logits(target.model, PROMPT)[-5:], atol=1e-4)
