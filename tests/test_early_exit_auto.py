"""Early exit per layer and ``early_exit="auto"`` (ebnn.early_exit_auto).

The model of the measured tests is built so that the variants differ per layer: layer 1's
thresholds make every neuron fire after its first word or two (early exit skips ~94 % of
its words), while the dense layer 2 keeps calibrated thresholds that are decided only
near the end (its checks cost more than they skip). Checking every word makes both
effects large; ``auto`` must find the per-layer choice, and its figures must be the
exact counts of builds made independently.
"""

from __future__ import annotations

import copy
import shutil
import subprocess

import numpy as np
import pytest

from ebnn import engine
from ebnn.cli import main
from ebnn.codegen import export_c
from ebnn.early_exit_auto import (
    AUTO_IMAGES,
    bit_layers,
    choose,
    parse_setting,
    resolve,
    sample_inputs,
    setting_layers,
)
from ebnn.targets import TARGETS
from ebnn.testing import (
    build_c_runner,
    conv_block,
    random_and_extreme_inputs,
    random_integer_model,
)

EVERY = 1  # words between checks: the settings' effects are large and clear


def _need(target: str) -> None:
    pytest.importorskip("unicorn")
    pytest.importorskip("elftools")
    if not TARGETS[target].available():
        pytest.skip(f"{TARGETS[target].cc} not installed")
    if target == "atmega328p" and shutil.which("simavr") is None:
        pytest.skip("simavr not installed")


@pytest.fixture(scope="module")
def model():
    m = random_integer_model([1, 10, 10], 4, [conv_block(16, 3, padding=1, pool=2),
                                               conv_block(16, 3), {"type": "dense", "units": 32}],
                             constant=0)
    n = int(np.prod(m.layers[1].kernel)) * m.layers[1].in_shape[2]
    m.layers[1].threshold[:] = -(n - 6)  # fires unless nearly every bit mismatches
    return m


# ---- settings -------------------------------------------------------------------------------
def test_settings(model):
    assert bit_layers(model) == (1, 2)
    assert parse_setting("AUTO") == "auto" and parse_setting("2,1") == (1, 2)
    with pytest.raises(ValueError, match="layer indices"):
        parse_setting("fast")
    assert setting_layers(model, "on") == setting_layers(model, True) == (1, 2)
    assert setting_layers(model, "off") == setting_layers(model, False) == ()
    assert setting_layers(model, {2}) == (2,)
    for bad in ({0}, {3}, [7]):  # the first and the output layer have no popcount
        with pytest.raises(ValueError, match="binary layers"):
            setting_layers(model, bad)
    assert resolve(model, [1]).summary() == "on in layer 1"
    assert resolve(model, "on").summary() == "on in layers 1, 2"


@pytest.mark.parametrize("target", [None, "host", "arm", "x86_64"])
def test_auto_without_an_emulated_target_is_off(tmp_path, model, target):
    ex = export_c(model, tmp_path, target=target)  # "auto" is the default
    assert ex.early_exit_layers == () and not ex.early_exit and ex.early_exit_every == 0
    choice = ex.early_exit_choice
    assert choice.setting == "auto" and not choice.measured and choice.counts == {}
    assert "never slower" in choice.reason
    assert "Early exit: auto: off (" in ex.header.read_text()


def _c_scores(export, x: np.ndarray, model) -> np.ndarray:
    """Scores of an export compiled on the host into a program (any export option)."""
    exe = build_c_runner(export, ["-std=c99", "-O1"])
    path = export.out_dir / "inputs.bin"
    path.write_bytes(engine.to_hwc(model, x).tobytes())
    out = subprocess.run([str(exe), str(path)], capture_output=True, text=True, timeout=60,
                         check=True).stdout
    return np.array([[int(v) for v in line.split()[1:]] for line in out.splitlines()[1:]])


