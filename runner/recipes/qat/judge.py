"""QAT's epoch judge: every epoch's real int8 file scored in LiteRT on held-out samples, the
best kept (never below epoch 0, nor below post-training int8 without saying so), and the row's
notes."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from runner.evaluation.holdout import Holdout
from runner.evaluation.noise import beats
from runner.recipes.base import RecipeContext
from runner.recipes.conversion import ConverterOptions, convert

log = logging.getLogger(__name__)


# The validation samples each epoch's int8 file is scored on (a seeded subset beyond this).
JUDGE_SAMPLES = 2000


class EpochJudge:
    """Scores each epoch's real int8 file on the validation split; keeps the best epoch's
    weights and file (see ``QATRecipe.fine_tune``). It is given what it needs from the recipe:
    ``to_file(model, ranges)`` writes a model's int8 file with an activation range estimator,
    ``converter`` is the recipe's (for the post-training comparison), ``seed`` draws the
    validation subset, ``epochs`` and ``max_backoffs`` bound the back-offs."""

    def __init__(
        self,
        to_file: Callable[[Any, str | None], bytes],
        converter: ConverterOptions,
        float_model,
        ctx: RecipeContext,
        calib,
        val,
        where: str,
        *,
        seed: int,
        epochs: int,
        max_backoffs: int,
    ) -> None:
        from runner.data import subset

        self.to_file, self.converter = to_file, converter
        self.ctx, self.calib, self.where = ctx, calib, where
        self.epochs, self.max_backoffs = epochs, max_backoffs
        val = subset(val, JUDGE_SAMPLES, seed)
        self.holdout = Holdout.of(float_model, val, where, ctx.scaling)
        self.scores: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.best_weights: list | None = None
        self.best_flatbuffer: bytes | None = None
        self.best_hits: tuple = ()  # the best epoch's per-sample (right, agrees with float)
        self.backoffs: list[tuple[int, float]] = []  # (after epoch, the new learning rate)
        self.ranges: str | None = None  # the activation range estimator every file is made with

    def score(self, qat_model, epoch: int) -> tuple:
        """Score ``epoch``'s int8 file (kept when it beats the best); returns its per-sample
        (right, agrees with float)."""
        import numpy as np

        flatbuffer = self.to_file(qat_model, self.ranges)
        right, agrees = self.holdout.hits(flatbuffer)
        s = {
            "epoch": epoch,
            "accuracy": float(np.mean(right)),
            "agreement": float(np.mean(agrees)),
            "samples": len(self.holdout),
            "ranges": self.ranges,
        }
        self.scores.append(s)
        log.info(
            "QAT epoch %d: int8 validation accuracy %.4f, agreement %.4f (%d samples)",
            epoch,
            s["accuracy"],
            s["agreement"],
            s["samples"],
        )
        if self.best is None or self.beats_best(right, agrees):
            self.best, self.best_flatbuffer, self.best_hits = s, flatbuffer, (right, agrees)
            self.best_weights = qat_model.get_weights()  # copies already
        return right, agrees

    def epoch_end(self, qat_model, epoch: int) -> None:
        """Score ``epoch``'s int8 file; when it fell below the best beyond the noise (the rate
        overshot: tf_keras EfficientNetB0 under SGD at 3e-3, agreement 0.90 -> 0.83 in one
        epoch) and epochs remain, go on from the best epoch's weights at a tenth of the rate
        (at most ``max_backoffs`` times: ``recipe.backoffs``)."""
        import tf_keras as keras

        hits = self.score(qat_model, epoch)
        if epoch >= self.epochs or len(self.backoffs) >= self.max_backoffs:
            return
        if not beats(hits, self.best_hits):  # the best is not ahead beyond the noise
            return
        assert self.best is not None
        qat_model.set_weights(self.best_weights)
        lr = float(keras.backend.get_value(qat_model.optimizer.learning_rate)) / 10
        keras.backend.set_value(qat_model.optimizer.learning_rate, lr)
        self.backoffs.append((epoch, lr))
        log.info(
            "QAT epoch %d fell below epoch %d beyond the noise: back to its weights, learning "
            "rate %.2g",
            epoch,
            self.best["epoch"],
            lr,
        )

    def keep_best_start(self, qat_model) -> str:
        """After one epoch-0 score per start: the best start's quantizer ranges back in
        ``qat_model``, it alone as epoch 0, its estimator for every later file; returns it."""
        assert self.best is not None and self.best_weights is not None
        self.ranges = self.best["ranges"]
        qat_model.set_weights(self.best_weights)
        self.scores = [self.best]
        log.info("QAT starts from calibration_ranges=%s", self.ranges)
        return self.ranges

    def beats_best(self, right, agrees) -> bool:
        """A later epoch replaces the best so far only for a gain beyond the validation split's
        noise (the sign test auto_int8 uses): in accuracy, or in agreement with the float model
        at an accuracy not lower beyond the noise. A few samples' worth of accuracy bought with
        many flipped labels is noise, and the earlier file is kept; many labels back to the
        float model's at the cost of a sample or two is not (EfficientNetB0's mean-range start:
        agreement 0.862 -> 0.946 on 297 samples, one image less right)."""
        return beats(self.best_hits, (right, agrees))

    def post_training(self, float_model) -> tuple[dict[str, Any], bytes] | None:
        """The converter's own post-training int8 file of the model QAT started from, scored on
        the same samples: (its scores, its file) when it beats the kept epoch beyond the noise
        (that file is then shipped, and the row says so), else None."""

        import numpy as np

        calibrated = self.converter.replace(representative_dataset=True)
        if self.ranges is not None:
            calibrated = calibrated.replace(calibration_ranges=self.ranges)
        flatbuffer = convert(
            float_model,
            calibrated,
            self.calib,
            token_ids=self.ctx.dataset.is_text,
            batch_size=self.ctx.convert_batch_size,
        )
        right, agrees = self.holdout.hits(flatbuffer)
        s = {"accuracy": float(np.mean(right)), "agreement": float(np.mean(agrees))}
        log.info(
            "post-training int8 of the start model: validation accuracy %.4f, agreement %.4f",
            s["accuracy"],
            s["agreement"],
        )
        return (s, flatbuffer) if self.beats_best(right, agrees) else None

    def restore(self, qat_model) -> dict[str, Any]:
        assert self.best is not None and self.best_weights is not None
        qat_model.set_weights(self.best_weights)
        return {
            **self.best,
            "start": self.scores[0],
            "epochs": len(self.scores) - 1,
            "where": self.where,
            "backoffs": self.backoffs,
        }


def left_float_note(floats: list[tuple[str, str]], calibrated: bool = True, show: int = 6) -> str:
    """The layers QAT fine-tuned without fake quantization: the export calibrates them
    (``qat``), or, with no calibration data (``qat_mixed``), they stay float in the file."""
    named = ", ".join(f"{n} ({c})" for n, c in floats[:show])
    more = f" and {len(floats) - show} more" if len(floats) > show else ""
    fate = "calibrated at export" if calibrated else "float in the file"
    return f"{len(floats)} layer(s) fine-tuned without fake quantization, {fate}: {named}{more}"


def kept_note(kept: dict[str, Any]) -> str:
    """The row's note: which epoch was kept, and its validation scores against epoch 0's; when
    the converter's post-training int8 file beat it, that the .tflite is that file."""
    start = kept["start"]
    note = (
        f"kept epoch {kept['epoch']} of {kept['epochs']} (int8 validation accuracy "
        f"{start['accuracy']:.4f} at epoch 0 -> {kept['accuracy']:.4f}, agreement "
        f"{start['agreement']:.4f} -> {kept['agreement']:.4f}, {kept['samples']} samples of "
        f"{kept.get('where') or 'the validation split'})"
    )
    if kept.get("ranges"):
        note += f"; activation ranges {kept['ranges']}"
    if kept.get("learning_rate"):
        note += f"; learning rate {kept['learning_rate']:.2g}"
    for epoch, lr in kept.get("backoffs") or ():
        note += f", back to the best epoch's weights at {lr:.2g} after epoch {epoch}"
    if kept.get("folded"):
        note += f"; {kept['folded']} BatchNorm folded first"
    ptq = kept.get("post_training")
    if ptq:
        note += (
            f"; the .tflite is the converter's post-training int8 file, which beat QAT's best "
            f"epoch beyond the noise (validation accuracy {ptq['accuracy']:.4f}, agreement "
            f"{ptq['agreement']:.4f}): QAT did not help this model"
        )
    return note
