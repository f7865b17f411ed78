"""Arrays saved from NumPy: ``np.savez(FILE, x_train=…, y_train=…, x_test=…, y_test=…)``, or
``x`` and ``y`` split here by a seeded stratified ``test_fraction``.

``x`` holds uint8 images (N, H, W[, C]) or pixel vectors (N, D), float inputs, or integer
token ids (N, L, any integer type but uint8) for a text model; ``y`` integer labels (N,) (one-hot rows are read as their argmax). An optional
``class_names`` string array names the classes. The file is always read with
``allow_pickle=False``: it can hold numbers and strings only, never Python objects.
"""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from runner.data.base import (
    Dataset,
    InputScaling,
    Split,
    SplitOptions,
    stratified_split,
    subset,
)
from runner.errors import RunnerError
from runner.schema import options

log = logging.getLogger(__name__)

SPLIT_KEYS = ("x_train", "y_train", "x_test", "y_test")


class ArraysOptions(SplitOptions):
    """``dataset=arrays``: a ``.npz`` file of ``x``/``y`` (or ``x_train``/``y_train``/...)."""

    path: str | None = Field(None, min_length=1, description="the .npz file (required)")
    input_scaling: InputScaling = Field(
        "auto", description="auto: pixels -> unit; token ids and other floats -> none"
    )


@options(ArraysOptions)
def load_arrays(
    name: str = "arrays",
    *,
    path: str | None,
    test_fraction: float,
    split_seed: int,
    train_size: int | None,
    test_size: int | None,
    input_scaling: str,
) -> Dataset:
    """A data set from a ``.npz`` file (see the module for the keys and kinds of ``x``).

    Float images that are whole pixel values (0..255), or those values / 255, are kept as uint8
    and scaled with ``unit``; other floats (standardized inputs) are fed to the model as they are
    (``input_scaling=auto`` resolves to ``none``).

    Raises:
        RunnerError: a missing or unreadable file, missing keys, object arrays, lengths or shapes
            that do not match, labels that are not class ids.
    """
    if not path:
        raise RunnerError("dataset=arrays needs dataset.path=/path/to/data.npz")
    p = Path(path).expanduser()
    arrays = _read(p)
    x_tr, y_tr, x_te, y_te, layout = _splits(arrays, p, test_fraction, split_seed)
    x_va, y_va = _validation(arrays, x_tr.shape[1:], p)
    num_classes = int(max(y_tr.max(initial=0), y_te.max(initial=0))) + 1
    names = _class_names(arrays.get("class_names"), num_classes, p)
    n_tr = len(x_tr)
    x_tr, x_te, kind, scaling = _inputs(
        x_tr if x_va is None else np.concatenate([x_tr, x_va]), x_te, p, input_scaling
    )
    x_tr, x_va = x_tr[:n_tr], (None if x_va is None else x_tr[n_tr:])
    model_kwargs = {"vocab_size": int(max(x_tr.max(), x_te.max())) + 1} if kind == "tokens" else {}
    return Dataset(
        name=name,
        train=subset(Split(x_tr, y_tr), train_size, split_seed),
        test=subset(Split(x_te, y_te), test_size, split_seed),
        num_classes=max(num_classes, 2),
        class_names=names,
        model_kwargs=model_kwargs,
        source_key=_stat_key(p),
        info={"path": str(p.resolve()), "layout": layout, "inputs": kind},
        default_scaling=scaling,
        validation=None if x_va is None else Split(x_va, y_va),
    )


