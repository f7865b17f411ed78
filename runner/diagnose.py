"""Why did int8 lose accuracy? Per-layer error, selective quantization and automatic float fallback.

Built on TensorFlow Lite's quantization debugger: it converts the model once with calibration
only, then instruments each quantized op with a float twin fed the same inputs, so every row of
the report is that op's own error, not the error accumulated above it. The same calibrated model
is re-quantized with some ops kept in float (``denylisted_nodes``) for ``recipe=selective`` and
``recipe=auto_int8``; every candidate is scored by running its ``.tflite`` in LiteRT.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runner.errors import RunnerError
from runner.quantize import (
    Artifact,
    ConverterOptions,
    ConverterRecipe,
    RecipeContext,
    make_converter,
    summarize_error,
)

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
    "tensor_name",
]
TRACE_COLUMNS = [
    "step",
    "float_layers",
    "layers",
    "size_bytes",
    "holdout_accuracy",
    "accuracy_drop",
    "meets_budget",
]


def _relative_rmse(f: np.ndarray, q: np.ndarray, scale: float, zero_point: int) -> float:
    """RMSE of the dequantized output against the float twin's, over the float output's RMS."""
    f = np.asarray(f, np.float64)
    deq = (np.asarray(q, np.float64) - zero_point) * scale
    return float(np.sqrt(np.mean((f - deq) ** 2)) / (np.sqrt(np.mean(f**2)) + 1e-12))


def layer_name(tensor_name: str) -> str:
    """The Keras layer a TFLite tensor came from: ``model/block1_conv/Conv2D;...`` -> block1_conv."""
    first = tensor_name.split(";")[0]
    parts = first.split("/")
    return parts[1] if len(parts) > 2 else parts[0]


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
        try:
            with warnings.catch_warnings():
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
        return self.rows[:n]

    def quantize(self, keep_float: Sequence[str]) -> bytes:
        """The int8 model with the ops writing ``keep_float`` (tensor names) left in float."""
        import tensorflow as tf

        with warnings.catch_warnings():  # the debugger's own tf.lite.Interpreter is deprecated
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
                "layer": layer_name(r["tensor_name"]),
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
    from runner.files import atomic_write_text
    from runner.report import to_csv

    return atomic_write_text(path, to_csv(rows, columns))


def summary(rows: Sequence[Mapping[str, Any]], n: int = 3) -> str:
    return ", ".join(
        f"{r['layer']} ({r['op']}, rel. RMSE {r['relative_rmse']:.3f})" for r in rows[:n]
    )


# --------------------------------------------------------------------------- recipes
def _non_negative(key: str, value: Any, kind: type) -> Any:
    try:
        v = kind(value)
    except (TypeError, ValueError):
        v = -1
    if v < 0:
        raise RunnerError(f"{key} must be a number >= 0, got {value!r}")
    return v


class _DebuggerRecipe(ConverterRecipe):
    """Shared by ``selective`` and ``auto_int8``: full-int8 converter settings plus the debugger."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.report_rows: list[dict[str, Any]] = []

    def debugger(self, ctx: RecipeContext) -> Debugger:
        dbg = Debugger.build(
            ctx.model,
            self.options,
            self.calibration(ctx),
            ctx.dataset.is_text,
            ctx.convert_batch_size,
        )
        self.report_rows = dbg.rows
        write_rows(ctx.models_dir.parent / "layer_report.csv", dbg.rows, REPORT_COLUMNS)
        log.info("%s: worst int8 layers: %s", self.name, summary(dbg.rows))
        return dbg

    def artifact(
        self,
        ctx: RecipeContext,
        flatbuffer: bytes,
        kept: Sequence[Mapping[str, Any]],
        seconds: float,
        **kw: Any,
    ) -> Artifact:
        from runner.files import atomic_write_bytes

        path = atomic_write_bytes(ctx.models_dir / f"{self.name}.tflite", flatbuffer)
        names = sorted({r["layer"] for r in kept})
        return Artifact(
            path.name,
            self.name,
            path,
            "tflite",
            self.quantized,
            convert_seconds=seconds,
            float_layers=f"{len(kept)}: {', '.join(names)}" if kept else "0",
            **kw,
        )


