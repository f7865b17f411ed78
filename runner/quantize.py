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


RNN_CELLS = ("LSTM", "GRU", "SimpleRNN")
ROUTES = ("auto", "fused", "unrolled")
# Inputs the fidelity check of a recurrent conversion runs on (real training samples).
PROBE_SAMPLES = 256
# A float (unquantized) conversion below this output SQNR against Keras is not faithful: float32
# conversions measure ~90-115 dB and float16 ~40-80 dB here; the drifting fused LSTM 0-10 dB.
FLOAT_FIDELITY_DB = 30.0


def unrolled(model):
    """A copy of ``model`` with every recurrent layer unrolled (``unroll=True``), same weights.

    The converter then emits plain FULLY_CONNECTED/ADD/LOGISTIC ops per time step instead of its
    fused ``UNIDIRECTIONAL_SEQUENCE_LSTM`` kernel, which drifts from Keras when gates saturate.
    It needs a fixed sequence length.
    """
    import tf_keras as keras

    if len(model.input_shape) > 1 and model.input_shape[1] is None:
        raise RunnerError(
            "the unrolled route needs a fixed sequence length, but the model's input is "
            f"{model.input_shape}; build the model with a fixed length (e.g. Input(shape=(100,)))"
        )

    def unroll(cfg: dict) -> dict:
        return {**cfg, "unroll": True}

    def clone(layer):
        cls, cfg = type(layer).__name__, layer.get_config()
        if cls in RNN_CELLS:
            cfg = unroll(cfg)
        elif cls == "Bidirectional":
            cfg["layer"] = {**cfg["layer"], "config": unroll(cfg["layer"]["config"])}
            if cfg.get("backward_layer"):
                back = cfg["backward_layer"]
                cfg["backward_layer"] = {**back, "config": unroll(back["config"])}
        return layer.__class__.from_config(cfg)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


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
    converter = make_converter(model, options, calibration, token_ids, batch_size, route)
    with warnings.catch_warnings():  # int8 I/O without input statistics is expected here
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        return converter.convert()


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

    if route not in ROUTES[1:]:
        raise RunnerError(f"unknown recurrent route {route!r}; valid: {list(ROUTES[1:])}")
    if batch_size is None and has_recurrent(model) and model.input_shape[0] is None:
        batch_size = 1
    if route == "unrolled" and has_recurrent(model):
        model = unrolled(model)
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


@dataclass(frozen=True)
class RouteTrial:
    """One conversion route tried on a recurrent model, and how faithful its file was."""

    route: str
    size_bytes: int | None = None
    output_sqnr_db: float | None = None
    output_max_abs_error: float | None = None
    agreement: float | None = None
    error: str | None = None

    def describe(self) -> str:
        if self.error:
            return f"{self.route} failed ({self.error})"
        return (
            f"{self.route} SQNR {self.output_sqnr_db:.1f} dB, agreement {self.agreement:.4f}, "
            f"max |diff| {self.output_max_abs_error:.2g}"
        )


@dataclass(frozen=True)
class Conversion:
    """A flatbuffer and, for a recurrent model, the route chosen and why."""

    flatbuffer: bytes
    route: str | None = None  # None: the model has no recurrent layer
    reason: str = ""
    trials: tuple[RouteTrial, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "route": self.route,
            "reason": self.reason,
            "trials": [dataclasses.asdict(t) for t in self.trials],
        }


def measure_fidelity(model, flatbuffer: bytes, probe: np.ndarray) -> RouteTrial:
    """Run ``flatbuffer`` in LiteRT on model-ready ``probe`` inputs and compare with Keras."""
    from runner.data import Scaling
    from runner.evaluate import TFLiteModel, labels_from_outputs, output_fidelity

    ref = np.asarray(model(probe, training=False))
    out = TFLiteModel(content=flatbuffer).predict(probe, Scaling("none"), batch_size=len(probe))
    sqnr, max_err = output_fidelity(ref, out)
    agreement = float(np.mean(labels_from_outputs(ref) == labels_from_outputs(out)))
    return RouteTrial("", len(flatbuffer), sqnr, max_err, agreement)