def _splits(arrays: dict[str, np.ndarray], p: Path, test_fraction: float, seed: int):
    """(x_train, y_train, x_test, y_test, layout): the file's own splits, or x/y split by
    ``test_fraction``."""
    if all(k in arrays for k in SPLIT_KEYS):
        x_tr, x_te = arrays["x_train"], arrays["x_test"]
        y_tr = _labels(arrays["y_train"], "y_train", p)
        y_te = _labels(arrays["y_test"], "y_test", p)
        for x, y, which in ((x_tr, y_tr, "train"), (x_te, y_te, "test")):
            if len(x) != len(y):
                raise RunnerError(
                    f"{p}: x_{which} has {len(x)} samples but y_{which} has {len(y)} labels; "
                    "they must be the same length"
                )
        if x_tr.shape[1:] != x_te.shape[1:]:
            raise RunnerError(
                f"{p}: x_train samples have shape {x_tr.shape[1:]} but x_test samples "
                f"{x_te.shape[1:]}; both splits must hold samples of one shape"
            )
        layout = "x_train/x_test"
    elif "x" in arrays and "y" in arrays:
        x, y = arrays["x"], _labels(arrays["y"], "y", p)
        if len(x) != len(y):
            raise RunnerError(
                f"{p}: x has {len(x)} samples but y has {len(y)} labels; they must be the same length"
            )
        tr, te = stratified_split(y, test_fraction, seed)
        x_tr, y_tr, x_te, y_te = x[tr], y[tr], x[te], y[te]
        layout = "x/y split by test_fraction"
    else:
        raise RunnerError(
            f"{p} holds {sorted(arrays) or 'no arrays'}; expected x_train, y_train, x_test, "
            "y_test (or x and y, split by dataset.test_fraction)"
        )
    return x_tr, y_tr, x_te, y_te, layout


def _validation(
    arrays: dict[str, np.ndarray], shape: tuple, p: Path
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The optional ``x_val``/``y_val`` pair: data the model was not trained on, which
    ``auto_int8`` holds out for a pretrained model."""
    if "x_val" not in arrays and "y_val" not in arrays:
        return None, None
    if "x_val" not in arrays or "y_val" not in arrays:
        raise RunnerError(f"{p}: x_val and y_val come together; the file has only one of them")
    x, y = arrays["x_val"], _labels(arrays["y_val"], "y_val", p)
    if len(x) != len(y) or x.shape[1:] != shape:
        raise RunnerError(
            f"{p}: x_val holds {len(x)} samples of shape {x.shape[1:]} and y_val {len(y)} labels; "
            f"expected as many labels as samples, of shape {shape} like x_train"
        )
    return x, y


def _read(p: Path) -> dict[str, np.ndarray]:
    if not p.is_file():
        what = "is a folder" if p.is_dir() else "does not exist"
        raise RunnerError(f"dataset.path={p} {what}; expected a .npz file from np.savez")
    try:
        loaded = np.load(p, allow_pickle=False, mmap_mode="r")
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # a .npy (whatever its suffix)
            raise RunnerError(
                f"{p} holds one array (a .npy file), not named arrays: save it with "
                "np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"
            )
        with loaded as npz:
            return {k: _member(npz, k, p) for k in npz.files}
    except RunnerError:
        raise
    except ValueError as e:
        if "allow_pickle" in str(e) or "Object arrays" in str(e):
            raise RunnerError(
                f"{p} holds an array of Python objects (dtype=object), which is never unpickled: "
                "save plain numeric arrays, e.g. np.asarray(x, dtype=np.uint8)"
            ) from None
        raise RunnerError(f"{p} is not a readable .npz file ({e})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise RunnerError(f"{p} is not a readable .npz file ({type(e).__name__}: {e})") from None


def _member(npz: Any, key: str, p: Path) -> np.ndarray:
    """One array of the file; one that claims more memory than there is is refused by name."""
    try:
        return npz[key]
    except (MemoryError, ValueError) as e:
        if isinstance(e, ValueError) and "too big" not in str(e) and "cannot reshape" not in str(e):
            raise
        raise RunnerError(
            f"{p}: array {key!r} cannot be read ({type(e).__name__}: {' '.join(str(e).split())[:160]}); "
            "its header claims more values than the file or this machine's memory holds"
        ) from None


def _labels(y: np.ndarray, key: str, p: Path) -> np.ndarray:
    """Integer class ids 0..K-1 from ids, a column of ids, or one-hot rows."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    elif y.ndim == 2 and np.all((y == 0) | (y == 1)) and np.all(y.sum(axis=1) == 1):
        y = np.argmax(y, axis=1)  # one-hot rows
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or _whole(y)):
        raise RunnerError(
            f"{p}: {key} has shape {y.shape} and dtype {y.dtype}; expected one integer class id "
            "per sample (0..K-1) or one-hot rows"
        )
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise RunnerError(f"{p}: {key} holds negative labels ({y.min()}); class ids start at 0")
    return y


