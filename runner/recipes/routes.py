"""Conversion by route, for recurrent models: TFLite's fused LSTM/GRU kernel or the unrolled
graph, each converted and its file run in LiteRT on real inputs against the Keras model; the
fused kernel (the smaller file) is kept only when it is as faithful (it was not, on the Weibo
LSTM: 0.869 agreement with no quantization at all). A model without recurrent layers is
converted once by :func:`runner.recipes.conversion.convert`."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from runner.errors import RunnerError, summarize_error
from runner.evaluation import fidelity
from runner.models.meta import ROUTES
from runner.recipes.conversion import ConverterOptions, convert
from runner.recipes.recurrent import has_recurrent

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RouteTrial:
    """One conversion route tried on a recurrent model, and how faithful its file was."""

    route: str
    size_bytes: int | None = None
    output_sqnr_db: float | None = None
    output_max_abs_error: float | None = None
    agreement: float | None = None
    faithful: bool | None = (
        None  # the float-conversion rule (runner.evaluation.fidelity), when measured
    )
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


def measure_fidelity(
    model, flatbuffer: bytes, probe: np.ndarray, reference: np.ndarray | None = None
) -> RouteTrial:
    """Run ``flatbuffer`` in LiteRT on model-ready ``probe`` inputs and compare with Keras
    (``reference``: the Keras model's outputs on ``probe``, when already computed)."""
    from runner.data import Scaling
    from runner.evaluation.interpreter import TFLiteModel

    ref = np.asarray(model(probe, training=False)) if reference is None else reference
    out = TFLiteModel(content=flatbuffer).predict(probe, Scaling("none"), batch_size=len(probe))
    f = fidelity.compare(ref, out)
    return RouteTrial(
        "", len(flatbuffer), f.output_sqnr_db, f.output_max_abs_error, f.agreement, f.faithful
    )


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
    given); ``auto`` converts both, runs each ``.tflite`` in LiteRT on ``probe`` (model-ready real
    inputs) against the Keras model, and keeps the fused kernel (the smaller file) only when its
    output SQNR is within ``ROUTE_MARGIN_DB`` of the unrolled graph's: a fused kernel that drifts
    loses to the unrolled graph whatever the recipe.

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
    measured = probe is not None and len(probe) > 0
    reference = np.asarray(model(probe, training=False)) if measured else None  # once, all routes
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
            dataclasses.replace(measure_fidelity(model, fb, probe, reference), route=route)
            if measured
            else RouteTrial(route, len(fb))
        )
        trials.append(trial)
        log.info("route %s: %s (%d bytes)", route, trial.describe(), len(fb))
    if not files:
        assert first_error is not None
        raise first_error
    chosen, why = _choose(recurrent, trials, files, len(probe) if probe is not None else 0)
    reason = f"{chosen.route}: {why} ({'; '.join(t.describe() for t in trials)})"
    if not quantized and chosen.faithful is False:
        log.warning("no conversion route is faithful to the Keras model: %s", reason)
    log.info("recurrent route %s", reason)
    return Conversion(files[chosen.route], chosen.route, reason, tuple(trials))


# auto keeps the fused kernel (smaller) unless the unrolled graph is this much more faithful.
ROUTE_MARGIN_DB = 3.0


def _choose(
    recurrent: str, trials: list[RouteTrial], files: dict[str, bytes], n: int
) -> tuple[RouteTrial, str]:
    done = [t for t in trials if t.route in files]
    measured = {t.route: t for t in done if t.output_sqnr_db is not None}
    if recurrent != "auto":
        return done[0], "forced by model.recurrent"
    if len(done) == 1:
        return done[0], "the only route that converted"
    if len(measured) < 2:
        return done[0], "no real inputs to measure the routes on"
    fused, unrolled = measured["fused"], measured["unrolled"]
    if unrolled.output_sqnr_db > fused.output_sqnr_db + ROUTE_MARGIN_DB:
        return unrolled, (
            f"the fused kernel is not faithful on {n} real inputs "
            f"({unrolled.output_sqnr_db - fused.output_sqnr_db:.1f} dB below the unrolled graph)"
        )
    return (
        fused,
        f"as faithful as the unrolled graph on {n} real inputs (within {ROUTE_MARGIN_DB:g} dB), and smaller",
    )
