"""The two records every stage passes on: a file a recipe made (:class:`Artifact`) and what
scoring it measured (:class:`Metrics`). At the bottom of the layers, so that recipes, scoring,
the cache and the report share them without importing each other; no TensorFlow here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

LayerRows = list[dict[str, Any]]  # layer_report.csv rows, worst first


@dataclass(frozen=True)
class Artifact:
    """A file a recipe produced, and what is needed to score it."""

    name: str  # row name, e.g. "float16", "qat_tflite"
    recipe: str
    path: Path
    format: str  # "tflite" or "keras"
    quantized: bool
    train_seconds: float = 0.0
    convert_seconds: float = 0.0
    model: Any = None  # the in-memory Keras model, for "keras" artifacts
    float_layers: str | None = None  # layers an int8 recipe kept in float ("2: conv1, fc")
    worst_layer: str | None = None  # the op with the largest int8 error (layer report)
    note: str | None = None  # what the recipe wants the reader of the row to know
    conversion: dict[str, Any] | None = None  # recurrent models: the route chosen, why, trials
    warnings: tuple[str, ...] = ()  # told to the user at the end of the run, and in results.json
    layer_rows: LayerRows | None = None  # a per-layer int8 report made while producing

    @property
    def route(self) -> str | None:
        return (self.conversion or {}).get("route")


@dataclass(frozen=True)
class Metrics:
    accuracy: float
    top5: float | None
    agreement: float | None
    labels: np.ndarray
    latency_ms: float | None
    latency_p50_ms: float | None
    latency_p90_ms: float | None
    eval_seconds: float
    # Output-level fidelity against the float Keras model's outputs on the same inputs (None for
    # the float model itself): conversion drift shows here before it flips a label.
    output_sqnr_db: float | None = None
    output_max_abs_error: float | None = None
    outputs: np.ndarray | None = None  # the dequantized outputs (kept for the reference only)
    latency_spread: float | None = None  # p90 / p50: near 1 is a steady measurement
    latency_note: str | None = None  # why the latency may not be trusted (a loaded machine ...)
