"""4-bit weight QAT (``qat_int4``), exported through ai-edge-quantizer so the file holds exactly
the weights the fine-tuned model used.

The TFLite converter cannot write 4-bit weights from a QAT model (tfmot's 4-bit quantizers end in
"'tfl.transpose' op has mismatched quantized axes"), and ai-edge-quantizer starts from a float
``.tflite``. So: BatchNorm is folded into the layer before it first (folding after QAT would
scale each output channel off the grid), every Conv/Depthwise/Dense kernel is fine-tuned through
a symmetric per-channel 4-bit fake quantizer (scale = max|w| / 7, the grid ai-edge-quantizer's
int4 ``min_max_uniform_quantize`` uses), and the fake-quantized kernels are written into the
float model, converted to float32 and quantized by the ``export`` AEQ recipe
(``int4_weight_only``): it finds each kernel already on its own grid, so nothing moves. The row
says how far the file's outputs are from the fine-tuned model's.

Weight-only int4 computes in float, so the fine-tuned Keras model and the file agree to float
rounding: each epoch is judged on held-out data with the Keras model, epoch 0 (the int4 grid
before any step) included, and a later epoch is kept only for a gain beyond the samples' noise.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from typing import Annotated

import numpy as np
from pydantic import Field

from runner import tflite
from runner.artifacts import Artifact
from runner.console import check_interrupt
from runner.errors import RunnerError
from runner.evaluation.noise import paired_gain
from runner.recipes.base import (
    CalibrationOptions,
    RecipeBase,
    RecipeContext,
    check_layer_names,
    float_layers_text,
)
from runner.schema import tags

log = logging.getLogger(__name__)

# layer class -> (kernel attribute, its output-channel axis)
KERNELS = {
    "Conv1D": ("kernel", -1),
    "Conv2D": ("kernel", -1),
    "Dense": ("kernel", -1),
    "DepthwiseConv2D": ("depthwise_kernel", 2),
}
LEVELS = 7  # symmetric int4, narrow range: -7 .. 7


class QATInt4Options(CalibrationOptions):
    epochs: int = Field(2, ge=1, description="fine-tuning epochs")
    learning_rate_scale: float = Field(
        0.1, gt=0, description="fine-tuning learning rate = train.learning_rate x this"
    )
    batch_size: int | None = Field(None, ge=1, description="null: train.batch_size")
    steps_per_epoch: int | None = Field(
        None, ge=1, description="null: one pass over the fitted samples per epoch"
    )
    skip_layers: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list,
        **tags(names="layer"),
        description="layer names fine-tuned without the 4-bit quantizer",
    )
    export: str = Field(
        "int4_weight_only",
        **tags(names="recipe"),
        min_length=1,
        description="the ai-edge-quantizer recipe (conf/recipe) that writes the file",
    )


def grid(kernel: np.ndarray, axis: int) -> np.ndarray:
    """``kernel`` on its symmetric per-channel int4 grid (numpy; what the fake quantizer does)."""
    axis = axis % kernel.ndim
    reduce = tuple(i for i in range(kernel.ndim) if i != axis)
    scale = np.maximum(np.max(np.abs(kernel), axis=reduce, keepdims=True) / LEVELS, 1e-12)
    return (np.clip(np.round(kernel / scale), -LEVELS, LEVELS) * scale).astype(np.float32)


@functools.cache
def _classes():
    """(the int4 weight QuantizeConfig class, tfmot's wrapper), made once TensorFlow is needed."""
    import tensorflow_model_optimization as tfmot

    return _config_class(_quantizer_class()), tfmot.quantization.keras.QuantizeWrapperV2


@functools.cache
def _quantizer_class():
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot

    q = tfmot.quantization.keras

    class Int4Quantizer(q.quantizers.Quantizer):
        """Symmetric per-channel 4-bit fake quantization, straight-through gradient."""

        def __init__(self, axis: int) -> None:
            self.axis = axis

        def build(self, tensor_shape, name, layer):
            return {}

        def __call__(self, inputs, training, weights, **kwargs):
            axis = self.axis % inputs.shape.rank
            reduce = [i for i in range(inputs.shape.rank) if i != axis]
            m = tf.reduce_max(tf.abs(inputs), axis=reduce, keepdims=True)
            scale = tf.stop_gradient(tf.maximum(m / LEVELS, 1e-12))
            on_grid = tf.clip_by_value(tf.round(inputs / scale), -LEVELS, LEVELS) * scale
            return inputs + tf.stop_gradient(on_grid - inputs)

        def get_config(self):
            return {"axis": self.axis}

    return Int4Quantizer


@functools.cache
def _config_class(Int4Quantizer):  # noqa: N803 - a class, made above
    import tensorflow_model_optimization as tfmot

    q = tfmot.quantization.keras

    class Int4WeightConfig(q.QuantizeConfig):
        """The kernel through :class:`Int4Quantizer`; activations stay float."""

        def __init__(self, attr: str, axis: int) -> None:
            self.attr, self.axis = attr, axis

        def get_weights_and_quantizers(self, layer):
            return [(getattr(layer, self.attr), Int4Quantizer(self.axis))]

        def get_activations_and_quantizers(self, layer):
            return []

        def set_quantize_weights(self, layer, quantize_weights):
            setattr(layer, self.attr, quantize_weights[0])

        def set_quantize_activations(self, layer, quantize_activations):
            pass

        def get_output_quantizers(self, layer):
            return []

        def get_config(self):
            return {"attr": self.attr, "axis": self.axis}

    return Int4WeightConfig


class QATInt4Recipe(RecipeBase):
    """4-bit weight QAT on the BatchNorm-folded model, exported by ai-edge-quantizer."""

    Options = QATInt4Options
    opts: QATInt4Options

    def data_needed(self) -> str | None:
        return "fine-tunes on labelled training samples"

    def produce(self, ctx: RecipeContext) -> list[Artifact]:
        from runner.models.saved_model import NEEDS_KERAS, SavedModelSource
        from runner.recipes.qat.fold import fold_batch_norm
        from runner.recipes.qat.wrap import qat_ready

        if isinstance(ctx.model, SavedModelSource):
            raise RunnerError(NEEDS_KERAS.format(path=ctx.model.path, recipe=self.name))
        export = self._export_recipe(ctx)
        calib = self.opts.draw(ctx)
        model, folded = fold_batch_norm(qat_ready(ctx.model, calib), calib)
        wrapped, names = self._wrap(model)
        seconds, kept = self._fine_tune(wrapped, model, ctx)
        on_grid = self._on_grid(wrapped, model)
        t0 = time.perf_counter()
        reference = self._float32(on_grid, ctx)
        if export.embedding_lookup:  # as the AEQ recipe does with none.tflite
            reference, _ = tflite.gather_as_embedding_lookup(reference)
        flatbuffer = export.quantize(reference, ctx)
        gap = self._gap(flatbuffer, on_grid, calib, ctx)
        moved, checked = weight_gap(flatbuffer, on_grid)
        floats = tflite.float_weight_ops(flatbuffer)  # on the int4 grid, stored float by AEQ
        note = (
            f"{len(names)} kernel(s) fine-tuned on the int4 grid ({len(folded)} BatchNorm folded "
            f"first), written by {self.opts.export}; {kept}; file vs fine-tuned model: max "
            f"|weight diff| {moved:.2g} over {checked} int4 kernel(s), max |output diff| "
            f"{gap:.2g} on {min(len(calib), 64)} calibration inputs"
        )
        if floats:
            note += f"; {export.name} stored {', '.join(floats)} as float (on the int4 grid)"
        log.info("recipe %s: %s", self.name, note)
        return [
            self.write_tflite(
                ctx,
                flatbuffer,
                time.perf_counter() - t0,
                train_seconds=seconds,
                note=note,
                float_layers=float_layers_text(floats),
            )
        ]

    def _export_recipe(self, ctx: RecipeContext):
        export = ctx.recipe(self.opts.export)
        if not hasattr(export, "quantize") or not hasattr(export, "rules"):
            raise RunnerError(
                f"recipe.export={self.opts.export}: expected an ai-edge-quantizer recipe "
                "(int4_weight_only)"
            )
        return export

    def _wrap(self, model):
        """(a clone with every kernel behind the int4 fake quantizer, the wrapped names)."""
        import tf_keras as keras

        from runner.models.qat_scope import load_scope

        config, wrapper = _classes()
        check_layer_names(model, self.opts.skip_layers, "recipe.skip_layers")
        names: list[str] = []

        def clone(layer):
            new = type(layer).from_config(layer.get_config())
            if layer.weights:  # built and loaded before the wrapper takes its kernel
                new.build(layer.input_shape)
                new.set_weights(layer.get_weights())
            if type(layer).__name__ == "BatchNormalization":
                new.trainable = False  # one that did not fold keeps its statistics
            spec = KERNELS.get(type(layer).__name__)
            if spec is None or layer.name in self.opts.skip_layers:
                return new
            names.append(layer.name)
            return wrapper(new, config(*spec))

        with load_scope():
            wrapped = keras.models.clone_model(model, clone_function=clone)
        if not names:
            raise RunnerError("no Conv/Depthwise/Dense kernel to fine-tune on the int4 grid")
        return wrapped, names

    def _fine_tune(self, wrapped, model, ctx: RecipeContext) -> tuple[float, str]:
        """Fine-tune; keep the best epoch on held-out data (epoch 0 included)."""
        import tf_keras as keras

        from runner.evaluation.metrics import labels_from_outputs, predict_keras
        from runner.train import TrainConfig, batch_sequence, loss_for, make_optimizer

        cfg = TrainConfig.from_mapping(ctx.train_cfg or {})
        fit, val, _ = ctx.held_out()
        val = val if val is not None else fit
        batch = int(self.opts.batch_size or cfg.batch_size)
        steps = self.opts.steps_per_epoch or max(1, math.ceil(len(fit) / batch))
        keras.utils.set_random_seed(cfg.seed)
        lr = cfg.learning_rate * self.opts.learning_rate_scale
        wrapped.compile(optimizer=make_optimizer(cfg.optimizer, lr), loss=loss_for(wrapped))

        def right():
            return labels_from_outputs(predict_keras(wrapped, val.x, ctx.scaling)) == val.y

        best_right, best_epoch, best_weights, start = right(), 0, wrapped.get_weights(), 0.0
        start = float(np.mean(best_right))
        seq = batch_sequence(fit, batch, ctx.scaling, True, cfg.seed, steps=steps)
        stop = keras.callbacks.LambdaCallback(on_train_batch_end=check_interrupt)
        t0 = time.perf_counter()
        for epoch in range(1, self.opts.epochs + 1):
            wrapped.fit(seq, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[stop])
            now = right()
            gain, bound = paired_gain(best_right, now)
            log.info("QAT int4 epoch %d: validation accuracy %.4f", epoch, float(np.mean(now)))
            if gain > 0 and gain >= bound:
                best_right, best_epoch, best_weights = now, epoch, wrapped.get_weights()
        seconds = time.perf_counter() - t0
        wrapped.set_weights(best_weights)
        kept = (
            f"kept epoch {best_epoch} of {self.opts.epochs} (int4 validation accuracy {start:.4f}"
            f" at epoch 0 -> {float(np.mean(best_right)):.4f}, {len(val)} samples)"
        )
        return seconds, kept

    def _on_grid(self, wrapped, model):
        """A copy of the folded float model holding the fine-tuned kernels on their int4 grid."""
        import tf_keras as keras

        out = keras.models.clone_model(model)
        for layer in wrapped.layers:
            inner = getattr(layer, "layer", layer)
            weights = inner.get_weights()
            if inner is not layer:  # the wrapper holds the kernel (first of the layer's weights)
                kernel = layer._weight_vars[0][0].numpy()
                weights = [grid(kernel, KERNELS[type(inner).__name__][1]), *weights]
            out.get_layer(inner.name).set_weights(weights)
        return out

    def _float32(self, model, ctx: RecipeContext) -> bytes:
        from runner.recipes.conversion import ConverterOptions, convert

        return convert(
            model,
            ConverterOptions(),
            None,
            token_ids=ctx.dataset.is_text,
            batch_size=ctx.convert_batch_size,
        )

    def _gap(self, flatbuffer: bytes, model, calib, ctx: RecipeContext) -> float:
        """Max |output difference| between the file and the fine-tuned model on ``calib``."""
        from runner.evaluation.interpreter import TFLiteModel

        x = calib[:64]
        want = np.asarray(model(x, training=False))
        got = TFLiteModel(content=flatbuffer).predict(x, lambda a: a)  # already model-ready
        return float(np.max(np.abs(want - got)))


def tflite_layout(kind: str, kernel: np.ndarray) -> np.ndarray:
    """A Keras kernel in the layout the converter writes it (OHWI, [1, H, W, C x M], [out, in])."""
    if kind == "DepthwiseConv2D":
        h, w, c, m = kernel.shape
        return kernel.reshape(1, h, w, c * m)
    if kind == "Dense":
        return kernel.T
    if kind == "Conv1D":  # written as a 1 x W conv
        return np.transpose(kernel, (2, 0, 1))[:, None]
    return np.transpose(kernel, (3, 0, 1, 2))


def weight_gap(flatbuffer: bytes, model) -> tuple[float, int]:
    """(max |difference| between the file's dequantized int4 kernels and ``model``'s, how many
    kernels were compared), matched by Keras layer name."""
    from runner.tflite.weights import dequantized_weights

    stored = {tflite.layer_name(n): v for n, v in dequantized_weights(flatbuffer).items()}
    worst, checked = 0.0, 0
    for layer in model.layers:
        kind = type(layer).__name__
        got = stored.get(layer.name)
        if kind not in KERNELS or got is None:
            continue
        want = tflite_layout(kind, layer.get_weights()[0])
        if got.size != want.size:
            continue
        worst = max(worst, float(np.max(np.abs(got.reshape(want.shape) - want))))
        checked += 1
    return worst, checked
