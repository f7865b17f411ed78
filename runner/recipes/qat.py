"""Quantization-aware training (tensorflow-model-optimization), as a recipe.

``recipe=qat`` starts from the cached float baseline (it never retrains it), annotates the layers
tfmot can quantize, fine-tunes with fake quantization, and exports two artifacts: an int8
``qat.tflite`` (calibrated int8 input/output) and ``qat.h5``, a fine-tunable Keras model that
:func:`runner.models.load_model` loads back. HDF5, not ``.keras``: with tfmot 0.8.1 a QAT model
saved as ``.keras`` fails to load ("Layer 'quantize_layer' expected 5 variables, but received 3").
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import Field

from runner.errors import RunnerError
from runner.models.qat_scope import conv1d_quantize_config, load_scope, tfmot_module
from runner.recipes.base import Artifact, RecipeBase, RecipeContext, RecipeMeta
from runner.recipes.conversion import RECURRENT, ConverterSettings, convert
from runner.schema import Options

log = logging.getLogger(__name__)

# BatchNormalization folds into the conv/dense before it (tfmot's transforms); elsewhere it cannot.
_BN_FOLDS_INTO = ("Conv2D", "DepthwiseConv2D", "Dense")


def _inbound_classes(layer) -> list[str]:
    out = []
    for node in getattr(layer, "_inbound_nodes", []):
        for inbound in (
            node.inbound_layers if isinstance(node.inbound_layers, list) else [node.inbound_layers]
        ):
            out.append(type(inbound).__name__)
    return out


def plan_annotation(
    model, skip_layers: Sequence[str] = ()
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Which layers get fake quantization, and which stay float.

    Returns:
        ({layer name: QuantizeConfig or None (tfmot's default)}, [(name, class) left in float]).

    Raises:
        RunnerError: a recurrent layer (tfmot cannot quantization-aware-train LSTM/GRU) or a
            name in ``skip_layers`` the model does not have.
    """
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry,
    )

    registry = default_8bit_quantize_registry.Default8BitQuantizeRegistry()
    names = {layer.name for layer in model.layers}
    unknown = sorted(set(skip_layers) - names)
    if unknown:
        raise RunnerError(
            f"recipe.skip_layers names {unknown}, which the model does not have; its layers: {sorted(names)}"
        )
    plan: dict[str, Any] = {}
    floats: list[tuple[str, str]] = []
    conv1d = conv1d_quantize_config()
    for layer in model.layers:
        cls = type(layer).__name__
        if cls == "InputLayer":
            continue
        if cls in RECURRENT:
            raise RunnerError(
                f"layer {layer.name!r} ({cls}) cannot be quantization-aware-trained: tensorflow-model-optimization has no "
                "8-bit scheme for recurrent layers; use recipe=full_integer (post-training) for this model"
            )
        if layer.name in skip_layers:
            floats.append((layer.name, cls))
        elif cls == "BatchNormalization":
            if any(c in _BN_FOLDS_INTO for c in _inbound_classes(layer)):
                plan[layer.name] = None
            else:
                floats.append((layer.name, cls))
        elif cls == "Conv1D":
            plan[layer.name] = conv1d()
        elif registry.supports(layer):
            plan[layer.name] = None
        else:
            floats.append((layer.name, cls))
    return plan, floats


