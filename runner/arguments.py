"""The Python API's arguments checked before anything runs, one line each (a library's
``IndexError`` or an autograph dump otherwise)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from runner.errors import RunnerError


def checked_arguments(model_path, out_path, recipe, calibration, labels):
    """``quantize_model``'s arguments checked, one line each (not a library's IndexError):
    (calibration, labels) as arrays."""
    _checked_paths(model_path, out_path)
    if not isinstance(recipe, str):
        raise RunnerError(f"recipe must be a recipe name (str), got {type(recipe).__name__}")
    calibration = None if calibration is None else _checked_calibration(calibration)
    labels = None if labels is None else _checked_labels(labels, calibration)
    return calibration, labels


def _checked_paths(model_path, out_path) -> None:
    for name, value in (("model_path", model_path), ("quantized_model_path", out_path)):
        if not isinstance(value, (str, os.PathLike)):
            raise RunnerError(
                f"{name} must be a path (str or os.PathLike), got {type(value).__name__}"
            )
    if Path(out_path).is_dir():
        raise RunnerError(
            f"quantized_model_path={out_path} is a folder: give the file to write (…/model.tflite)"
        )


def _checked_calibration(calibration) -> np.ndarray:
    try:
        calibration = np.asarray(calibration)
    except (ValueError, TypeError) as e:
        raise RunnerError(f"calibration must be an array of model inputs: {e}") from None
    if calibration.dtype.kind not in "biuf" or calibration.ndim < 2 or not len(calibration):
        raise RunnerError(
            "calibration must be a numeric array of model-ready inputs, one per row "
            f"(samples, ...), got dtype {calibration.dtype} and shape {calibration.shape}"
        )
    if calibration.dtype.kind == "f" and not np.all(np.isfinite(calibration)):
        bad = int(np.sum(~np.isfinite(calibration)))
        raise RunnerError(
            f"calibration holds {bad} NaN or infinite value(s) of {calibration.size}: "
            "calibrating on them writes a broken file; pass finite model-ready inputs"
        )
    return calibration


def _checked_labels(labels, calibration: np.ndarray | None) -> np.ndarray:
    labels = np.asarray(labels)
    integral = labels.dtype.kind in "iub" or (
        labels.dtype.kind == "f" and bool(np.all(np.isfinite(labels) & (labels % 1 == 0)))
    )
    if not integral or (labels.size and labels.min() < 0):
        raise RunnerError(
            "labels must be class ids 0, 1, 2 ... (integers), got dtype "
            f"{labels.dtype} (e.g. {labels.reshape(-1)[:3].tolist()}); map class names to ids first"
        )
    if calibration is None or len(labels) != len(calibration):
        raise RunnerError(
            f"labels must give one label per calibration sample ({len(labels)} labels for "
            f"{0 if calibration is None else len(calibration)} samples)"
        )
    return labels


def checked_flag(name: str, value: object) -> bool:
    """A yes/no argument must be a bool (``check="yes"`` or ``check=0`` is a mistake)."""
    if not isinstance(value, (bool, np.bool_)):
        raise RunnerError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return bool(value)


def checked_inputs(model, calibration: np.ndarray | None) -> np.ndarray | None:
    """``calibration`` against the model's input: the same shape per sample (a free dimension
    takes any size), as the model's input dtype (a float64 list becomes float32)."""
    if calibration is None:
        return None
    shape = tuple(model.inputs[0].shape)[1:]
    given = tuple(calibration.shape[1:])
    if len(shape) != len(given) or any(
        s is not None and s != g for s, g in zip(shape, given, strict=True)
    ):
        want = "(samples, " + ", ".join("any" if s is None else str(s) for s in shape) + ")"
        raise RunnerError(
            f"calibration has shape {calibration.shape}, but the model takes {want}: pass "
            "model-ready inputs of that shape (resized and scaled as in training)"
        )
    dtype = np.dtype(model.inputs[0].dtype.as_numpy_dtype)
    if dtype.kind == "f" and calibration.dtype != dtype:
        return calibration.astype(dtype)
    return calibration
