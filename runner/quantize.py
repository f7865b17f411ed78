"""Quantize stage: TFLite conversion driven by recipe configs.

A recipe is data (``conf/recipe/*.yaml``): its ``converter`` block names the converter settings,
and its ``_target_`` names the class that produces artifacts. Post-training recipes all use
:class:`ConverterRecipe`; a recipe that needs new code (QAT) names its own class. Nothing here
branches on a recipe's name.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runner.data import Dataset, Scaling, calibration_sample
from runner.errors import RunnerError
from runner.files import atomic_write_bytes

log = logging.getLogger(__name__)

_TYPES = ("float32", "float16", "int8", "uint8", "int16")


@dataclass(frozen=True)
class ConverterOptions:
    """TFLite converter settings, by name, as a recipe YAML spells them.

    optimizations: names of ``tf.lite.Optimize`` members (``DEFAULT``).
    supported_types: ``tf`` dtype names for ``target_spec.supported_types`` (``float16``, ``int8``).
    supported_ops: names of ``tf.lite.OpsSet`` members (``TFLITE_BUILTINS_INT8`` ...).
    inference_input_type / inference_output_type: dtype of the model's float inputs/outputs
        after conversion; integer token-id inputs are never changed.
    representative_dataset: calibrate activations on sample inputs (needed for int8 activations).
    attributes: other converter attributes set verbatim (e.g. ``_experimental_lower_tensor_list_ops``).
    """

    optimizations: tuple[str, ...] = ()
    supported_types: tuple[str, ...] = ()
    supported_ops: tuple[str, ...] = ()
    inference_input_type: str | None = None
    inference_output_type: str | None = None
    representative_dataset: bool = False
    attributes: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any] | None) -> ConverterOptions:
        m = dict(m or {})
        unknown = set(m) - set(cls.__dataclass_fields__)
        if unknown:
            raise RunnerError(
                f"unknown recipe.converter key(s) {sorted(unknown)}; valid keys: {sorted(cls.__dataclass_fields__)}"
            )
        for k in ("optimizations", "supported_types", "supported_ops"):
            m[k] = tuple(m.get(k) or ())
        m["attributes"] = dict(m.get("attributes") or {})
        return cls(**m)


def convert(model, options: ConverterOptions, calibration: np.ndarray | None = None) -> bytes:
    """Convert a Keras model to a TFLite flatbuffer with ``options``.

    Args:
        model: a tf-keras model.
        options: converter settings.
        calibration: model-ready inputs (already scaled, float32 or int token ids) for the
            representative dataset; required when ``options.representative_dataset``.
    """
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [
        _enum(tf.lite.Optimize, n, "optimizations") for n in options.optimizations
    ]
    if options.supported_types:
        converter.target_spec.supported_types = [_dtype(t) for t in options.supported_types]
    if options.supported_ops:
        converter.target_spec.supported_ops = [
            _enum(tf.lite.OpsSet, n, "supported_ops") for n in options.supported_ops
        ]
    if options.inference_input_type:
        converter.inference_input_type = _dtype(options.inference_input_type)
    if options.inference_output_type:
        converter.inference_output_type = _dtype(options.inference_output_type)
    if options.representative_dataset:
        if calibration is None or not len(calibration):
            raise RunnerError(
                "this recipe calibrates activations: it needs recipe.calibration_samples > 0"
            )
        converter.representative_dataset = lambda: _representative(model, calibration)
    for name, value in options.attributes.items():
        if not hasattr(converter, name):
            raise RunnerError(
                f"recipe.converter.attributes: the TFLite converter has no attribute {name!r}"
            )
        setattr(converter, name, value)
    return converter.convert()


def _representative(model, calibration: np.ndarray) -> Iterator[list[np.ndarray]]:
    dtype = np.dtype(model.inputs[0].dtype.as_numpy_dtype)
    for sample in calibration:
        yield [np.asarray(sample[None, ...], dtype=dtype)]


def _enum(holder: Any, name: str, key: str) -> Any:
    try:
        return getattr(holder, name)
    except AttributeError:
        valid = [n for n in dir(holder) if n.isupper()]
        raise RunnerError(
            f"recipe.converter.{key}: unknown value {name!r}; valid: {valid}"
        ) from None


def _dtype(name: str):
    import tensorflow as tf

    if name not in _TYPES:
        raise RunnerError(f"unknown dtype {name!r} in recipe.converter; valid: {list(_TYPES)}")
    return getattr(tf, name)


def summarize_error(e: BaseException, limit: int = 300) -> str:
    """One line a user can act on from a (often multi-line MLIR) converter error."""
    text = str(e)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    picked = next((ln for ln in lines if "error:" in ln), lines[0] if lines else type(e).__name__)
    picked = picked.split("error:", 1)[-1].strip() if "error:" in picked else picked
    one = f"{type(e).__name__}: {picked}" if not isinstance(e, RunnerError) else picked
    return one if len(one) <= limit else one[: limit - 3] + "..."


# --------------------------------------------------------------------------- recipes
@dataclass(frozen=True)
class Artifact:
    """A file a recipe produced, and what is needed to score it."""

    name: str  # row name, e.g. "float16", "qat_tflite"
    recipe: str
    path: Path
    format: str  # "tflite" or "keras"
    quantized: bool
    train_seconds: float = 0.0
    convert_seconds: float = 0.0
    model: Any = None  # the in-memory Keras model, for "keras" artifacts


@dataclass
class RecipeContext:
    """What a recipe may use: the trained float model, the data and where to write."""

    model: Any
    dataset: Dataset
    scaling: Scaling
    models_dir: Path
    train_cfg: Any = None


class ConverterRecipe:
    """A post-training recipe: one TFLite converter call with the recipe's ``converter`` settings."""

    def __init__(
        self,
        name: str,
        description: str = "",
        use_case: str = "",
        converter: Mapping[str, Any] | None = None,
        calibration_samples: int = 0,
        calibration_seed: int = 0,
        quantized: bool = True,
        **extra: Any,
    ) -> None:
        self.name = name
        self.description = description
        self.use_case = use_case
        self.options = ConverterOptions.from_mapping(converter)
        self.calibration_samples = int(calibration_samples)
        self.calibration_seed = int(calibration_seed)
        self.quantized = bool(quantized)
        self.extra = extra

    def calibration(self, ctx: RecipeContext) -> np.ndarray | None:
        if not self.options.representative_dataset:
            return None
        raw = calibration_sample(ctx.dataset.train, self.calibration_samples, self.calibration_seed)
        return ctx.scaling(raw)

    def produce(self, ctx: RecipeContext) -> list[Artifact]:
        t0 = time.perf_counter()
        flatbuffer = convert(ctx.model, self.options, self.calibration(ctx))
        seconds = time.perf_counter() - t0
        path = atomic_write_bytes(ctx.models_dir / f"{self.name}.tflite", flatbuffer)
        log.info(
            "recipe %s: wrote %s (%d bytes) in %.1fs", self.name, path, len(flatbuffer), seconds
        )
        return [
            Artifact(path.name, self.name, path, "tflite", self.quantized, convert_seconds=seconds)
        ]


def recipe_names(conf_dir: Path) -> Sequence[str]:
    return sorted(p.stem for p in (conf_dir / "recipe").glob("*.yaml"))
