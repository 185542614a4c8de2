"""The ``ebnn`` command line: train, eval, summary, spec, error handling, and a training
run that is really killed and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ebnn.checkpoint import load_checkpoint, save_checkpoint
from ebnn.cli import main
from ebnn.model import build_model
from ebnn.spec import PRESETS, load_spec
from ebnn.testing import cli_error_line
from ebnn.train import last_path

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # two test workers share two cores
ONE = ["--threads", "1", "--no-progress"]


def _ebnn(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ebnn.cli", *args], capture_output=True,
                          text=True, env=ENV, timeout=300, **kw)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A digits model trained through the CLI (in-process: no interpreter start-up)."""
    out = tmp_path_factory.mktemp("cli") / "digits.pt"
    assert main(["train", "--data", "digits", "--model", "digits", "--epochs", "3",
                 "--out", str(out), *ONE]) == 0
    return out


def test_train_prints_test_accuracy(trained, capsys):
    # Rerunning a finished run only reports: it prints the same summary and test accuracy.
    assert main(["train", "--data", "digits", "--model", "digits", "--epochs", "3",
                 "--out", str(trained), *ONE]) == 0
    out, err = capsys.readouterr()
    assert "already trained for 3 epochs" in err
    assert "test accuracy" in out and "on 359 examples" in out
    acc = float(out.split("test accuracy ")[1].split()[0])
    assert 0.5 < acc <= 1.0