def quantize_aware(
    model,
    skip_layers: Sequence[str] = (),
    fallback: bool = True,
    freeze_batch_norm: bool = False,
):
    """A QAT copy of ``model``: supported layers wrapped, the rest left in float.

    ``freeze_batch_norm`` keeps every BatchNormalization in inference mode while fine-tuning:
    its moving statistics (what the converter folds into the int8 weights) stay those of the
    float model instead of drifting with a few hundred small fake-quantized batches.

    Raises:
        RunnerError: a layer that cannot be quantized when ``fallback`` is off, naming the layer,
            its class and the fix.
    """
    import tf_keras as keras

    tfmot = tfmot_module()
    plan, floats = plan_annotation(model, skip_layers)
    unexpected = [(n, c) for n, c in floats if n not in skip_layers and c not in ("Embedding",)]
    if unexpected and not fallback:
        name, cls = unexpected[0]
        raise RunnerError(
            f"layer {name!r} ({cls}) is not supported by tensorflow-model-optimization's 8-bit QAT scheme; "
            f"add it to recipe.skip_layers=[{name}] to keep it in float, or set recipe.fallback=true"
        )
    if floats:
        log.info(
            "QAT leaves %d layer(s) in float: %s",
            len(floats),
            ", ".join(f"{n} ({c})" for n, c in floats),
        )
    if not plan:
        raise RunnerError("no layer of this model can be quantization-aware-trained")

    def annotate(layer):
        clone = layer.__class__.from_config(config_with_state(layer))
        if freeze_batch_norm and type(layer).__name__ == "BatchNormalization":
            clone.trainable = False  # tf-keras runs a non-trainable BatchNorm in inference mode
        if layer.name not in plan:
            return clone
        return tfmot.quantization.keras.quantize_annotate_layer(
            clone, quantize_config=plan[layer.name]
        )

    annotated = keras.models.clone_model(model, clone_function=annotate)
    copy_weights_by_name(model, annotated)
    with load_scope():
        try:
            return tfmot.quantization.keras.quantize_apply(annotated), floats
        except (ValueError, RuntimeError, TypeError) as e:
            raise RunnerError(
                f"tensorflow-model-optimization could not apply QAT: {' '.join(str(e).split())[:300]}"
            ) from None


def config_with_state(layer) -> dict[str, Any]:
    """``layer.get_config()``, plus the state a clone would lose: an adapted Normalization keeps
    its mean and variance outside its config (a clone of it normalizes with nothing)."""
    import numpy as np

    cfg = layer.get_config()
    if type(layer).__name__ == "Normalization" and cfg.get("mean") is None and layer.built:
        cfg = {
            **cfg,
            "mean": np.asarray(layer.adapt_mean).tolist(),
            "variance": np.asarray(layer.adapt_variance).tolist(),
        }
    return cfg


def copy_weights_by_name(source, target) -> None:
    """Copy each layer's weights to the same-named layer (one whose state went into its config
    has no weights left to copy)."""
    by_name = {layer.name: layer for layer in source.layers}
    for layer in target.layers:
        inner = getattr(layer, "layer", layer)  # a quantize-annotated layer wraps the original
        src = by_name.get(inner.name)
        mine = layer.get_weights()
        if (
            src is not None
            and mine
            and [w.shape for w in mine] == [w.shape for w in src.get_weights()]
        ):
            layer.set_weights(src.get_weights())


def calibrate_ranges(qat_model, float_model, x) -> int:
    """Start every activation quantizer at the float model's own range on ``x`` (model-ready
    calibration inputs), as post-training calibration would.

    tfmot starts each activation range at [-6, 6] and moves it by an exponential average
    (decay 0.999): a few hundred fine-tuning steps leave wider activations (a residual sum without
    BatchNorm reaches +-36) clipped, and the fine-tuned model worse than PTQ. Returns how many
    ranges were set.
    """
    import numpy as np
    import tf_keras as keras

    floats = {layer.name: layer for layer in float_model.layers}
    pairs = [
        (w, floats[w.layer.name])
        for w in qat_model.layers
        if type(w).__name__.startswith("QuantizeWrapper") and w.layer.name in floats
    ]
    if not pairs or x is None or not len(x):
        return 0
    probe = keras.Model(float_model.inputs, [t for _, f in pairs for t in (f.input, f.output)])
    got = probe.predict(x, batch_size=64, verbose=0)
    done = 0
    for i, (wrapper, layer) in enumerate(pairs):
        inp, out = np.asarray(got[2 * i]), np.asarray(got[2 * i + 1])
        ranges = {"post_activation": out, "output": out}
        if type(layer).__name__ == "Dense":  # tfmot quantizes the logits before softmax
            ranges["pre_activation"] = inp @ layer.kernel.numpy() + (
                layer.bias.numpy() if layer.use_bias else 0.0
            )
        for var in wrapper.weights:
            name = var.name.split("/")[-1].split(":")[0]
            for prefix, values in ranges.items():
                if name in (f"{prefix}_min", f"{prefix}_max") and var.shape == ():
                    lo, hi = min(0.0, float(values.min())), max(0.0, float(values.max()))
                    var.assign(lo if name.endswith("_min") else hi)
                    done += 1
    done += _start_weight_and_input_ranges(qat_model, x)
    log.info("QAT: %d quantizer ranges calibrated on %d samples", done, len(x))
    return done


