"""runner.evaluation.scoring: the fidelity floors, named by artifact and by what is to blame."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np

from runner.artifacts import Artifact, Metrics
from runner.evaluation.scoring import fidelity_warnings

FLOORS = SimpleNamespace(min_agreement=0.99, min_agreement_quantized=0.95, min_output_sqnr_db=30)


def _metrics(agreement: float, sqnr: float) -> Metrics:
    return Metrics(0.9, None, agreement, np.zeros(1), None, None, None, 0.0, sqnr, 0.1)


def _art(quantized: bool) -> Artifact:
    name = "int8.tflite" if quantized else "float16.tflite"
    return Artifact(name, "r", Path(name), "tflite", quantized)


def test_a_float_file_is_held_to_float_floors_and_blames_the_conversion():
    (agree, sqnr) = fidelity_warnings(_art(False), _metrics(0.98, 20.0), FLOORS)
    assert agree.startswith("float16.tflite: agreement with the float Keras model is 0.9800 < 0.99")
    assert "the conversion, not the quantization" in agree and "20.0 dB < 30 dB" in sqnr


def test_a_quantized_file_gets_the_looser_floor_and_no_sqnr_floor():
    assert fidelity_warnings(_art(True), _metrics(0.96, 20.0), FLOORS) == []
    (w,) = fidelity_warnings(_art(True), _metrics(0.90, 20.0), FLOORS)
    assert "quantization changed many predictions" in w
