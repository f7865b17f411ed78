"""Evaluate stage: score the real artifacts on the test split.

TFLite files run in the LiteRT interpreter (``ai-edge-litert``), batched where the input can be
resized, with integer inputs quantized and outputs dequantized from the tensors' own scale and
zero point. This module never imports TensorFlow.
"""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from runner.artifacts import Metrics
from runner.data import Scaling
from runner.errors import RunnerError
from runner.evaluation.fidelity import MAX_SQNR_DB, labels_from_outputs, output_fidelity  # noqa: F401
from runner.evaluation.interpreter import TFLiteModel
from runner.schema import Options

log = logging.getLogger(__name__)


class EvalConfig(Options):
    """``conf/evaluation/default.yaml``: how every artifact is scored."""

    batch_size: int = Field(128, ge=1, description="batched inference where the input resizes")
    num_threads: int = Field(1, ge=1, description="interpreter threads the latency is timed with")
    eval_threads: int | None = Field(
        None,
        ge=1,
        description="interpreter threads that score the test split (null: every core; scores "
        "do not depend on it)",
    )
    latency_warmup: int = Field(5, ge=0, description="untimed invokes before timing")
    latency_samples: int = Field(50, ge=0, description="timed single-sample invokes (0: none)")
    latency_lock: bool = Field(
        True,
        description="time under a machine-wide lock, so parallel jobs never time at once "
        "(false: time right away)",
    )
    progress: bool = Field(True, description="progress bars on a terminal")
    min_agreement: float = Field(
        0.99, ge=0, le=1, description="float artifacts below this agreement are warned about"
    )
    min_agreement_quantized: float = Field(
        0.95, ge=0, le=1, description="the same for quantized artifacts"
    )
    min_output_sqnr_db: float | None = Field(
        30, ge=0, description="float artifacts below this output SQNR (dB) are warned about"
    )
    layer_report: bool = Field(False, description="int8 recipes: layer_report.csv, worst first")

    @classmethod
    def from_mapping(cls, cfg: Any) -> EvalConfig:
        """A config node's keys of this schema (validated)."""
        known = set(cls.model_fields)
        return cls.model_validate({k: v for k, v in dict(cfg).items() if k in known})


# --------------------------------------------------------------------------- scoring
def top_k_accuracy(out: np.ndarray, y: np.ndarray, k: int) -> float:
    top = np.argpartition(-out, kth=min(k, out.shape[-1]) - 1, axis=-1)[:, :k]
    return float(np.mean(np.any(top == y[:, None], axis=1)))


def score(
    out: np.ndarray,
    y: np.ndarray,
    reference: np.ndarray | None,
    num_classes: int,
    latencies_ms: list[float] | None = None,
    eval_seconds: float = 0.0,
    latency_note: str | None = None,
) -> Metrics:
    """Metrics of outputs ``out``; ``reference``: the float Keras model's outputs on the same
    inputs (for agreement and output fidelity), or None when ``out`` is that model's.

    Raises:
        RunnerError: non-finite outputs (never scored as label 0).
    """
    bad = int(
        np.count_nonzero(
            ~np.isfinite(np.asarray(out, np.float64)).reshape(len(out), -1).all(axis=1)
        )
    )
    if bad:
        raise RunnerError(
            f"the model gives NaN or infinite outputs on {bad} of {len(out)} test samples"
        )
    labels = labels_from_outputs(out)
    lat = sorted(latencies_ms or [])
    sqnr = max_err = agreement = None
    if reference is not None:
        agreement = float(np.mean(labels == labels_from_outputs(reference)))
        sqnr, max_err = output_fidelity(reference, out)
    return Metrics(
        accuracy=float(np.mean(labels == y)),
        top5=top_k_accuracy(out, y, 5) if num_classes > 10 else None,
        agreement=agreement,
        labels=labels,
        latency_ms=statistics.fmean(lat) if lat else None,
        latency_p50_ms=_percentile(lat, 50),
        latency_p90_ms=_percentile(lat, 90),
        latency_spread=_spread(lat),
        latency_note=_note(lat, latency_note),
        eval_seconds=eval_seconds,
        output_sqnr_db=sqnr,
        output_max_abs_error=max_err,
        outputs=np.asarray(out, np.float32) if reference is None else None,
    )


def _percentile(sorted_vals: list[float], q: float) -> float | None:
    return float(np.percentile(sorted_vals, q)) if sorted_vals else None


# A p90 more than this times the p50 is a wide spread: the latency is noted as not trusted.
WIDE_SPREAD = 1.5


def _spread(lat: list[float]) -> float | None:
    p50, p90 = _percentile(lat, 50), _percentile(lat, 90)
    return p90 / p50 if p50 and p90 else None


