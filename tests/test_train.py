"""Training, evaluation, resuming and checkpoints, on scikit-learn's digits."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from ebnn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ebnn.data import Dataset, FeatureQuantizer, load_dataset, normalization, train_val_split
from ebnn.model import build_model
from ebnn.spec import load_spec
from ebnn.train import (
    TrainConfig,
    _forward_with_preactivations,
    early_exit_penalty,
    evaluate,
    last_path,
    recalibrate_batch_norm,
    squared_hinge,
    train,
)

SPEC = load_spec("digits")


@pytest.fixture(scope="module")
def digits() -> tuple[Dataset, Dataset, Dataset]:
    train_ds, val_ds = train_val_split(load_dataset("digits", "train"), 0.1, seed=0)
    return train_ds, val_ds, load_dataset("digits", "test")


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 3, "threads": 1, **kw})


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _without_seconds(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


def test_digits_reaches_sane_accuracy(digits, tmp_path):
    train_ds, val_ds, test_ds = digits
    result = train(SPEC, train_ds, val_ds, _cfg(epochs=8), tmp_path / "d.pt", progress=False)
    assert len(result.history) == 8 and result.resumed_from == 0
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    test = evaluate(result.model, test_ds)
    assert test["n"] == len(test_ds)
    assert test["accuracy"] >= 0.85, test
    # The returned model is the saved best one, with its validation accuracy.
    assert evaluate(result.model, val_ds)["accuracy"] == result.best_val_accuracy
    assert result.best_val_accuracy == max(h["val_accuracy"] for h in result.history)
    # Normalisation comes from the training set and is stored in the model.
    offsets, scale = normalization(train_ds.x)
    assert result.model.input_offset.tolist() == offsets
    assert result.model.input_scale.item() == pytest.approx(scale)
    # Atomic writes leave nothing but the two checkpoints behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.pt", "d.pt.last"]


def test_same_seed_same_weights_other_seed_differs(digits, tmp_path):
    train_ds, val_ds, _ = digits
    cfg = _cfg(epochs=2, augment_shift=1)
    a = train(SPEC, train_ds, val_ds, cfg, tmp_path / "a.pt", progress=False)
    b = train(SPEC, train_ds, val_ds, cfg, tmp_path / "b.pt", progress=False)
    c = train(SPEC, train_ds, val_ds, _cfg(epochs=2, augment_shift=1, seed=1), tmp_path / "c.pt",
              progress=False)
    assert _same_weights(a.model, b.model)
    assert _without_seconds(a.history) == _without_seconds(b.history)
    assert not _same_weights(a.model, c.model)


class _Stop(Exception):
    pass


def _stop_after(stop: int):
    def on_epoch(epoch: int, record: dict) -> None:  # called after the checkpoints are written
        if epoch == stop:
            raise _Stop
    return on_epoch


def test_interrupted_run_resumes_to_identical_result(digits, tmp_path):
    train_ds, val_ds, _ = digits
    cfg = _cfg(epochs=4, augment_shift=1)
    full = train(SPEC, train_ds, val_ds, cfg, tmp_path / "full.pt", progress=False)

    out = tmp_path / "cut.pt"
    with pytest.raises(_Stop):
        train(SPEC, train_ds, val_ds, cfg, out, progress=False, on_epoch=_stop_after(2))
    assert load_checkpoint(last_path(out)).train_state["epoch"] == 2
    lines: list[str] = []
    resumed = train(SPEC, train_ds, val_ds, cfg, out, progress=False, log=lines.append)
    assert resumed.resumed_from == 2
    assert lines[0].startswith("resuming") and "epoch 2/4" in lines[0]
    assert [line.split(":")[0] for line in lines[1:]] == ["epoch 3/4", "epoch 4/4"]
    assert _without_seconds(resumed.history) == _without_seconds(full.history)
    assert _same_weights(load_checkpoint(last_path(out)).model,
                         load_checkpoint(last_path(tmp_path / "full.pt")).model)
    assert _same_weights(resumed.model, full.model)
    assert resumed.best_epoch == full.best_epoch

    # A finished run trains no more and leaves its files alone.
    before = {p: p.read_bytes() for p in (out, last_path(out))}
    again = train(SPEC, train_ds, val_ds, cfg, out, progress=False)
    assert again.resumed_from == 4 and len(again.history) == 4
    assert again.best_epoch == full.best_epoch
    assert all(p.read_bytes() == data for p, data in before.items())


def test_resume_refuses_a_different_run(digits, tmp_path):
    train_ds, val_ds, _ = digits
    out = tmp_path / "r.pt"
    train(SPEC, train_ds, val_ds, _cfg(epochs=1), out, progress=False)
    with pytest.raises(CheckpointError, match=r"different run \(lr: 0.01 -> 0.002\)"):
        train(SPEC, train_ds, val_ds, _cfg(epochs=1, lr=2e-3), out, progress=False)


def test_no_validation_set_keeps_latest(digits, tmp_path):
    train_ds, _, _ = digits
    result = train(SPEC, train_ds, None, _cfg(epochs=2), tmp_path / "n.pt", progress=False)
    assert result.best_epoch == 2 and result.best_val_accuracy is None
    assert all(h["val_accuracy"] is None for h in result.history)
    assert load_checkpoint(tmp_path / "n.pt").meta["epoch"] == 2


def test_squared_hinge_loss_and_early_exit_training(digits, tmp_path):
    train_ds, val_ds, test_ds = digits
    cfg = _cfg(epochs=3, loss="squared-hinge", early_exit_reg=0.1, lr_decay="exponential")
    result = train(SPEC, train_ds, val_ds, cfg, tmp_path / "h.pt", progress=False)
    assert evaluate(result.model, test_ds)["accuracy"] >= 0.7
    lrs = [h["lr"] for h in result.history]
    assert lrs == pytest.approx([1e-2, 1e-3, 1e-4])  # exponential decay to lr/100


def test_memory_efficient_training_matches_standard(digits, tmp_path):
    train_ds, val_ds, _ = digits
    std = train(SPEC, train_ds, val_ds, _cfg(epochs=1), tmp_path / "s.pt", progress=False)
    eff = train(SPEC, train_ds, val_ds, _cfg(epochs=1, memory_efficient=True), tmp_path / "e.pt",
                progress=False)
    assert eff.history[0]["loss"] == pytest.approx(std.history[0]["loss"], rel=1e-4)
    assert type(load_checkpoint(tmp_path / "e.pt").model) is type(std.model)


def test_squared_hinge_by_hand():
    scores = torch.tensor([[0.5, -2.0, 1.5]])
    # targets (-1, +1, -1): relu(1 + 0.5)^2, relu(1 - (-2))^2, relu(1 + 1.5)^2, mean of 3
    expected = (1.5**2 + 3.0**2 + 2.5**2) / 3
    assert squared_hinge(scores, torch.tensor([1])).item() == pytest.approx(expected)
    assert squared_hinge(torch.tensor([[-1.0, 1.0]]), torch.tensor([1])).item() == 0.0


def test_early_exit_penalty_and_forward_agree():
    pres = [torch.tensor([0.0, 2.0, -0.5]), torch.tensor([[1.0, -3.0]])]
    # layer means: (1 + 0 + 0.5) / 3 = 0.5 and (0 + 0) / 2 = 0; mean of layers 0.25
    assert early_exit_penalty(pres, margin=1.0).item() == pytest.approx(0.25)
    torch.manual_seed(0)
    model = build_model(SPEC).eval()
    x = torch.randint(0, 17, (5, 1, 8, 8), dtype=torch.uint8)
    scores, pres = _forward_with_preactivations(model, x)
    assert torch.equal(scores, model(x)) and len(pres) == 2


def test_recalibrate_batch_norm_uses_statistics_of_the_data():
    torch.manual_seed(0)
    model = build_model(SPEC, offset=[8], scale=5.0).eval()
    x = torch.randint(0, 17, (50, 1, 8, 8), dtype=torch.uint8)
    recalibrate_batch_norm(model, x, batch_size=50)  # one chunk: exact batch statistics
    bn = model.blocks[0].bn
    z = model.blocks[0].pool(model.blocks[0].conv(model.normalize(x)))
    assert torch.allclose(bn.running_mean, z.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(bn.running_var, z.var((0, 2, 3)), rtol=1e-4)
    assert bn.momentum == 0.1 and not model.training  # settings restored


def test_evaluate_counts_and_loss():
    torch.manual_seed(0)
    model = build_model(SPEC).eval()
    x = np.random.default_rng(0).integers(0, 17, (37, 1, 8, 8), dtype=np.uint8)
    scores = model(torch.as_tensor(x))
    y = scores.argmax(1).numpy().copy()
    y[:7] = (y[:7] + 1) % 10  # exactly 7 wrong
    m = evaluate(model.train(), Dataset(x, y, 10, "t"), batch_size=8)
    assert m["n"] == 37 and m["accuracy"] == pytest.approx(30 / 37)
    assert m["loss"] == pytest.approx(F.cross_entropy(scores, torch.as_tensor(y)).item(), rel=1e-5)
    assert model.training  # evaluate restores the mode it found


def test_config_rejects_bad_values():
    for kw, msg in [({"epochs": 0}, "epochs"), ({"loss": "mse"}, "loss"),
                    ({"lr": 0.0}, "learning rate"), ({"batch_size": 1}, "batch size"),
                    ({"val_fraction": 1.0}, "validation"), ({"lr_decay": "step"}, "decay")]:
        with pytest.raises(ValueError, match=msg):
            TrainConfig(**kw)


def test_train_rejects_data_of_another_shape(digits, tmp_path):
    train_ds, val_ds, _ = digits
    with pytest.raises(ValueError, match=r"input shape \[1, 8, 8\].*expects \[1, 28, 28\]"):
        train(load_spec("ebnn-mnist"), train_ds, val_ds, _cfg(), tmp_path / "x.pt")


# ---- checkpoints --------------------------------------------------------------------------
def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_model(SPEC, offset=[3], scale=2.5)
    q = FeatureQuantizer(mean=[0.5] * 64, std=[2.0] * 64)  # one per input value
    history = [{"epoch": 1, "loss": 0.5}]
    path = tmp_path / "sub" / "m.pt"
    save_checkpoint(path, model, quantizer=q, meta={"data": "x"}, history=history)
    ck = load_checkpoint(path)
    assert not ck.model.training and ck.spec == SPEC
    assert ck.model.input_offset.tolist() == [3.0] and ck.model.input_scale.item() == 2.5
    assert FeatureQuantizer.from_dict(ck.quantizer) == q
    assert ck.meta == {"data": "x"} and ck.history == history and ck.train_state is None
    x = torch.randint(0, 17, (4, 1, 8, 8), dtype=torch.uint8)
    assert torch.equal(ck.model(x), model.eval()(x))
    assert [p.name for p in path.parent.iterdir()] == ["m.pt"]  # no temporary file left
    # Plain contents: loadable without unpickling code.
    assert torch.load(path, weights_only=True)["format"] == "ebnn-checkpoint"


def test_checkpoint_rejects_non_plain_meta(tmp_path):
    with pytest.raises(TypeError, match="meta"):
        save_checkpoint(tmp_path / "m.pt", build_model(SPEC), meta={"a": np.float32(1)})
    assert not list(tmp_path.iterdir())


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.mark.parametrize("content, message", [
    (None, "no such checkpoint"),
    (b"hello, not a checkpoint", "not a readable checkpoint"),
    ("truncated", "not a readable checkpoint"),
    (_torch_bytes({"weights": torch.zeros(2)}), "not an ebnn checkpoint"),
    (_torch_bytes({"format": "ebnn-checkpoint", "version": 99}), "version 99 is newer"),
    (_torch_bytes({"format": "ebnn-checkpoint", "version": 1, "spec": {"blocks": []}}),
     "damaged checkpoint"),
])
def test_checkpoint_errors(tmp_path, content, message):
    path = tmp_path / "bad.pt"
    if content == "truncated":
        save_checkpoint(path, build_model(SPEC))
        content = path.read_bytes()[:200]
    if content is not None:
        Path(path).write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_small_last_batch_warns_with_a_batch_size_that_fits():
    """50 examples in batches of 8 end every epoch on a batch of 2 (the footgun that kept
    the gesture preset underfit); 10 divides them, and MNIST's 4,500 in 64 leave 20."""
    from ebnn.train_checks import small_last_batch

    msg = small_last_batch(50, 8)
    assert msg is not None and "batch of 2 of 50" in msg and "(e.g. 9)" in msg
    assert small_last_batch(50, 10) is None
    assert small_last_batch(4500, 64) is None
    assert small_last_batch(49, 8) is None  # a batch of 1 is left out, not used
    assert small_last_batch(53, 16, world_size=2) is None  # 5 left: more than a quarter
    assert small_last_batch(1295, 64) is None  # the digits demo: 15 left, enough for BN
    assert small_last_batch(6, 64) is None  # one batch holds the whole epoch
    assert small_last_batch(68, 32, world_size=2) is not None  # 4 left: 2 per process
    assert small_last_batch(67, 32, world_size=2) is None  # 3 left: too few, left out


def test_train_warns_about_a_small_last_batch(digits, tmp_path):
    train_ds, _, _ = digits
    small = Dataset(train_ds.x[:50], train_ds.y[:50], train_ds.classes, "digits-50")
    with pytest.warns(UserWarning, match="batch of 2 of 50"):
        train(SPEC, small, None, _cfg(epochs=1, batch_size=8), tmp_path / "w.pt", progress=False)
