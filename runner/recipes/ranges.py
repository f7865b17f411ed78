"""How the representative data sets each int8 activation range: ``calibration_ranges``.

The TFLite converter keeps, per activation tensor, the minimum and maximum over every
calibration sample (``minmax``). One unusual sample then sets the range for all: on a
keras.applications EfficientNetB0 the deep project and squeeze-excitation convs record ranges
10-30x wider than a typical sample's, so most inputs use a few of the 256 int8 levels there.
``mean`` averages each sample's own minimum and maximum instead (what tfmot's QAT quantizers and
ai-edge-quantizer's calibration estimate): an outlier sample is clipped, every other sample gets
finer steps.

:func:`converter_ranges` re-estimates the ranges inside the converter, between its calibration
and its quantizer, so every converter path (``convert``, the quantization debugger behind the
layer report, ``selective`` and ``auto_int8``) writes the same file from the same settings.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np

log = logging.getLogger(__name__)

RangeEstimator = Literal["minmax", "mean"]


def one_knob(estimators: list[str], info) -> list[str]:
    """The ``recipe.calibration_ranges`` validator of the recipes that try each estimator
    themselves (``auto_int8``, the QAT family): their converter's own ``calibration_ranges``
    would be overridden, so setting it is refused, naming the key that does it."""
    converter = info.data.get("converter")
    set_there = getattr(converter, "calibration_ranges", "minmax")
    if set_there != "minmax":
        raise ValueError(
            f"recipe.converter.calibration_ranges={set_there} would be overridden: this recipe "
            "tries each estimator of recipe.calibration_ranges and keeps the better; set "
            f"recipe.calibration_ranges=[{set_there}] instead"
        )
    return estimators


@contextlib.contextmanager
def converter_ranges(estimator: str) -> Iterator[None]:
    """Within the block, the converter's calibration returns ``estimator``'s ranges.

    ``minmax`` changes nothing. The int16-activation path (``int16x8``) calibrates and quantizes
    in one call the hook does not see: it keeps the converter's ranges."""
    if estimator == "minmax":
        yield
        return
    from tensorflow.lite.python.optimize import calibrator

    original = calibrator.Calibrator.calibrate

    def calibrate(self, dataset_gen):  # noqa: ANN001 - the converter's own signature
        calibrated = original(self, dataset_gen)
        return reestimate(calibrated, dataset_gen, estimator)

    calibrator.Calibrator.calibrate = calibrate
    try:
        yield
    finally:
        calibrator.Calibrator.calibrate = original


def reestimate(calibrated: bytes, dataset_gen, estimator: str) -> bytes:
    """``calibrated`` (the converter's float model with min/max statistics) with each
    activation's range re-estimated over the samples of ``dataset_gen`` (the representative
    dataset: one list of input arrays per sample).

    Tensors the converter tied (a residual ADD's input gets the sum's range: they share one
    recorded range) stay tied: the group takes the union of its members' new ranges. A tensor
    whose recorded range is not what the float model shows on the samples (it was given
    another's) and that has no measured member in its group keeps the converter's range.
    """
    from ai_edge_litert.tools import flatbuffer_utils

    from runner import tflite

    model = tflite.read(calibrated)
    sg = model.subgraphs[0]
    stats = [
        i
        for i, t in enumerate(sg.tensors)
        if t.quantization is not None
        and t.quantization.min is not None
        and len(t.quantization.min) == 1
        and not _constant(model, t)
    ]
    samples = [s for s in dataset_gen()]
    if not stats or not samples or not all(isinstance(s, list) for s in samples):
        log.info("calibration_ranges=%s: no per-sample inputs to re-estimate from", estimator)
        return calibrated
    lows, highs = _per_sample(calibrated, stats, samples)
    recorded = {
        i: (float(sg.tensors[i].quantization.min[0]), float(sg.tensors[i].quantization.max[0]))
        for i in stats
    }
    new = {i: _estimate(lows[:, j], highs[:, j], estimator) for j, i in enumerate(stats)}
    measured = {
        i: np.isclose(recorded[i][0], lows[:, j].min(), rtol=1e-4, atol=1e-6)
        and np.isclose(recorded[i][1], highs[:, j].max(), rtol=1e-4, atol=1e-6)
        for j, i in enumerate(stats)
    }
    groups: dict[tuple[float, float], list[int]] = {}
    for i in stats:
        groups.setdefault(recorded[i], []).append(i)
    changed, shrink = 0, []
    for members in groups.values():
        own = [new[i] for i in members if measured[i]]
        if not own:
            continue
        lo, hi = min(r[0] for r in own), max(r[1] for r in own)
        for i in members:
            q = sg.tensors[i].quantization
            before = recorded[i][1] - recorded[i][0]
            q.min, q.max = np.array([lo], np.float32), np.array([hi], np.float32)
            changed += 1
            if before > 0:
                shrink.append((hi - lo) / before)
    log.info(
        "calibration_ranges=%s: %d of %d activation ranges re-estimated on %d samples "
        "(median width %.2fx the converter's min/max, narrowest %.2fx)",
        *(estimator, changed, len(stats), len(samples)),
        *((float(np.median(shrink)), float(np.min(shrink))) if shrink else (1.0, 1.0)),
    )
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _constant(model, tensor) -> bool:
    buf = model.buffers[tensor.buffer] if tensor.buffer < len(model.buffers) else None
    return buf is not None and buf.data is not None and len(buf.data) > 0