def convert_checked(
    model,
    options: ConverterOptions,
    calibration: np.ndarray | None = None,
    token_ids: bool = False,
    batch_size: int | None = None,
    recurrent: str = "auto",
    probe: np.ndarray | None = None,
    quantized: bool = True,
) -> Conversion:
    """:func:`convert`, choosing the route for recurrent layers by measured output fidelity.

    A model without recurrent layers is converted once. For a recurrent one, ``recurrent``
    ``fused`` or ``unrolled`` forces that route (its fidelity is still measured when ``probe`` is
    given); ``auto`` measures each route's ``.tflite`` in LiteRT against the Keras model on
    ``probe`` (model-ready real inputs): an unquantized recipe keeps the fused kernel when it is
    faithful (SQNR >= ``FLOAT_FIDELITY_DB`` and every probe label kept) and falls back to the
    unrolled graph when not; a quantized recipe converts both and keeps the more faithful.

    Raises:
        RunnerError: an unknown route, or (re-raised) the conversion error when no route converts.
    """
    if recurrent not in ROUTES:
        raise RunnerError(f"model.recurrent must be one of {list(ROUTES)}, got {recurrent!r}")
    if not has_recurrent(model):
        return Conversion(convert(model, options, calibration, token_ids, batch_size))
    candidates = ["fused", "unrolled"] if recurrent == "auto" else [recurrent]
    if recurrent == "auto" and len(model.input_shape) > 1 and model.input_shape[1] is None:
        candidates = ["fused"]  # no fixed sequence length: nothing to unroll
    trials: list[RouteTrial] = []
    files: dict[str, bytes] = {}
    first_error: BaseException | None = None
    for route in candidates:
        try:
            fb = convert(model, options, calibration, token_ids, batch_size, route)
        except Exception as e:  # noqa: BLE001 - another route may convert
            if isinstance(e, RunnerError) and len(candidates) == 1:
                raise
            first_error = first_error or e
            trials.append(RouteTrial(route, error=summarize_error(e, 160)))
            log.info("route %s: conversion failed: %s", route, summarize_error(e))
            continue
        files[route] = fb
        trial = (
            dataclasses.replace(measure_fidelity(model, fb, probe), route=route)
            if probe is not None and len(probe)
            else RouteTrial(route, len(fb))
        )
        trials.append(trial)
        log.info("route %s: %s (%d bytes)", route, trial.describe(), len(fb))
        if recurrent == "auto" and not quantized and _faithful(trial):
            break  # the fused kernel is exact enough: keep the smaller, first route
    if not files:
        assert first_error is not None
        raise first_error
    measured = [t for t in trials if t.route in files and t.output_sqnr_db is not None]
    if recurrent != "auto" or not measured:
        chosen = next(t for t in trials if t.route in files)
        why = (
            "forced by model.recurrent" if recurrent != "auto" else "the only route that converted"
        )
    else:
        chosen = max(measured, key=lambda t: (t.output_sqnr_db, t.agreement))
        if len(measured) == 1 and chosen.route == "fused" and not quantized:
            why = f"the fused kernel is faithful on {len(probe)} real inputs"
        elif not quantized and chosen.route != "fused":
            why = f"the fused kernel is not faithful on {len(probe)} real inputs"
        else:
            why = f"the more faithful on {len(probe)} real inputs"
    reason = f"{chosen.route}: {why} ({'; '.join(t.describe() for t in trials)})"
    if not quantized and chosen.output_sqnr_db is not None and not _faithful(chosen):
        log.warning("no conversion route is faithful to the Keras model: %s", reason)
    log.info("recurrent route %s", reason)
    return Conversion(files[chosen.route], chosen.route, reason, tuple(trials))


def _faithful(trial: RouteTrial) -> bool:
    return (
        trial.output_sqnr_db is not None
        and trial.output_sqnr_db >= FLOAT_FIDELITY_DB
        and (trial.agreement or 0.0) >= 0.995
    )


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
    conversion: dict[str, Any] | None = None  # recurrent models: the route chosen, why, trials

    @property
    def route(self) -> str | None:
        return (self.conversion or {}).get("route")


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
    recurrent: str = "auto"  # conversion route for recurrent layers: auto | fused | unrolled

    def probe(self) -> np.ndarray:
        """Model-ready real inputs (training samples) that conversion fidelity is measured on."""
        return self.scaling(calibration_sample(self.dataset.train, PROBE_SAMPLES, 0))


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
        import json

        from runner.cache import cache_key

        recurrent = has_recurrent(ctx.model)
        spec = {
            "options": dataclasses.asdict(self.options),
            "calibration": [self.calibration_samples, self.calibration_seed],
            "batch": ctx.convert_batch_size,
        } | ({"recurrent": ctx.recurrent, "probe": PROBE_SAMPLES} if recurrent else {})
        cached = (
            ctx.artifact_cache / f"{self.name}-{cache_key(spec)}.tflite"
            if ctx.artifact_cache
            else None
        )
        sidecar = cached.with_suffix(".json") if cached is not None else None
        t0 = time.perf_counter()
        if cached is not None and cached.is_file() and sidecar.is_file():
            flatbuffer = cached.read_bytes()
            conversion = json.loads(sidecar.read_text()) or None
            log.info(
                "recipe %s: reusing the conversion cached with the baseline (%s)",
                self.name,
                cached.name,
            )
        else:
            done = convert_checked(
                ctx.model,
                self.options,
                self.calibration(ctx),
                token_ids=ctx.dataset.is_text,
                batch_size=ctx.convert_batch_size,
                recurrent=ctx.recurrent,
                probe=ctx.probe() if recurrent else None,
                quantized=self.quantized,
            )
            flatbuffer = done.flatbuffer
            conversion = done.as_dict() if done.route else None
            if cached is not None:
                atomic_write_bytes(cached, flatbuffer)
                atomic_write_bytes(sidecar, json.dumps(conversion).encode())
        seconds = time.perf_counter() - t0
        path = atomic_write_bytes(ctx.models_dir / f"{self.name}.tflite", flatbuffer)
        log.info(
            "recipe %s: wrote %s (%d bytes) in %.1fs", self.name, path, len(flatbuffer), seconds
        )
        return [
            Artifact(
                path.name,
                self.name,
                path,
                "tflite",
                self.quantized,
                convert_seconds=seconds,
                conversion=conversion,
            )
        ]
