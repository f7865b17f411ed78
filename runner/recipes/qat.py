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
from collections.abc import Mapping, Sequence
from typing import Any

from runner.errors import RunnerError
from runner.models.qat_scope import conv1d_quantize_config, load_scope, tfmot_module
from runner.recipes.base import Artifact, RecipeBase, RecipeContext
from runner.recipes.conversion import RECURRENT, ConverterOptions, convert

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
    log.info("QAT: %d activation ranges calibrated on %d samples", done, len(x))
    return done


class QATRecipe(RecipeBase):
    """Fine-tune the baseline with fake quantization; export int8 TFLite and a Keras model."""

    def __init__(
        self,
        name: str = "qat",
        description: str = "",
        use_case: str = "",
        epochs: int = 2,
        learning_rate_scale: float = 0.1,
        batch_size: int | None = None,
        steps_per_epoch: int | None = None,
        skip_layers: Sequence[str] = (),
        fallback: bool = True,
        freeze_batch_norm: bool = True,
        restore_best: bool = False,
        distill: bool = True,
        calibration_samples: int = 200,
        calibration_seed: int = 0,
        converter: Mapping[str, Any] | None = None,
        quantized: bool = True,
        **_: Any,
    ) -> None:
        self.name = name
        self.description = description
        self.use_case = use_case
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
        self.options = ConverterOptions.from_mapping(converter)
        self.quantized = quantized
        self.steps_run = 0

    def calibration(self, ctx: RecipeContext):
        """Model-ready training samples: the quantizers' starting ranges and the export's
        representative data."""
        from runner.data import calibration_sample

        raw = calibration_sample(ctx.dataset.train, self.calibration_samples, self.calibration_seed)
        return ctx.scaling(raw)

    def fine_tune(self, model, ctx: RecipeContext, calibration=None):
        """Wrap and fine-tune; returns (qat model, seconds). Never touches ``model`` itself."""
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
        # The baseline's own validation split (same fraction and seed): the weights kept are
        # those of the epoch with the lowest validation loss, never judged on the test split.
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
            fit_split, val_split = (
                None if s is None else Split(s.x, predict_keras(model, s.x, ctx.scaling))
                for s in (fit_split, val_split)
            )
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
        callbacks = [
            keras.callbacks.LambdaCallback(
                on_train_batch_end=lambda *_: setattr(self, "steps_run", self.steps_run + 1)
            )
        ]
        val = None
        if val_split is not None:
            val = batch_sequence(val_split, batch, ctx.scaling, False, train_cfg.seed)
            best = keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=self.epochs, restore_best_weights=True
            )
            callbacks.append(best)
        self.steps_run = 0
        t0 = time.perf_counter()
        qat_model.fit(
            seq,
            epochs=self.epochs,
            steps_per_epoch=steps,
            validation_data=val,
            verbose=0,
            callbacks=callbacks,
        )
        seconds = time.perf_counter() - t0
        self.best_epoch = best.best_epoch + 1 if val is not None else self.epochs
        log.info(
            "QAT fine-tuned %d epochs x %d steps at lr %.2g in %.1fs (kept epoch %d)",
            self.epochs,
            steps,
            lr,
            seconds,
            self.best_epoch,
        )
        return qat_model, seconds

    def produce(self, ctx: RecipeContext) -> list[Artifact]:
        from runner.models.saved_model import NEEDS_KERAS, SavedModelSource

        if isinstance(ctx.model, SavedModelSource):
            raise RunnerError(NEEDS_KERAS.format(path=ctx.model.path, recipe=self.name))
        from runner.files import atomic_write_bytes, atomic_write_with
        from runner.models.loading import load_model

        calib = self.calibration(ctx)  # the quantizers' starting ranges and the export's data
        qat_model, seconds = self.fine_tune(ctx.model, ctx, calib)
        t0 = time.perf_counter()
        flatbuffer = convert(
            qat_model,
            self.options,
            calib,
            token_ids=ctx.dataset.is_text,
            batch_size=ctx.convert_batch_size,
        )
        convert_seconds = time.perf_counter() - t0
        tfl = atomic_write_bytes(ctx.models_dir / f"{self.name}.tflite", flatbuffer)

        def save(tmp: str) -> None:
            with load_scope(), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*HDF5 file.*legacy")
                qat_model.save(tmp, include_optimizer=False)

        h5 = atomic_write_with(ctx.models_dir / f"{self.name}.h5", save)
        reloaded = load_model(h5)  # score the file a user gets, not the in-memory model
        return [
            Artifact(
                tfl.name,
                self.name,
                tfl,
                "tflite",
                True,
                train_seconds=seconds,
                convert_seconds=convert_seconds,
            ),
            Artifact(h5.name, self.name, h5, "keras", True, train_seconds=seconds, model=reloaded),
        ]
