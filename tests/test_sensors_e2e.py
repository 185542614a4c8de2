"""The sensor presets end to end on the real UEA/UCR sets (issue #17): each preset trains
on its TRAIN split, folds, and PyTorch, the NumPy engine and the compiled C give the same
result on every example of the TEST split, bit for bit."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from ebnn import engine, hostc
from ebnn.agreement import compare
from ebnn.codegen import export_c
from ebnn.data import load_dataset
from ebnn.data.timeseries import read_ts
from ebnn.fold import fold
from ebnn.memory import plan_memory
from ebnn.spec import load_spec
from ebnn.testing import random_integer_model
from ebnn.train import TrainConfig, train

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")

# set: (file stem, preset, epochs, batch): a few epochs, enough for a network that is not
# constant; batches that leave no tiny last batch (40, 270 and 50 training series)
SETS = {
    "BasicMotions": ("BasicMotions", "imu-1d", 4, 16),
    "JapaneseVowels": ("JapaneseVowels_eq", "vowels-1d", 2, 16),
    "PickupGestureWiimoteZ": ("PickupGestureWiimoteZ_eq", "gesture-1d", 4, 10),
}


def _trained(sensors_dir, tmp_path, name: str):
    stem, preset, epochs, batch = SETS[name]
    tr = load_dataset(str(sensors_dir / f"{stem}_TRAIN.ts.gz"))
    te = load_dataset(str(sensors_dir / f"{stem}_TEST.ts.gz"), "test", quantizer=tr.quantizer,
                      class_names=tr.class_names)
    spec = load_spec(preset).with_input(tr.input_shape, tr.classes)
    cfg = TrainConfig(epochs=epochs, batch_size=batch, augment_shift=4, threads=1,
                      val_fraction=0.0)
    result = train(spec, tr, None, cfg, tmp_path / f"{name}.pt", progress=False)
    return result.model, fold(result.model, quantizer=tr.quantizer.to_dict()), te


# Quantises real samples (HWC: time steps, channels innermost) with the header's constants,
# as a device would: q = clip(rint((v - mean[c]) / std[c] * 32 + 128), 0, 255).
QUANT_MAIN = r"""
#include <math.h>
#include <stdio.h>
#include "{name}_model.h"
static const double mean[] = {up}_QUANT_MEAN, sd[] = {up}_QUANT_STD;
int main(void) {{
    double v;
    long i = 0;
    while (fread(&v, sizeof v, 1, stdin) == 1) {{
        double q = rint((v - mean[i % {up}_QUANT_CHANNELS]) / sd[i % {up}_QUANT_CHANNELS]
                        * 32.0 + 128.0);
        putchar(q < 0 ? 0 : q > 255 ? 255 : (int)q);
        i++;
    }}
    return 0;
}}
"""


@needs_gcc
@pytest.mark.parametrize("name", sorted(SETS))
def test_preset_pytorch_engine_and_c_agree_on_the_test_split(sensors_dir, tmp_path, name):
    model, imodel, test = _trained(sensors_dir, tmp_path, name)
    # PyTorch and the engine: every layer's bits and every prediction, with no float ties.
    agreement = compare(model, imodel, test.x, test.y)
    assert agreement.errors == 0 and agreement.ties == 0, agreement
    assert agreement.prediction_agreement == 1.0
    ref = engine.scores(imodel, test.x, backend="numpy")
    assert len(np.unique(ref.argmax(1))) > 1  # a trained, not a constant, network
    # The compiled C, with 32-bit words (host) and 8-bit words (the AVR export's): scores.
    for word_bits in (32, 8):
        compiled = hostc.convert(imodel, word_bits=word_bits)
        try:
            np.testing.assert_array_equal(compiled.scores(test.x), ref, err_msg=str(word_bits))
            np.testing.assert_array_equal(compiled.predict(test.x), ref.argmax(1))
        finally:
            compiled.close()


@pytest.mark.parametrize("name", sorted(SETS))
def test_sensor_presets_fit_two_kb_of_ram_and_32_kb_of_flash(sensors_dir, name):
    """The memory plan (input window, buffers, stack bound) of each preset, at its data
    set's shape, is within the issue's budget on the ATmega328P."""
    stem, preset, *_ = SETS[name]
    tr = load_dataset(str(sensors_dir / f"{stem}_TRAIN.ts.gz"))
    spec = load_spec(preset)
    assert spec.with_input(tr.input_shape, tr.classes).to_dict() == spec.to_dict(), \
        "the preset is written for this data set's shape"
    plan = plan_memory(spec, word_bits=8, target="avr")
    assert plan.peak_ram_bytes <= 2048 and plan.flash_bytes <= 32 * 1024


@needs_gcc
def test_header_quantiser_codes_real_samples_as_ebnn_does(sensors_dir, tmp_path):
    """The exported header's per-channel mean and std, used in C on the real TEST values
    of each set, give exactly the codes the loader gives (double precision)."""
    for name, (stem, preset, *_) in SETS.items():
        tr = load_dataset(str(sensors_dir / f"{stem}_TRAIN.ts.gz"))
        test_file = sensors_dir / f"{stem}_TEST.ts.gz"
        te = load_dataset(str(test_file), "test", quantizer=tr.quantizer,
                          class_names=tr.class_names)
        spec = load_spec(preset).with_input(tr.input_shape, tr.classes)
        imodel = random_integer_model(list(spec.input_shape), spec.classes,
                                      [b.to_dict() for b in spec.blocks[:-1]])
        imodel.quantizer = tr.quantizer.to_dict()
        export = export_c(imodel, tmp_path / name, name="sig")
        header = export.header.read_text()
        assert f"#define SIG_QUANT_CHANNELS {tr.input_shape[0]}" in header
        src = tmp_path / name / "quant.c"
        src.write_text(QUANT_MAIN.format(name="sig", up="SIG"))
        exe = tmp_path / name / "quant"
        subprocess.run(["gcc", "-std=c99", "-Wall", "-Werror", "-I", str(export.out_dir),
                        str(src), "-o", str(exe), "-lm"], check=True, timeout=60)
        real = read_ts(test_file).values  # (N, C, T) -> HWC: time steps, channels inner
        samples = np.ascontiguousarray(real.transpose(0, 2, 1)).astype("<f8").tobytes()
        codes = subprocess.run([str(exe)], input=samples, capture_output=True, check=True,
                               timeout=60).stdout
        expected = engine.to_hwc(imodel, te.x).reshape(-1)
        np.testing.assert_array_equal(np.frombuffer(codes, np.uint8), expected, err_msg=name)


def test_augment_shift_limit_counts_only_the_axes_it_moves():
    """A (C, 1, T) signal shifts in time only, so a shift of several steps is allowed even
    though the height is 1; one as long as the series is not."""
    from ebnn.train_checks import check_before_training

    spec = load_spec("gesture-1d")
    check_before_training(spec, None, TrainConfig(augment_shift=16))
    with pytest.raises(ValueError, match="must be smaller than the 1x361 input"):
        check_before_training(spec, None, TrainConfig(augment_shift=361))
    with pytest.raises(ValueError, match="must be smaller than the 28x28 input"):
        check_before_training(load_spec("mnist-mcu"), None, TrainConfig(augment_shift=28))