def _start_weight_and_input_ranges(qat_model, x) -> int:
    """Give the weight and input quantizers the ranges they will have after the first step.

    tfmot's weight quantizers hold [-6, 6] and its input quantizer [0, 0] until a training step
    sets them: the model converted before fine-tuning (epoch 0) would quantize every weight on
    a +-6 grid and every input to 0. One training-mode pass sets the weight ranges from the
    weights (tfmot's own per-channel arithmetic); every other variable it touched (activation
    ranges, BatchNorm statistics, step counters) is put back; the input range is the
    calibration inputs' own.
    """
    import numpy as np

    def is_weight_range(v) -> bool:
        name = v.name.split("/")[-1].split(":")[0]
        return name.endswith(("kernel_min", "kernel_max"))

    # a forward pass changes no trainable weight: only ranges, statistics and step counters
    kept = [(v, v.numpy()) for v in qat_model.non_trainable_variables if not is_weight_range(v)]
    qat_model(np.asarray(x[:32]), training=True)
    for v, value in kept:
        v.assign(value)
    done = sum(1 for v in qat_model.variables if is_weight_range(v))
    lo, hi = min(0.0, float(np.min(x))), max(0.0, float(np.max(x)))
    for layer in qat_model.layers:
        if type(layer).__name__ == "QuantizeLayer":
            for var in layer.weights:
                name = var.name.split("/")[-1].split(":")[0]
                if name.endswith(("_min", "_max")) and var.shape == ():
                    var.assign(lo if name.endswith("_min") else hi)
                    done += 1
    return done


class QATOptions(Options):
    """``recipe=qat`` / ``qat_mixed``: fine-tuning with fake quantization, then the export."""

    epochs: int = Field(2, ge=1, description="fine-tuning epochs (the best one is kept)")
    learning_rate_scale: float = Field(
        0.1, gt=0, description="fine-tuning learning rate = train.learning_rate x this"
    )
    batch_size: int | None = Field(None, ge=1, description="null: train.batch_size")
    steps_per_epoch: int | None = Field(None, ge=1, description="null: the whole training split")
    skip_layers: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list, description="layer names left unannotated (float)"
    )
    fallback: bool = Field(True, description="leave layers tfmot cannot annotate float")
    freeze_batch_norm: bool = Field(True, description="BatchNorm statistics stay as trained")
    distill: bool = Field(True, description="fit the float model's outputs, not only the labels")
    restore_best: bool = Field(True, description="keep the best epoch's int8 file (validation)")
    calibration_samples: int = Field(
        200, ge=1, description="training samples that start the quantizers' ranges"
    )
    calibration_seed: int = Field(0, ge=0, description="which samples are drawn")
    converter: ConverterSettings = Field(
        default_factory=ConverterSettings, description="the export's TFLite converter settings"
    )


