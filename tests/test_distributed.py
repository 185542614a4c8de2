"""Distributed training: `torchrun --nproc-per-node 2 -m ebnn train` on the CPU (gloo) on
scikit-learn's digits, against the single-process run of the same command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ebnn import distributed as ddp
from ebnn import engine
from ebnn.agreement import compare
from ebnn.checkpoint import load_checkpoint
from ebnn.cli import main
from ebnn.data import load_dataset, train_val_split
from ebnn.fold import fold, load_integer_model
from ebnn.train import recalibrate_batch_norm

# The fault handler prints where a process that aborts was (Python frames, or none).
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
TRAIN = ["train", "--data", "digits", "--model", "digits", "--epochs", "3", "--batch-size",
         "64", "--seed", "3", "--threads", "1", "--no-progress"]
# Test accuracy of the folded model, 2 processes against 1: within this many points. The
# runs agree step for step at first; later, float rounding flips a binary weight or
# activation now and then and the runs drift apart, as a 1-thread and a 2-thread
# single-process run do.
ACCURACY_TOLERANCE = 0.05


def _torchrun(nproc: int, args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
            str(nproc), "-m", "ebnn", *args]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The same training command on one process and on two."""
    d = tmp_path_factory.mktemp("ddp")
    assert main([*TRAIN, "--out", str(d / "one.pt")]) == 0
    done = subprocess.run(_torchrun(2, [*TRAIN, "--out", str(d / "two.pt")]), env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "on 2 processes (gloo)" in done.stderr
    # Only process 0 prints and writes: one result line, no stray files.
    assert done.stdout.count("test accuracy") == 1, done.stdout
    assert sorted(p.name for p in d.iterdir()) == ["one.pt", "one.pt.last", "two.pt",
                                                   "two.pt.last"]
    return {"one": d / "one.pt", "two": d / "two.pt", "dir": d}


def _train_x() -> torch.Tensor:
    train, _ = train_val_split(load_dataset("digits", "train"), 0.1, seed=3)
    return torch.as_tensor(train.x)


def test_first_steps_losses_match_single_process(runs):
    one = load_checkpoint(str(runs["one"]) + ".last")
    two = load_checkpoint(str(runs["two"]) + ".last")
    a, b = one.train_state["batch_losses"], two.train_state["batch_losses"]
    assert len(a) == len(b) == 3 * 21  # 1295 examples: 20 batches of 64 and one of 15
    # Same initial weights, same global batches, synchronised batch norm and the mean
    # gradient of the global batch: the first steps agree to float rounding.
    torch.testing.assert_close(b[:2], a[:2], rtol=1e-5, atol=0)
    assert two.meta["processes"] == 2 and "processes" not in one.meta
    assert len(two.history) == 3


def test_checkpoint_folds_exports_and_evaluates_like_single_process(runs, tmp_path):
    test = load_dataset("digits", "test")
    acc = {}
    for name in ("one", "two"):
        ck = load_checkpoint(runs[name])
        imodel = load_integer_model(runs[name])
        agreement = compare(ck.model, imodel, test.x, test.y)
        assert agreement.errors == 0, agreement
        acc[name] = float((engine.predict(imodel, test.x) == test.y).mean())
        assert main(["export", str(runs[name]), "--out", str(tmp_path / name)]) == 0
        assert any(p.suffix == ".c" for p in (tmp_path / name).iterdir())
    assert acc["two"] > 0.8
    assert abs(acc["two"] - acc["one"]) <= ACCURACY_TOLERANCE, acc


def test_folded_thresholds_come_from_all_ranks(runs):
    """The recalibration, split over two processes, gives the statistics (and thresholds)
    of a single-process recalibration of the same weights over the whole training set."""
    last = load_checkpoint(str(runs["two"]) + ".last")
    x = _train_x()
    ref = load_checkpoint(str(runs["two"]) + ".last").model
    recalibrate_batch_norm(ref, x)
    half = load_checkpoint(str(runs["two"]) + ".last").model
    recalibrate_batch_norm(half, x[0::2])  # what one process alone would see
    got, want, part = last.model.state_dict(), ref.state_dict(), half.state_dict()
    stats = [k for k in got if k.endswith(("running_mean", "running_var"))]
    assert stats
    for k in stats:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(got[k], part[k], rtol=1e-3) for k in stats)
    for a, b in zip(fold(last.model).layers, fold(ref).layers, strict=True):
        if a.threshold is not None:
            assert np.array_equal(a.threshold, b.threshold) and np.array_equal(a.flip, b.flip)


