"""The TFLite converter, driven by a recipe's ``converter`` settings, and the conversion routes
of recurrent models (fused LSTM kernel or unrolled graph, chosen by measured fidelity). Every
recipe family converts through :func:`convert` / :func:`convert_checked`.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Literal, get_args

import numpy as np
from pydantic import Field

from runner.errors import RunnerError
from runner.models.meta import ROUTES
from runner.recipes.ranges import RangeEstimator, converter_ranges
from runner.recipes.recurrent import has_recurrent, unrolled, with_fixed_batch
from runner.schema import Options, parse

log = logging.getLogger(__name__)

DType = Literal["float32", "float16", "int8", "uint8", "int16"]
_TYPES = get_args(DType)
Optimization = Literal[
    "DEFAULT", "OPTIMIZE_FOR_SIZE", "OPTIMIZE_FOR_LATENCY", "EXPERIMENTAL_SPARSITY"
]


class ConverterOptions(Options):
    """TFLite converter settings, by name, as a recipe YAML spells them (its ``converter:`` node);
    the one type of this fact, from the config to :func:`convert`. Integer token-id inputs are
    never changed by ``inference_input_type``."""

    optimizations: tuple[Optimization, ...] = Field(
        (), strict=False, description="tf.lite.Optimize members (DEFAULT: quantize weights)"
    )
    supported_types: tuple[DType, ...] = Field(
        (), strict=False, description="target_spec.supported_types (float16, int8 ...)"
    )
    supported_ops: tuple[Annotated[str, Field(min_length=1)], ...] = Field(
        (), strict=False, description="tf.lite.OpsSet members (TFLITE_BUILTINS_INT8 ...)"
    )
    inference_input_type: DType | None = Field(
        None, description="dtype of the model's float inputs after conversion (null: float32)"
    )
    inference_output_type: DType | None = Field(
        None, description="dtype of the model's outputs after conversion (null: float32)"
    )
    representative_dataset: bool = Field(
        False, description="calibrate activations on training samples (int8 activations need it)"
    )
    calibration_ranges: RangeEstimator = Field(
        "minmax",
        description="int8 activation ranges: minmax (the converter's: widest over all samples) "
        "or mean (each sample's min and max averaged: an outlier sample is clipped)",
    )
    attributes: dict[str, Any] = Field(
        default_factory=dict, description="other converter attributes, set verbatim"
    )

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any] | None) -> ConverterOptions:
        """``m`` checked (raises RunnerError naming a bad key or value and what is allowed)."""
        return parse(dict(m or {}), cls, "recipe.converter", strict=True)  # type: ignore[return-value]

    def replace(self, **changes: Any) -> ConverterOptions:
        """A copy with ``changes`` (checked as the config would be)."""
        return self.from_mapping({**self.model_dump(), **changes})


def full_integer_settings() -> ConverterOptions:
    """The converter settings of ``full_integer``: int8 weights and activations, int8 I/O,
    calibrated (the default of recipes that always write a full-integer file)."""
    return ConverterOptions(
        optimizations=("DEFAULT",),
        supported_ops=("TFLITE_BUILTINS_INT8",),
        inference_input_type="int8",
        inference_output_type="int8",
        representative_dataset=True,
    )


def convert(
    model,
    options: ConverterOptions,
    calibration: np.ndarray | None = None,
    token_ids: bool = False,
    batch_size: int | None = None,
    route: str = "fused",
) -> bytes:
    """Convert a Keras model to a TFLite flatbuffer with ``options``, by one route.

    Args:
        model: a tf-keras model.
        options: converter settings.
        calibration: model-ready inputs (already scaled, float32 or int token ids) for the
            representative dataset; required when ``options.representative_dataset``.
        token_ids: the input holds token ids (indices, not signals): it keeps its type, so no
            recipe rescales ids into int8; the network behind the embedding is quantized.
        batch_size: convert at this fixed batch. Recurrent models default to 1; others keep a
            dynamic batch.
        route: recurrent layers only: ``fused`` (TFLite's fused LSTM kernel) or ``unrolled``
            (one step per time step). :func:`convert_checked` picks one by measured fidelity.
    """
    from runner.console import filtered

    converter = make_converter(model, options, calibration, token_ids, batch_size, route)
    with (
        warnings.catch_warnings(),
        filtered(),
        _no_keras3_import(),
        converter_ranges(options.calibration_ranges),
    ):
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        return converter.convert()  # filtered(): C++ progress lines ("fully_quantize: 0 ...")


@contextlib.contextmanager
def _no_keras3_import() -> Iterator[None]:
    """The converter imports Keras 3 (the ``keras`` package, 1.8 s here) only to ask whether the
    model is one of its models. The runner converts tf_keras models; when nothing has imported
    Keras 3, no model can be one, so within the block ``import keras`` fails fast and the
    converter takes its tf_keras path."""
    if "keras" in sys.modules:
        yield
        return
    sys.modules["keras"] = None  # type: ignore[assignment]  # import keras -> ImportError
    try:
        yield
    finally:
        if sys.modules.get("keras", 0) is None:
            del sys.modules["keras"]


def make_converter(
    model,
    options: ConverterOptions,
    calibration: np.ndarray | None = None,
    token_ids: bool = False,
    batch_size: int | None = None,
    route: str = "fused",
):
    """The configured ``tf.lite.TFLiteConverter`` :func:`convert` runs (the debugger reuses it)."""
    import tensorflow as tf

    from runner.models.saved_model import SavedModelSource

    if route not in ROUTES[1:]:
        raise RunnerError(f"unknown recurrent route {route!r}; valid: {list(ROUTES[1:])}")
    if isinstance(model, SavedModelSource):  # no Keras graph: converted as it was saved
        converter = tf.lite.TFLiteConverter.from_saved_model(
            str(model.path), signature_keys=[model.signature_key]
        )
        return _configure(converter, model, options, calibration, token_ids)
    if batch_size is None and has_recurrent(model) and model.input_shape[0] is None:
        batch_size = 1
    if route == "unrolled" and has_recurrent(model):
        model = unrolled(model)
    if batch_size is not None and model.input_shape[0] != batch_size:
        log.info("converting %s at a fixed batch of %d", model.name, batch_size)
        model = with_fixed_batch(model, int(batch_size))
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    return _configure(converter, model, options, calibration, token_ids)


def _configure(converter, model, options: ConverterOptions, calibration, token_ids: bool):
    """Apply a recipe's converter settings (and its representative data) to ``converter``."""
    import tensorflow as tf

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
    batch = model.input_shape[0] or 1  # a fixed-batch model is fed at its own batch
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
