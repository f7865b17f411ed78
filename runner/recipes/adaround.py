"""Gradient-based post-training rounding (``adaround``): each int8 kernel's rounding is learned
layer by layer on unlabelled calibration samples, then the converter writes a normal int8 file.

Rounding every weight to its nearest int8 level minimizes each weight's error, not the layer's
output error. AdaRound (Nagel et al., 2020, "Up or Down? Adaptive Rounding for Post-Training
Quantization") learns, for every weight, whether to round down or up: a continuous variable per
weight, a soft rounding between floor and floor + 1 that a regularizer drives to 0 or 1, fitted
so the layer's output on the calibration inputs matches the float layer's. Layers are taken in
order; each sees the inputs the already-rounded layers before it produce, and is fitted against
the float model's own output of that layer (no labels).

BatchNorm is folded into the layer before it first (as ``qat_int4`` does): the converter would
otherwise fold it after rounding and move every channel off its grid. The rounded kernels sit on
the grid the converter uses (symmetric, narrow range -127..127, one scale per output channel,
scale = max|w| / 127, each channel's largest weight kept where it is so the scale does not move),
so the converter's quantization finds them on it: the row gives the largest difference between
the file's dequantized kernels and the rounded ones.

The rounded model is written with each activation range estimator of ``calibration_ranges``
and the file that scores best on held-out samples is kept. It is then judged against the export
recipe's plain int8 file on the same samples in LiteRT, and the plain one ships (the row says so)
when it is better beyond the samples' noise.
"""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any

import numpy as np
from pydantic import Field

from runner.artifacts import Artifact
from runner.errors import RunnerError
from runner.evaluation.noise import beats
from runner.recipes.base import CalibrationOptions, RecipeBase, RecipeContext, check_layer_names
from runner.recipes.ranges import RangeEstimator
from runner.schema import tags

log = logging.getLogger(__name__)

LEVELS = 127  # int8 weights, narrow range
ZETA, GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch (the paper's values)


class AdaRoundOptions(CalibrationOptions):
    calibration_samples: int = Field(
        256, ge=1, description="training samples (labels unused) each layer is fitted on"
    )
    iterations: int = Field(300, ge=1, description="optimizer steps per layer")
    batch_size: int = Field(32, ge=1, description="calibration samples per step")
    learning_rate: float = Field(0.01, gt=0, description="Adam's learning rate")
    regularization: float = Field(
        0.01, ge=0, description="weight of the term that drives each rounding to down or up"
    )
    warmup: float = Field(0.2, ge=0, lt=1, description="share of the steps before that term starts")
    skip_layers: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list,
        **tags(names="layer"),
        description="layer names left at nearest rounding",
    )
    export: str = Field(
        "full_integer",
        **tags(names="recipe"),
        min_length=1,
        description="the converter recipe (conf/recipe) that writes the file",
    )
    calibration_ranges: Annotated[list[RangeEstimator], Field(min_length=1)] = Field(
        default_factory=lambda: ["minmax", "mean"],
        description="activation range estimators the rounded model is written with (replacing "
        "the export recipe's own); with several, each file is scored on held-out samples and "
        "the best kept (a later one only beyond the noise)",
    )


