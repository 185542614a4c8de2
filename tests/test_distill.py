"""Knowledge distillation (ebnn.distill) and the recipe options (ebnn.recipe): a float
teacher trains and is cached, the distilled student's loss decreases and its checkpoint
folds and exports bit-exactly; memory-efficient training distils to the same weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ebnn import engine, hostc
from ebnn.checkpoint import load_checkpoint
from ebnn.cli import main
from ebnn.data import load_dataset, random_affine, random_flip, train_val_split
from ebnn.distill import FloatNet, distillation_loss, float_twin, is_float
from ebnn.fold import fold
from ebnn.search import Budget, BudgetError
from ebnn.search.budget import count_for_ms, parse_ms
from ebnn.spec import ModelSpec, load_spec
from ebnn.train import TrainConfig, evaluate, train

SMALL = {"name": "small", "input_shape": [1, 8, 8], "classes": 10,
         "blocks": [{"type": "conv", "filters": 8, "kernel": 3, "pool": 2},
                    {"type": "dense", "units": 32}, {"type": "output"}]}


@pytest.fixture(scope="module")
def digits():
    ds = load_dataset("digits")
    return ds, *train_val_split(ds, 0.2, seed=0)


@pytest.fixture(scope="module")
def distilled(digits, tmp_path_factory):
    """A student distilled from a cached float teacher (trained first), on digits."""
    ds, tr, va = digits
    out = tmp_path_factory.mktemp("kd") / "student.pt"
    spec = ModelSpec.from_dict(SMALL)
    cfg = TrainConfig(epochs=6, batch_size=32, teacher="float", teacher_epochs=4,
                      distill_alpha=0.7, distill_temperature=2.0, threads=1)
    logs: list[str] = []
    result = train(spec, tr, va, cfg, out, progress=False, log=logs.append)
    return result, cfg, out, logs


def test_distilled_student_learns_and_teacher_is_cached(digits, distilled):
    ds, tr, va = digits
    result, cfg, out, logs = distilled
    steps = len(result.batch_losses) // cfg.epochs
    first = np.mean(result.batch_losses[:steps])
    last = np.mean(result.batch_losses[-steps:])
    assert last < 0.7 * first, (first, last)
    assert evaluate(result.model, va)["accuracy"] > 0.8
    assert result.meta["config"]["teacher"] == "float"
    cached = list((out.parent / "teachers").glob("*.pt"))
    assert len(cached) == 1
    teacher = load_checkpoint(cached[0]).model
    assert isinstance(teacher, FloatNet) and is_float(teacher)
    assert evaluate(teacher, va)["accuracy"] > 0.85
    # The float weights are real-valued (not clipped like latent binary weights).
    assert not torch.equal(teacher.blocks[0].conv.weight.sign(),
                           teacher.blocks[0].conv.weight)
    # A second student with other distillation settings reuses the teacher: not retrained.
    mtime = cached[0].stat().st_mtime_ns
    again: list[str] = []
    other = TrainConfig(epochs=1, batch_size=32, teacher="float", teacher_epochs=4,
                        distill_alpha=0.3, threads=1)
    train(ModelSpec.from_dict(SMALL), tr, va, other, out.parent / "other.pt", progress=False,
          log=again.append)
    assert cached[0].stat().st_mtime_ns == mtime
    assert not any("teacher epoch" in line for line in again)
    assert any("teacher epoch" in line for line in logs)


def test_distilled_checkpoint_folds_and_exports_bit_exact(digits, distilled):
    ds, tr, va = digits
    result, _cfg, out, _logs = distilled
    ck = load_checkpoint(out)
    imodel = fold(ck.model)
    x = np.asarray(va.x)
    with torch.no_grad():
        torch_pred = ck.model(torch.from_numpy(x)).argmax(1).numpy()
    pred = engine.predict(imodel, x)
    assert (pred == torch_pred).mean() > 0.99  # ties in the float scores may differ
    cm = hostc.convert(imodel)
    try:
        np.testing.assert_array_equal(cm.scores(x), engine.scores(imodel, x))
    finally:
        cm.close()


def test_memory_efficient_distillation_gives_the_same_weights(digits, tmp_path):
    ds, tr, va = digits
    spec = ModelSpec.from_dict(SMALL)
    teacher = float_twin(spec)  # any teacher will do; a fixed random one is cheap
    path = tmp_path / "teacher.pt"
    from ebnn.checkpoint import save_checkpoint

    save_checkpoint(path, teacher, meta={"float_network": True})
    states = []
    for memeff in (False, True):
        cfg = TrainConfig(epochs=2, batch_size=32, teacher=str(path), memory_efficient=memeff,
                          augment_shift=1, augment_rotate=10, augment_scale=0.1,
                          augment_flip=True, label_smoothing=0.1, bn_freeze_epochs=1, threads=1)
        r = train(spec, tr, va, cfg, tmp_path / f"m{memeff}.pt", progress=False)
        states.append(r.model.state_dict())
    for key in states[0]:
        torch.testing.assert_close(states[0][key], states[1][key], rtol=0, atol=1e-5)


def test_distillation_loss_is_zero_for_equal_scores_and_positive_otherwise():
    s = torch.randn(5, 4)
    assert float(distillation_loss(s, s, 2.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_loss(s, -s, 2.0)) > 0
    # T**2 scaling: the gradient scale stays comparable across temperatures
    s.requires_grad_(True)
    t = torch.randn(5, 4)
    g = [torch.autograd.grad(distillation_loss(s, t, temp), s)[0].abs().mean()
         for temp in (1.0, 4.0)]
    assert 0.1 < float(g[1] / g[0]) < 10


def test_teacher_of_another_shape_is_a_clear_cli_error(tmp_path, capsys):
    teacher = float_twin(load_spec("digits").with_input((1, 8, 8), 5))
    from ebnn.checkpoint import save_checkpoint

    path = tmp_path / "t.pt"
    save_checkpoint(path, teacher, meta={"float_network": True})
    rc = main(["train", "--data", "digits", "--model", "digits", "--epochs", "1",
               "--teacher", str(path), "--out", str(tmp_path / "s.pt"), "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "ebnn: error:" in err and "5 classes" in err and "10" in err
    assert main(["train", "--data", "digits", "--model", "digits", "--epochs", "2",
                 "--bn-freeze-epochs", "2", "--out", str(tmp_path / "b.pt")]) == 2
    assert "--bn-freeze-epochs" in capsys.readouterr().err


def test_float_checkpoint_round_trip_and_no_fold(tmp_path):
    spec = ModelSpec.from_dict(SMALL)
    from ebnn.checkpoint import save_checkpoint

    net = float_twin(spec).eval()
    path = tmp_path / "f.pt"
    save_checkpoint(path, net, meta={"float_network": True})
    back = load_checkpoint(path).model
    assert isinstance(back, FloatNet)
    x = torch.randint(0, 17, (4, 1, 8, 8), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(back(x), net(x))
    with pytest.raises(ValueError, match="cannot be folded"):
        fold(back)


def test_random_affine():
    x = torch.zeros(3, 1, 9, 9, dtype=torch.uint8)
    x[:, 0, 2, 4] = 200  # one bright pixel above the centre
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(random_affine(x, 0, 0, gen), x)
    a = random_affine(x, 30, 0.2, torch.Generator().manual_seed(1))
    b = random_affine(x, 30, 0.2, torch.Generator().manual_seed(1))
    assert a.dtype == torch.uint8 and a.shape == x.shape and torch.equal(a, b)
    assert not torch.equal(a, x)
    # The bright pixel's centroid keeps its distance from the centre under rotation and
    # scales with the zoom, which alone keeps its direction.
    many = x[:1].repeat(50, 1, 1, 1)
    for degrees, zoom, low, high in ((90.0, 0.0, 1.6, 2.4), (0.0, 0.2, 1.3, 2.7)):
        out = random_affine(many, degrees, zoom, torch.Generator().manual_seed(3)).double()
        w = out[:, 0].sum((1, 2))
        rows = (out[:, 0].sum(2) * torch.arange(9)).sum(1) / w - 4
        cols = (out[:, 0].sum(1) * torch.arange(9)).sum(1) / w - 4
        dist = torch.sqrt(rows ** 2 + cols ** 2)
        assert bool((dist > low).all() and (dist < high).all()), dist
        if degrees == 0:
            assert bool((cols.abs() < 0.05).all() and (rows < 0).all())
        else:
            assert float(cols.abs().max()) > 1.0  # some images turned far


def test_random_flip_mirrors_about_half_of_the_images_and_leaves_the_rest():
    x = torch.randint(0, 256, (400, 2, 5, 7), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(0))
    out = random_flip(x, torch.Generator().manual_seed(1))
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert torch.equal(out, random_flip(x, torch.Generator().manual_seed(1)))
    mirrored = [bool(torch.equal(o, i.flip(-1))) for o, i in zip(out, x, strict=True)]
    kept = [bool(torch.equal(o, i)) for o, i in zip(out, x, strict=True)]
    assert all(m != k for m, k in zip(mirrored, kept, strict=True))  # one or the other
    assert 160 < sum(mirrored) < 240  # p = 1/2 per image
    with pytest.raises(ValueError, match="N, C, H, W"):
        random_flip(x[0])


def test_max_ms_budget():
    b = Budget.parse("2KB", "32KB", "atmega328p", max_ms="100")
    assert b.max_count == 1_600_000 and b.max_ms == 100.0  # 16 MHz: exact cycles
    assert count_for_ms(10, "cortex-m4") == 640_000
    b = Budget.parse("2KB", "32KB", "cortex-m4", max_count="600k", max_ms=100)
    assert b.max_count == 600_000  # the lower of the two limits
    assert parse_ms("0.1s") == 100.0 and parse_ms("50ms") == 50.0
    with pytest.raises(BudgetError, match="needs --target"):
        Budget.parse("2KB", "32KB", None, max_ms=100)
    with pytest.raises(BudgetError, match="positive"):
        parse_ms("-3")


def test_search_distils_every_trial_and_the_final_model(tmp_path, capsys):
    out = tmp_path / "s"
    rc = main(["search", "--data", "digits", "--ram", "800", "--flash", "20KB", "--trials",
               "1", "--epochs", "1", "--final-epochs", "2", "--max-conv-blocks", "1",
               "--max-dense-blocks", "1", "--filters", "8", "--units", "32", "--threads", "1",
               "--teacher", "float", "--teacher-epochs", "1", "--augment-rotate", "5",
               "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    trial_teachers = list((out / "trials").glob("*/teachers/*.pt"))
    final_teachers = list((out / "final").glob("*/teachers/*.pt"))
    assert len(trial_teachers) == 1 and len(final_teachers) == 1
    ck = load_checkpoint(out / "best" / "model.pt")
    assert ck.meta["config"]["teacher"] == "float"
    assert ck.meta["config"]["augment_rotate"] == 5.0
    # a rerun with another recipe is another study: refused, not silently mixed
    rc = main(["search", "--data", "digits", "--ram", "800", "--flash", "20KB", "--trials",
               "1", "--epochs", "1", "--final-epochs", "2", "--max-conv-blocks", "1",
               "--max-dense-blocks", "1", "--filters", "8", "--units", "32", "--threads", "1",
               "--out", str(out)])
    assert rc == 2


def test_cli_float_teacher_then_student(tmp_path, capsys):
    teacher = tmp_path / "teacher.pt"
    common = ["--data", "digits", "--model", "digits", "--epochs", "2", "--threads", "1",
              "--no-progress"]
    assert main(["train", *common, "--float", "--out", str(teacher)]) == 0
    assert isinstance(load_checkpoint(teacher).model, FloatNet)
    assert main(["train", *common, "--teacher", str(teacher), "--distill-alpha", "1",
                 "--out", str(tmp_path / "student.pt")]) == 0
    student = load_checkpoint(tmp_path / "student.pt")
    assert student.meta["config"]["teacher"] == str(teacher) and not is_float(student.model)
    capsys.readouterr()
    assert main(["fold", str(teacher), "--out", str(tmp_path / "t.ebnn")]) == 2
    assert "cannot be folded" in capsys.readouterr().err


def test_approxsign_changes_the_backward_only():
    """Bi-Real Net's 2-2|x| inside [-1, 1], 0 outside; the forward pass is sign's."""
    from ebnn.layers import sign

    x = torch.tensor([-1.5, -1.0, -0.5, 0.0, 0.25, 1.0, 2.0], requires_grad=True)
    y = sign(x, "approxsign")
    y.sum().backward()
    assert torch.equal(y, sign(x.detach()))
    torch.testing.assert_close(x.grad, torch.tensor([0.0, 0.0, 1.0, 2.0, 1.5, 0.0, 0.0]))
    x.grad = None
    sign(x).sum().backward()  # the straight-through estimator: 1 on |x| <= 1
    torch.testing.assert_close(x.grad, torch.tensor([0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]))


def test_approxsign_trains_and_folds_bit_exact(digits, tmp_path):
    """The option changes training (other weights than the straight-through estimator's
    from the same seed), the loss falls, and the folded model is the checkpoint's (same
    forward pass): engine and PyTorch agree on every image."""
    ds, tr, va = digits
    spec = ModelSpec.from_dict(SMALL)
    cfg = TrainConfig(epochs=3, batch_size=32, activation_gradient="approxsign", threads=1)
    r = train(spec, tr, va, cfg, tmp_path / "a.pt", progress=False)
    ste = train(spec, tr, va, TrainConfig(epochs=1, batch_size=32, threads=1),
                tmp_path / "s.pt", progress=False)
    one = train(spec, tr, va, TrainConfig(epochs=1, batch_size=32, threads=1,
                                          activation_gradient="approxsign"),
                tmp_path / "a1.pt", progress=False)
    w = "blocks.0.conv.weight"
    assert not torch.equal(ste.model.state_dict()[w], one.model.state_dict()[w])
    assert r.history[-1]["loss"] < r.history[0]["loss"]
    assert r.history[-1]["val_accuracy"] > 0.8
    ck = load_checkpoint(tmp_path / "a.pt")
    assert ck.meta["config"]["activation_gradient"] == "approxsign"
    model = fold(ck.model)
    with torch.no_grad():
        torch_pred = r.model.eval()(torch.as_tensor(va.x)).argmax(1).numpy()
    np.testing.assert_array_equal(engine.predict(model, va.x), torch_pred)


def test_approxsign_with_a_float_network_is_a_cli_error(tmp_path, capsys):
    from ebnn.testing import cli_error_line

    line = cli_error_line(capsys, ["train", "--data", "digits", "--model", "digits",
                                   "--epochs", "1", "--activation-gradient", "approxsign",
                                   "--float", "--out", str(tmp_path / "m.pt")])
    assert "has no sign to differentiate" in line
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("chunk", [None, 16])
def test_memory_efficient_approxsign_gives_the_same_gradients(digits, chunk):
    """The compact backward recomputes the batch-norm output for 2-2|y| (whole batch and
    in chunks, conv and dense blocks): the gradients of standard training."""
    from ebnn.memeff import make_memory_efficient
    from ebnn.model import build_model

    ds, tr, va = digits
    grads = []
    for memeff in (False, True):
        torch.manual_seed(3)
        model = build_model(ModelSpec.from_dict(SMALL))
        model.set_activation_gradient("approxsign")
        if memeff:
            model = make_memory_efficient(model, chunk_size=chunk)
        model.train()
        x, y = torch.as_tensor(tr.x[:40]), torch.as_tensor(tr.y[:40], dtype=torch.int64)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=1e-4, atol=1e-5)
    torch.manual_seed(3)
    ste = build_model(ModelSpec.from_dict(SMALL)).train()
    torch.nn.functional.cross_entropy(ste(x), y).backward()
    w = "blocks.0.conv.weight"
    assert not torch.allclose(dict(ste.named_parameters())[w].grad, grads[0][w])


def test_init_from_a_float_twin_keeps_its_signs_within_the_clip_range(digits, tmp_path, capsys):
    """--init-from: the binary weights are the float twin's signs, every layer's latent
    weights reach exactly 1 in magnitude, batch-norm affine parameters are copied and
    running statistics reset; another shape is a one-line CLI error."""
    from ebnn.model import build_model
    from ebnn.recipe import initialise_from
    from ebnn.testing import cli_error_line

    ds, tr, va = digits
    spec = ModelSpec.from_dict(SMALL)
    twin = train(spec, tr, va, TrainConfig(epochs=2, batch_size=32, float_model=True,
                                           threads=1), tmp_path / "twin.pt", progress=False)
    model = build_model(spec)
    initialise_from(model, str(tmp_path / "twin.pt"))
    src = twin.model.state_dict()
    for name, p in model.named_parameters():
        if name.endswith("conv.weight") or name.endswith("linear.weight"):
            assert torch.equal(torch.sign(p), torch.sign(src[name])), name
            assert p.abs().max().item() == pytest.approx(1.0)
        else:
            assert torch.equal(p, src[name]), name
    for name, b in model.named_buffers():
        if name.endswith("running_mean"):
            assert not b.any()
    r = train(spec, tr, va, TrainConfig(epochs=2, batch_size=32, threads=1,
                                        init_from=str(tmp_path / "twin.pt")),
              tmp_path / "b.pt", progress=False)
    assert r.best_val_accuracy > 0.8
    assert load_checkpoint(tmp_path / "b.pt").meta["config"]["init_from"].endswith("twin.pt")
    # a resumed run has its own weights: the starting checkpoint is no longer read
    (tmp_path / "twin.pt").rename(tmp_path / "gone.pt")
    again = train(spec, tr, va, TrainConfig(epochs=2, batch_size=32, threads=1,
                                            init_from=str(tmp_path / "twin.pt")),
                  tmp_path / "b.pt", progress=False)
    assert again.best_val_accuracy == r.best_val_accuracy
    (tmp_path / "gone.pt").rename(tmp_path / "twin.pt")

    line = cli_error_line(capsys, ["train", "--data", "digits", "--model", "digits",
                                   "--epochs", "1", "--init-from", str(tmp_path / "twin.pt"),
                                   "--out", str(tmp_path / "other.pt")])
    assert "has other blocks, input or classes than" in line
    assert not (tmp_path / "other.pt").exists()
    line = cli_error_line(capsys, ["search", "--data", "digits", "--ram", "800", "--flash",
                                   "20KB", "--trials", "1", "--init-from",
                                   str(tmp_path / "twin.pt"), "--out", str(tmp_path / "s")])
    assert line.endswith("a search trains many shapes")
