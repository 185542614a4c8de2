"""Deploy-side commands: one file in (checkpoint or .ebnn), any stage out."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from ebnn import engine
from ebnn.checkpoint import save_checkpoint
from ebnn.cli import main
from ebnn.data import load_dataset
from ebnn.deploy import IntegerModel
from ebnn.fold import fold
from ebnn.testing import calibrated_random_model

DIGITS = {"name": "tiny_digits", "input_shape": [1, 8, 8], "classes": 10, "blocks": [
    {"type": "conv", "filters": 12, "kernel": 3, "padding": 1, "pool": 2},
    {"type": "dense", "units": 20}, {"type": "output"}]}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "tiny.pt"
    model = calibrated_random_model(DIGITS, seed=3, offset=[5])
    save_checkpoint(path, model, meta={"data": "digits"})
    return path


def run_json(capsys, *argv):
    assert main(list(argv)) == 0
    out = capsys.readouterr().out
    assert out.startswith("{"), out
    return json.loads(out)


def test_eval_agrees_across_torch_integer_and_c(checkpoint, tmp_path, capsys):
    ebnn_file = tmp_path / "tiny.ebnn"
    assert main(["fold", str(checkpoint), "--out", str(ebnn_file)]) == 0
    capsys.readouterr()
    common = ["--data", "digits", "--json"]
    torch_acc = run_json(capsys, "eval", str(checkpoint), *common)
    integer = run_json(capsys, "eval", str(ebnn_file), *common)
    from_checkpoint = run_json(capsys, "eval", str(checkpoint), "--engine", "integer", *common)
    compiled = run_json(capsys, "eval", str(ebnn_file), "--engine", "c", *common)
    numpy = run_json(capsys, "eval", str(ebnn_file), "--engine", "numpy", "--threads", "1",
                     *common)
    assert integer["engine"] == "fast" and compiled["engine"] == "c"
    assert from_checkpoint["engine"] == numpy["engine"] == "numpy"  # "integer" is an alias
    assert (integer["accuracy"] == from_checkpoint["accuracy"] == compiled["accuracy"]
            == numpy["accuracy"])
    assert all(r["inference_seconds"] >= 0 for r in (integer, compiled, numpy, torch_acc))
    # PyTorch may differ only through float32 ties (counted in test_fold); on 359 digits
    # the accuracies agree to within one example.
    assert abs(torch_acc["accuracy"] - integer["accuracy"]) <= 1 / integer["n"]
    test = load_dataset("digits", "test")
    model = IntegerModel.load(ebnn_file)
    expected = float((engine.predict(model, test.x, backend="numpy") == test.y).mean())
    assert integer["accuracy"] == expected


def test_eval_rejects_torch_engine_for_deployable_file(checkpoint, tmp_path, capsys):
    ebnn_file = tmp_path / "m.ebnn"
    fold_model = fold(calibrated_random_model(DIGITS, seed=1))
    fold_model.save(ebnn_file)
    assert main(["eval", str(ebnn_file), "--data", "digits", "--engine", "torch"]) == 2
    assert "deployable model" in capsys.readouterr().err


def test_export_header_states_the_summary_figures(checkpoint, tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["export", str(checkpoint), "--out", str(out), "--word-bits", "16",
                 "--target", "cortex-m4"]) == 0
    capsys.readouterr()
    summary = run_json(capsys, "summary", str(checkpoint), "--word-bits", "16",
                       "--target", "cortex-m4", "--json")
    header = (out / "tiny_digits_model.h").read_text()
    def define(name):
        return int(re.search(rf"#define TINY_DIGITS_{name}\s+(\d+)", header).group(1))
    assert define("FLASH_BYTES") == summary["export"]["flash_bytes"]
    assert define("RAM_BYTES") == summary["export"]["ram_bytes"]
    assert define("STACK_BYTES") == summary["export"]["stack_bytes"]


def test_export_is_self_contained_c(checkpoint, tmp_path):
    out = tmp_path / "c"
    assert main(["export", str(checkpoint), "--out", str(out), "--early-exit"]) == 0
    main_c = tmp_path / "main.c"
    main_c.write_text('#include "tiny_digits_model.h"\n#include <stdio.h>\n'
                      "int main(void) { static const uint8_t x[64];\n"
                      '  printf("%d\\n", tiny_digits_predict(x)); return 0; }\n')
    exe = tmp_path / "app"
    subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-I", str(out),
                    str(main_c), str(out / "tiny_digits_model.c"), "-o", str(exe)], check=True)
    printed = int(subprocess.run([str(exe)], capture_output=True, text=True,
                                 check=True).stdout)
    model = fold(calibrated_random_model(DIGITS, seed=3, offset=[5]))
    assert printed == engine.predict(model, np.zeros((1, 1, 8, 8), np.uint8))[0]


def test_commands_exist_in_the_installed_entry_point():
    result = subprocess.run([sys.executable, "-m", "ebnn.cli", "--help"], capture_output=True,
                            text=True)
    for command in ("train", "eval", "summary", "fold", "export", "build", "bench", "search"):
        assert command in result.stdout


def test_train_picks_batch_size_from_memory_budget(tmp_path, capsys):
    assert main(["train", "--data", "digits", "--model", "digits", "--epochs", "1",
                 "--memory-efficient", "--max-train-memory", "64MB", "--no-progress",
                 "--out", str(tmp_path / "d.pt")]) == 0
    err = capsys.readouterr().err
    batch = int(re.search(r"batch size (\d+): the largest", err).group(1))
    assert batch >= 2
    assert main(["train", "--data", "digits", "--model", "digits", "--epochs", "1",
                 "--max-train-memory", "1KB", "--out", str(tmp_path / "e.pt")]) == 2
