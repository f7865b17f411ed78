"""Quantize stage: TFLite conversion driven by recipe configs.

A recipe is data (``conf/recipe/*.yaml``): its ``converter`` block names the converter settings,
and its ``_target_`` names the class that produces artifacts. Post-training recipes all use
:class:`ConverterRecipe`; a recipe that needs new code (QAT) names its own class. Nothing here
branches on a recipe's name.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from collections.abc import Iterator, Mapping
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


RECURRENT = ("LSTM", "GRU", "SimpleRNN", "RNN", "Bidirectional", "ConvLSTM1D", "ConvLSTM2D")


def has_recurrent(model) -> bool:
    return any(type(layer).__name__ in RECURRENT for layer in _all_layers(model))


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def with_fixed_batch(model, batch_size: int):
    """A copy of ``model`` whose input has a fixed batch, sharing its trained weights' values.

    A recurrent layer with a dynamic batch converts to TensorList ops that the LiteRT builtins
    cannot run; at a fixed batch the converter emits its fused LSTM kernel instead.
    """
    import tf_keras as keras

    inp = keras.Input(
        batch_shape=(batch_size, *model.input_shape[1:]),
        dtype=model.inputs[0].dtype,
        name=model.inputs[0].name.split(":")[0],
    )
    clone = keras.models.clone_model(model, input_tensors=inp)
    clone.set_weights(model.get_weights())
    return clone


def convert(
    model,
    options: ConverterOptions,
    calibration: np.ndarray | None = None,
    token_ids: bool = False,
    batch_size: int | None = None,
) -> bytes:
    """Convert a Keras model to a TFLite flatbuffer with ``options``.

    Args:
        model: a tf-keras model.
        options: converter settings.
        calibration: model-ready inputs (already scaled, float32 or int token ids) for the
            representative dataset; required when ``options.representative_dataset``.
        token_ids: the input holds token ids (indices, not signals): it keeps its type, so no
            recipe rescales ids into int8; the network behind the embedding is quantized.
        batch_size: convert at this fixed batch. Recurrent models default to 1 (fused LSTM
            kernels); others keep a dynamic batch.
    """
    converter = make_converter(model, options, calibration, token_ids, batch_size)
    with warnings.catch_warnings():  # int8 I/O without input statistics is expected here
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        return converter.convert()


def make_converter(
    model,
    options: ConverterOptions,
    calibration: np.ndarray | None = None,
    token_ids: bool = False,
    batch_size: int | None = None,
):
    """The configured ``tf.lite.TFLiteConverter`` :func:`convert` runs (the debugger reuses it)."""
    import tensorflow as tf

    if batch_size is None and has_recurrent(model) and model.input_shape[0] is None:
        batch_size = 1
    if batch_size is not None and model.input_shape[0] != batch_size:
        log.info("converting %s at a fixed batch of %d", model.name, batch_size)
        model = with_fixed_batch(model, int(batch_size))
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
    if options.inference_input_type and not token_ids:
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
    return converter


def _representative(model, calibration: np.ndarray) -> Iterator[list[np.ndarray]]:
    dtype = np.dtype(model.inputs[0].dtype.as_numpy_dtype)
    batch = model.input_shape[0] or 1
    for sample in calibration:
        yield [np.repeat(np.asarray(sample[None, ...], dtype=dtype), batch, axis=0)]


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
    float_layers: str | None = None  # layers an int8 recipe kept in float ("2: conv1, fc")
    worst_layer: str | None = None  # the op with the largest int8 error (layer report)
    note: str | None = None  # what the recipe wants the reader of the row to know


@dataclass
class RecipeContext:
    """What a recipe may use: the trained float model, the data and where to write."""

    model: Any
    dataset: Dataset
    scaling: Scaling
    models_dir: Path
    train_cfg: Any = None
    convert_batch_size: int | None = None  # fixed batch for conversion (recurrent models: 1)
    # Where deterministic conversions of this baseline are kept (its cache entry), or None.
    artifact_cache: Path | None = None


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

    def layer_report(self, ctx: RecipeContext) -> list[dict[str, Any]]:
        """Per-layer int8 error of this recipe's conversion (``evaluation.layer_report=true``)."""
        from runner.diagnose import Debugger

        return Debugger.build(
            ctx.model,
            self.options,
            self.calibration(ctx),
            ctx.dataset.is_text,
            ctx.convert_batch_size,
        ).rows

    def calibration(self, ctx: RecipeContext) -> np.ndarray | None:
        if not self.options.representative_dataset:
            return None
        raw = calibration_sample(ctx.dataset.train, self.calibration_samples, self.calibration_seed)
        return ctx.scaling(raw)

    def produce(self, ctx: RecipeContext) -> list[Artifact]:
        """Convert (or reuse this baseline's earlier conversion with the same settings) and write."""
        from runner.cache import cache_key

        spec = {
            "options": dataclasses.asdict(self.options),
            "calibration": [self.calibration_samples, self.calibration_seed],
            "batch": ctx.convert_batch_size,
        }
        cached = (
            ctx.artifact_cache / f"{self.name}-{cache_key(spec)}.tflite"
            if ctx.artifact_cache
            else None
        )
        t0 = time.perf_counter()
        if cached is not None and cached.is_file():
            flatbuffer = cached.read_bytes()
            log.info(
                "recipe %s: reusing the conversion cached with the baseline (%s)",
                self.name,
                cached.name,
            )
        else:
            flatbuffer = convert(
                ctx.model,
                self.options,
                self.calibration(ctx),
                token_ids=ctx.dataset.is_text,
                batch_size=ctx.convert_batch_size,
            )
            if cached is not None:
                atomic_write_bytes(cached, flatbuffer)
        seconds = time.perf_counter() - t0
        path = atomic_write_bytes(ctx.models_dir / f"{self.name}.tflite", flatbuffer)
        log.info(
            "recipe %s: wrote %s (%d bytes) in %.1fs", self.name, path, len(flatbuffer), seconds
        )
        return [
            Artifact(path.name, self.name, path, "tflite", self.quantized, convert_seconds=seconds)
        ]
