"""Crafted model files: every loader checks the model against itself.

A ``.ebnn`` checksum proves integrity, not consistency: anyone can modify the payload and
sign it again. Here valid files are mutated at random (metadata fields, arrays, dtypes,
spec, quantiser), re-signed so the checksum passes, and loaded. Each mutant is either
refused with a one-line :class:`ModelFileError`, or it loads and then the NumPy engine
runs it, the memory plan sizes it, the C generator exports it and the exported C, built
with AddressSanitizer and UndefinedBehaviorSanitizer and run as its own process, gives
the engine's scores exactly.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ebnn import engine
from ebnn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ebnn.codegen import export_c
from ebnn.deploy import _HEADER, MAGIC, VERSION, IntegerModel, ModelFileError
from ebnn.fold import fold, load_integer_model
from ebnn.memory import plan_memory
from ebnn.spec import ModelSpec
from ebnn.testing import build_c_runner, calibrated_random_model

SPEC = {"name": "crafted", "input_shape": [2, 7, 6], "classes": 3,
        "blocks": [{"type": "conv", "filters": 5, "kernel": 3, "padding": 1, "pool": 2},
                   {"type": "dense", "units": 6}, {"type": "output"}]}
SANITIZE = ["-std=c99", "-O1", "-g", "-fsanitize=address,undefined",
            "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
@pytest.fixture(scope="module")
def valid_model() -> IntegerModel:
    model = fold(calibrated_random_model(ModelSpec.from_dict(SPEC), seed=4, constant_channels=1))
    rng = np.random.default_rng(0)
    for layer in model.layers[:-1]:
        kh, kw = layer.kernel
        layer.tap_order = rng.permutation(kh * kw).astype(np.int32)
    return model


def decode(data: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    payload = data[_HEADER.size:]
    with np.load(io.BytesIO(payload), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays.pop("meta").tobytes().decode())
    return meta, arrays


def encode(meta: dict, arrays: dict[str, np.ndarray]) -> bytes:
    """A payload signed like a real writer signs it: the checksum always passes."""
    buf = io.BytesIO()
    np.savez(buf, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
    payload = buf.getvalue()
    return _HEADER.pack(MAGIC, VERSION, len(payload), hashlib.sha256(payload).digest()) + \
        payload


def _zmax(meta: dict, arrays: dict, i: int) -> int:
    _, kh, kw, c = meta["layers"][i]["weights_shape"]
    if i == 0:
        off = arrays["input_offset"].astype(np.int64)
        return int(kh * kw * np.maximum(off, 255 - off).sum())
    return kh * kw * c


BAD_VALUES = [-1, 0, 1, 2, 3, 1000, 2**31, 2**40, -2**40, "3", True, 2.5, None, [], {}]


def mutate(meta: dict, arrays: dict, rng: np.random.Generator) -> None:
    """One random mutation, in place: any field, to an adversarial or plausible value."""
    layers = meta["layers"]
    i = int(rng.integers(len(layers)))
    o = layers[i]["weights_shape"][0]
    which = int(rng.integers(16))
    pick = BAD_VALUES[int(rng.integers(len(BAD_VALUES)))]
    if which == 0:
        meta["classes"] = pick
    elif which == 1:
        meta["input_shape"][int(rng.integers(3))] = pick
    elif which == 2:
        key = ["padding", "pool", "shift", "first", "kind", "mode"][int(rng.integers(6))]
        layers[i][key] = pick if rng.random() < 0.7 else \
            ["conv", "dense", "output", "fused", "materialized", "x"][int(rng.integers(6))]
    elif which == 3:
        layers[i]["in_shape"][int(rng.integers(3))] = pick
    elif which == 4:
        layers[i]["weights_shape"][int(rng.integers(4))] = pick
    elif which in (5, 6) and f"l{i}_threshold" in arrays:
        # Plausible and extreme thresholds: many of these load and must run safely.
        z = _zmax(meta, arrays, i)
        t = arrays[f"l{i}_threshold"].copy()
        t[int(rng.integers(o))] = int(rng.choice([-z, z + 1, -z - 1, z + 2,
                                                  int(rng.integers(-z, z + 2))]))
        arrays[f"l{i}_threshold"] = t
    elif which == 7 and f"l{i}_flip" in arrays:
        arrays[f"l{i}_flip"] = rng.integers(0, 2 if rng.random() < 0.7 else 3, o
                                            ).astype(np.uint8 if rng.random() < 0.5 else bool)
    elif which == 8:
        k = f"l{len(layers) - 1}_scale" if rng.random() < 0.5 else f"l{len(layers) - 1}_bias"
        v = arrays[k].copy()
        v[int(rng.integers(len(v)))] = int(rng.choice([0, -1, 2**20, 2**29, -2**30, 2**31 - 1]))
        arrays[k] = v
    elif which == 9:
        off = arrays["input_offset"].copy()
        off[int(rng.integers(len(off)))] = int(rng.choice([0, 255, -1, 256, 40000]))
        arrays["input_offset"] = off
    elif which == 10 and f"l{i}_tap_order" in arrays:
        n = len(arrays[f"l{i}_tap_order"])
        arrays[f"l{i}_tap_order"] = rng.permutation(n).astype(np.int32) if rng.random() < 0.5 \
            else rng.integers(-1, n + 1, n).astype(np.int32)
    elif which == 11:
        key = str(rng.choice(sorted(arrays)))
        if rng.random() < 0.4:
            del arrays[key]
        elif rng.random() < 0.5:
            arrays[key] = arrays[key].astype(np.float64)
        else:
            arrays[key] = arrays[key][:-1] if len(arrays[key]) > 1 else \
                np.concatenate([arrays[key], arrays[key]])
    elif which == 12:
        block = meta["spec"]["blocks"][i]
        key = str(rng.choice([k for k in block if k != "type"] or ["type"]))
        block[key] = pick
    elif which == 13:
        meta["quantizer"] = rng.choice([{"mean": [0.0] * 84, "std": [1.0] * 84}, {"mean": 1},
                                        {"mean": [float("nan")] * 84, "std": [0.0] * 84}, 7])
    elif which == 14:
        meta["class_names"] = [["a", "b", "c"], ["a"], [1, 2, 3], "abc"][int(rng.integers(4))]
    else:
        key = str(rng.choice(["name", "spec", "meta", "layers", "input_shape"]))
        meta[key] = pick


def mutants(model: IntegerModel, n: int, seed: int) -> list[bytes]:
    meta0, arrays0 = decode(model.to_bytes())
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        meta, arrays = copy.deepcopy(meta0), {k: v.copy() for k, v in arrays0.items()}
        for _ in range(int(rng.integers(1, 3))):
            try:
                mutate(meta, arrays, rng)
            except (TypeError, KeyError, IndexError, AttributeError, ValueError):
                break  # an earlier mutation already broke the structure it walks
        out.append(encode(meta, arrays))
    return out


def load_or_refuse(data: bytes) -> IntegerModel | None:
    try:
        return IntegerModel.from_bytes(data, "crafted.ebnn")
    except ModelFileError as e:
        msg = str(e)
        assert msg.startswith("crafted.ebnn: ") and "\n" not in msg, msg
        return None


def test_valid_model_round_trips(valid_model):
    back = IntegerModel.from_bytes(valid_model.to_bytes())
    assert back.to_bytes() == valid_model.to_bytes()
    meta, arrays = decode(valid_model.to_bytes())
    assert IntegerModel.from_bytes(encode(meta, arrays)).to_bytes() == valid_model.to_bytes()


def test_mutants_load_and_run_or_are_refused(valid_model, tmp_path):
    """400 mutants: refused with one line, or the engine, memory plan and C generator all
    work on them (no exception escapes from any of them)."""
    x = np.random.default_rng(1).integers(0, 256, (6, *valid_model.input_shape), np.uint8)
    loaded = 0
    for k, data in enumerate(mutants(valid_model, 400, seed=0)):
        model = load_or_refuse(data)
        if model is None:
            continue
        loaded += 1
        scores = engine.scores(model, x)
        assert scores.shape == (len(x), model.classes)
        for word_bits in (8, 32):
            plan_memory(model, word_bits)
        export_c(model, tmp_path / f"m{k}", early_exit=bool(k % 2))
    assert 20 <= loaded <= 300, loaded  # both outcomes are exercised


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_mutants_that_load_run_clean_under_sanitizers(valid_model, tmp_path):
    """Mutants that load, exported and built with ASan + UBSan, each run as a separate
    process: no sanitizer report, and the engine's scores bit for bit."""
    rng = np.random.default_rng(2)
    c, h, w = valid_model.input_shape
    x = rng.integers(0, 256, (20, c, h, w), np.uint8)
    x[0], x[1] = 0, 255
    seen, built = set(), 0
    for data in mutants(valid_model, 200, seed=1):
        model = load_or_refuse(data)
        if model is None or data in seen:
            continue
        seen.add(data)
        for early_exit in (False, True):
            out = tmp_path / f"m{built}"
            export = export_c(model, out, early_exit=early_exit, word_bits=8 if built % 2 else 32)
            exe = build_c_runner(export, SANITIZE)
            (out / "x.bin").write_bytes(engine.to_hwc(model, x).tobytes())
            proc = subprocess.run([str(exe), str(out / "x.bin")], capture_output=True,
                                  text=True, timeout=60)
            assert proc.returncode == 0 and proc.stderr == "", proc.stderr
            # the first line holds the header's figures
            got = np.array([[int(v) for v in line.split()]
                            for line in proc.stdout.splitlines()[1:]])
            ref = engine.scores(model, x)
            np.testing.assert_array_equal(got[:, 1:], ref)
            np.testing.assert_array_equal(got[:, 0], np.argmax(ref, axis=1))
            built += 1
        if built >= 8:
            break
    assert built >= 8


