"""The QAT quantizers' starting ranges: activation ranges from the float model's own outputs on
calibration samples (as post-training calibration sets them), weight and input ranges before
the first step, and a callback that keeps activation ranges where they started."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def calibrate_ranges(qat_model, float_model, x, estimator: str = "minmax") -> int:
    """Start every activation quantizer at the float model's own range on ``x`` (model-ready
    calibration inputs), as post-training calibration with ``estimator`` would (``minmax``: the
    widest over all samples; ``mean``: each sample's min and max averaged).

    tfmot starts each activation range at [-6, 6] and moves it by an exponential average
    (decay 0.999): a few hundred fine-tuning steps leave wider activations (a residual sum without
    BatchNorm reaches +-36) clipped, and the fine-tuned model worse than PTQ. Returns how many
    ranges were set.
    """
    import tf_keras as keras

    floats = {layer.name: layer for layer in float_model.layers}
    pairs = [
        (w, floats[w.layer.name])
        for w in qat_model.layers
        if type(w).__name__.startswith("QuantizeWrapper") and w.layer.name in floats
    ]
    if not pairs or x is None or not len(x):
        return 0
    # each layer's output; a Dense layer's input too (tfmot quantizes the logits before softmax)
    tensors = [t for _, f in pairs for t in (f.output, *_dense_input(f))]
    got = iter(probe_outputs(keras.Model(float_model.inputs, tensors), x))
    done = 0
    for wrapper, layer in pairs:
        out = next(got)
        ranges = {"post_activation": out, "output": out}
        if _dense_input(layer):
            ranges["pre_activation"] = next(got) @ layer.kernel.numpy() + (
                layer.bias.numpy() if layer.use_bias else 0.0
            )
        for var in wrapper.weights:
            name = var.name.split("/")[-1].split(":")[0]
            for prefix, values in ranges.items():
                if name in (f"{prefix}_min", f"{prefix}_max") and var.shape == ():
                    lo, hi = _range(values, estimator)
                    var.assign(lo if name.endswith("_min") else hi)
                    done += 1
    done += _start_weight_and_input_ranges(qat_model, x)
    log.info("QAT: %d quantizer ranges calibrated on %d samples", done, len(x))
    return done


def _range(values, estimator: str) -> tuple[float, float]:
    """The range ``estimator`` gives ``values`` (one row per sample), widened to hold 0."""
    import numpy as np

    per = np.asarray(values).reshape(len(values), -1)
    if estimator == "mean":
        lo, hi = float(per.min(axis=1).mean()), float(per.max(axis=1).mean())
    else:
        lo, hi = float(per.min()), float(per.max())
    return min(0.0, lo), max(0.0, hi)


def _dense_input(layer) -> list:
    return [layer.input] if type(layer).__name__ == "Dense" else []


def probe_outputs(probe, x) -> list:
    """The probe model's outputs on ``x`` as arrays, one per tensor (a single output too)."""
    import numpy as np

    got = probe.predict(x, batch_size=64, verbose=0)
    return [np.asarray(g) for g in (got if isinstance(got, list) else [got])]


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


def activation_range_keeper(qat_model):
    """A Keras callback that puts every activation range (and input range) of ``qat_model``
    back after each training step: the ranges stay where :func:`calibrate_ranges` started
    them and only the weights learn. (tfmot moves them by an exponential average of each
    batch's min and max, i.e. towards the widest values of each batch.) The weight ranges
    follow the weights as before."""
    import tf_keras as keras

    def is_activation_range(v) -> bool:
        name = v.name.split("/")[-1].split(":")[0]
        return name.endswith(("_min", "_max")) and not name.startswith("kernel")

    kept = [(v, v.numpy()) for v in qat_model.non_trainable_variables if is_activation_range(v)]

    def put_back(*_args) -> None:
        for v, value in kept:
            v.assign(value)

    log.info("QAT: %d activation ranges kept at their calibrated start", len(kept))
    return keras.callbacks.LambdaCallback(on_train_batch_end=put_back)
