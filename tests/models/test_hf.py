"""The column layout of models/hf.py on tiny literal layers: the same product, and the layers
compute exactly as before outside an HFTarget's passes."""

import torch

from leapdecode.models import hf
from leapdecode.models.hf import column_layout, install_column_layout


def tiny(dtype=torch.float32):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3, bias=False)).to(dtype)


def test_column_layout_computes_the_same_product():
    model = tiny()
    x = torch.randn(2, 4, 8)  # [batch, rows, in]
    before = model(x)
    assert install_column_layout(model)
    with column_layout():
        inside = model(x)
    assert inside.shape == before.shape == (2, 4, 3)
    assert torch.allclose(inside, before, atol=1e-6)
    assert torch.equal(model(x), before)  # outside the block: F.linear, bit for bit


def test_column_layout_is_off_by_default_and_nests():
    assert not hf._LAYOUT.column
    with column_layout(False):
        with column_layout():
            assert hf._LAYOUT.column
        assert not hf._LAYOUT.column
    assert not hf._LAYOUT.column


def test_other_dtypes_are_left_alone():
    model = tiny(torch.bfloat16)
    assert not install_column_layout(model)
    assert all("forward" not in m.__dict__ for m in model.modules())
