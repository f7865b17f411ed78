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
from dataclasses import dataclass, field
from typing import Any

from runner.artifacts import Artifact
from runner.console import check_interrupt
from runner.errors import RunnerError
from runner.models.qat_scope import load_scope
from runner.recipes.base import RecipeBase, RecipeContext, check_layer_names
from runner.recipes.conversion import ConverterOptions, convert
from runner.recipes.qat.judge import EpochJudge, kept_note, left_float_note
from runner.recipes.qat.lr import TRIAL_STEPS, fine_tuning_rate
from runner.recipes.qat.options import QATOptions
from runner.recipes.qat.quantizer_ranges import activation_range_keeper, calibrate_ranges
from runner.recipes.qat.wrap import qat_ready, quantize_aware

log = logging.getLogger(__name__)


@dataclass
class FineTuned:
    """What one fine-tuning produced (the recipe object itself keeps no run state)."""

    model: Any  # the QAT Keras model, at the kept epoch's weights
    seconds: float
    steps: int  # training steps run
    epoch: int  # the kept epoch (0: before any step)
    kept: dict[str, Any] | None = None  # its validation scores against epoch 0 (restore_best)
    flatbuffer: bytes | None = None  # the kept epoch's int8 file, when the judge made it
    left_float: list[tuple[str, str]] = field(default_factory=list)  # (layer, class) unwrapped
    ranges: str | None = None  # the activation range estimator the quantizers started from