class SelectiveRecipe(_DebuggerRecipe):
    """Full int8 but the ``keep_float`` most error-prone ops (or ``denylist`` by name) in float."""

    def __init__(self, keep_float: int = 1, denylist: Sequence[str] = (), **kw: Any) -> None:
        super().__init__(**kw)
        self.keep_float = _non_negative("recipe.keep_float", keep_float, int)
        self.denylist = tuple(denylist or ())

    def produce(self, ctx: RecipeContext) -> list[Artifact]:
        t0 = time.perf_counter()
        dbg = self.debugger(ctx)
        if self.denylist:
            known = {r["layer"] for r in dbg.rows}
            unknown = sorted(set(self.denylist) - known)
            if unknown:
                raise RunnerError(
                    f"recipe.denylist names {unknown}, which have no quantized op; layers in the report: {sorted(known)}"
                )
            kept = [r for r in dbg.rows if r["layer"] in self.denylist]
        else:
            kept = dbg.worst(self.keep_float)
        flatbuffer = dbg.quantize([r["tensor_name"] for r in kept])
        return [
            self.artifact(
                ctx, flatbuffer, kept, time.perf_counter() - t0, worst_layer=dbg.rows[0]["layer"]
            )
        ]


class AutoInt8Recipe(_DebuggerRecipe):
    """The fewest float layers (worst first) whose int8 model meets an accuracy-drop budget.

    Candidates are scored in LiteRT on a held-out slice of the training split (never the test
    split) against the float model on the same slice; every step goes to ``fallback_trace.csv``.
    """

    def __init__(
        self,
        max_accuracy_drop: float = 0.005,
        max_float_layers: int = 8,
        holdout_samples: int = 1000,
        holdout_seed: int = 1,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.max_accuracy_drop = _non_negative("recipe.max_accuracy_drop", max_accuracy_drop, float)
        self.max_float_layers = _non_negative("recipe.max_float_layers", max_float_layers, int)
        self.holdout_samples = int(holdout_samples)
        self.holdout_seed = int(holdout_seed)
        self.trace: list[dict[str, Any]] = []

    def holdout(self, ctx: RecipeContext):
        """The baseline's validation split (never fitted on), capped at ``holdout_samples``."""
        from runner.data import subset
        from runner.train import TrainConfig, split_validation

        cfg = TrainConfig.from_mapping(ctx.train_cfg or {})
        _, val = split_validation(ctx.dataset.train, cfg.validation_split, cfg.seed)
        if val is None:
            log.warning(
                "auto_int8: train.validation_split is 0, so the budget is checked on training samples"
            )
            val = ctx.dataset.train
        return subset(val, self.holdout_samples, self.holdout_seed)

    def produce(self, ctx: RecipeContext) -> list[Artifact]:
        import tempfile

        from runner.evaluate import TFLiteModel, labels_from_outputs, predict_keras

        t0 = time.perf_counter()
        dbg = self.debugger(ctx)
        hold = self.holdout(ctx)
        float_acc = float(
            np.mean(labels_from_outputs(predict_keras(ctx.model, hold.x, ctx.scaling)) == hold.y)
        )
        self.trace = []
        best: tuple[float, int, bytes, list] | None = None
        limit = min(self.max_float_layers, len(dbg.rows))
        with tempfile.TemporaryDirectory(prefix="auto_int8-") as tmp:
            for k in range(limit + 1):
                kept = dbg.rows[:k]
                flatbuffer = dbg.quantize([r["tensor_name"] for r in kept])
                path = Path(tmp) / f"step{k}.tflite"
                path.write_bytes(flatbuffer)
                out = TFLiteModel(path).predict(hold.x, ctx.scaling, 128)
                acc = float(np.mean(labels_from_outputs(out) == hold.y))
                drop = float_acc - acc
                ok = drop <= self.max_accuracy_drop
                self.trace.append(
                    {
                        "step": k,
                        "float_layers": k,
                        "layers": " ".join(r["layer"] for r in kept),
                        "size_bytes": len(flatbuffer),
                        "holdout_accuracy": acc,
                        "accuracy_drop": drop,
                        "meets_budget": ok,
                    }
                )
                log.info(
                    "auto_int8: %d float layer(s), holdout accuracy %.4f (drop %.4f)", k, acc, drop
                )
                if best is None or acc > best[0] or ok:  # the first point in budget wins
                    best = (acc, k, flatbuffer, kept)
                if ok:
                    break
        write_rows(ctx.models_dir.parent / "fallback_trace.csv", self.trace, TRACE_COLUMNS)
        assert best is not None
        acc, k, flatbuffer, kept = best
        met = self.trace[-1]["meets_budget"]
        note = (
            f"budget met with {k} float layer(s) (holdout drop {float_acc - acc:.4f})"
            if met
            else f"no point within {limit} float layer(s) meets the budget {self.max_accuracy_drop}; "
            f"kept the best found: {k} float layer(s), holdout drop {float_acc - acc:.4f}"
        )
        return [
            self.artifact(
                ctx,
                flatbuffer,
                kept,
                time.perf_counter() - t0,
                worst_layer=dbg.rows[0]["layer"],
                note=note,
            )
        ]
