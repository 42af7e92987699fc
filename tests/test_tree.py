import torch

from leapdecode import tree
from leapdecode.drafters import Draft


def test_chain_layout_is_causal():
    lay = tree.layout(Draft((4, 5, 6)))
    assert lay.mask is None
    assert lay.depths.tolist() == [0, 1, 2, 3]
    assert lay.children == ((1,), (2,), (3,), ())


def test_tree_layout_mask_depths_children():
    # root - a - b ; a - c - d   (docstring example)
    lay = tree.layout(Draft((10, 11, 12, 13), (-1, 0, 0, 2)))
    assert lay.depths.tolist() == [0, 1, 2, 2, 3]
    assert lay.children == ((1,), (2, 3), (), (4,), ())
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0],
            [1, 1, 0, 1, 0],
            [1, 1, 0, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(lay.mask, expected)


def test_two_roots_do_not_see_each_other():
    lay = tree.layout(Draft((1, 2, 3), (-1, -1, 1)))
    assert lay.mask[1].tolist() == [True, True, False, False]
    assert lay.mask[3].tolist() == [True, False, True, True]
    assert lay.depths.tolist() == [0, 1, 1, 2]


def test_leaf_paths():
    assert tree.leaf_paths((-1, 0, 0, 2)) == [[0, 1], [0, 2, 3]]
    assert tree.leaf_paths((-1, -1)) == [[0], [1]]


def test_from_paths_medusa_style():
    nodes, parents = tree.from_paths([(7, 8), (7, 9, 1), (3,)])
    assert nodes == [(7,), (3,), (7, 8), (7, 9), (7, 9, 1)]
    assert parents == (-1, -1, 0, 0, 3)


def test_draft_rejects_bad_parents():
    import pytest

    with pytest.raises(ValueError):
        Draft((1, 2), (-1, 1))
    with pytest.raises(ValueError):
        Draft((1, 2), (-1,))
