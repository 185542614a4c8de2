"""A careful but hostile user: every mistake is a one-line error before the work starts.

Bad numbers, devices, storage URLs, specs and data files: the CLI answers with one line
``ebnn: error: ...`` and exit status 2 (no traceback, no hang, no silent wrong result).
Most cases call :func:`ebnn.cli.main` in this process (the same code path, and any
traceback fails the test); those about hangs and signals run the CLI as a subprocess
under a timeout.
"""

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

from ebnn.cli import main
from ebnn.data import DataError, load_dataset
from ebnn.fold import fold
from ebnn.spec import ModelSpec
from ebnn.testing import calibrated_random_model

ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
TRAIN = ["train", "--data", "digits", "--model", "digits", "--epochs", "1", "--no-progress"]


def error_line(capsys, argv: list[str], *words: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("ebnn: error: "), err
    for w in words:
        assert w in err, err
    return err


@pytest.mark.parametrize("extra,words", [
    (["--lr", "inf"], "--lr"), (["--lr", "nan"], "--lr"), (["--lr", "0"], "--lr"),
    (["--lr=-1e-3"], "--lr"), (["--epochs", "0"], "--epochs"),
    (["--augment-shift", "-1"], "--augment-shift"), (["--early-exit-reg", "nan"], "--early"),
    (["--early-exit-reg", "-1"], "--early"), (["--val-fraction", "1.5"], "--val-fraction"),
    (["--batch-size", "1"], "--batch-size"), (["--threads", "-2"], "--threads"),
    (["--device", "gpu"], "not a torch device"), (["--device", "cuda:7"], "cuda:7"),
    (["--device", "banana:0"], "banana"),
])
def test_bad_training_options_fail_before_work(capsys, tmp_path, extra, words):
    error_line(capsys, [*TRAIN, "--out", str(tmp_path / "m.pt"), *extra], words)
    assert not (tmp_path / "m.pt").exists()


def test_a_shift_as_large_as_the_image_is_refused(capsys, tmp_path):
    error_line(capsys, [*TRAIN, "--out", str(tmp_path / "m.pt"), "--augment-shift", "8"],
               "--augment-shift 8", "8x8")


def test_a_diverging_run_stops_and_saves_nothing(capsys, tmp_path):
    out = tmp_path / "m.pt"
    error_line(capsys, [*TRAIN, "--threads", "1", "--out", str(out), "--lr", "1e30"],
               "diverged", "--lr")
    assert not out.exists() and not out.with_name("m.pt.last").exists()


@pytest.mark.parametrize("block,words", [
    ({"type": "conv", "filters": "32"}, "filters must be an integer"),
    ({"type": "conv", "filters": True}, "filters must be an integer"),
    ({"type": "conv", "filters": 8, "kernel": 2.5}, "kernel"),
    ({"type": "conv", "filters": 8, "pool": 0}, "pool"),
    ({"type": "dense", "units": -3}, "units"),
    ({"type": "dense", "units": 4, "stride": 2}, "unknown field 'stride'"),
    ({"type": 7}, "type must be a string"),
    ("dense", "must be a mapping"),
])
def test_bad_spec_fields(capsys, tmp_path, block, words):
    spec = {"name": "s", "input_shape": [1, 8, 8], "classes": 10,
            "blocks": [block, {"type": "output"}]}
    path = tmp_path / "s.json"
    path.write_text(json.dumps(spec))
    error_line(capsys, ["summary", str(path)], words)


@pytest.mark.parametrize("change,words", [
    ({"classes": "10"}, "classes"), ({"input_shape": [1, "8", 8]}, "input_shape"),
    ({"blocks": {"type": "output"}}, "blocks"), ({"name": 5}, "name"),
])
def test_bad_spec_top_level(capsys, tmp_path, change, words):
    spec = {"name": "s", "input_shape": [1, 8, 8], "classes": 10,
            "blocks": [{"type": "output"}], **change}
    path = tmp_path / "s.json"
    path.write_text(json.dumps(spec))
    error_line(capsys, ["summary", str(path)], words)


def test_a_huge_layer_is_refused_before_allocating(tmp_path):
    """2,000,000 dense units on 8x8 digits would need tens of GB: refused in seconds."""
    spec = tmp_path / "huge.json"
    spec.write_text(json.dumps({"name": "huge", "input_shape": [1, 8, 8], "classes": 10,
                                "blocks": [{"type": "dense", "units": 2_000_000},
                                           {"type": "dense", "units": 2_000_000},
                                           {"type": "output"}]}))
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "ebnn.cli", "train", "--data", "digits",
                           "--model", str(spec), "--epochs", "1", "--out",
                           str(tmp_path / "m.pt")], capture_output=True, text=True, env=ENV,
                          timeout=120)
    assert proc.returncode == 2 and "memory" in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("ebnn: error: ")
    assert time.monotonic() - t0 < 60


