"""Why did int8 lose accuracy? The per-layer int8 error report (``layer_report.csv``).

Built on TensorFlow Lite's quantization debugger: it converts the model once with calibration
only, then instruments each quantized op with a float twin fed the same inputs, so every row of
the report is that op's own error, not the error accumulated above it. The same calibrated model
can be re-quantized with some ops kept in float (``denylisted_nodes``): the fallback recipes
(:mod:`runner.recipes.selective`) do that.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runner import tflite
from runner.errors import RunnerError, summarize_error
from runner.recipes.conversion import ConverterOptions, make_converter
from runner.recipes.ranges import converter_ranges

log = logging.getLogger(__name__)

REPORT_COLUMNS = [
    "rank",
    "layer",
    "op",
    "relative_rmse",
    "rmse",
    "scale",
    "error_ratio",
    "mean_error",
    "max_abs_error",
    "num_elements",
    "weight_sparsity",  # share of exact zeros in the layer's weights, in the written file
    "unique_per_channel",  # the most distinct weight values an output channel holds there
    "tensor_name",
]


def _relative_rmse(f: np.ndarray, q: np.ndarray, scale: float, zero_point: int) -> float:
    """RMSE of the dequantized output against the float twin's, over the float output's RMS."""
    f = np.asarray(f, np.float64)
    deq = (np.asarray(q, np.float64) - zero_point) * scale
    return float(np.sqrt(np.mean((f - deq) ** 2)) / (np.sqrt(np.mean(f**2)) + 1e-12))


@dataclass
class Debugger:
    """TensorFlow Lite's quantization debugger on one model and its calibration data."""

    debugger: Any
    rows: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        model,
        options: ConverterOptions,
        calibration: np.ndarray,
        token_ids: bool = False,
        batch_size: int | None = None,
    ) -> Debugger:
        import tensorflow as tf

        from runner.models.saved_model import NEEDS_KERAS, SavedModelSource

        if isinstance(model, SavedModelSource):
            raise RunnerError(NEEDS_KERAS.format(path=model.path, recipe="'layer report'"))
        if not options.representative_dataset or not options.optimizations:
            raise RunnerError(
                "the layer report needs an int8 recipe with calibration (full_integer, "
                "full_integer_per_tensor, selective, auto_int8)"
            )
        if calibration is None or not len(calibration):
            raise RunnerError(
                "the layer report needs calibration samples (recipe.calibration_samples > 0)"
            )
        converter = make_converter(model, options, calibration, token_ids, batch_size)
        data = converter.representative_dataset  # the recipe's own calibration feed
        metrics = {"relative_rmse": _relative_rmse}
        from runner.console import filtered

        try:
            with (
                warnings.catch_warnings(),
                filtered(),
                converter_ranges(options.calibration_ranges),
            ):
                warnings.simplefilter("ignore")
                # calibrates once; re-quantizes with a denylist on demand (quantize())
                dbg = tf.lite.experimental.QuantizationDebugger(
                    converter=converter, debug_dataset=data
                )
                # the instrumented model again, in an interpreter that keeps every tensor, so
                # the float twin's output can be compared with the int8 op's own output
                stats = tf.lite.experimental.QuantizationDebugger(
                    quant_debug_model_content=dbg.quant_model,
                    debug_dataset=data,
                    debug_options=tf.lite.experimental.QuantizationDebugOptions(
                        layer_direct_compare_metrics=metrics
                    ),
                )
                stats.run()
        except (ValueError, RuntimeError, TypeError) as e:
            raise RunnerError(
                f"TensorFlow Lite's quantization debugger cannot handle this model: {summarize_error(e)}"
            ) from None
        return cls(dbg, _rows(stats))

    def worst(self, n: int) -> list[dict[str, Any]]:
        """Every op of the ``n`` worst Keras layers (a layer can be several ops: a
        Normalization is a SUB and a MUL, and the SUB's coarse output is what the MUL's error
        shows), ranked by each layer's worst op."""
        layers = list(dict.fromkeys(r["layer"] for r in self.rows))[: max(n, 0)]
        return [r for r in self.rows if r["layer"] in layers]

    @property
    def layers(self) -> list[str]:
        """The Keras layers with quantized ops, worst first."""
        return list(dict.fromkeys(r["layer"] for r in self.rows))

    def quantize(self, keep_float: Sequence[str]) -> bytes:
        """The int8 model with the ops writing ``keep_float`` (tensor names) left in float."""
        import tensorflow as tf

        from runner.console import filtered

        # the debugger's own tf.lite.Interpreter is deprecated; its converter prints from C++
        with warnings.catch_warnings(), filtered():
            warnings.simplefilter("ignore")
            self.debugger.options = tf.lite.experimental.QuantizationDebugOptions(
                denylisted_nodes=list(keep_float) or None
            )
            return self.debugger.get_nondebug_quantized_model()


def _rows(dbg: Any) -> list[dict[str, Any]]:
    buf = io.StringIO()
    dbg.layer_statistics_dump(buf)
    buf.seek(0)
    rows = []
    for r in csv.DictReader(buf):
        mse, scale = float(r["mean_squared_error"]), float(r["scale"])
        rmse = math.sqrt(max(mse, 0.0))
        rel = float(r.get("relative_rmse") or "nan")
        rows.append(
            {
                "layer": tflite.layer_name(r["tensor_name"]),
                "op": r["op_name"],
                "relative_rmse": rel,
                "rmse": rmse,
                "scale": scale,
                "error_ratio": rmse / scale if scale else float("nan"),  # ideal ~0.29 = 1/sqrt(12)
                "mean_error": float(r["mean_error"]),
                "max_abs_error": float(r["max_abs_error"]),
                "num_elements": int(float(r["num_elements"])),
                "tensor_name": r["tensor_name"],
            }
        )
    rows.sort(key=lambda r: -(r["relative_rmse"] if math.isfinite(r["relative_rmse"]) else -1))
    for i, r in enumerate(rows, 1):
        r["rank"] = i
    return rows


def write_rows(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    from runner.files import atomic_write_text, csv_text

    return atomic_write_text(path, csv_text(rows, columns))


def summary(rows: Sequence[Mapping[str, Any]], n: int = 3) -> str:
    return ", ".join(
        f"{r['layer']} ({r['op']}, rel. RMSE {r['relative_rmse']:.3f})" for r in rows[:n]
    )