def _note(lat: list[float], note: str | None) -> str | None:
    spread = _spread(lat)
    notes = [note] if note else []
    if spread is not None and spread > WIDE_SPREAD:
        notes.append(f"wide spread (p90/p50 {spread:.2f})")
    return "; ".join(notes) or None


LATENCY_LOCK = "tfq-runner-latency.lock"


@contextlib.contextmanager
def timing_alone(enabled: bool = True) -> Iterator[list[str]]:
    """Hold the machine-wide latency lock while timing: jobs of a parallel sweep on one machine
    (joblib, submitit, several SLURM tasks on a node) never time at the same moment. Yields a
    list the caller reads afterwards: a note when the machine was loaded (its 1-minute load
    average above its cores) or the lock could not be had."""
    from filelock import FileLock, Timeout

    notes: list[str] = []
    lock = FileLock(os.path.join(tempfile.gettempdir(), LATENCY_LOCK)) if enabled else None
    try:
        if lock is not None:
            lock.acquire(timeout=600)
    except (Timeout, OSError) as e:
        notes.append(f"timed without the machine-wide lock ({type(e).__name__})")
        lock = None
    try:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        cores = os.cpu_count() or 1
        if load > cores:
            notes.append(f"machine loaded (load average {load:.1f} on {cores} cores)")
        yield notes
    finally:
        if lock is not None:
            lock.release()


def timed(measure: Callable[[], list[float]], cfg: EvalConfig) -> tuple[list | None, str | None]:
    """(latencies in ms, a note on how far to trust them), measured under the machine-wide lock
    (``evaluation.latency_lock``); (None, None) with ``evaluation.latency_samples=0``."""
    if not cfg.latency_samples:
        return None, None
    with timing_alone(cfg.latency_lock) as notes:
        lat = measure()
    return lat, "; ".join(notes) or None


def evaluate_tflite(
    path: str | Path,
    x_raw: np.ndarray,
    y: np.ndarray,
    scaling: Scaling,
    reference: np.ndarray | None,
    num_classes: int,
    cfg: EvalConfig,
) -> Metrics:
    t0 = time.perf_counter()
    threads = cfg.eval_threads or os.cpu_count() or 1
    out = TFLiteModel(path, num_threads=threads).predict(
        x_raw, scaling, cfg.batch_size, progress=cfg.progress
    )
    seconds = time.perf_counter() - t0
    lat, note = timed(  # a fresh interpreter, with the threads the user's device runs it with
        lambda: TFLiteModel(path, num_threads=cfg.num_threads).latencies(
            x_raw, scaling, cfg.latency_warmup, cfg.latency_samples
        ),
        cfg,
    )
    return score(out, y, reference, num_classes, lat, seconds, note)


# --------------------------------------------------------------------------- Keras
# A Keras model is called eagerly, and an eager call holds every layer's activations of the
# batch at once: batches are capped at this many input values (85 CIFAR images, 21 at 64x64x3),
# which kept a 64x64x3 evaluation to +150 MB of memory where 128 images took +550 MB.
KERAS_BATCH_VALUES = 1 << 18


def keras_batch_size(x_raw: Any, batch_size: int) -> int:
    per_sample = int(np.prod(x_raw.shape[1:])) if len(x_raw.shape) > 1 else 1
    return max(1, min(int(batch_size), KERAS_BATCH_VALUES // max(per_sample, 1)))


def predict_keras(model, x_raw: np.ndarray, scaling: Scaling, batch_size: int = 128) -> np.ndarray:
    # A direct call in inference mode: no tf.function retracing for a short last batch.
    batch_size = keras_batch_size(x_raw, batch_size)
    outs = [
        np.asarray(model(scaling(x_raw[s : s + batch_size]), training=False))
        for s in range(0, len(x_raw), batch_size)
    ]
    return np.concatenate(outs)


def keras_latencies(
    model, x_raw: np.ndarray, scaling: Scaling, warmup: int, samples: int
) -> list[float]:
    idx = np.arange(max(samples, 1)) % len(x_raw)
    xs = [scaling(x_raw[i : i + 1]) for i in idx]
    for x in xs[:warmup]:
        model(x, training=False)
    times = []
    for x in xs[:samples]:
        t0 = time.perf_counter()
        model(x, training=False)
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def evaluate_keras(
    model,
    x_raw: np.ndarray,
    y: np.ndarray,
    scaling: Scaling,
    reference: np.ndarray | None,
    num_classes: int,
    cfg: EvalConfig,
) -> Metrics:
    t0 = time.perf_counter()
    out = predict_keras(model, x_raw, scaling, cfg.batch_size)
    seconds = time.perf_counter() - t0
    lat, note = timed(
        lambda: keras_latencies(model, x_raw, scaling, cfg.latency_warmup, cfg.latency_samples),
        cfg,
    )
    return score(out, y, reference, num_classes, lat, seconds, note)
