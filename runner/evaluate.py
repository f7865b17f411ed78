"""Deprecated: moved to :mod:`runner.evaluation.metrics` (this alias goes in a later release)."""

import warnings

from runner.evaluation.metrics import *  # noqa: F403
from runner.evaluation.metrics import (  # noqa: F401
    TFLiteModel,
    evaluate_keras,
    evaluate_tflite,
    labels_from_outputs,
    output_fidelity,
    predict_keras,
    score,
)

warnings.warn(
    "runner.evaluate moved to runner.evaluation.metrics", DeprecationWarning, stacklevel=2
)
