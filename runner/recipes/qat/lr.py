"""QAT's learning rate, found by a short trial of each candidate (``learning_rate_scale=auto``).

Fine-tuning a trained network for a few dozen steps is sensitive to the rate: on a
keras.applications EfficientNetB0 (4 M parameters, 35 steps an epoch) Adam at the baseline's
3e-3 x 0.1 moved the fake-quant model away from the float one (its int8 file's agreement on
held-out samples 0.95 -> 0.87 after one epoch), while 1e-5 lowered the distillation loss. Each
candidate runs ``steps`` steps from the same start (weights, quantizer ranges and a fresh
optimizer); the one with the lowest loss on a fixed probe of training samples wins, and the
start is put back. The real int8 files are still judged epoch by epoch afterwards.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

SCALES = (0.1, 0.01, 0.001)  # x train.learning_rate
PROBE = 256  # training samples the candidates' losses are compared on
TRIAL_STEPS = 15  # steps of each candidate (fewer when the whole fine-tuning is shorter)


def fine_tuning_rate(
    scale, qat_model, compile_with, fit_split, batch: int, scaling, train_cfg, steps: int
) -> float:
    """``train.learning_rate`` x ``scale``, or with ``scale="auto"`` the candidate that lowers
    the loss most in ``steps`` steps (:func:`pick_learning_rate`)."""
    if scale != "auto":
        return train_cfg.learning_rate * scale
    from runner.data import subset
    from runner.train import batch_sequence

    probe = subset(fit_split, PROBE, train_cfg.seed)
    x = probe.x[np.arange(len(probe))]  # an array, whatever holds the rows
    trial = batch_sequence(fit_split, batch, scaling, True, train_cfg.seed + 1, steps)
    lr, _ = pick_learning_rate(
        qat_model, compile_with, trial, (scaling(x), probe.y), train_cfg.learning_rate, steps
    )
    return lr


def pick_learning_rate(
    qat_model,
    compile_with,
    seq,
    probe: tuple[np.ndarray, np.ndarray],
    base_lr: float,
    steps: int,
) -> tuple[float, list[dict[str, Any]]]:
    """(the chosen rate, one row per candidate: scale, rate, probe loss before and after).

    ``compile_with(lr)`` compiles ``qat_model`` with a fresh optimizer at ``lr``; ``seq`` serves
    the fine-tuning batches; ``probe`` is (model-ready inputs, targets)."""
    start = qat_model.get_weights()
    x, y = probe
    compile_with(base_lr * SCALES[0])
    before = float(qat_model.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)["loss"])
    trials = []
    for scale in SCALES:
        qat_model.set_weights(start)
        compile_with(base_lr * scale)
        qat_model.fit(seq, epochs=1, steps_per_epoch=steps, verbose=0)
        loss = float(qat_model.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)["loss"])
        trials.append({"scale": scale, "lr": base_lr * scale, "before": before, "after": loss})
    qat_model.set_weights(start)
    best = min(trials, key=lambda t: (t["after"], t["lr"]))
    log.info(
        "QAT learning rate: %s after %d steps each (probe loss %.4f at the start); chose %.2g",
        ", ".join(f"{t['lr']:.2g} -> {t['after']:.4f}" for t in trials),
        steps,
        before,
        best["lr"],
    )
    return best["lr"], trials
