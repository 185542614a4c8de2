"""Memory-efficient training (issue #5): exact gradients from packed bits.

Exactness is tested against standard training of the same model: bit for bit when a
conv block convolves the whole batch at once, and within 1e-5 of the gradient's largest
magnitude when it works in chunks (only summation order differs then).
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from ebnn.layers import ConvBlock, DenseBlock
from ebnn.memeff import (
    is_memory_efficient,
    make_memory_efficient,
    make_standard,
    pack_bits,
    unpack_bits,
    unpack_signs,
)
from ebnn.memeff_measure import (
    choose_batch_size,
    measure_footprint,
    parse_bytes,
    saved_tensor_report,
)
from ebnn.model import BNN, build_model
from ebnn.spec import ModelSpec, load_spec

CHUNK_RTOL = 1e-5

# Odd sizes on purpose: a 7x7 map pooled 2x2 (floor drops a row and a column), "valid" and
# "same" padding, a conv block without pooling, 3x3 pooling, dense after conv.
ODD = ModelSpec.from_dict({"name": "odd", "input_shape": [2, 15, 15], "classes": 5, "blocks": [
    {"type": "conv", "filters": 6, "kernel": 3, "padding": 0, "pool": 2},    # 13 -> 6
    {"type": "conv", "filters": 5, "kernel": 3, "padding": 1, "pool": 1},    # 6 -> 6
    {"type": "conv", "filters": 7, "kernel": 3, "padding": 1, "pool": 3},    # 6 -> 2
    {"type": "dense", "units": 9},
    {"type": "output"}]})
MLP = load_spec("bnn-mlp:40")
# Rectangular: a 1x5 kernel "same" along W only, pools 1x2 and 2x3 that do not divide.
RECT = ModelSpec.from_dict({"name": "rect", "input_shape": [2, 5, 21], "classes": 3, "blocks": [
    {"type": "conv", "filters": 6, "kernel": [1, 5], "padding": [0, 2], "pool": [1, 2]},  # 5x10
    {"type": "conv", "filters": 5, "kernel": [3, 1], "padding": [1, 0], "pool": [2, 3]},  # 2x3
    {"type": "dense", "units": 9},
    {"type": "output"}]})


def _spread(model: BNN, seed: int = 0) -> BNN:
    """Latent weights partly outside [-1, 1] and varied BN affine parameters, so that both
    STE masks (weights and activations) have zeros and ones."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.copy_(torch.rand(p.shape, generator=g) * 3 - 1.5)
            elif name.endswith("weight"):
                p.copy_(torch.rand(p.shape, generator=g) * 1.5 + 0.1)
            else:
                p.copy_(torch.rand(p.shape, generator=g) - 0.5)
    return model


def _pair(spec: ModelSpec, chunk: int | None, seed: int = 0) -> tuple[BNN, BNN]:
    """Two identical models, standard and memory-efficient. (Built twice rather than
    deep-copied: ``copy.deepcopy`` drops the latent-weight mark that clipping needs.)"""
    models = []
    for _ in range(2):
        torch.manual_seed(seed)
        models.append(_spread(build_model(spec, [37] * spec.input_shape[0], 61.25), seed))
    return models[0], make_memory_efficient(models[1], chunk_size=chunk)


def _batch(spec: ModelSpec, n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, *spec.input_shape), generator=g, dtype=torch.uint8)
    return x, torch.randint(0, spec.classes, (n,), generator=g)


def _step(model: BNN, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
    model.train()
    model.zero_grad(set_to_none=True)
    out = model(x)
    F.cross_entropy(out, y).backward()
    return out.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}


