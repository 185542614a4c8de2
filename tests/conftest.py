"""Shared test helpers: where the real datasets are, and a PostgreSQL server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pg_server import postgres  # noqa: F401  (fixture: a real PostgreSQL server)

REPO_ROOT = Path(__file__).resolve().parents[1]
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian dataset-fashion-mnist


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The real MNIST IDX files: $EBNN_MNIST_DIR, else <repo root>/../shared/data/mnist."""
    d = Path(os.environ.get("EBNN_MNIST_DIR", REPO_ROOT.parent / "shared" / "data" / "mnist"))
    if not (d / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"MNIST IDX files not found in {d} (set EBNN_MNIST_DIR)")
    return d


@pytest.fixture(scope="session")
def sensors_dir() -> Path:
    """The real UEA/UCR sensor sets (.ts.gz): $EBNN_SENSORS_DIR, else
    <repo root>/../shared/data/sensors."""
    d = Path(os.environ.get("EBNN_SENSORS_DIR",
                            REPO_ROOT.parent / "shared" / "data" / "sensors"))
    if not (d / "BasicMotions_TRAIN.ts.gz").is_file():
        pytest.skip(f"sensor .ts files not found in {d} (set EBNN_SENSORS_DIR)")
    return d


@pytest.fixture(scope="session")
def fashion_mnist_dir() -> Path:
    """The Debian package's Fashion-MNIST files (install dataset-fashion-mnist)."""
    if not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST not found in {FASHION_MNIST_DIR} "
                    "(Debian package dataset-fashion-mnist)")
    return FASHION_MNIST_DIR