class AdaRoundRecipe(RecipeBase):
    """int8 with learned weight rounding (AdaRound), written by the TFLite converter."""

    Options = AdaRoundOptions
    opts: AdaRoundOptions

    def data_needed(self) -> str | None:
        return "fits each layer's rounding on sample inputs (no labels)"

    def produce(self, ctx: RecipeContext) -> list[Artifact]:
        from runner.models.saved_model import NEEDS_KERAS, SavedModelSource
        from runner.recipes.qat.fold import fold_batch_norm
        from runner.recipes.qat.int4 import weight_gap
        from runner.recipes.qat.wrap import qat_ready

        if isinstance(ctx.model, SavedModelSource):
            raise RunnerError(NEEDS_KERAS.format(path=ctx.model.path, recipe=self.name))
        converter = self._converter(ctx)
        calib = self.opts.draw(ctx)
        check_layer_names(ctx.model, self.opts.skip_layers, "recipe.skip_layers")
        t0 = time.perf_counter()
        model, folded = fold_batch_norm(qat_ready(ctx.model, calib), calib)
        per_tensor = bool(converter.attributes.get("_experimental_disable_per_channel"))
        rounded, stats = adaround(model, calib, self.opts, per_tensor)
        seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        held = _held_out(ctx)
        flatbuffer, ranges_note = self._export(rounded, converter, calib, ctx, held)
        convert_seconds = time.perf_counter() - t1
        moved, checked = weight_gap(flatbuffer, rounded)
        gain = _mean_gain(stats)
        note = (
            f"{len(stats)} kernel(s) rounded by AdaRound ({len(folded)} BatchNorm folded first; "
            f"{self.opts.iterations} steps each on {len(calib)} calibration samples): layer "
            f"output error {gain:+.0%} vs nearest rounding (median over layers), written by "
            f"{self.opts.export}; file vs rounded model: max |weight diff| {moved:.2g} over "
            f"{checked} kernel(s); {ranges_note}"
        )
        judged = self._judge(flatbuffer, model, converter, calib, ctx, held)
        if judged is not None:
            flatbuffer, verdict = judged
            note += "; " + verdict
        log.info("recipe %s: %s", self.name, note)
        return [
            self.write_tflite(ctx, flatbuffer, convert_seconds, train_seconds=seconds, note=note)
        ]

    def _converter(self, ctx: RecipeContext):
        export = ctx.recipe(self.opts.export)
        converter = getattr(export, "converter", None)
        if converter is None or "TFLITE_BUILTINS_INT8" not in converter.supported_ops:
            raise RunnerError(
                f"recipe.export={self.opts.export}: expected a converter recipe that writes "
                "int8 weights and activations (full_integer, full_integer_per_tensor)"
            )
        return converter

    def _export(self, rounded, converter, calib, ctx: RecipeContext, held) -> tuple[bytes, str]:
        """The rounded model written with each ``calibration_ranges`` estimator; with held-out
        samples, each file scored and the best kept (a later one only beyond the noise, by QAT's
        epoch rule: :func:`runner.evaluation.noise.beats`; which
        estimator wins depends on the model, and on EfficientNetB0 the converter's ranges cost
        more than the rounding wins back). Returns (the file, what the row says of it)."""

        best = None
        scored = []
        for estimator in self.opts.calibration_ranges:
            settings = converter.replace(calibration_ranges=estimator)
            flatbuffer = self._convert(rounded, settings, calib, ctx)
            if held is None:
                return flatbuffer, f"activation ranges {estimator}"
            hits = held.hits(flatbuffer)
            scored.append(f"{estimator} {np.mean(hits[0]):.4f} / {np.mean(hits[1]):.4f}")
            if best is None or beats(best[0], hits):
                best = (hits, flatbuffer, estimator)
        assert best is not None
        note = f"activation ranges {best[2]}"
        if len(scored) > 1:
            note += f" (int8 validation accuracy / agreement {', '.join(scored)})"
        return best[1], note

    @staticmethod
    def _convert(model, converter, calib, ctx: RecipeContext) -> bytes:
        from runner.recipes.routes import convert_checked

        return convert_checked(
            model,
            converter,
            calib,
            token_ids=ctx.dataset.is_text,
            batch_size=ctx.convert_batch_size,
            recurrent=ctx.recurrent,
            probe=ctx.probe(),
        ).flatbuffer

    def _judge(self, flatbuffer, model, converter, calib, ctx, held) -> tuple[bytes, str] | None:
        """The export recipe's plain int8 file of the same model (its own activation ranges:
        what ``full_integer`` ships), scored beside the rounded one on
        held-out samples: (the file to ship, what the row says), the plain file when it is
        better beyond the noise; None when there is nothing held out."""
        if held is None:
            return None
        plain = self._convert(model, converter, calib, ctx)
        mine, theirs = held.hits(flatbuffer), held.hits(plain)
        scores = (
            f"int8 validation accuracy {np.mean(mine[0]):.4f} vs the plain converter's "
            f"{np.mean(theirs[0]):.4f}, agreement {np.mean(mine[1]):.4f} vs "
            f"{np.mean(theirs[1]):.4f} ({len(held)} samples of {held.where})"
        )
        log.info("adaround: %s", scores)
        if beats(mine, theirs):
            return plain, (
                f"the .tflite is the converter's plain int8 file, which beat the rounded one "
                f"beyond the noise ({scores}): AdaRound did not help this model"
            )
        return flatbuffer, scores