# ---- the cases the checksum alone let through ------------------------------------------
def _with(valid_model: IntegerModel, change) -> bytes:
    meta, arrays = decode(valid_model.to_bytes())
    change(meta, arrays)
    return encode(meta, arrays)


@pytest.mark.parametrize("change,words", [
    (lambda m, a: m.update(classes=5), "classes"),  # C would write past scores[]
    (lambda m, a: m.update(input_shape=[2, 9, 6]), "in_shape"),  # C would read past input
    (lambda m, a: m["layers"][0].update(pool=0), "pool"),
    (lambda m, a: m["layers"][0].update(padding=3), "padding"),
    (lambda m, a: m["layers"][1].update(in_shape=[3, 2, 5]), "in_shape"),
    (lambda m, a: m["layers"][2].update(shift=40), "shift"),
    (lambda m, a: m["layers"][1].update(first=True), "first"),
    (lambda m, a: a.update(l0_threshold=np.full(5, 10**6, np.int32)), "threshold"),
    (lambda m, a: a.update(l1_tap_order=np.zeros(15, np.int32)), "tap_order"),
    (lambda m, a: a.update(input_offset=np.array([300, 2], np.int32)), "input_offset"),
    (lambda m, a: a.update(l0_weights=a["l0_weights"][:-2]), "weights"),
    (lambda m, a: a.pop("l2_scale"), "missing"),
    (lambda m, a: m["spec"]["blocks"][0].update(filters="5"), "spec"),
    (lambda m, a: m.update(quantizer={"mean": [0.0], "std": [1.0]}), "quantizer"),
])
def test_inconsistent_files_are_refused(valid_model, change, words):
    with pytest.raises(ModelFileError, match=words):
        IntegerModel.from_bytes(_with(valid_model, change), "bad.ebnn")


