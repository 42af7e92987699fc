import pytest
import torch

from leapdecode.sampling import SamplingParams, make_warp


def test_top_k_keeps_k_best():
    probs = make_warp(SamplingParams(temperature=1.0, top_k=2))(torch.tensor([1.0, 3.0, 2.0, 0.0]))
    assert (probs > 0).tolist() == [False, True, True, False]
    assert torch.isclose(probs.sum(), torch.tensor(1.0))


def test_top_p_keeps_smallest_covering_set():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    probs = make_warp(SamplingParams(temperature=1.0, top_p=0.7))(logits)
    assert (probs > 0).tolist() == [True, True, False, False]
    assert torch.allclose(probs, torch.tensor([0.625, 0.375, 0.0, 0.0]))


def test_temperature_sharpens():
    logits = torch.tensor([1.0, 2.0])
    cold = make_warp(SamplingParams(temperature=0.5))(logits)
    hot = make_warp(SamplingParams(temperature=2.0))(logits)
    assert cold[1] > hot[1] > 0.5


@pytest.mark.parametrize(
    "kwargs", [dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(top_k=-1), dict(top_k=1.5)]
)
def test_bad_params(kwargs):
    with pytest.raises(ValueError):
        SamplingParams(**kwargs)