class QATRecipe(RecipeBase):
    """Fine-tune the baseline with fake quantization; export int8 TFLite and a Keras model."""

    Options = QATOptions
    opts: QATOptions

    @property
    def converter(self) -> ConverterOptions:
        return self.opts.converter

    def data_needed(self) -> str | None:
        return "fine-tunes on labelled training samples"

    # also write the fine-tunable QAT model as <name>.h5 (loads back inside quantize_scope)
    keras_file = True

    def start_model(self, ctx: RecipeContext, calib) -> tuple[Any, float, str]:
        """(the model QAT starts from, seconds spent making it, what was done to it): the
        float baseline itself; a collaborative recipe prunes or clusters it first."""
        return ctx.model, 0.0, ""

    def scheme(self) -> Any:
        """tfmot's quantization scheme (None: the default 8-bit one)."""
        return None

    def fine_tune(self, model, ctx: RecipeContext, calibration=None) -> FineTuned:
        """Wrap and fine-tune; never touches ``model`` itself.

        With ``restore_best`` (the default), the int8 file of every epoch, epoch 0 (the
        calibrated QAT model before any step: post-training quantization with QAT's own
        quantizers) included, is converted and run in LiteRT on held-out samples
        (:meth:`RecipeContext.held_out`, never the test split); a later epoch replaces the best
        so far only when it gains accuracy beyond the samples' noise, or agreement with the
        float model beyond it at no lower accuracy (:func:`runner.evaluation.noise.paired_gain`).
        So fine-tuning never ends below where it started. The result says which epoch was
        kept, with its scores, and holds its int8 file.
        """
        from runner.train import TrainConfig

        o = self.opts
        train_cfg = TrainConfig.from_mapping(ctx.train_cfg or {})
        calib = o.draw(ctx) if calibration is None else calibration
        model, folded = self.folded(qat_ready(model, calib), calib)
        qat_model, left_float = quantize_aware(
            model, tuple(o.skip_layers), o.fallback, o.freeze_batch_norm, self.scheme()
        )
        # The data set's validation split, else the baseline's (same fraction and seed)
        fit_split, val_split, where = (
            ctx.held_out() if o.restore_best else (ctx.dataset.train, None, "")
        )
        judge = None
        if val_split is not None:
            judge = EpochJudge(
                lambda m, ranges: self.to_tflite(m, ctx, calib, ranges),
                self.converter,
                model,
                ctx,
                calib,
                val_split,
                where,
                seed=o.calibration_seed,
                epochs=o.epochs,
                max_backoffs=o.backoffs,
            )
        ranges = self.start_ranges(qat_model, model, calib, judge)
        seq, steps, lr = self._compile(qat_model, model, ctx, train_cfg, fit_split)
        seconds, steps_run = self._fit(qat_model, seq, steps, judge, train_cfg.seed)
        done = FineTuned(qat_model, seconds, steps_run, o.epochs, left_float=left_float)
        done.ranges = ranges
        if judge is not None:
            done.kept = {**judge.restore(qat_model), "learning_rate": lr, "folded": folded}
            done.flatbuffer = judge.best_flatbuffer
            done.epoch = done.kept["epoch"]
            if "TFLITE_BUILTINS_INT8" in self.converter.supported_ops:  # a full-int8 file:
                ptq = judge.post_training(model)  # never below post-training int8 unsaid
                if ptq is not None:
                    done.kept["post_training"], done.flatbuffer = ptq
        log.info(
            "QAT fine-tuned %d epochs x %d steps at lr %.2g in %.1fs (kept epoch %d%s)",
            *(o.epochs, steps, lr, seconds, done.epoch),
            f": {kept_note(done.kept)}" if done.kept else "",
        )
        return done

    def folded(self, model, calib) -> tuple[Any, int]:
        """(``model`` with its BatchNorms folded into the layers before them, how many), when
        ``fold_batch_norm``; a model whose folded copy would not match stays as it is."""
        if not self.opts.fold_batch_norm:
            return model, 0
        from runner.recipes.qat.fold import fold_batch_norm

        try:
            model, names = fold_batch_norm(model, calib)
        except RunnerError as e:
            log.warning("QAT fine-tunes the BatchNorms unfolded: %s", e)
            return model, 0
        if names:
            log.info("QAT: %d BatchNorm folded into the layers before them", len(names))
        return model, len(names)

    def start_ranges(self, qat_model, float_model, calib, judge) -> str:
        """Start the quantizers with each ``calibration_ranges`` estimator, score each start's
        int8 file (epoch 0) with ``judge``, and keep the best (a later one only beyond the
        noise); without a judge, the first. Returns the estimator kept, which also calibrates
        every export."""
        first, *others = self.opts.calibration_ranges
        calibrate_ranges(qat_model, float_model, calib, first)
        if judge is None:
            return first
        judge.ranges = first
        if not others:
            return first
        judge.score(qat_model, 0)
        for ranges in others:
            calibrate_ranges(qat_model, float_model, calib, ranges)
            judge.ranges = ranges
            judge.score(qat_model, 0)
        return judge.keep_best_start(qat_model)

    def _compile(self, qat_model, model, ctx: RecipeContext, train_cfg, fit_split):
        """Compile ``qat_model`` for fine-tuning; returns (batch sequence, steps, learning rate).
        With ``distill`` the targets are the float model's own outputs: the QAT copy learns to
        agree with it."""
        from runner.data import Split
        from runner.evaluation.metrics import predict_keras
        from runner.train import batch_sequence, loss_for, make_optimizer

        o = self.opts
        batch = int(o.batch_size or train_cfg.batch_size)
        steps = int(o.steps_per_epoch or max(1, math.ceil(len(fit_split) / batch)))
        loss, metrics = loss_for(qat_model), ["accuracy"]
        if o.distill:
            targets = predict_keras(model, fit_split.x, ctx.scaling)
            fit_split = Split(fit_split.x, targets)
            loss = loss.replace("sparse_", "")
            if o.distill_temperature != 1:
                loss = distillation_loss(o.distill_temperature, _probabilities(targets))
            metrics = []

        def compile_with(lr: float) -> None:
            opt = make_optimizer(o.optimizer or train_cfg.optimizer, lr)
            qat_model.compile(optimizer=opt, loss=loss, metrics=metrics)

        # The sequence wraps around, so epochs x steps batches are always there (a small data
        # set never ends a fit with "Your input ran out of data").
        seq = batch_sequence(fit_split, batch, ctx.scaling, True, train_cfg.seed, steps=steps)
        lr = fine_tuning_rate(
            o.learning_rate_scale, qat_model, compile_with, fit_split, batch, ctx.scaling,
            train_cfg, min(TRIAL_STEPS, steps * o.epochs),
        )  # fmt: skip
        compile_with(lr)
        return seq, steps, lr

    def _fit(self, qat_model, seq, steps: int, judge, seed: int) -> tuple[float, int]:
        """Fine-tune (Ctrl-C stops between batches); the judge scores epoch 0, before any
        step, and every epoch's end, backing off when one fell behind
        (:meth:`EpochJudge.epoch_end`). Returns (seconds spent, steps run)."""
        import tf_keras as keras

        keras.utils.set_random_seed(seed)
        steps_run = [0]
        count = keras.callbacks.LambdaCallback(
            on_train_batch_end=lambda *_: steps_run.__setitem__(0, steps_run[0] + 1)
        )
        stop = keras.callbacks.LambdaCallback(on_train_batch_end=check_interrupt)
        callbacks = [count, stop]
        if self.opts.freeze_ranges:
            callbacks.append(activation_range_keeper(qat_model))
        if judge is not None:
            if not judge.scores:  # start_ranges may have scored it
                judge.score(qat_model, 0)  # epoch 0: before any fine-tuning step
            callbacks.append(
                keras.callbacks.LambdaCallback(
                    on_epoch_end=lambda epoch, logs: judge.epoch_end(qat_model, epoch + 1)
                )
            )
        t0 = time.perf_counter()
        qat_model.fit(
            seq, epochs=self.opts.epochs, steps_per_epoch=steps, verbose=0, callbacks=callbacks
        )
        return time.perf_counter() - t0, steps_run[0]

    def to_tflite(self, qat_model, ctx: RecipeContext, calib, ranges: str | None = None) -> bytes:
        """The int8 file of ``qat_model`` (calibrated with ``ranges`` where not fake-quantized)."""
        converter = self.converter
        if ranges is not None:
            converter = converter.replace(calibration_ranges=ranges)
        return convert(
            qat_model,
            converter,
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

        check_layer_names(ctx.model, self.opts.skip_layers, "recipe.skip_layers")
        calib = self.opts.draw(ctx)  # the quantizers' starting ranges and the export's data
        start, prepared, before = self.start_model(ctx, calib)
        done = self.fine_tune(start, ctx, calib)
        qat_model, seconds = done.model, done.seconds + prepared
        t0 = time.perf_counter()
        flatbuffer = done.flatbuffer or self.to_tflite(qat_model, ctx, calib, done.ranges)
        convert_seconds = time.perf_counter() - t0
        note = kept_note(done.kept) if done.kept else f"kept epoch {done.epoch} (the last)"
        note = f"{before}; {note}" if before else note
        if done.left_float:
            note += "; " + left_float_note(done.left_float, self.converter.representative_dataset)
        tfl = self.write_tflite(ctx, flatbuffer, convert_seconds, train_seconds=seconds, note=note)
        if not self.keras_file:
            return [tfl]

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


def _probabilities(outputs) -> bool:
    """Whether a model's outputs are probabilities (a softmax's rows, or sigmoid units)."""
    import numpy as np

    out = np.asarray(outputs, np.float64)
    if out.min() < 0 or out.max() > 1:
        return False
    return out.shape[-1] == 1 or bool(np.allclose(out.sum(-1), 1, atol=1e-3))


def distillation_loss(temperature: float, probabilities: bool):
    """Knowledge distillation at ``temperature``: cross-entropy between the teacher's and the
    student's outputs softened by it, times its square (the gradients' scale stays that of
    temperature 1). Probabilities are turned back into logits (their logs; a sigmoid unit's
    two classes), so a model that ends in a softmax distills the same as one that ends in
    logits."""
    import tensorflow as tf

    def logits(out):
        if not probabilities:
            return out
        if out.shape[-1] == 1:  # one sigmoid unit: two classes, p and 1 - p
            out = tf.concat([1 - out, out], axis=-1)
        return tf.math.log(tf.clip_by_value(out, 1e-7, 1.0))

    def loss(teacher, student):
        soft = tf.nn.softmax(logits(teacher) / temperature)
        return -tf.reduce_sum(soft * tf.nn.log_softmax(logits(student) / temperature), -1) * (
            temperature**2
        )

    return loss