def test_cli_refuses_a_crafted_file_in_one_line(valid_model, tmp_path, capsys):
    from ebnn.cli import main

    bad = tmp_path / "bad.ebnn"
    bad.write_bytes(_with(valid_model, lambda m, a: m.update(classes=5)))
    proc = subprocess.run([sys.executable, "-m", "ebnn.cli", "export", str(bad), "--out",
                           str(tmp_path / "c")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("ebnn: error: ") and proc.stderr.count("\n") == 1, \
        proc.stderr
    assert "classes" in proc.stderr
    for args in (["summary", str(bad)], ["eval", str(bad), "--data", "digits"],
                 ["eval", str(bad), "--data", "digits", "--engine", "c"]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("ebnn: error: ") and err.count("\n") == 1 and "classes" in err
    assert not (tmp_path / "c").exists()


# ---- checkpoints ----------------------------------------------------------------------------
def _checkpoint(tmp_path: Path, edit=None, quantizer=None) -> Path:
    model = calibrated_random_model(ModelSpec.from_dict(SPEC), seed=4)
    if edit is not None:
        with torch.no_grad():
            edit(model)
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, quantizer=quantizer)
    return path


@pytest.mark.parametrize("edit,quantizer,words", [
    (lambda m: m.blocks[0].conv.weight.view(-1)[3].fill_(float("nan")), None, "non-finite"),
    (lambda m: m.blocks[1].bn.running_var.fill_(float("inf")), None, "non-finite"),
    (lambda m: m.blocks[1].bn.running_var.fill_(-1.0), None, "negative"),
    (lambda m: m.input_offset.fill_(300.0), None, "input_offset"),
    (lambda m: m.input_scale.fill_(0.0), None, "input_scale"),
    (None, {"mean": [0.0], "std": [1.0, 2.0]}, "quantizer"),
    (None, {"mean": "abc", "std": [1.0]}, "quantizer"),
    (None, {"mean": [0.0] * 84, "std": [0.0] * 84}, "std"),
    (None, [1, 2], "quantizer"),
])
def test_bad_checkpoints_are_refused(tmp_path, edit, quantizer, words):
    path = _checkpoint(tmp_path, edit, quantizer)
    with pytest.raises(CheckpointError, match=words):
        load_checkpoint(path)
    with pytest.raises(CheckpointError):
        load_integer_model(path)


def test_good_checkpoint_folds_to_a_valid_model(tmp_path):
    model = load_integer_model(_checkpoint(tmp_path))
    assert model.validate() is model


def test_folding_non_finite_weights_is_refused():
    model = calibrated_random_model(ModelSpec.from_dict(SPEC), seed=4)
    with torch.no_grad():
        model.blocks[1].linear.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        fold(model)