def test_sigterm_stops_training_promptly_and_cleanly(tmp_path):
    out = tmp_path / "m.pt"
    proc = subprocess.Popen([sys.executable, "-m", "ebnn.cli", *TRAIN[:-3], "--epochs", "500",
                             "--no-progress", "--threads", "1", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 120
    while not out.with_name("m.pt.last").exists() and time.monotonic() < deadline:
        time.sleep(0.2)  # wait until it is really training (epoch 1 written)
    proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - t0 < 30
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == \
        "ebnn: interrupted; rerun the same command to resume"
    assert not out.with_name("m.pt.lock").exists()
    assert not list(tmp_path.glob(".*.tmp"))


def test_unknown_storage_scheme_is_refused(capsys, tmp_path):
    base = ["search", "--data", "digits", "--ram", "2KB", "--flash", "32KB", "--trials", "1",
            "--out", str(tmp_path / "s")]
    error_line(capsys, [*base, "--storage", "foo://user:secret@host/db"], "foo")
    assert "secret" not in capsys.readouterr().err
    error_line(capsys, [*base, "--storage", "just-a-path.db"], "not a database URL")


def test_bench_refuses_data_with_more_classes_than_the_model(capsys, tmp_path):
    spec = ModelSpec.from_dict({"name": "three", "input_shape": [1, 8, 8], "classes": 3,
                                "blocks": [{"type": "dense", "units": 8},
                                           {"type": "output"}]})
    path = tmp_path / "three.ebnn"
    fold(calibrated_random_model(spec)).save(path)
    error_line(capsys, ["bench", str(path), "--target", "host", "--data", "digits"],
               "labels outside 0..2")
    error_line(capsys, ["eval", str(path), "--data", "digits"], "labels outside 0..2")
    error_line(capsys, ["bench", str(path), "--target", "host", "--images", "-5"], "--images")


# ---- data ambiguities -----------------------------------------------------------------------
def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "d.csv"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text,words", [
    ("a,b,label\n1,2,0\n3,4,1000000000\n", "far beyond"),
    ("a,b,label\n1,2,0\n3,4,1e9\n", "far beyond"),
    ("a,a,label\n1,2,0\n3,4,1\n", "'a' appears twice"),
    ("label,b,label\n1,2,0\n3,4,1\n", "the label column 'label' appears twice"),
    ("a,b,Label,label\n1,2,0,0\n3,4,1,1\n", "appears twice"),
    ("a,b,label\n1e308,2,0\n-1e308,4,1\n3,5,1\n", "overflows"),
    ("a,b,label\n1,2,0\n3,4,500\n", "501 classes"),
])
def test_csv_ambiguities(tmp_path, text, words):
    with pytest.raises(DataError, match=words):
        load_dataset(str(_csv(tmp_path, text)))


def test_csv_label_far_beyond_is_a_cli_error(capsys, tmp_path):
    path = _csv(tmp_path, "a,b,label\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(9))
                + "1,2,1e9\n")
    error_line(capsys, ["train", "--data", str(path), "--model", "bnn-mlp:8", "--epochs", "1",
                        "--out", str(tmp_path / "m.pt")], "far beyond")


def test_complex_npz_features_are_refused(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.ones((4, 3), np.complex128) * (1 + 2j), y=np.array([0, 1, 0, 1]))
    with pytest.raises(DataError, match="complex"):
        load_dataset(str(path))


def _idx(path: Path, magic: int, a: np.ndarray) -> None:
    head = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in a.shape)
    path.write_bytes(head + a.astype(np.uint8).tobytes())


def test_a_stray_idx_label_does_not_make_hundreds_of_classes(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 100)
    _idx(tmp_path / "train-images-idx3-ubyte", 0x803, rng.integers(0, 256, (100, 6, 6)))
    _idx(tmp_path / "train-labels-idx1-ubyte", 0x801, y)
    assert load_dataset(str(tmp_path)).classes == 10
    y[37] = 200
    _idx(tmp_path / "train-labels-idx1-ubyte", 0x801, y)
    with pytest.raises(DataError, match="labels run up to 200"):
        load_dataset(str(tmp_path))
