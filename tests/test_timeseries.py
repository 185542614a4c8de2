"""Time-series data: the ``.ts`` loader (good and malformed files, through the API and the
CLI), padding and truncation, the per-channel quantiser, ``(N, C, T)`` signals in
``.npz``/``.csv`` files, the three real sensor sets, and a model trained on one of them
whose exported C reads the signals as the engine does."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from ebnn import engine, hostc
from ebnn.checkpoint import load_checkpoint
from ebnn.cli import main
from ebnn.data import (
    DataError,
    FeatureQuantizer,
    SeriesOptions,
    TsFormatError,
    load_dataset,
    load_ts,
    read_ts,
)
from ebnn.deploy import IntegerModel
from ebnn.testing import cli_error_line

HEADER = """# two channels, three steps
@problemName Toy
@univariate false
@dimensions 2
@equalLength true
@seriesLength 3
@classLabel true up down
@data
"""
GOOD = HEADER + "1,2,3:4,5,6:up\n\n# a comment among the cases\n3,2,1:6,5,4:down\n"
FIRST = HEADER.count("\n") + 1  # the line number of the first case


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    if name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


# ---- good files ----------------------------------------------------------------------------
def test_small_file_parses_to_signals(tmp_path):
    data = read_ts(write(tmp_path, "toy.ts", GOOD))
    assert data.values.tolist() == [[[1, 2, 3], [4, 5, 6]], [[3, 2, 1], [6, 5, 4]]]
    assert data.y.tolist() == [0, 1] and data.class_names == ["up", "down"]
    assert data.problem == "Toy"
    ds = load_ts(tmp_path / "toy.ts")
    assert ds.x.shape == (2, 2, 1, 3) and ds.x.dtype == np.uint8  # time along W
    assert ds.classes == 2 and ds.class_names == ["up", "down"] and ds.name == "toy"
    # One mean and spread per channel, repeated over its three steps.
    assert ds.quantizer.mean == [2.0] * 3 + [5.0] * 3
    assert ds.quantizer.std == pytest.approx([np.std([1, 2, 3])] * 6)
    gz = load_dataset(str(write(tmp_path, "toy.ts.gz", GOOD)))
    assert np.array_equal(gz.x, ds.x) and np.array_equal(gz.y, ds.y)


def test_labels_follow_the_declaration_and_channels_come_from_the_first_case(tmp_path):
    text = ("@problemName Uni\n@classLabel true 1 10 2\n@data\n"
            "0.5,1.5:2\n1,2:10\n3,4:1\n")  # no @dimensions, like JapaneseVowels
    data = read_ts(write(tmp_path, "uni.ts", text))
    assert data.values.shape == (3, 1, 2)
    assert data.y.tolist() == [2, 1, 0] and data.class_names == ["1", "10", "2"]


# ---- malformed files -----------------------------------------------------------------------
BAD_TS = {
    "missing @data": (HEADER.replace("@data\n", "") + "1,2,3:4,5,6:up\n",
                      "missing @data line"),
    "case before @data": (HEADER.replace("@data\n", "") + "1,2,3:4,5,6:up\n@data\n",
                          f"line {FIRST - 1}: a case before the @data line (missing @data?)"),
    "truncated": (HEADER + "1,2,3:4,5,6:up\n3,2,1:6,5",
                  f"line {FIRST + 1}: the case ends after 2 of 3 ':'-separated fields (2 "
                  "channels and the label); the file looks truncated (its last line has no "
                  "line end)"),
    "truncated label": (HEADER + "1,2,3:4,5,6:up\n3,2,1:6,5,4:do",
                        f"line {FIRST + 1}: label 'do' is not declared in @classLabel (up down)"
                        "; the file looks truncated (its last line has no line end)"),
    "missing label": (HEADER + "1,2,3:4,5,6\n3,2,1:6,5,4:down\n",
                      f"line {FIRST}: missing label: the case has 2 channels but no class label"),
    "empty label": (HEADER + "1,2,3:4,5,6:\n", f"line {FIRST}: missing label after the last ':'"),
    "ragged": (HEADER + "1,2,3:4,5,6:up\n3,2,1:6,5:down\n",
               f"line {FIRST + 1}: ragged channels: channel 0 has 3 values, channel 1 has 2"),
    "unequal": (HEADER + "1,2,3:4,5,6:up\n3,2:6,5:down\n",
                f"line {FIRST + 1}: unequal lengths: the series have 2 values but @seriesLength "
                "says 3; pass --pad or --truncate"),
    "unequal no header": (HEADER.replace("@seriesLength 3\n", "") + "1,2,3:4,5,6:up\n"
                          "3,2,1,0:6,5,4,3:down\n",
                          f"line {FIRST}: unequal lengths: the series have 4 values but the "
                          f"first case (line {FIRST - 1}) says 3"),
    "missing ?": (HEADER + "1,?,3:4,5,6:up\n",
                  f"line {FIRST}: missing value '?' in channel 0 at step 1: missing values "
                  "are not supported"),
    "missing NaN": (HEADER + "1,2,3:4,5,NaN:up\n",
                    f"line {FIRST}: missing value 'NaN' in channel 1 at step 2: missing values "
                    "are not supported (trailing ones are dropped with --pad or --truncate)"),
    "wrong label": (HEADER + "1,2,3:4,5,6:sideways\n",
                    f"line {FIRST}: label 'sideways' is not declared in @classLabel (up down)"),
    "too few channels": (HEADER + "1,2,3:4,5,6:up\n1,2,3:up\n",
                         f"line {FIRST + 1}: 1 channel, expected 2"),
    "too many channels": (HEADER + "1,2,3:4,5,6:7,8,9:up\n",
                          f"line {FIRST}: 3 channels, expected 2"),
    "non-numeric": (HEADER + "1,x7,3:4,5,6:up\n",
                    f"line {FIRST}: non-numeric value 'x7' in channel 0 at step 1"),
    "empty value": (HEADER + "1,2,3:4,,6:up\n", f"line {FIRST}: an empty value in channel 1 "
                                                "at step 1"),
    "infinite": (HEADER + "1,2,inf:4,5,6:up\n",
                 f"line {FIRST}: non-finite value 'inf' in channel 0 at step 2"),
    "no cases": (HEADER + "# nothing\n", f"line {FIRST - 1}: no cases after @data"),
    "no labels": (HEADER.replace("@classLabel true up down\n", "") + "1,2,3:4,5,6:up\n",
                  "no @classLabel line before @data"),
    "regression": (HEADER.replace("@classLabel true up down", "@classLabel false") +
                   "1,2,3:4,5,6:0.5\n", "@classLabel false: the file has no class labels"),
    "duplicate label": (HEADER.replace("up down", "up down up") + "1,2,3:4,5,6:up\n",
                        "@classLabel declares label 'up' twice"),
    "timestamps": (HEADER.replace("@problemName Toy", "@timeStamps true") + "1,2,3:4,5,6:up\n",
                   "line 2: timestamped series (@timestamps true) are not supported"),
    "bad flag": (HEADER.replace("@univariate false", "@univariate maybe") + "1,2,3:4,5,6:up\n",
                 "line 3: @univariate must be true or false, got 'maybe'"),
    "univariate conflict": (HEADER.replace("@univariate false", "@univariate true") +
                            "1,2,3:4,5,6:up\n", "@univariate true but @dimensions 2"),
}


@pytest.mark.parametrize("kind", sorted(BAD_TS))
def test_malformed_ts_files_name_file_line_and_problem(kind, tmp_path):
    text, msg = BAD_TS[kind]
    path = write(tmp_path, f"bad-{kind.replace(' ', '-').replace('?', 'q')}.ts", text)
    with pytest.raises(TsFormatError) as e:
        load_dataset(str(path))
    assert str(e.value).startswith(f"{path}: ") and msg in str(e.value)
    assert "\n" not in str(e.value)


def test_truncated_gzip_and_binary_files(tmp_path):
    raw = gzip.compress(GOOD.encode())
    (tmp_path / "cut.ts.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="cut.ts.gz: truncated gzip data"):
        load_dataset(str(tmp_path / "cut.ts.gz"))
    (tmp_path / "bin.ts").write_bytes(b"@data\n\xff\xfe\x00")
    with pytest.raises(TsFormatError, match="bin.ts: not a UTF-8 text file"):
        load_dataset(str(tmp_path / "bin.ts"))


def test_malformed_files_through_the_cli(tmp_path, capsys):
    good = write(tmp_path, "good.ts", GOOD)
    train = ["train", "--model", "bnn-mlp:8", "--epochs", "1", "--out", str(tmp_path / "m.pt"),
             "--no-progress"]
    for kind, (text, msg) in BAD_TS.items():
        bad = write(tmp_path, f"cli-{len(text)}.ts", text)
        assert msg in cli_error_line(capsys, [*train, "--data", str(bad)]), kind
        # a bad test file stops the run before any training
        assert msg in cli_error_line(capsys, [*train, "--data", str(good), "--test-data",
                                           str(bad)]), kind
    assert not (tmp_path / "m.pt").exists()
    line = cli_error_line(capsys, [*train, "--data", str(good), "--series-length", "5"])
    assert "a series length needs --pad and/or --truncate" in line
    line = cli_error_line(capsys, [*train, "--data", "digits", "--pad"])
    assert "apply to .ts files only" in line
    # A real process: one line on stderr, exit 2, no traceback.
    run = subprocess.run([sys.executable, "-m", "ebnn", "train", "--data",
                          str(write(tmp_path, "r.ts", BAD_TS["ragged"][0])), *train[1:]],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        f"ebnn: error: {tmp_path / 'r.ts'}: {BAD_TS['ragged'][1]}; pass --pad or --truncate "
        "to even them"]


# ---- padding and truncation ----------------------------------------------------------------
UNEQUAL = HEADER.replace("@seriesLength 3\n", "").replace("@equalLength true",
                                                          "@equalLength false") + \
    "1,2,3:4,5,6:up\n7,8:9,?:down\n1,2,3,4:5,6,7,8:up\n"


def test_pad_repeats_the_last_value_and_truncate_keeps_the_first_steps(tmp_path):
    path = write(tmp_path, "uneq.ts", UNEQUAL)
    with pytest.raises(TsFormatError, match="line 9: missing value '\\?' in channel 1 at step 1"):
        read_ts(path)  # dropped only when padding or truncating
    padded = read_ts(path, SeriesOptions(pad=True)).values  # to the longest: 4
    assert padded.tolist() == [[[1, 2, 3, 3], [4, 5, 6, 6]], [[7, 8, 8, 8], [9, 9, 9, 9]],
                               [[1, 2, 3, 4], [5, 6, 7, 8]]]
    cut = read_ts(path, SeriesOptions(truncate=True)).values  # to the shortest: 1 ("9")
    assert cut.tolist() == [[[1], [4]], [[7], [9]], [[1], [5]]]
    both = read_ts(path, SeriesOptions(3, pad=True, truncate=True)).values
    assert both[:, 0].tolist() == [[1, 2, 3], [7, 8, 8], [1, 2, 3]]
    with pytest.raises(TsFormatError, match=r"line 10: channel 0 has 4 values, more than the "
                                            r"series length 3; pass --truncate"):
        read_ts(path, SeriesOptions(3, pad=True))
    with pytest.raises(TsFormatError, match=r"line 8: channel 0 has 3 values, fewer than the "
                                            r"series length 5; pass --pad"):
        read_ts(path, SeriesOptions(5, truncate=True))
    with pytest.raises(TsFormatError, match="--pad with --truncate needs --series-length"):
        read_ts(path, SeriesOptions(pad=True, truncate=True))
    declared = write(tmp_path, "decl.ts", HEADER + "1,2:3,4:up\n1,2,3,4:5,6,7,8:down\n")
    assert read_ts(declared, SeriesOptions(pad=True, truncate=True)).values.shape == (2, 2, 3)
    # Only trailing missing values are dropped; a gap inside a series stays an error.
    gap = write(tmp_path, "gap.ts", HEADER + "1,?,3:4,5,6:up\n")
    with pytest.raises(TsFormatError, match="line 9: missing value '\\?' in channel 0 at step 1"):
        read_ts(gap, SeriesOptions(pad=True))
    with pytest.raises(ValueError, match="series length must be at least 1"):
        SeriesOptions(0, pad=True)


def test_test_file_is_brought_to_the_training_length(tmp_path, capsys):
    train = load_dataset(str(write(tmp_path, "tr.ts", GOOD)))
    short = write(tmp_path, "te.ts", HEADER.replace("@seriesLength 3\n", "") +
                  "1,2:4,5:down\n")
    with pytest.raises(DataError, match="have 2 channels x 2 steps = 4 values per example, "
                                        "but the quantiser of the training data .or model. "
                                        "takes 6"):
        load_dataset(str(short), "test", quantizer=train.quantizer,
                     class_names=train.class_names)
    test = load_dataset(str(short), "test", quantizer=train.quantizer,
                        class_names=train.class_names, series=SeriesOptions(pad=True))
    expected = train.quantizer(np.array([[1, 2, 2, 4, 5, 5]], dtype=float))
    assert test.x.reshape(1, 6).tolist() == expected.tolist() and test.y.tolist() == [1]
    # The same through the CLI: the options apply to --data and --test-data alike.
    out = tmp_path / "m.pt"
    assert main(["train", "--data", str(tmp_path / "tr.ts"), "--test-data", str(short),
                 "--pad", "--model", "bnn-mlp:8", "--epochs", "1", "--val-fraction", "0",
                 "--out", str(out), "--threads", "1", "--no-progress"]) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert main(["eval", str(out), "--data", str(short), "--pad", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 1
    line = cli_error_line(capsys, ["eval", str(out), "--data", str(short)])
    assert "2 channels x 2 steps" in line
    # bench and verify read the data with the same options
    assert main(["bench", str(out), "--target", "host", "--data", str(short), "--pad",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 1 and report["agree_with_engine"]
    assert main(["verify", "robust", str(out), "--data", str(short), "--pad", "--eps", "1",
                 "--images", "1", "--json"]) == 0
    capsys.readouterr()
    for cmd in (["bench", str(out), "--target", "host"], ["verify", "robust", str(out),
                                                           "--eps", "1"]):
        assert "2 channels x 2 steps" in cli_error_line(capsys, [*cmd, "--data", str(short)])


def test_test_file_classes_and_channels_must_agree_with_training(tmp_path, capsys):
    train = load_dataset(str(write(tmp_path, "tr.ts", GOOD)))
    kw = {"quantizer": train.quantizer, "class_names": train.class_names}
    # Declared in another order: numbered as in training.
    swapped = write(tmp_path, "swap.ts", GOOD.replace("up down", "down up"))
    assert load_dataset(str(swapped), "test", **kw).y.tolist() == [0, 1]
    extra = write(tmp_path, "extra.ts", GOOD.replace("up down", "up down left"))
    with pytest.raises(TsFormatError, match="extra.ts: declares class 'left' that the "
                                            "training data does not have .its classes: up "
                                            "down."):
        load_dataset(str(extra), "test", **kw)
    # As many values per example (3 x 2 = 2 x 3): the loader cannot tell, train compares.
    three = write(tmp_path, "three.ts", HEADER.replace("@dimensions 2", "@dimensions 3")
                  .replace("@seriesLength 3", "@seriesLength 2") + "1,2:3,4:5,6:up\n")
    assert load_dataset(str(three), "test", **kw).input_shape == (3, 1, 2)
    line = cli_error_line(capsys, ["train", "--data", str(tmp_path / "tr.ts"), "--test-data",
                                str(three), "--model", "bnn-mlp:8", "--epochs", "1", "--out",
                                str(tmp_path / "m.pt")])
    assert line.endswith("three.ts: inputs are [3, 1, 2] but the training data's are [2, 1, 3]")
    three = write(tmp_path, "three3.ts", HEADER.replace("@dimensions 2", "@dimensions 3") +
                  "1,2,3:3,4,5:5,6,7:up\n")
    with pytest.raises(DataError, match="3 channels x 3 steps = 9 values per example, but "
                                        "the quantiser of the training data .or model. takes 6"):
        load_dataset(str(three), "test", **kw)


# ---- the quantiser and other signal sources ------------------------------------------------
def test_per_channel_quantiser_formula_and_round_trip():
    rng = np.random.default_rng(0)
    v = rng.normal([[0.0], [100.0], [-5.0]], [[1.0], [20.0], [0.0]], (50, 3, 7))
    q = FeatureQuantizer.fit_channels(v)
    assert q.features == 21
    for c in range(3):
        assert len(set(q.mean[7 * c: 7 * c + 7])) == len(set(q.std[7 * c: 7 * c + 7])) == 1
        assert q.mean[7 * c] == pytest.approx(v[:, c].mean())
    assert q.std[14] == 1.0  # a constant channel codes as 128, not a division by zero
    codes = q(v.reshape(50, 21)).reshape(50, 3, 7)
    ref = np.clip(np.rint((v - v.mean(axis=(0, 2), keepdims=True)) /
                          np.where(v.std(axis=(0, 2), keepdims=True) > 1e-12,
                                   v.std(axis=(0, 2), keepdims=True), 1) * 32 + 128), 0, 255)
    assert np.array_equal(codes, ref)
    again = FeatureQuantizer.from_dict(json.loads(json.dumps(q.to_dict())))
    assert again == q and np.array_equal(again(v.reshape(50, 21)), codes.reshape(50, 21))


def test_npz_and_csv_signals(tmp_path, capsys):
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (6, 2, 4)) * [[10.0], [0.1]]
    y = np.array([0, 1, 2, 0, 1, 2])
    np.savez(tmp_path / "sig.npz", x=x, y=y)
    npz = load_dataset(str(tmp_path / "sig.npz"))
    assert npz.x.shape == (6, 2, 1, 4) and npz.classes == 3
    assert npz.quantizer == FeatureQuantizer.fit_channels(x)
    header = ",".join([f"a{t}" for t in range(4)] + [f"b{t}" for t in range(4)] + ["label"])
    rows = [",".join([*(repr(float(v)) for v in x[i].reshape(-1)), str(y[i])])
            for i in range(6)]
    (tmp_path / "sig.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    csv = load_dataset(str(tmp_path / "sig.csv"), channels=2)
    assert csv.quantizer == npz.quantizer and np.array_equal(csv.x, npz.x)
    flat = load_dataset(str(tmp_path / "sig.csv"))  # without channels: 8 features
    assert flat.x.shape == (6, 8, 1, 1)
    out = tmp_path / "csv.pt"
    assert main(["train", "--data", str(tmp_path / "sig.csv"), "--channels", "2", "--model",
                 "bnn-mlp:8", "--epochs", "1", "--val-fraction", "0", "--out", str(out),
                 "--threads", "1", "--no-progress"]) == 0
    assert load_checkpoint(out).spec.input_shape == (2, 1, 4)
    capsys.readouterr()
    assert main(["eval", str(out), "--data", str(tmp_path / "sig.npz"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 6  # the same signals from a .npz
    line = cli_error_line(capsys, ["eval", str(out), "--data", str(tmp_path / "sig.csv")])
    assert line.endswith("sig.csv test data has input shape [8, 1, 1] but the model expects "
                         "[2, 1, 4]")
    # A test file with the training quantiser, even if it is stored as integers.
    np.savez(tmp_path / "int.npz", x=np.rint(x).astype(np.int16), y=y)
    test = load_dataset(str(tmp_path / "int.npz"), "test", quantizer=npz.quantizer)
    assert test.x.shape == (6, 2, 1, 4)
    with pytest.raises(DataError, match="8 feature columns do not split into 3 channels"):
        load_dataset(str(tmp_path / "sig.csv"), channels=3)
    with pytest.raises(DataError, match="--channels applies to .csv files only"):
        load_dataset(str(tmp_path / "sig.npz"), channels=2)
    np.savez(tmp_path / "nan.npz", x=np.where(x > 5, np.nan, x), y=y)
    with pytest.raises(DataError, match=r"nan.npz: x\[\d, 0, \d\] is nan"):
        load_dataset(str(tmp_path / "nan.npz"))
    # uint8 and small-integer (N, H, W) arrays stay images.
    np.savez(tmp_path / "img.npz", x=np.ones((2, 4, 5), np.int32), y=[0, 1])
    assert load_dataset(str(tmp_path / "img.npz")).x.shape == (2, 1, 4, 5)


# ---- the real sensor sets ------------------------------------------------------------------
SENSOR_SETS = {  # name: (channels, length, classes, train, test)
    "BasicMotions": (6, 100, 4, 40, 40),
    "JapaneseVowels_eq": (12, 25, 9, 270, 370),
    "PickupGestureWiimoteZ_eq": (1, 361, 10, 50, 50),
}


def test_sensor_checksums(sensors_dir):
    sums = {}
    for line in (sensors_dir / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        sums[name] = digest
    assert len(sums) == 2 * len(SENSOR_SETS)
    for name, digest in sums.items():
        assert hashlib.sha256((sensors_dir / name).read_bytes()).hexdigest() == digest, name


@pytest.mark.parametrize("name", sorted(SENSOR_SETS))
def test_sensor_sets_load_with_documented_shapes(name, sensors_dir):
    channels, length, classes, n_train, n_test = SENSOR_SETS[name]
    train = load_dataset(str(sensors_dir / f"{name}_TRAIN.ts.gz"))
    test = load_dataset(str(sensors_dir / f"{name}_TEST.ts.gz"), "test",
                        quantizer=train.quantizer, class_names=train.class_names)
    assert train.x.shape == (n_train, channels, 1, length)
    assert test.x.shape == (n_test, channels, 1, length)
    assert train.classes == test.classes == classes == len(train.class_names)
    assert set(train.y.tolist()) == set(range(classes))
    assert test.class_names == train.class_names
    # Fitted on the training split: each channel's codes centre on 128 there.
    means = train.x.astype(float).mean(axis=(0, 2, 3))
    assert np.all(np.abs(means - 128) < 3)


def test_mlp_on_basic_motions_exports_with_its_quantiser(sensors_dir, tmp_path, capsys):
    """Train through the CLI, fold, export: the .ebnn carries the training quantiser, and
    the generated C, fed test signals coded with it, predicts what the engine does."""
    train_file = str(sensors_dir / "BasicMotions_TRAIN.ts.gz")
    test_file = str(sensors_dir / "BasicMotions_TEST.ts.gz")
    out, model_file = tmp_path / "bm.pt", tmp_path / "bm.ebnn"
    assert main(["train", "--data", train_file, "--test-data", test_file, "--model",
                 "bnn-mlp:64", "--epochs", "3", "--out", str(out), "--threads", "1",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and "on 40 examples" in printed
    train = load_dataset(train_file)
    assert load_checkpoint(out).quantizer == train.quantizer.to_dict()
    assert main(["fold", str(out), "--out", str(model_file)]) == 0
    assert main(["export", str(model_file), "--out", str(tmp_path / "c")]) == 0
    assert (tmp_path / "c").is_dir()
    capsys.readouterr()
    model = IntegerModel.load(model_file)
    assert tuple(model.input_shape) == (6, 1, 100) and model.class_names == train.class_names
    assert model.quantizer == train.quantizer.to_dict()
    test = load_dataset(test_file, "test", quantizer=FeatureQuantizer.from_dict(model.quantizer),
                        class_names=model.class_names)
    expected = engine.predict(model, test.x, backend="numpy")
    compiled = hostc.convert(model_file)
    assert np.array_equal(compiled.predict(test.x), expected)
    assert main(["eval", str(model_file), "--data", test_file, "--engine", "c", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 40 and result["accuracy"] == float((expected == test.y).mean())



def test_augment_shift_moves_signals_in_time_only():
    import torch

    from ebnn.data import random_shift

    x = torch.arange(1, 1 + 8 * 2 * 10, dtype=torch.int64).reshape(8, 2, 1, 10).to(torch.uint8)
    out = random_shift(x, 2, torch.Generator().manual_seed(0))
    moved = 0
    for a, b in zip(x, out, strict=True):
        shifts = [d for d in range(-2, 3) if torch.equal(
            b[:, 0, max(d, 0):10 + min(d, 0)], a[:, 0, max(-d, 0):10 - max(d, 0)])]
        assert len(shifts) == 1 and int((b != 0).sum()) == 2 * (10 - abs(shifts[0]))
        moved += shifts[0] != 0
    assert moved > 0
    features = torch.full((4, 5, 1, 1), 7, dtype=torch.uint8)  # (F, 1, 1): never moved
    assert torch.equal(random_shift(features, 3), features)


def test_search_reads_unequal_series_with_the_train_options(tmp_path, capsys):
    """ebnn search takes --pad/--truncate/--series-length like train: a ragged file is a
    one-line error without them and searches with them (stored in the study's key)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(48):
        steps = 10 + i % 3  # lengths 10, 11 and 12
        up = i % 2 == 0
        a = np.linspace(0, 1, steps) * (1 if up else -1) + rng.normal(0, 0.1, steps)
        b = rng.normal(0, 0.1, steps)
        rows.append(",".join(f"{v:.3f}" for v in a) + ":" + ",".join(f"{v:.3f}" for v in b)
                    + (":up" if up else ":down"))
    header = HEADER.replace("@equalLength true", "@equalLength false").replace(
        "@seriesLength 3\n", "")
    ragged = write(tmp_path, "ragged.ts", header + "\n".join(rows) + "\n")
    common = ["search", "--data", str(ragged), "--ram", "4KB", "--flash", "64KB",
              "--trials", "1", "--epochs", "1", "--no-final", "--max-conv-blocks", "1",
              "--max-dense-blocks", "1", "--filters", "8", "--kernels", "3", "--units", "16",
              "--threads", "1"]
    line = cli_error_line(capsys, [*common, "--out", str(tmp_path / "no")])
    assert "ragged.ts" in line and "--pad" in line
    assert main([*common, "--pad", "--out", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "1 trials trained" in out
    from ebnn.search.config import SearchConfig, load_split

    cfg = SearchConfig(data=str(ragged), out=tmp_path / "x", ram="4KB", flash="64KB",
                       series=SeriesOptions(pad=True))
    ds, _, _ = load_split(cfg)
    assert ds.input_shape == (2, 1, 12)  # padded to the longest series
    assert cfg.study_key(cfg.budget())["series"] == {"length": None, "pad": True,
                                                     "truncate": False}