class QATRecipe(RecipeBase):
    """Fine-tune the baseline with fake quantization; export int8 TFLite and a Keras model."""

    Options = QATOptions

    def __init__(
        self,
        meta: RecipeMeta | str | None = None,
        epochs: int = 2,
        learning_rate_scale: float = 0.1,
        batch_size: int | None = None,
        steps_per_epoch: int | None = None,
        skip_layers: Sequence[str] = (),
        fallback: bool = True,
        freeze_batch_norm: bool = True,
        restore_best: bool = True,
        distill: bool = True,
        calibration_samples: int = 200,
        calibration_seed: int = 0,
        converter: ConverterSettings | None = None,
    ) -> None:
        super().__init__(meta)
        self.epochs = int(epochs)
        self.learning_rate_scale = float(learning_rate_scale)
        self.batch_size = batch_size
        self.steps_per_epoch = steps_per_epoch
        self.skip_layers = tuple(skip_layers or ())
        self.fallback = bool(fallback)
        self.freeze_batch_norm = bool(freeze_batch_norm)
        self.restore_best = bool(restore_best)
        self.distill = bool(distill)
        self.best_epoch: int | None = None
        self.calibration_samples = int(calibration_samples)
        self.calibration_seed = int(calibration_seed)
        self.options = (converter or ConverterSettings()).to_options()
        self.steps_run = 0

    def data_needed(self) -> str | None:
        return "fine-tunes on labelled training samples"

    def calibration(self, ctx: RecipeContext):
        """Model-ready training samples: the quantizers' starting ranges and the export's
        representative data."""
        from runner.data import calibration_sample

        raw = calibration_sample(ctx.dataset.train, self.calibration_samples, self.calibration_seed)
        return ctx.scaling(raw)

    def fine_tune(self, model, ctx: RecipeContext, calibration=None):
        """Wrap and fine-tune; returns (qat model, seconds). Never touches ``model`` itself.

        With ``restore_best`` (the default), the int8 file of every epoch, epoch 0 (the
        calibrated QAT model before any step: post-training quantization with QAT's own
        quantizers) included, is converted and run in LiteRT on the baseline's validation split
        (never fitted on, never the test split); the epoch with the best accuracy (then
        agreement with the float model) is kept, the earliest on a tie. So fine-tuning never
        ends below where it started. ``self.kept`` says which epoch, with its scores, and
        ``self.flatbuffer`` is its int8 file.
        """
        from runner.data import Split
        from runner.evaluate import predict_keras
        from runner.train import (
            TrainConfig,
            batch_sequence,
            loss_for,
            make_optimizer,
            split_validation,
        )

        train_cfg = TrainConfig.from_mapping(ctx.train_cfg or {})
        qat_model, _ = quantize_aware(
            model, self.skip_layers, self.fallback, self.freeze_batch_norm
        )
        calib = self.calibration(ctx) if calibration is None else calibration
        calibrate_ranges(qat_model, model, calib)
        # The baseline's own validation split (same fraction and seed): fitted on by neither.
        fit_split, val_split = (
            split_validation(ctx.dataset.train, train_cfg.validation_split, train_cfg.seed)
            if self.restore_best
            else (ctx.dataset.train, None)
        )
        batch = int(self.batch_size or train_cfg.batch_size)
        steps = int(self.steps_per_epoch or max(1, math.ceil(len(fit_split) / batch)))
        lr = train_cfg.learning_rate * self.learning_rate_scale
        loss, metrics = loss_for(qat_model), ["accuracy"]
        if self.distill:
            # targets are the float model's own outputs: the QAT copy learns to agree with it
            fit_split = Split(fit_split.x, predict_keras(model, fit_split.x, ctx.scaling))
            loss = loss.replace("sparse_", "")
            metrics = []
        qat_model.compile(
            optimizer=make_optimizer(train_cfg.optimizer, lr), loss=loss, metrics=metrics
        )
        # The sequence wraps around, so epochs x steps batches are always there (seed 000's
        # "Your input ran out of data" cannot happen).
        seq = batch_sequence(fit_split, batch, ctx.scaling, True, train_cfg.seed, steps=steps)
        import tf_keras as keras

        keras.utils.set_random_seed(train_cfg.seed)
        judge = _EpochJudge(self, model, ctx, calib, val_split) if val_split is not None else None
        callbacks = [
            keras.callbacks.LambdaCallback(
                on_train_batch_end=lambda *_: setattr(self, "steps_run", self.steps_run + 1)
            )
        ]
        self.flatbuffer, self.kept = None, None
        if judge is not None:
            judge.score(qat_model, 0)  # epoch 0: before any fine-tuning step
            callbacks.append(
                keras.callbacks.LambdaCallback(
                    on_epoch_end=lambda epoch, logs: judge.score(qat_model, epoch + 1)
                )
            )
        self.steps_run = 0
        t0 = time.perf_counter()
        qat_model.fit(
            seq, epochs=self.epochs, steps_per_epoch=steps, verbose=0, callbacks=callbacks
        )
        seconds = time.perf_counter() - t0
        if judge is not None:
            self.kept = judge.restore(qat_model)
            self.flatbuffer = judge.best_flatbuffer
            self.best_epoch = self.kept["epoch"]
        else:
            self.best_epoch = self.epochs
        log.info(
            "QAT fine-tuned %d epochs x %d steps at lr %.2g in %.1fs (kept epoch %d%s)",
            self.epochs,
            steps,
            lr,
            seconds,
            self.best_epoch,
            f": {kept_note(self.kept)}" if self.kept else "",
        )
        return qat_model, seconds

    def to_tflite(self, qat_model, ctx: RecipeContext, calib) -> bytes:
        return convert(
            qat_model,
            self.options,
            calib,
            token_ids=ctx.dataset.is_text,
            batch_size=ctx.convert_batch_size,
        )

    def produce(self, ctx: RecipeContext) -> list[Artifact]:
        from runner.models.saved_model import NEEDS_KERAS, SavedModelSource

        if isinstance(ctx.model, SavedModelSource):
            raise RunnerError(NEEDS_KERAS.format(path=ctx.model.path, recipe=self.name))
        from runner.files import atomic_write_with
        from runner.models.loading import load_model

        calib = self.calibration(ctx)  # the quantizers' starting ranges and the export's data
        qat_model, seconds = self.fine_tune(ctx.model, ctx, calib)
        t0 = time.perf_counter()
        flatbuffer = self.flatbuffer or self.to_tflite(qat_model, ctx, calib)
        convert_seconds = time.perf_counter() - t0
        note = kept_note(self.kept) if self.kept else f"kept epoch {self.epochs} (the last)"
        tfl = self.write_tflite(ctx, flatbuffer, convert_seconds, train_seconds=seconds, note=note)

        def save(tmp: str) -> None:
            with load_scope(), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*HDF5 file.*legacy")
                qat_model.save(tmp, include_optimizer=False)

        h5 = atomic_write_with(ctx.models_dir / f"{self.name}.h5", save)
        reloaded = load_model(h5)  # score the file a user gets, not the in-memory model
        return [
            tfl,
            Artifact(
                h5.name,
                self.name,
                h5,
                "keras",
                self.quantized,
                train_seconds=seconds,
                model=reloaded,
                note=note,
            ),
        ]