# ---- bit packing --------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(3, 8), (2, 13), (4, 3, 5, 7), (1, 1)])
def test_pack_roundtrip_and_size(shape: tuple[int, ...]) -> None:
    bits = torch.rand(shape) > 0.5
    packed = pack_bits(bits)
    d = int(np.prod(shape[1:]))
    assert packed.dtype == torch.uint8 and packed.shape == (shape[0], (d + 7) // 8)
    assert torch.equal(unpack_bits(packed, shape), bits)
    assert torch.equal(unpack_signs(packed, shape), torch.where(bits, 1.0, -1.0))
    # LSB first; the unused high bits of the last byte are 0.
    ref = np.packbits(bits.reshape(shape[0], -1).numpy(), axis=1, bitorder="little")
    assert np.array_equal(packed.numpy(), ref)


def test_unpack_rejects_wrong_shape() -> None:
    with pytest.raises(ValueError, match="cannot hold"):
        unpack_bits(torch.zeros(2, 3, dtype=torch.uint8), (2, 30))


# ---- exactness ----------------------------------------------------------------------------
@pytest.mark.parametrize("spec", [ODD, MLP, load_spec("digits"), RECT],
                         ids=["odd-conv", "mlp", "digits", "rect"])
def test_whole_batch_gradients_are_bit_identical(spec: ModelSpec) -> None:
    std, eff = _pair(spec, chunk=None)
    x, y = _batch(spec, 24)
    out_s, g_s = _step(std, x, y)
    out_e, g_e = _step(eff, x, y)
    assert torch.equal(out_s, out_e)
    for k in g_s:
        assert torch.equal(g_s[k], g_e[k]), k
        assert 0 < (g_s[k] != 0).sum() < g_s[k].numel() or g_s[k].dim() == 1, k  # masks bite
    for (k, a), (_, b) in zip(std.state_dict().items(), eff.state_dict().items(), strict=True):
        assert torch.equal(a, b), k  # running stats and num_batches_tracked too


@pytest.mark.parametrize("spec", [ODD, load_spec("ebnn-mnist"), RECT],
                         ids=["odd-conv", "ebnn-mnist", "rect"])
def test_chunked_gradients_within_rounding(spec: ModelSpec) -> None:
    std, eff = _pair(spec, chunk=7)
    x, y = _batch(spec, 30)  # chunks of 7, 7, 7, 7, 2
    out_s, g_s = _step(std, x, y)
    out_e, g_e = _step(eff, x, y)
    assert torch.equal(out_s, out_e)  # the forward pass is exact chunk by chunk
    worst = 0.0
    for k in g_s:
        scale = float(g_s[k].abs().max())
        err = float((g_s[k] - g_e[k]).abs().max())
        assert err <= CHUNK_RTOL * scale + 1e-12, (k, err, scale)
        worst = max(worst, err / scale)
    assert worst > 0 or spec in (ODD, RECT)  # ebnn-mnist really sums in another order
    for (k, a), (_, b) in zip(std.state_dict().items(), eff.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_real_mnist_images(mnist_dir) -> None:
    from ebnn.data import load_dataset, normalization

    ds = load_dataset("mnist", "test", mnist_dir)
    spec = load_spec("ebnn-mnist")
    offsets, scale = normalization(ds.x[:2000])
    std = build_model(spec, offsets, scale)
    eff = make_memory_efficient(build_model(spec, offsets, scale), chunk_size=None)
    eff.load_state_dict(std.state_dict())
    x, y = torch.as_tensor(ds.x[:48]), torch.as_tensor(ds.y[:48])
    out_s, g_s = _step(std, x, y)
    out_e, g_e = _step(eff, x, y)
    assert torch.equal(out_s, out_e)
    assert all(torch.equal(g_s[k], g_e[k]) for k in g_s)


def test_training_steps_with_adam_stay_identical() -> None:
    spec = load_spec("digits")
    std, eff = _pair(spec, chunk=None)
    opts = [torch.optim.Adam(m.parameters(), lr=0.05) for m in (std, eff)]
    for step in range(5):
        x, y = _batch(spec, 16, seed=step)
        for m, opt in zip((std, eff), opts, strict=True):
            _step(m, x, y)
            opt.step()  # latent weights are clipped by ebnn.layers' hook in both
    for (k, a), (_, b) in zip(std.state_dict().items(), eff.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert float(std.blocks[0].conv.weight.detach().abs().max()) <= 1.0


def test_bn_momentum_none_and_no_affine() -> None:
    std, eff = _pair(ODD, chunk=None)
    for m in (std, eff):
        m.blocks[0].bn.momentum = None  # cumulative average, as in BN recalibration
    x, y = _batch(ODD, 12)
    for _ in range(2):
        _step(std, x, y)
        _step(eff, x, y)
    assert torch.equal(std.blocks[0].bn.running_var, eff.blocks[0].bn.running_var)
    assert int(eff.blocks[0].bn.num_batches_tracked) == 2


def test_frozen_batch_norm_runs_the_standard_path() -> None:
    std, eff = _pair(ODD, chunk=None)
    for m in (std, eff):
        m.train()
        m.blocks[1].bn.eval()  # running statistics, as when fine-tuning with frozen BN
    x, y = _batch(ODD, 10)
    rep = saved_tensor_report(eff, x, y)
    assert any(t.dtype == torch.float32 and t.block == "1" and t.category == "activation"
               for t in rep.tensors)
    out_s, g_s = _step_keep_bn(std, x, y)
    out_e, g_e = _step_keep_bn(eff, x, y)
    assert torch.equal(out_s, out_e)
    assert all(torch.equal(g_s[k], g_e[k]) for k in g_s)


def _step_keep_bn(model: BNN, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
    model.zero_grad(set_to_none=True)
    out = model(x)
    F.cross_entropy(out, y).backward()
    return out.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}


def test_non_binary_block_input_falls_back_to_floats() -> None:
    block = ConvBlock(2, 4, 3, padding=1, pool=2)
    eff = copy.deepcopy(block)
    model = build_model(load_spec("digits"))
    model.blocks[0] = eff
    make_memory_efficient(model)  # switches `eff` too
    x = torch.randn(6, 2, 8, 8, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    with pytest.warns(UserWarning, match="not ±1"):
        out = eff(x)
    out.sum().backward()
    block(x2).sum().backward()
    assert torch.equal(x.grad, x2.grad)
    assert torch.equal(eff.conv.weight.grad, block.conv.weight.grad)


# ---- what is saved ------------------------------------------------------------------------
def test_saved_tensors_are_packed_bits() -> None:
    spec = load_spec("small-conv")  # conv 1x28x28 -> 32x14x14 -> 64x7x7 -> dense 128 -> 10
    std, eff = _pair(spec, chunk=16)
    n = 37
    x, y = _batch(spec, n)
    rep = saved_tensor_report(eff, x, y)
    blocks = {b: [t for t in rep.tensors if t.block == b and t.category == "activation"]
              for b in ("0", "1", "2", "3")}
    per_sample = {  # kept input, then sign mask (packed: bytes = ceil(values / 8))
        "0": [(torch.uint8, 28 * 28), (torch.uint8, 32 * 14 * 14 // 8)],
        "1": [(torch.uint8, 32 * 14 * 14 // 8), (torch.uint8, 64 * 7 * 7 // 8)],
        "2": [(torch.uint8, 64 * 7 * 7 // 8), (torch.uint8, 128 // 8)],
        "3": [(torch.uint8, 128 // 8)],
    }
    for b, expect in per_sample.items():
        got = [(t.dtype, t.nbytes) for t in blocks[b]]
        assert got == [(dt, n * size) for dt, size in expect], b
    # Nothing batch-sized and float is kept by any block, only 2 floats per BN channel.
    others = [t for t in rep.tensors if t.block != "loss" and t.category == "other"]
    assert all(t.dtype == torch.float32 and len(t.shape) == 1 for t in others)
    assert sum(t.nbytes for t in others) == 2 * 4 * (32 + 64 + 128 + 10)
    # The standard model keeps far more (the issue asks for at least 4x).
    base = saved_tensor_report(std, x, y)
    assert base.activation_bytes > 50 * rep.activation_bytes
    # The report restored the running statistics it disturbed.
    assert int(eff.blocks[0].bn.num_batches_tracked) == 0


def test_first_dense_block_keeps_uint8_image() -> None:
    std, eff = _pair(MLP, chunk=None)
    x, y = _batch(MLP, 10)
    rep = saved_tensor_report(eff, x, y)
    first = [t for t in rep.tensors if t.block == "0" and t.category == "activation"]
    assert first[0].dtype == torch.uint8 and first[0].shape == (10, 1, 28, 28)


# ---- the model stays the same model -------------------------------------------------------
def test_eval_forward_and_state_dict_unchanged() -> None:
    std, eff = _pair(ODD, chunk=5)
    assert is_memory_efficient(eff) and not is_memory_efficient(std)
    assert list(std.state_dict()) == list(eff.state_dict())
    x, _ = _batch(ODD, 9)
    std.eval()
    eff.eval()
    assert torch.equal(std(x), eff(x))
    assert isinstance(eff, BNN) and isinstance(eff.blocks[3], DenseBlock)
    with torch.no_grad():  # training mode without gradients: the standard forward too
        assert torch.equal(std.train()(x), eff.train()(x))
    back = make_standard(eff)
    assert type(back) is BNN and type(back.blocks[0]) is ConvBlock
    fresh = make_memory_efficient(build_model(ODD))
    fresh.load_state_dict(std.state_dict())
    assert torch.equal(fresh.eval()(x), std.eval()(x))


def test_rejects_other_models() -> None:
    with pytest.raises(TypeError):
        make_memory_efficient(torch.nn.Linear(2, 2))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        make_memory_efficient(build_model(MLP), chunk_size=0)


# ---- memory measurement and batch-size choice ----------------------------------------------
def test_parse_bytes() -> None:
    assert parse_bytes("64MB") == 64 * 2**20 == parse_bytes("64 MiB") == parse_bytes("64m")
    assert parse_bytes("512KB") == 512 * 1024
    assert parse_bytes("1.5G") == 3 * 2**29
    assert parse_bytes(1000) == 1000 == parse_bytes("1000")
    with pytest.raises(ValueError, match="memory size"):
        parse_bytes("lots")


def test_footprint_grows_with_batch_and_is_smaller_when_memory_efficient() -> None:
    spec = load_spec("ebnn-mnist")
    std = [measure_footprint(spec, n, memory_efficient=False).peak_bytes for n in (64, 256)]
    eff = [measure_footprint(spec, n, memory_efficient=True).peak_bytes for n in (64, 256)]
    assert std[1] > std[0] and eff[1] > eff[0]
    assert (eff[1] - eff[0]) * 2 < std[1] - std[0]  # per-sample cost at least halved


def test_choose_batch_size_fits_budget() -> None:
    spec = ModelSpec.from_dict({"name": "t", "input_shape": [1, 12, 12], "classes": 4,
                                "blocks": [{"type": "conv", "filters": 8, "kernel": 3,
                                            "padding": 1, "pool": 2},
                                           {"type": "output"}]})
    budget = measure_footprint(spec, 100, memory_efficient=True).peak_bytes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # profiler notices
        n = choose_batch_size(spec, budget, memory_efficient=True, max_batch=400)
    assert measure_footprint(spec, n, memory_efficient=True).peak_bytes <= budget
    assert measure_footprint(spec, n + 1, memory_efficient=True).peak_bytes > budget
    assert 80 <= n <= 120
    with pytest.raises(ValueError, match="not even"):
        choose_batch_size(spec, 1000)


def test_train_uses_memory_efficient_mode(tmp_path) -> None:
    from ebnn.data import load_dataset
    from ebnn.train import TrainConfig, train

    ds = load_dataset("digits", "train")
    spec = load_spec("digits")
    hist = []
    for eff in (False, True):
        cfg = TrainConfig(epochs=2, batch_size=64, memory_efficient=eff, threads=1)
        res = train(spec, ds, None, cfg, tmp_path / f"m{eff}.pt", progress=False)
        hist.append([h["loss"] for h in res.history])
    # Batches no larger than one chunk: the very same gradients, so the very same run.
    assert hist[0] == hist[1]