def _held_out(ctx: RecipeContext):
    """The held-out samples the files are judged on, or None."""
    from runner.evaluation.holdout import Holdout

    _, val, where = ctx.held_out()
    return None if val is None else Holdout.of(ctx.model, val, where, ctx.scaling)


def _mean_gain(stats: list[dict[str, Any]]) -> float:
    ratios = [s["adaround"] / s["nearest"] - 1 for s in stats if s["nearest"] > 0]
    return float(np.median(ratios)) if ratios else 0.0


def adaround(model, calib: np.ndarray, opts: AdaRoundOptions, per_tensor: bool = False):
    """A copy of ``model`` (tf_keras, BatchNorm folded) whose Conv/Depthwise/Dense kernels are
    on the int8 grid with learned rounding, and per layer ``{layer, nearest, adaround}``: the
    layer's output error (mean squared, against the float layer) with nearest and learned
    rounding on ``calib``."""
    import tf_keras as keras

    from runner.console import check_interrupt

    rounded = keras.models.clone_model(model)
    rounded.set_weights(model.get_weights())
    stats: list[dict[str, Any]] = []
    rng = np.random.default_rng(opts.calibration_seed)
    todo = sum(1 for la in model.layers if linear_op(la) is not None)
    t0 = time.perf_counter()
    for layer in model.layers:
        op = linear_op(layer)
        if op is None or layer.name in opts.skip_layers or len(layer._inbound_nodes) != 1:
            continue
        check_interrupt()
        kernel = layer.get_weights()[0]
        x_float = _inputs(model, layer, calib)
        x_rounded = _inputs(rounded, layer, calib)
        target = _run(op, x_float, kernel)
        scale = grid_scale(type(layer).__name__, kernel, per_tensor)
        learned, errors = learn_rounding(op, kernel, scale, x_rounded, target, opts, rng)
        weights = rounded.get_layer(layer.name).get_weights()
        rounded.get_layer(layer.name).set_weights([learned, *weights[1:]])
        stats.append({"layer": layer.name, **errors})
        log.debug("adaround %s: %s", layer.name, errors)
        if len(stats) % 10 == 0:  # a large model takes minutes: say how far it is
            log.info(
                "adaround: %d of %d layers rounded (%.0fs)",
                len(stats),
                todo,
                time.perf_counter() - t0,
            )
    if not stats:
        raise RunnerError("no Conv/Depthwise/Dense kernel to round (adaround)")
    return rounded, stats


def linear_op(layer):
    """``f(x, kernel)``: the layer's output before its bias and activation, in TensorFlow ops;
    None for a layer whose kernel is not rounded here."""
    import tensorflow as tf

    kind = type(layer).__name__
    cfg = layer.get_config()
    if kind == "Dense":
        return lambda x, w: tf.tensordot(x, w, [[len(x.shape) - 1], [0]])
    if cfg.get("data_format", "channels_last") != "channels_last":
        return None
    if kind in ("Conv1D", "Conv2D"):
        if cfg.get("groups", 1) != 1 or cfg["padding"] == "causal":
            return None
        strides, dilations, padding = cfg["strides"], cfg["dilation_rate"], cfg["padding"].upper()
        return lambda x, w: tf.nn.convolution(
            x, w, strides=strides, padding=padding, dilations=dilations
        )
    if kind == "DepthwiseConv2D":
        strides, dilations, padding = cfg["strides"], cfg["dilation_rate"], cfg["padding"].upper()
        return lambda x, w: tf.nn.depthwise_conv2d(
            x, w, strides=(1, *strides, 1), padding=padding, dilations=dilations
        )
    return None