# The validation samples each epoch's int8 file is scored on (a seeded subset beyond this).
JUDGE_SAMPLES = 2000


class _EpochJudge:
    """Scores each epoch's real int8 file on the validation split; keeps the best epoch's
    weights and file (see :meth:`QATRecipe.fine_tune`)."""

    def __init__(self, recipe: QATRecipe, float_model, ctx: RecipeContext, calib, val) -> None:
        from runner.data import subset
        from runner.evaluate import labels_from_outputs, predict_keras

        self.recipe, self.ctx, self.calib = recipe, ctx, calib
        self.val = subset(val, JUDGE_SAMPLES, recipe.calibration_seed)
        self.float_labels = labels_from_outputs(predict_keras(float_model, self.val.x, ctx.scaling))
        self.scores: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.best_weights: list | None = None
        self.best_flatbuffer: bytes | None = None

    def score(self, qat_model, epoch: int) -> None:
        import numpy as np

        from runner.evaluate import TFLiteModel, labels_from_outputs

        flatbuffer = self.recipe.to_tflite(qat_model, self.ctx, self.calib)
        out = TFLiteModel(content=flatbuffer).predict(self.val.x, self.ctx.scaling, 128)
        labels = labels_from_outputs(out)
        s = {
            "epoch": epoch,
            "accuracy": float(np.mean(labels == self.val.y)),
            "agreement": float(np.mean(labels == self.float_labels)),
            "samples": len(self.val),
        }
        self.scores.append(s)
        log.info(
            "QAT epoch %d: int8 validation accuracy %.4f, agreement %.4f (%d samples)",
            epoch,
            s["accuracy"],
            s["agreement"],
            s["samples"],
        )
        if self.best is None or (s["accuracy"], s["agreement"]) > (
            self.best["accuracy"],
            self.best["agreement"],
        ):
            self.best, self.best_flatbuffer = s, flatbuffer
            self.best_weights = qat_model.get_weights()  # copies already

    def restore(self, qat_model) -> dict[str, Any]:
        assert self.best is not None and self.best_weights is not None
        qat_model.set_weights(self.best_weights)
        return {**self.best, "start": self.scores[0], "epochs": len(self.scores) - 1}


def kept_note(kept: dict[str, Any]) -> str:
    """The row's note: which epoch was kept, and its validation scores against epoch 0's."""
    start = kept["start"]
    return (
        f"kept epoch {kept['epoch']} of {kept['epochs']} (int8 validation accuracy "
        f"{start['accuracy']:.4f} at epoch 0 -> {kept['accuracy']:.4f}, agreement "
        f"{start['agreement']:.4f} -> {kept['agreement']:.4f}, {kept['samples']} samples)"
    )
