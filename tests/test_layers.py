"""The binary layers: sign and its straight-through gradient, latent-weight clipping,
construction warnings."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.nn import functional as F

from ebnn.layers import BinaryConv2d, BinaryLinear, clip_latent_weights, is_latent, sign
from ebnn.model import build_model
from ebnn.spec import load_spec


def test_sign_values_and_zero_is_plus_one():
    x = torch.tensor([-2.0, -1e-7, -0.0, 0.0, 1e-7, 3.0])
    assert sign(x).tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0, 1.0]


def test_ste_gradient_passes_exactly_where_abs_x_at_most_one():
    x = torch.tensor([-3.0, -1.0001, -1.0, -0.5, 0.0, 0.5, 1.0, 1.0001, 3.0], requires_grad=True)
    upstream = torch.arange(1.0, 10.0)  # distinct values: each must come through unchanged
    sign(x).backward(upstream)
    expected = [0.0, 0.0, 3.0, 4.0, 5.0, 6.0, 7.0, 0.0, 0.0]
    assert x.grad.tolist() == expected


def test_binary_layers_use_sign_of_latent_weights():
    lin = BinaryLinear(3, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.3, -0.2, 0.0], [-0.9, 0.1, -0.0001]]))
    out = lin(torch.tensor([[1.0, 2.0, 4.0]]))
    assert out.tolist() == [[1.0 - 2.0 + 4.0, -1.0 + 2.0 - 4.0]]

    conv = BinaryConv2d(1, 1, 3, padding=1)
    with torch.no_grad():
        conv.weight.fill_(-0.01)
    y = conv(torch.ones(1, 1, 3, 3))
    assert y[0, 0, 1, 1].item() == -9.0  # interior: all 9 taps
    assert y[0, 0, 0, 0].item() == -4.0  # corner: padded taps contribute 0


def _train_steps(opt_name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(load_spec("digits"))
    params = list(model.parameters())
    opt = (torch.optim.Adam(params, lr=0.5) if opt_name == "adam"
           else torch.optim.SGD(params, lr=50.0, momentum=0.9))
    x = torch.randint(0, 17, (32, 1, 8, 8), dtype=torch.uint8)
    y = torch.randint(0, 10, (32,))
    for _ in range(3):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    return model


@pytest.mark.parametrize("opt_name", ["adam", "sgd"])
def test_latent_weights_clipped_after_optimizer_step(opt_name):
    model = _train_steps(opt_name)
    latent = [p for p in model.parameters() if is_latent(p)]
    assert len(latent) == 3  # one per block
    for p in latent:
        assert p.grad is not None and p.grad.abs().sum() > 0  # the step really moved them
        assert p.abs().max().item() <= 1.0
    # The large steps must have pushed weights onto the boundary, so clipping did happen.
    assert any((p.abs() == 1.0).any() for p in latent)
    # Batch-norm parameters are real-valued and are not clipped.
    bn = [p for n, p in model.named_parameters() if "bn" in n]
    assert bn and not any(is_latent(p) for p in bn)
    assert max(p.abs().max().item() for p in bn) > 1.0


def test_clip_latent_weights_leaves_other_parameters():
    lin = BinaryLinear(2, 2)
    other = torch.nn.Parameter(torch.tensor([5.0, -5.0]))
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[2.0, -3.0], [0.5, -0.5]]))
    clip_latent_weights([lin.weight, other])
    assert lin.weight.tolist() == [[1.0, -1.0], [0.5, -0.5]]
    assert other.tolist() == [5.0, -5.0]


def test_construction_warnings():
    with pytest.warns(UserWarning, match="bias"):
        BinaryLinear(4, 2, bias=True)
    with pytest.warns(UserWarning, match="bias"):
        BinaryConv2d(1, 2, 3, bias=True)
    with pytest.warns(UserWarning, match="padding"):
        BinaryConv2d(1, 2, 5, padding=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the supported configurations are silent
        BinaryLinear(4, 2)
        BinaryConv2d(1, 2, 3, padding=1)
        BinaryConv2d(1, 2, 3, padding=0)