def grid_scale(kind: str, kernel: np.ndarray, per_tensor: bool = False) -> np.ndarray:
    """The converter's int8 scale for ``kernel`` (Keras layout), broadcastable against it: one
    per output channel (a depthwise kernel's channels are its last two axes), or one for the
    tensor (``per_tensor``: convolutions only; dense layers stay per channel)."""
    if per_tensor and kind != "Dense":
        reduce: tuple[int, ...] = tuple(range(kernel.ndim))
    elif kind == "DepthwiseConv2D":
        reduce = (0, 1)
    else:
        reduce = tuple(range(kernel.ndim - 1))
    m = np.max(np.abs(kernel), axis=reduce, keepdims=True)
    return np.maximum(m / LEVELS, np.finfo(np.float32).tiny).astype(np.float32)


def _inputs(model, layer, calib: np.ndarray) -> np.ndarray:
    """``layer``'s input when ``model`` runs on ``calib`` (in chunks)."""
    import tf_keras as keras

    sub = keras.Model(model.inputs, model.get_layer(layer.name).input)
    return np.concatenate(
        [np.asarray(sub(calib[i : i + 64], training=False)) for i in range(0, len(calib), 64)]
    )


def _run(op, x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    return np.concatenate([np.asarray(op(x[i : i + 64], kernel)) for i in range(0, len(x), 64)])


def learn_rounding(op, kernel, scale, x, target, opts: AdaRoundOptions, rng):
    """(the kernel on its grid with learned rounding, {nearest, adaround}: output MSE)."""
    import tensorflow as tf

    w = kernel.astype(np.float32)
    base = np.floor(w / scale)
    rest = np.clip(w / scale - base, 0.0, 1.0)
    # start each soft rounding at its weight's own fraction: h(v) = rest
    p = np.clip((rest - GAMMA) / (ZETA - GAMMA), 1e-4, 1 - 1e-4)
    v = tf.Variable(np.log(p / (1 - p)).astype(np.float32))
    base_t, scale_t = tf.constant(base), tf.constant(scale)
    optimizer = tf.keras.optimizers.Adam(opts.learning_rate)

    def soft():
        return tf.clip_by_value(tf.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)

    @tf.function(reduce_retracing=True)
    def step(xb, yb, beta, lam):
        with tf.GradientTape() as tape:
            h = soft()
            q = tf.clip_by_value(base_t + h, -LEVELS, LEVELS) * scale_t
            err = tf.square(op(xb, q) - yb)
            rec = tf.reduce_mean(tf.reduce_sum(tf.reshape(err, (tf.shape(err)[0], -1)), axis=1))
            reg = tf.reduce_sum(1.0 - tf.pow(tf.abs(2.0 * h - 1.0), beta))
            loss = rec + lam * reg
        optimizer.apply_gradients([(tape.gradient(loss, v), v)])

    n, batch = len(x), min(opts.batch_size, len(x))
    start = int(opts.warmup * opts.iterations)
    for i in range(opts.iterations):
        pick = rng.choice(n, batch, replace=False)
        if i < start:
            beta, lam = 20.0, 0.0
        else:  # the rounding is pushed to down or up ever harder: beta 20 -> 2
            beta = 20.0 - 18.0 * (i - start) / max(1, opts.iterations - start)
            lam = opts.regularization
        step(x[pick], target[pick], tf.constant(beta), tf.constant(lam))
    up = (v.numpy() >= 0).astype(np.float32)  # h(v) >= 0.5
    learned = np.clip(base + up, -LEVELS, LEVELS) * scale
    nearest = np.clip(np.round(w / scale), -LEVELS, LEVELS) * scale
    edge = np.abs(w) >= scale * LEVELS * (1 - 1e-6)  # each channel's largest weight: the scale
    learned = np.where(edge, nearest, learned).astype(np.float32)
    errors = {
        "nearest": float(np.mean(np.square(_run(op, x, nearest) - target))),
        "adaround": float(np.mean(np.square(_run(op, x, learned) - target))),
    }
    return learned, errors