def _rank_pid(parent: int, rank: int) -> int | None:
    """The pid of the torchrun worker of ``rank`` (a child of ``parent``)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and f"RANK={rank}".encode() in env:
            return int(entry.name)
    return None


@pytest.mark.slow
def test_killed_rank_then_same_command_resumes(tmp_path):
    out = tmp_path / "k.pt"
    # Memory-efficient training and the early-exit penalty, with shifts, under DDP too;
    # small batches make an epoch long enough to be killed in the middle.
    cmd = _torchrun(2, ["train", "--data", "digits", "--model", "digits", "--epochs", "3",
                        "--batch-size", "16", "--threads", "1", "--no-progress",
                        "--memory-efficient", "--early-exit-reg", "0.5", "--augment-shift",
                        "1", "--out", str(out)])
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    last = Path(str(out) + ".last")
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None and not last.exists():
            time.sleep(0.05)
        assert last.exists(), proc.communicate(timeout=60)[1][-3000:]
        time.sleep(0.3)  # into the second epoch
        pid = _rank_pid(proc.pid, 1)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0, err[-2000:]
    stopped_at = load_checkpoint(last).train_state["epoch"]
    assert 1 <= stopped_at < 3

    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming {out} from epoch {stopped_at}/3" in done.stderr
    ck = load_checkpoint(last)
    assert [h["epoch"] for h in ck.history] == [1, 2, 3]
    assert len(ck.train_state["batch_losses"]) == 3 * (1295 // 16 + 1)
    assert load_integer_model(out).classes == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.pt", "k.pt.last"]


def test_global_batches_are_sharded_like_a_distributed_sampler():
    perm = torch.randperm(103, generator=torch.Generator().manual_seed(0))
    batches = ddp.global_batches(perm, 20, 3)  # the last 3 < 2 per process: left out
    assert [len(b) for b in batches] == [20] * 5
    for b in batches:
        parts = [ddp.shard(b, r, 3) for r in range(3)]
        assert sorted(torch.cat(parts).tolist()) == sorted(b.tolist())
    assert [len(b) for b in ddp.global_batches(perm, 10, 1)] == [10] * 10 + [3]
    assert [len(b) for b in ddp.global_batches(perm[:101], 10, 1)] == [10] * 10  # one left
    assert ddp.check_batch_size(64, 2) == 32
    with pytest.raises(ValueError, match="must be divisible by the 3 processes"):
        ddp.check_batch_size(64, 3)
    assert ddp.init_from_env() is None or ddp.launched()


@pytest.mark.parametrize("mode", ["standard", "memory-efficient"])
def test_gradients_equal_those_of_one_process_on_the_global_batch(tmp_path_factory, mode):
    """Data parallel with synchronised batch norm and the loss weights: one step on an
    uneven global batch (8 + 7 examples) gives the single-process gradients, in standard
    training (with the early-exit penalty) and in memory-efficient training."""
    from ddp_gradient_check import BATCH, CONFIGS, build

    from ebnn.train import _forward_backward, _Step

    out = tmp_path_factory.getbasetemp() / "ddp-grads.pt"
    if not out.exists():  # one torchrun for both modes
        script = Path(__file__).with_name("ddp_gradient_check.py")
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                               "--nproc-per-node", "2", str(script), str(out)], env=ENV,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    got = torch.load(out, weights_only=True)[mode]
    ds = load_dataset("digits", "train")
    model = build(mode)
    x, y = torch.as_tensor(ds.x[BATCH.numpy()]), torch.as_tensor(ds.y[BATCH.numpy()])
    with torch.no_grad():  # exact ties would make the two runs differ by float rounding
        pres = build("standard").preactivations(x)
    assert min(p.abs().min().item() for p in pres) > 1e-4
    loss, _ = _forward_backward(_Step(model), x, y, CONFIGS[mode])
    assert got["loss"] == pytest.approx(loss.item(), rel=1e-5)
    for name, p in model.named_parameters():
        scale = p.grad.abs().max().item()
        torch.testing.assert_close(got["grads"][name], p.grad, rtol=0, atol=1e-5 * scale + 1e-9)