def _whole(a: np.ndarray) -> bool:
    return np.issubdtype(a.dtype, np.floating) and bool(np.all(np.mod(a, 1) == 0))


def _class_names(raw: Any, num_classes: int, p: Path) -> tuple[str, ...]:
    if raw is None:
        return tuple(str(i) for i in range(max(num_classes, 2)))
    names = tuple(str(v) for v in np.asarray(raw).reshape(-1))
    if len(names) < num_classes:
        raise RunnerError(
            f"{p}: class_names has {len(names)} names but the labels go up to {num_classes - 1}"
        )
    return names


def _inputs(
    x_tr: np.ndarray, x_te: np.ndarray, p: Path, input_scaling: str
) -> tuple[np.ndarray, np.ndarray, str, str]:
    """(train, test, kind, the scaling ``auto`` means) of the arrays' inputs."""
    dt = x_tr.dtype
    if x_te.dtype != dt and not (
        np.issubdtype(x_te.dtype, np.number) and np.issubdtype(dt, np.number)
    ):
        raise RunnerError(f"{p}: x_train is {dt} but x_test is {x_te.dtype}")
    if not np.issubdtype(dt, np.number) or np.issubdtype(dt, np.complexfloating):
        raise RunnerError(
            f"{p}: x holds {dt} values; expected uint8 or float images, or integer token ids"
        )
    if np.issubdtype(dt, np.integer) and dt != np.uint8 and x_tr.ndim == 2:
        if input_scaling not in ("auto", "none"):
            raise RunnerError(
                f"{p}: x holds token ids (integer, one row per sample), which are indices: set "
                f"dataset.input_scaling=none or auto (it is {input_scaling})"
            )
        lo = min(x_tr.min(initial=0), x_te.min(initial=0))
        if lo < 0:
            raise RunnerError(f"{p}: x holds negative token ids ({lo}); ids start at 0 (padding)")
        return x_tr.astype(np.int32), x_te.astype(np.int32), "tokens", "none"
    if x_tr.ndim not in (2, 3, 4):
        raise RunnerError(
            f"{p}: x samples have shape {x_tr.shape[1:]}; expected images (H, W) or (H, W, C), "
            "feature vectors (D,), or token ids (L,) as integers"
        )
    pixels = _as_pixels(x_tr, x_te)
    if pixels is not None:
        x_tr, x_te = pixels
        if x_tr.ndim == 3:  # grayscale images without a channel axis
            x_tr, x_te = x_tr[..., None], x_te[..., None]
        return x_tr, x_te, "uint8 pixels", "unit"
    if input_scaling not in ("auto", "none"):
        raise RunnerError(
            f"{p}: x holds float values that are not pixels (0..255, or those / 255), e.g. "
            "standardized inputs; they are fed to the model as they are: set "
            f"dataset.input_scaling=none or auto (it is {input_scaling})"
        )
    return x_tr.astype(np.float32), x_te.astype(np.float32), "float inputs", "none"


def _as_pixels(x_tr: np.ndarray, x_te: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """uint8 copies when every value is a whole pixel value (or one / 255); else None."""
    if x_tr.dtype == np.uint8:
        return x_tr, x_te.astype(np.uint8)
    both = (x_tr, x_te)
    lo = min(float(a.min(initial=0)) for a in both)
    hi = max(float(a.max(initial=0)) for a in both)
    if lo < 0 or hi > 255:
        return None
    for factor in (1.0,) if hi > 1 else (255.0, 1.0):
        scaled = [np.asarray(a, np.float64) * factor for a in both]
        if all(np.allclose(s, np.rint(s), atol=1e-3) for s in scaled):
            return tuple(np.rint(s).astype(np.uint8) for s in scaled)  # type: ignore[return-value]
    return None


def _stat_key(p: Path) -> str:
    st = os.stat(p)
    return f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}"
