"""What every data set kind yields: splits of uint8 images (or int token ids) and int labels.

Images stay uint8 in memory; :func:`batches` scales one batch at a time to float32, so a float
copy of a whole split never exists (CIFAR-100 as float32 would be 4x the memory).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import Field

from runner.errors import RunnerError
from runner.schema import Options, tags

log = logging.getLogger(__name__)


# How raw inputs become model inputs (see :class:`Scaling`); ``auto`` is what the data needs.
# kind -> how a batch of raw inputs becomes model inputs (``s``: the Scaling, for mean/std)
_SCALINGS = {
    "unit": lambda s, x: x.astype(np.float32) * np.float32(1 / 255),
    "symmetric": lambda s, x: x.astype(np.float32) * np.float32(1 / 127.5) - np.float32(1),
    "standardize": lambda s, x: (
        (x.astype(np.float32) * np.float32(1 / 255) - np.asarray(s.mean, np.float32))
        / np.asarray(s.std, np.float32)
    ),
    "none": lambda s, x: x,
}
ScalingKind = Literal[tuple(_SCALINGS)]  # type: ignore[valid-type]
InputScaling = Literal[(*_SCALINGS, "auto")]  # type: ignore[valid-type]


class DatasetMeta(Options):
    """The runner's keys of every ``conf/dataset/*.yaml`` (a loader's own are its Options)."""

    name: str = Field(min_length=1, description="the data set's name in the table")
    input_scaling: InputScaling = Field(
        "unit", description="how pixels become model inputs; models read it (auto: by the data)"
    )


class SubsetOptions(Options):
    """Seeded subsets of the splits, for quick runs."""

    train_size: int | None = Field(None, ge=1, description="a seeded training subset (null: all)")
    test_size: int | None = Field(
        None, ge=1, description="a seeded test subset (null: all)", **tags(trains=False)
    )


class SplitOptions(SubsetOptions):
    """A stratified hold-out of data that comes without a test split."""

    test_fraction: float = Field(0.2, gt=0, lt=1, description="the stratified test share")
    split_seed: int = Field(
        0, ge=0, description="the split (and subsets) are reproducible from it", **tags(seed=True)
    )


@dataclass(frozen=True)
class Split:
    """One split: ``x`` uint8 images (N, H, W, C) or int32 token ids (N, L); ``y`` int labels."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Dataset:
    name: str
    train: Split
    test: Split
    num_classes: int
    class_names: tuple[str, ...] = ()
    # Extra keyword arguments a model builder needs from the data (e.g. vocab_size).
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    # Files every exported model needs beside it (name -> text), e.g. word_index.json.
    files: dict[str, str] = field(default_factory=dict)
    # What the data's content is keyed by beyond its config (an image folder's file list), so a
    # changed folder never reuses a baseline trained on the old one; empty: the config says all.
    source_key: str = ""
    # What the loader found, recorded in results.json["data"] (skipped files, layout, cache).
    info: dict[str, Any] = field(default_factory=dict)
    # The input scaling ``input_scaling=auto`` resolves to: raw pixels are ``unit``; token ids
    # and model-ready float arrays are ``none``.
    default_scaling: str = "unit"
    # What the user should hear of at the end of the run (e.g. skipped unreadable files).
    warnings: tuple[str, ...] = ()
    # A validation split the data set ships (arrays' x_val/y_val): held out from training and
    # from the test score, so auto_int8 can judge a pretrained model on data it never saw.
    validation: Split | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.train.x.shape[1:])

    @property
    def is_text(self) -> bool:
        dt = self.train.x.dtype  # token ids: integers, one row per sample (uint8 is pixels)
        return np.issubdtype(dt, np.integer) and dt != np.uint8 and self.train.x.ndim == 2


# --------------------------------------------------------------------------- input scaling
@dataclass(frozen=True)
class Scaling:
    """How raw inputs become model inputs; recorded in results.json.

    kind: ``unit`` (pixels to [0, 1]), ``symmetric`` ([-1, 1]), ``standardize`` ((x/255 - mean) / std,
    per channel) or ``none`` (pass through, e.g. token ids).
    """

    kind: str = "unit"
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        if self.kind not in _SCALINGS:
            raise RunnerError(
                f"unknown input_scaling {self.kind!r}; choose one of {sorted(_SCALINGS)}"
            )

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return _SCALINGS[self.kind](self, x)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "mean": list(self.mean), "std": list(self.std)}


def batches(x: np.ndarray, batch_size: int, scaling: Scaling) -> Iterator[np.ndarray]:
    """Yield scaled batches of ``x`` in order; only one batch is ever converted at a time."""
    for start in range(0, len(x), batch_size):
        yield scaling(x[start : start + batch_size])