def test_eval_json(trained, capsys):
    assert main(["eval", str(trained), "--data", "digits", "--split", "test", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 359 and 0.5 < result["accuracy"] <= 1.0
    assert result["split"] == "test" and result["data"] == "digits"
    # The same figure as the text output and as the train command's final line.
    assert main(["eval", str(trained), "--data", "digits"]) == 0
    assert f"accuracy {result['accuracy']:.4f} on 359 examples" in capsys.readouterr().out


def test_summary_of_checkpoint_and_preset(trained, capsys):
    assert main(["summary", str(trained), "--json"]) == 0
    from_ck = json.loads(capsys.readouterr().out)
    assert main(["summary", "digits", "--json"]) == 0
    from_preset = json.loads(capsys.readouterr().out)
    assert from_ck == from_preset and from_ck["totals"]["weight_bytes"] == 5328
    assert main(["summary", "digits"]) == 0
    table = capsys.readouterr().out
    assert "conv_0" in table and "output_2" in table and "5,328" in table


def test_spec_prints_loadable_preset_json(tmp_path, capsys):
    assert main(["spec", "ebnn-mnist"]) == 0
    text = capsys.readouterr().out
    assert json.loads(text) == load_spec("ebnn-mnist").to_dict()
    (tmp_path / "mine.json").write_text(text)
    assert load_spec(tmp_path / "mine.json") == load_spec("ebnn-mnist")


def test_preset_adapts_to_data_and_tabular_test_data(tmp_path, capsys):
    """bnn-mlp (28x28 input) on 8x8 digits; a float .npz with a separate --test-data file,
    quantised with the training file's quantiser (stored in the checkpoint)."""
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 3, (3, 5))
    def blobs(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 3, n)
        return centers[y] + rng.normal(0, 0.5, (n, 5)), y
    x, y = blobs(300)
    np.savez(tmp_path / "train.npz", x=x, y=y)
    x, y = blobs(100)
    np.savez(tmp_path / "test.npz", x=x, y=y)
    out = tmp_path / "t.pt"
    assert main(["train", "--data", str(tmp_path / "train.npz"), "--model", "bnn-mlp:32",
                 "--epochs", "4", "--out", str(out), "--test-data", str(tmp_path / "test.npz"),
                 *ONE]) == 0
    acc = float(capsys.readouterr().out.split("test accuracy ")[1].split()[0])
    assert acc >= 0.9  # well-separated blobs
    ck = load_checkpoint(out)
    assert ck.spec.input_shape == (5, 1, 1) and ck.spec.classes == 3
    assert ck.quantizer is not None and len(ck.quantizer["mean"]) == 5
    assert main(["eval", str(out), "--data", str(tmp_path / "test.npz"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(acc, abs=5e-5)
    # Without --test-data a file source is trained but not tested, and says so.
    assert main(["train", "--data", str(tmp_path / "train.npz"), "--model", "bnn-mlp:32",
                 "--epochs", "1", "--out", str(tmp_path / "u.pt"), *ONE]) == 0
    out_text, err = capsys.readouterr()
    assert "test accuracy" not in out_text and "pass --test-data" in err


def test_user_errors_exit_2_with_one_line(tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("blocks: [unclosed\n")
    base = ["train", "--data", "digits", "--epochs", "1", "--out", str(tmp_path / "m.pt")]
    cases = [
        (["eval", str(tmp_path / "missing.pt"), "--data", "digits"], "no such checkpoint"),
        (["eval", str(junk), "--data", "digits"], "not a readable checkpoint"),
        (["summary", str(junk)], "not a readable checkpoint"),
        (["summary", "no-such-preset"], "neither a preset"),
        (["spec", "no-such-preset"], "neither a preset"),
        (["spec", str(bad_yaml)], "not valid YAML"),
        ([*base, "--model", "no-such-preset"], "neither a preset"),
        (["train", "--data", str(tmp_path / "nope.csv"), "--model", "digits", "--epochs", "1",
          "--out", str(tmp_path / "m.pt")], "neither a known source"),
        ([*base, "--model", "digits", "--lr", "-1"], "learning rate must be positive"),
        ([*base, "--model", "digits", "--loss", "squared-hinge", "--batch-size", "1"],
         "batch size"),
    ]
    for argv, message in cases:
        assert message in cli_error_line(capsys, argv), argv


def test_eval_on_data_of_another_shape(trained, capsys):
    mnist = Path(os.environ.get("EBNN_MNIST_DIR",
                                Path(__file__).resolve().parents[2] / "shared/data/mnist"))
    if not mnist.is_dir():
        pytest.skip(f"MNIST not found at {mnist} (set EBNN_MNIST_DIR)")
    line = cli_error_line(capsys, ["eval", str(trained), "--data", "mnist", "--data-dir",
                                str(mnist)])
    assert line.endswith("mnist test data has input shape [1, 28, 28] but the model expects "
                         "[1, 8, 8]")


def test_error_in_a_real_process_has_no_traceback(tmp_path):
    run = _ebnn("eval", str(tmp_path / "missing.pt"), "--data", "digits")
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [f"ebnn: error: {tmp_path / 'missing.pt'}: "
                                               "no such checkpoint file"]


def _saved_epoch(last: Path) -> int:
    try:
        return int(torch.load(last, weights_only=True)["train_state"]["epoch"])
    except FileNotFoundError:
        return 0


def test_killed_training_resumes_where_it_stopped(tmp_path):
    epochs = 8
    out = tmp_path / "k.pt"
    cmd = [sys.executable, "-m", "ebnn.cli", "train", "--data", "digits", "--model", "digits",
           "--epochs", str(epochs), "--batch-size", "16", "--out", str(out), *ONE]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while _saved_epoch(last_path(out)) < 1:
            assert proc.poll() is None, "training ended before it could be killed"
            assert time.monotonic() < deadline, "no epoch saved in time"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    stopped = _saved_epoch(last_path(out))
    assert 1 <= stopped < epochs, "the kill must land mid-run for this test to mean anything"
    killed_history = load_checkpoint(last_path(out)).history
    assert len(killed_history) == stopped

    run = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert run.returncode == 0, run.stderr
    assert f"resuming {out} from epoch {stopped}/{epochs}" in run.stderr
    trained_now = [line for line in run.stderr.splitlines() if line.startswith("epoch ")]
    assert trained_now[0].startswith(f"epoch {stopped + 1}/{epochs}:")
    assert len(trained_now) == epochs - stopped
    final = load_checkpoint(last_path(out))
    assert final.train_state["epoch"] == epochs
    assert final.history[:stopped] == killed_history  # the epochs before the kill were kept
    assert "test accuracy" in run.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.pt", "k.pt.last"]


def test_presets_all_summarise(capsys):
    for name in PRESETS:
        assert main(["summary", name, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["name"] == load_spec(name).name


def test_summary_reads_checkpoint_written_by_api(tmp_path, capsys):
    spec = load_spec("bnn-mlp:64")
    save_checkpoint(tmp_path / "mlp.ckpt", build_model(spec))
    assert main(["summary", str(tmp_path / "mlp.ckpt"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["totals"]["binary_params"] == 784 * 64 + 64 * 64 * 2 + 64 * 10
