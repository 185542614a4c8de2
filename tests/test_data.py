"""ebnn.data loaders, quantiser, split, normalisation and augmentation on real files."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.io import savemat

from ebnn.data import (
    SOURCES,
    DataError,
    Dataset,
    FeatureQuantizer,
    load_dataset,
    normalization,
    random_shift,
    train_val_split,
)

# ---- named sources ------------------------------------------------------------------------


def test_sources_listed():
    assert SOURCES == ("digits", "mnist", "fashion-mnist", "cifar10", "svhn")


def test_digits_split_is_fixed_stratified_and_disjoint():
    from sklearn.datasets import load_digits

    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert train.x.shape[1:] == (1, 8, 8) and train.x.dtype == np.uint8
    assert len(train) + len(test) == 1797 and train.classes == 10
    assert 0 <= train.x.min() and train.x.max() == 16
    # every class is split about 80/20
    frac = np.bincount(test.y, minlength=10) / (np.bincount(test.y, minlength=10)
                                               + np.bincount(train.y, minlength=10))
    assert np.all(np.abs(frac - 0.2) < 0.01)
    # together the two splits hold exactly the original images
    ref = load_digits()
    both = np.concatenate([train.x, test.x]).reshape(1797, -1)
    key = lambda a: sorted(map(bytes, a))  # noqa: E731
    assert key(both) == key(ref.images.astype(np.uint8).reshape(1797, -1))
    again = load_dataset("digits", "test")
    assert np.array_equal(again.x, test.x) and np.array_equal(again.y, test.y)


def test_mnist_real_files(mnist_dir):
    test = load_dataset("mnist", "test", mnist_dir)
    assert test.x.shape == (10000, 1, 28, 28) and test.x.dtype == np.uint8
    assert test.y.dtype == np.int64 and test.classes == 10 and test.name == "mnist"
    assert test.y[:5].tolist() == [7, 2, 1, 0, 4]  # the well-known first test digits
    # no train-images-idx3-ubyte here: the single train-5k-* file is used instead
    train = load_dataset("mnist", "train", mnist_dir)
    assert train.x.shape == (5000, 1, 28, 28)
    assert np.bincount(train.y).tolist() == [500] * 10


def test_mnist_uncompressed_and_standard_names(mnist_dir, tmp_path):
    for src, dst in [("train-5k-images-idx3-ubyte.gz", "train-images-idx3-ubyte"),
                     ("train-5k-labels-idx1-ubyte.gz", "train-labels-idx1-ubyte")]:
        (tmp_path / dst).write_bytes(gzip.decompress((mnist_dir / src).read_bytes()))
    a = load_dataset("mnist", "train", tmp_path)
    b = load_dataset("mnist", "train", mnist_dir)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    # a plain directory path is read as a generic IDX source
    c = load_dataset(str(tmp_path), "train")
    assert np.array_equal(c.x, b.x) and c.classes == 10 and c.name == tmp_path.name


def test_default_data_dir_from_env(mnist_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("EBNN_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match="ebnn data download mnist"):
        load_dataset("mnist", "test")
    (tmp_path / "mnist").mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(mnist_dir / name, tmp_path / "mnist" / name)
    assert len(load_dataset("mnist", "test")) == 10000


def test_fashion_mnist_debian_fallback(fashion_mnist_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("EBNN_DATA_DIR", str(tmp_path))  # empty: falls back to the package
    test = load_dataset("fashion-mnist", "test")
    assert test.x.shape == (10000, 1, 28, 28) and test.name == "fashion-mnist"
    assert np.bincount(test.y).tolist() == [1000] * 10
    assert test.class_names[9] == "Ankle boot"
    train = load_dataset("fashion-mnist", "train", fashion_mnist_dir)
    assert train.x.shape == (60000, 1, 28, 28)


def _write_cifar_batch(path: Path, x: np.ndarray, y: list[int]) -> None:
    """A batch as the CIFAR-10 Python version stores it: a dict with byte-string keys,
    ``data`` uint8 (N, 3072) in R, G, B planes of 32x32, ``labels`` a list."""
    batch = {b"batch_label": b"testing batch", b"labels": y,
             b"data": x.reshape(len(x), -1), b"filenames": [b"f%d.png" % i for i in range(len(y))]}
    path.write_bytes(pickle.dumps(batch, protocol=2))


@pytest.fixture
def cifar_dir(tmp_path) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    x = rng.integers(0, 256, (6 * 4, 3, 32, 32), dtype=np.uint8)
    y = rng.integers(0, 10, 6 * 4)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        _write_cifar_batch(d / name, x[4 * i: 4 * i + 4], y[4 * i: 4 * i + 4].tolist())
    return tmp_path, x, y


def test_cifar10_batches(cifar_dir):
    root, x, y = cifar_dir
    train = load_dataset("cifar10", "train", root)  # finds root/cifar-10-batches-py
    assert train.x.shape == (20, 3, 32, 32) and train.x.dtype == np.uint8
    assert np.array_equal(train.x, x[:20]) and np.array_equal(train.y, y[:20])
    test = load_dataset("cifar10", "test", root / "cifar-10-batches-py")
    assert np.array_equal(test.x, x[20:]) and test.class_names[0] == "airplane"


def test_cifar10_refuses_code_in_pickle(cifar_dir):
    root, _, _ = cifar_dir
    path = root / "cifar-10-batches-py" / "test_batch"

    class Evil:
        def __reduce__(self):
            return (os.getpid, ())

    path.write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}, protocol=2))
    with pytest.raises(DataError, match="test_batch.*refusing to load posix.getpid"):
        load_dataset("cifar10", "test", root)


def test_svhn_mat(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.integers(0, 256, (32, 32, 3, 7), dtype=np.uint8)  # SVHN layout: H, W, C, N
    y = np.array([[10], [1], [2], [9], [10], [5], [3]], dtype=np.uint8)
    savemat(tmp_path / "train_32x32.mat", {"X": X, "y": y})
    ds = load_dataset("svhn", "train", tmp_path)
    assert ds.x.shape == (7, 3, 32, 32) and ds.y.tolist() == [0, 1, 2, 9, 0, 5, 3]
    k, c, i, j = 3, 2, 5, 17
    assert ds.x[k, c, i, j] == X[i, j, c, k]


# ---- your own files ------------------------------------------------------------------------


def test_npz_images_and_split_keys(tmp_path):
    rng = np.random.default_rng(2)
    x3 = rng.integers(0, 256, (5, 6, 7), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", x=x3, y=np.arange(5))
    a = load_dataset(str(tmp_path / "a.npz"))
    assert a.x.shape == (5, 1, 6, 7) and np.array_equal(a.x[:, 0], x3)
    assert a.classes == 5 and a.quantizer is None and a.name == "a"
    x4 = rng.integers(0, 256, (4, 3, 2, 2))  # int64 values in 0..255: converted losslessly
    np.savez(tmp_path / "b.npz", x_train=x4, y_train=[0, 1, 1, 0], x_test=x4[:2], y_test=[1, 1])
    b = load_dataset(str(tmp_path / "b.npz"), "test")
    assert b.x.dtype == np.uint8 and np.array_equal(b.x, x4[:2]) and b.y.tolist() == [1, 1]


def test_npz_float_features_quantised_and_reused(tmp_path):
    rng = np.random.default_rng(3)
    f = rng.normal(5.0, 2.0, (200, 3))
    np.savez(tmp_path / "train.npz", x=f, y=rng.integers(0, 3, 200))
    np.savez(tmp_path / "test.npz", x=f[:10] + 100.0, y=np.zeros(10, dtype=int))
    train = load_dataset(str(tmp_path / "train.npz"))
    assert train.x.shape == (200, 3, 1, 1) and train.quantizer is not None
    q = train.quantizer
    assert np.allclose(q.mean, f.mean(axis=0)) and np.allclose(q.std, f.std(axis=0))
    test = load_dataset(str(tmp_path / "test.npz"), quantizer=q)
    assert test.quantizer is q and np.all(test.x == 255)  # +100 is far above, saturates
    refit = load_dataset(str(tmp_path / "test.npz"))
    assert refit.quantizer.mean != q.mean


def test_csv_text_labels_and_reuse(tmp_path):
    (tmp_path / "train.csv").write_text(
        "f1,label,f2\n1.0,cat,10\n2.0,dog,20\n3.0,cat,30\n\n4.0,bird,40\n")
    train = load_dataset(str(tmp_path / "train.csv"))
    assert train.class_names == ["bird", "cat", "dog"]
    assert train.y.tolist() == [1, 2, 1, 0] and train.classes == 3
    assert train.x.shape == (4, 2, 1, 1)
    expected = train.quantizer(np.array([[1.0, 10], [2, 20], [3, 30], [4, 40]]))
    assert np.array_equal(train.x[:, :, 0, 0], expected)
    (tmp_path / "test.csv").write_text("f1,label,f2\n2.5,dog,25\n")
    test = load_dataset(str(tmp_path / "test.csv"), quantizer=train.quantizer,
                        class_names=train.class_names)
    assert test.y.tolist() == [2] and test.x[0, :, 0, 0].tolist() == [128, 128]


def test_csv_label_column_choice(tmp_path):
    (tmp_path / "t.csv").write_text("a,b,cls\n1,2,0\n3,4,1\n5,6,1\n")
    last = load_dataset(str(tmp_path / "t.csv"))  # no "label" column: the last one
    assert last.y.tolist() == [0, 1, 1] and last.x.shape == (3, 2, 1, 1)
    named = load_dataset(str(tmp_path / "t.csv"), label_column="a")
    assert named.y.tolist() == [1, 3, 5] and named.classes == 6


# ---- quantiser, split, normalisation, augmentation -----------------------------------------


def test_feature_quantizer_formula_and_round_trip():
    q = FeatureQuantizer(mean=[1.0, -2.0], std=[0.5, 4.0])
    v = np.array([[1.0, -2.0], [1.25, 2.0], [100.0, -100.0], [1.0 + 0.5 / 64, -2.0]])
    expected = np.clip(np.rint((v - [1.0, -2.0]) / [0.5, 4.0] * 32 + 128), 0, 255)
    assert q(v).dtype == np.uint8 and np.array_equal(q(v), expected)
    assert q(v)[:3].tolist() == [[128, 128], [144, 160], [255, 0]]
    back = FeatureQuantizer.from_dict(json.loads(json.dumps(q.to_dict())))
    assert back == q
    const = FeatureQuantizer.fit(np.array([[3.0, 1.0], [3.0, 2.0]]))
    assert const(np.array([[3.0, 1.5]]))[0, 0] == 128
    with pytest.raises(ValueError, match="expects"):
        q(np.zeros((2, 3)))


def test_train_val_split_deterministic_stratified():
    ds = load_dataset("digits", "train")
    a_tr, a_val = train_val_split(ds, 0.1, seed=0)
    b_tr, b_val = train_val_split(ds, 0.1, seed=0)
    c_tr, c_val = train_val_split(ds, 0.1, seed=1)
    assert np.array_equal(a_val.x, b_val.x) and not np.array_equal(a_val.x, c_val.x)
    assert len(a_tr) + len(a_val) == len(ds)
    counts = np.bincount(ds.y, minlength=10)
    assert np.array_equal(np.bincount(a_val.y, minlength=10), np.rint(counts * 0.1))
    rows = lambda d: {bytes(r) + bytes([int(t)]) for r, t in zip(d.x, d.y, strict=True)}  # noqa: E731
    assert not rows(a_tr) & rows(a_val)
    sub = ds.subset([0, 2])
    assert isinstance(sub, Dataset) and len(sub) == 2 and sub.name == ds.name


def test_normalization_matches_float_reference():
    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, (50, 3, 5, 4), dtype=np.uint8)
    x[:, 1] //= 4  # different channel means
    offsets, scale = normalization(x)
    v = x.astype(np.float64)
    ref = np.rint(v.mean(axis=(0, 2, 3)))
    assert offsets == ref.astype(int).tolist() and all(isinstance(o, int) for o in offsets)
    assert scale == pytest.approx((v - ref[None, :, None, None]).std(), rel=1e-12)
    tab_off, tab_scale = normalization(x.reshape(50, -1))  # (N, F) counts as (N, F, 1, 1)
    assert len(tab_off) == 60
    assert normalization(np.full((3, 1, 2, 2), 7, np.uint8)) == ([7], 1e-6)


def test_random_shift_moves_whole_images_and_zero_fills():
    rng = np.random.default_rng(5)
    x = torch.from_numpy(rng.integers(1, 256, (16, 2, 6, 5), dtype=np.uint8))
    out = random_shift(x, 2, torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8 and out.shape == x.shape
    again = random_shift(x, 2, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    pad = torch.nn.functional.pad(x.int(), (2, 2, 2, 2))
    shifts = set()
    for k in range(len(x)):  # each output is the input moved by one (dy, dx), zeros around
        found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if torch.equal(out[k].int(), pad[k, :, 2 - dy:8 - dy, 2 - dx:7 - dx])]
        assert len(found) == 1
        shifts.add(found[0])
    assert len(shifts) > 3  # shifts differ across the batch
    assert torch.equal(random_shift(x, 0), x)


# ---- bad files: one clear DataError naming the file and the problem ------------------------


def _gz_bytes(mnist_dir: Path, name: str) -> bytes:
    return gzip.decompress((mnist_dir / name).read_bytes())


def _bad_idx_dir(kind: str, mnist_dir: Path, d: Path) -> tuple[str, str]:
    """Write a broken t10k pair into ``d``; return (bad file name, expected message)."""
    images = _gz_bytes(mnist_dir, "t10k-images-idx3-ubyte.gz")
    labels = _gz_bytes(mnist_dir, "t10k-labels-idx1-ubyte.gz")
    img, lab = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"
    bad, msg = lab, ""
    if kind == "truncated gzip":
        raw = (mnist_dir / f"{lab}.gz").read_bytes()
        lab += ".gz"
        labels_out = raw[: len(raw) // 2]
        bad, msg = lab, "truncated gzip"
    elif kind == "corrupt gzip":
        raw = bytearray((mnist_dir / f"{lab}.gz").read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        lab += ".gz"
        labels_out, bad, msg = bytes(raw), lab, "corrupt gzip"
    elif kind == "wrong magic":
        labels_out, images = labels, labels  # a label file where the images belong
        bad, msg = img, "wrong magic number 0x00000801, expected 0x00000803"
    elif kind == "wrong size":
        labels_out, images = labels, images[:-1]
        bad, msg = img, "wrong size: header says 10000x28x28 = 7840000 bytes"
    elif kind == "count mismatch":
        labels_out = labels[:4] + (9999).to_bytes(4, "big") + labels[8:-1]
        bad, msg = lab, "10000 images but"
    elif kind == "labels out of range":
        labels_out = labels[:8] + bytes([12]) + labels[9:]
        bad, msg = lab, "labels out of range: label 12 at index 0"
    (d / img).write_bytes(images)
    (d / lab).write_bytes(labels_out)
    return bad, msg


@pytest.mark.parametrize("kind", ["truncated gzip", "corrupt gzip", "wrong magic", "wrong size",
                                  "count mismatch", "labels out of range"])
def test_bad_idx_files(kind, mnist_dir, tmp_path):
    bad, msg = _bad_idx_dir(kind, mnist_dir, tmp_path)
    with pytest.raises(DataError) as e:
        load_dataset("mnist", "test", tmp_path)
    assert bad in str(e.value) and msg in str(e.value)


BAD_CSV = {
    "non-numeric": ("a,b,label\n1,2,0\n3,x7,1\n", "non-numeric value 'x7' in row 3, column 'b'"),
    "infinite": ("a,b,label\n1,inf,0\n", "non-finite value 'inf' in row 2, column 'b'"),
    "missing label": ("a,b,label\n1,2,0\n3,4, \n", "missing label in row 3"),
    "ragged": ("a,b,label\n1,2,0\n3,4\n", "ragged rows: row 3 has 2 cells, the header has 3"),
    "no header": ("1,2,0\n3,4,1\n", "needs a header row"),
    "no rows": ("a,b,label\n", "no data rows"),
    "bad label": ("a,label\n1,0\n2,1.5\n", "labels out of range: '1.5' at row 3"),
    "unknown column": ("a,b,label\n1,2,0\n", "no label column 'y'"),
}


@pytest.mark.parametrize("kind", sorted(BAD_CSV))
def test_bad_csv(kind, tmp_path):
    text, msg = BAD_CSV[kind]
    path = tmp_path / f"bad-{kind.replace(' ', '-')}.csv"
    path.write_text(text)
    with pytest.raises(DataError) as e:
        load_dataset(str(path), label_column="y" if kind == "unknown column" else None)
    assert path.name in str(e.value) and msg in str(e.value)


def test_bad_npz(tmp_path):
    cases = {
        "keys.npz": ({"images": np.zeros((2, 3))}, "missing arrays: need 'x' and 'y'"),
        "length.npz": ({"x": np.zeros((3, 2)), "y": np.zeros(2)},
                       "length mismatch: x has 3 examples, y has 2"),
        "wideimg.npz": ({"x": np.full((2, 4, 4), 300), "y": [0, 1]}, "images must be uint8"),
        "nan.npz": ({"x": np.array([[1.0], [np.nan]]), "y": [0, 1]}, "x[1, 0] is nan"),
    }
    for name, (arrays, msg) in cases.items():
        np.savez(tmp_path / name, **arrays)
        with pytest.raises(DataError) as e:
            load_dataset(str(tmp_path / name))
        assert name in str(e.value) and msg in str(e.value), name
    (tmp_path / "zip.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(DataError, match="zip.npz: not a valid .npz"):
        load_dataset(str(tmp_path / "zip.npz"))
    np.savez(tmp_path / "ok.npz", x=np.zeros((2, 3)), y=[0, 1])
    with pytest.raises(DataError, match="ok.npz: has 3 features but the quantizer expects 2"):
        load_dataset(str(tmp_path / "ok.npz"), quantizer=FeatureQuantizer([0, 0], [1, 1]))


def test_bad_cifar_svhn_and_paths(cifar_dir, tmp_path):
    root, _, _ = cifar_dir
    d = root / "cifar-10-batches-py"
    (d / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(DataError, match="data_batch_3: not a CIFAR-10 Python batch"):
        load_dataset("cifar10", "train", root)
    (d / "data_batch_3").unlink()
    with pytest.raises(DataError, match="missing CIFAR-10 batch data_batch_3"):
        load_dataset("cifar10", "train", root)
    _write_cifar_batch(d / "test_batch", np.zeros((2, 3, 32, 32), np.uint8), [0, 10])
    with pytest.raises(DataError, match="test_batch: labels out of range: label 10 at index 1"):
        load_dataset("cifar10", "test", root)
    (tmp_path / "test_32x32.mat").write_bytes(b"MATLAB? no")
    with pytest.raises(DataError, match="test_32x32.mat: not a readable MATLAB file"):
        load_dataset("svhn", "test", tmp_path)
    with pytest.raises(DataError, match="neither a known source"):
        load_dataset(str(tmp_path / "nothing-here.csv"))
    (tmp_path / "x.parquet").write_bytes(b"")
    with pytest.raises(DataError, match="x.parquet: unsupported file type"):
        load_dataset(str(tmp_path / "x.parquet"))
    with pytest.raises(ValueError, match="split"):
        load_dataset("digits", "validation")