class Rows:
    """Rows ``index`` of ``base``, read when a batch asks for them.

    A validation split of a memory-mapped image set is such a view: no copy of the data set is
    made, only of the batch being served. It quacks like the arrays it stands for (``len``,
    ``shape``, ``dtype``, slicing and integer-array indexing return real arrays).
    """

    def __init__(self, base: np.ndarray, index: np.ndarray) -> None:
        self.base, self.index = base, np.asarray(index, np.int64)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.index), *self.base.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self.base.dtype

    @property
    def ndim(self) -> int:
        return self.base.ndim

    def __getitem__(self, key: Any) -> np.ndarray:
        return self.base[self.index[key]]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.base[self.index]
        return out if dtype is None else out.astype(dtype)


def subset(split: Split, size: int | None, seed: int) -> Split:
    """A seeded random subset of ``size`` samples (the whole split when ``size`` is None or larger)."""
    if size is None or size >= len(split):
        return split
    if size <= 0:
        raise RunnerError(f"a subset size must be positive, got {size}")
    idx = np.sort(np.random.default_rng(seed).permutation(len(split))[:size])
    return Split(split.x[idx], split.y[idx])


def calibration_sample(split: Split, n: int, seed: int) -> np.ndarray:
    """``n`` raw samples of ``split`` drawn with ``seed`` (the representative data of a recipe)."""
    n = min(int(n), len(split))
    idx = np.random.default_rng(seed).choice(len(split), size=n, replace=False)
    return split.x[np.sort(idx)]


def stratified_split(
    y: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split: (train indices, test indices), both sorted.

    ``ceil(test_fraction * n)`` samples go to the test side, shared among the classes in
    proportion to their counts (largest remainders first), each class's picked at random.
    """
    y = np.asarray(y)
    if not 0 < test_fraction < 1:
        raise RunnerError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    n_test = math.ceil(test_fraction * len(y))
    exact = counts * n_test / len(y)
    take = np.floor(exact).astype(int)
    remainder = exact - take + rng.random(len(classes)) * 1e-9  # random tie-break
    take[np.argsort(-remainder)[: n_test - take.sum()]] += 1
    test = [rng.permutation(np.flatnonzero(y == c))[:k] for c, k in zip(classes, take, strict=True)]
    te = np.sort(np.concatenate(test)) if test else np.array([], dtype=np.int64)
    tr = np.setdiff1d(np.arange(len(y)), te)
    return tr, te


# --------------------------------------------------------------------------- sanity
MIN_TRAIN_PER_CLASS = 2  # fewer cannot be fitted and validated: the table would be nonsense


def check_dataset(data: Dataset) -> list[str]:
    """Refuse data no table can be made from; return warnings for what is merely odd.

    Raises:
        RunnerError: an empty split, a single class, non-finite inputs, or a class with fewer
            than :data:`MIN_TRAIN_PER_CLASS` training samples.
    """
    for what, split in (("training", data.train), ("test", data.test)):
        if len(split) == 0:
            raise RunnerError(f"the {what} split of {data.name} is empty: give it samples")
        if np.issubdtype(split.x.dtype, np.floating):
            bad = int(np.count_nonzero(~np.isfinite(split.x).reshape(len(split), -1).all(axis=1)))
            if bad:
                raise RunnerError(
                    f"{bad} {what} sample(s) of {data.name} hold NaN or infinite values: "
                    "remove or fill them"
                )
    counts = np.bincount(data.train.y, minlength=data.num_classes)
    present = np.flatnonzero(counts)
    if len(present) < 2:
        raise RunnerError(
            f"{data.name} has a single class in its training split ({_names(data, present)}): "
            "a classifier needs at least two"
        )
    few = [int(c) for c in present if counts[c] < MIN_TRAIN_PER_CLASS]
    if len(few) == len(present):
        raise RunnerError(
            f"every class of {data.name} has fewer than {MIN_TRAIN_PER_CLASS} training samples: "
            "nothing can be fitted and validated; add samples, or lower the test share "
            "(dataset.test_fraction)"
        )
    out = []
    if few:  # a small seeded subset of many classes: told, not refused
        out.append(
            f"{len(few)} class(es) of {data.name} have a single training sample "
            f"({_names(data, few[:5])}{' ...' if len(few) > 5 else ''}): their scores mean little"
        )
    empty = [int(c) for c in np.flatnonzero(counts == 0)]
    if empty:
        hint = " (labels start at 1: are they 1-based?)" if empty == [0] else ""
        out.append(
            f"{len(empty)} of {data.num_classes} classes of {data.name} have no training samples "
            f"({_names(data, empty[:5])}{' ...' if len(empty) > 5 else ''}){hint}; the model "
            "still gets an output for each"
        )
    return out


def _names(data: Dataset, ids: Any) -> str:
    names = data.class_names
    return ", ".join(names[i] if i < len(names) else str(i) for i in ids)