@pytest.mark.parametrize("tap_order", [False, True])
def test_per_layer_setting_is_bit_exact(tmp_path, model, tap_order):
    """Each per-layer setting, checking every word (so checks decide both ways in both
    layers), compiled on the host, equals the NumPy engine bit for bit; only the named
    layers carry the checks."""
    from ebnn.early_exit import set_tap_order

    x = random_and_extreme_inputs(model, 12, seed=1)
    if tap_order:
        model = copy.deepcopy(model)
        set_tap_order(model, random_and_extreme_inputs(model, 20, seed=5), word_bits=8)
    ref = engine.scores(model, x)
    sources = {}
    for layers in ((), (1,), (2,), (1, 2)):
        ex = export_c(model, tmp_path / f"l{layers}", word_bits=8, early_exit=layers,
                      early_exit_every=EVERY)
        assert ex.early_exit_layers == layers
        np.testing.assert_array_equal(_c_scores(ex, x, model), ref)
        sources[layers] = ex.source.read_text()
    for i in (1, 2):
        assert f"Early exit in layer(s) {i}: checks every 1 word(s)" in sources[(i,)]
    # the function of a layer without early exit is the same as in the export without it
    off = sources[()]
    assert _function(sources[(1,)], 2) == _function(off, 2)
    assert _function(sources[(2,)], 1) == _function(off, 1)
    assert _function(sources[(1,)], 1) != _function(off, 1)
    assert _function(sources[(1, 2)], 2) == _function(sources[(2,)], 2)


def _function(source: str, i: int) -> str:
    start = source.index(f"void t_l{i}(")
    return source[start:source.index("\n}\n", start)]


# ---- measured -------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["cortex-m4", "atmega328p"])
def test_auto_picks_the_faster_variant_per_layer(tmp_path, model, target):
    from ebnn.mcu import bench_on_target, build_model_for_target

    _need(target)
    choice = choose(model, target, word_bits=8, every=EVERY)
    assert choice.measured and choice.images == AUTO_IMAGES
    assert "random uint8" in choice.inputs
    x = sample_inputs(model)
    # The figures are those of builds made independently with each fixed setting.
    for layers, count in choice.counts.items():
        tb = build_model_for_target(model, target, tmp_path / f"b{layers}", word_bits=8,
                                    early_exit=layers, early_exit_every=EVERY)
        r = bench_on_target(model, target, x, build=tb)
        assert r["agree_with_engine"] and not r["problems"], r["problems"]
        assert r[f"{TARGETS[target].unit}_per_inference"] == count, layers
    assert set(choice.counts) >= {(), (1,), (2,), (1, 2)}
    # the fastest wins: here early exit in layer 1 only, faster than both off and on
    assert choice.layers == min(choice.counts, key=choice.counts.get) == (1,)
    assert choice.chosen < choice.off and choice.chosen < choice.on
    assert 0 < choice.saving == pytest.approx(1 - choice.chosen / choice.off)
    if TARGETS[target].unit == "instructions":
        # instruction counts are exactly additive over layers, which auto relies on
        c = choice.counts
        assert c[(1, 2)] - c[()] == (c[(1,)] - c[()]) + (c[(2,)] - c[()])


def test_bench_and_build_default_to_auto(tmp_path, model):
    from ebnn.mcu import bench_on_target, format_report

    _need("cortex-m4")
    x = random_and_extreme_inputs(model, 10, seed=2)
    r = bench_on_target(model, "cortex-m4", x, word_bits=8, out_dir=tmp_path)
    choice = r["early_exit_choice"]
    assert choice["setting"] == "auto" and choice["measured"]
    assert choice["images"] == AUTO_IMAGES and choice["inputs"] == "leading inputs of the benchmark"
    assert r["early_exit_layers"] == choice["layers"] and r["agree_with_engine"]
    assert r["instructions_per_inference"] > 0 and not r["problems"]
    assert "early exit auto:" in format_report(r)
    assert "Early exit: auto:" in (tmp_path / "src" / "t_model.h").read_text()


def test_cli_early_exit_settings(tmp_path, model, capsys):
    path = tmp_path / "m.ebnn"
    model.save(path)
    assert main(["export", str(path), "--out", str(tmp_path / "a"), "--early-exit", "2"]) == 0
    assert "early exit on in layer 2" in capsys.readouterr().out
    assert main(["export", str(path), "--out", str(tmp_path / "b"), "--early-exit"]) == 0
    assert "early exit on in layers 1, 2" in capsys.readouterr().out
    assert main(["export", str(path), "--out", str(tmp_path / "c")]) == 0  # auto, no target
    assert "early exit auto: off (no target" in capsys.readouterr().out
    assert main(["export", str(path), "--out", str(tmp_path / "d"), "--early-exit", "0"]) == 2
    assert "binary layers [1, 2]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", str(path), "--out", str(tmp_path / "e"), "--early-exit", "fast"])
    _need("cortex-m4")
    assert main(["build", str(path), "--target", "cortex-m4", "--out", str(tmp_path / "f"),
                 "--word-bits", "8", "--json"]) == 0
    import json

    built = json.loads(capsys.readouterr().out)
    assert built["early_exit_choice"]["measured"] and built["early_exit_choice"]["target"] \
        == "cortex-m4"
