"""scikit-learn's bundled 8x8 handwritten digits: real images shipped with the package, no network."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from runner.data.base import Dataset, Split, SplitOptions, stratified_split, subset
from runner.errors import RunnerError
from runner.schema import options


def _sklearn_data_file(name: str) -> Path:
    """A data file shipped inside scikit-learn, found without importing it (2 s of imports)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise RunnerError("the digits set ships with scikit-learn: pip install scikit-learn")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / name


@options(SplitOptions)
def load_digits(
    name: str = "digits",
    *,
    test_fraction: float,
    split_seed: int,
    train_size: int | None,
    test_size: int | None,
) -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, shipped with the package).

    Pixel values 0..16 are stretched to uint8 0..255 so every image set shares one scaling.
    The stratified split is reproducible from ``split_seed``.
    """
    table = np.loadtxt(_sklearn_data_file("digits.csv.gz"), delimiter=",", dtype=np.float64)
    x = np.rint(table[:, :-1] * (255.0 / 16.0)).astype(np.uint8).reshape(-1, 8, 8, 1)
    y = table[:, -1].astype(np.int64)
    tr, te = stratified_split(y, test_fraction, split_seed)
    return Dataset(
        name=name,
        train=subset(Split(x[tr], y[tr]), train_size, split_seed),
        test=subset(Split(x[te], y[te]), test_size, split_seed),
        num_classes=10,
        class_names=tuple(str(i) for i in range(10)),
    )