def _per_sample(calibrated: bytes, indices: list[int], samples: list[list]) -> tuple:
    """(lows, highs): each sample's minimum and maximum of every tensor in ``indices``, from
    the float model run one sample at a time by LiteRT's reference kernels (a delegate would
    not keep the tensors inside what it fuses)."""
    import warnings

    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    with warnings.catch_warnings():  # "intended for debugging": that is this use
        warnings.simplefilter("ignore")
        interp = Interpreter(
            model_content=calibrated,
            experimental_preserve_all_tensors=True,
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )
    inputs = interp.get_input_details()
    lows = np.empty((len(samples), len(indices)))
    highs = np.empty_like(lows)
    shapes = None
    for s, sample in enumerate(samples):
        arrays = [np.asarray(a) for a in sample]
        if shapes != [a.shape for a in arrays]:
            shapes = [a.shape for a in arrays]
            for d, a in zip(inputs, arrays, strict=True):
                interp.resize_tensor_input(d["index"], list(a.shape))
            interp.allocate_tensors()
        for d, a in zip(inputs, arrays, strict=True):
            interp.set_tensor(d["index"], a.astype(d["dtype"]))
        interp.invoke()
        for j, i in enumerate(indices):
            v = interp.get_tensor(i)
            lows[s, j], highs[s, j] = (float(v.min()), float(v.max())) if v.size else (0.0, 0.0)
    return lows, highs


def _estimate(lows: np.ndarray, highs: np.ndarray, estimator: str) -> tuple[float, float]:
    """The range of one tensor from its per-sample minima and maxima (``minmax`` never gets
    here: :func:`converter_ranges` leaves the converter's own)."""
    if estimator != "mean":
        raise ValueError(f"unknown activation range estimator {estimator!r}")
    return float(lows.mean()), float(highs.mean())


def aeq_calibration(reference: bytes, manager: Any, data: dict, ranges: str) -> dict:
    """ai-edge-quantizer's calibration (``manager``: its recipe) with each tensor's range the
    ``minmax`` (widest) or the ``mean`` of the samples' own minima and maxima, as the converter's
    ``calibration_ranges`` (AEQ's default is a moving average that favours the last samples)."""
    from ai_edge_quantizer import calibrator
    from ai_edge_quantizer.utils import qsv_utils

    def mean(qsv: dict, new: dict) -> dict:  # the running mean; n rides along in the QSV
        n = qsv.get("samples", 1)
        out = {k: (qsv[k] * n + new[k]) / (n + 1) for k in ("min", "max")}
        return {**new, **out, "samples": n + 1}

    update = {"minmax": qsv_utils.min_max_update, "mean": mean}[ranges]
    calib = calibrator.Calibrator(reference, num_threads=1, qsv_update_func=update)
    calib.calibrate(data, manager)
    return {
        name: {k: v for k, v in qsv.items() if k != "samples"}
        for name, qsv in calib.get_model_qsvs().items()
    }
