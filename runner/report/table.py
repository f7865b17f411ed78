"""Report stage: the comparison table of a run (CSV, Markdown) and the run's results.json.

Imports neither TensorFlow nor LiteRT, so tables can be rebuilt anywhere.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

from runner.files import atomic_write_text, csv_text

log = logging.getLogger(__name__)


class Row(TypedDict):
    """One row of the comparison table: one artifact of a run (or a run that failed before it
    had one). Every row has every key, in this order (the CSV's columns); a value not measured
    is None. The meaning of each column: docs/results.md."""

    dataset: str
    model: str
    recipe: str
    role: str | None  # float (the Keras model), reference (recipe@reference), recipe
    artifact: str
    format: str | None  # tflite | keras
    size_bytes: int | None
    size_mb: float | None
    compression: float | None  # the reference's size / this size
    size_gzip_bytes: int | None  # gzip -9 of the file: what a download transfers
    compression_gzip: float | None  # the reference's gzip size / this gzip size
    sparsity: float | None  # share of exact zeros among the .tflite's weights
    max_unique_per_channel: int | None  # most distinct weight values in any output channel
    accuracy: float | None
    accuracy_delta: float | None  # against the float Keras model
    agreement: float | None  # share of test samples with the float model's label
    output_sqnr_db: float | None
    output_max_abs_error: float | None
    top5: float | None
    latency_ms: float | None
    latency_p50_ms: float | None
    latency_p90_ms: float | None
    latency_spread: float | None  # p90 / p50; the verdict trusts latency only when narrow
    latency_note: str | None  # why the latency may not be trusted (a loaded machine ...)
    train_seconds: float | None
    convert_seconds: float | None
    eval_seconds: float | None
    baseline_cache: str | None  # hit | miss | pretrained | uncached
    status: str  # ok | failed
    error: str | None
    worst_layer: str | None
    float_layers: str | None
    route: str | None  # recurrent models: fused | unrolled
    note: str | None
    use_case: str | None
    path: str | None
    sha256: str | None
    baseline_key: str | None
    # on a device target (runner.targets; empty on the host): does the file run there, in how
    # much RAM and flash, how fast, and with which labels
    target: str | None
    target_status: str | None  # runs | refused | over_ram | over_flash
    target_reason: str | None
    ram_bytes: int | None
    flash_bytes: int | None
    npu_ops: int | None
    cpu_ops: int | None
    target_latency_ms: float | None  # Vela's estimate on the NPU
    target_accuracy: float | None  # computed in the target's interpreter
    target_agreement: float | None  # share of labels equal to LiteRT's on the same file
    target_samples: int | None
    target_path: str | None  # the file the board loads, where it differs (Vela's compiled file)


# Every row has these columns, in this order: the keys of Row.
COLUMNS = list(Row.__annotations__)
# The numeric per-artifact measurements (what experiment trackers log as metrics).
METRIC_COLUMNS = tuple(
    c
    for c in COLUMNS
    if (
        c.startswith(("size", "compression", "accuracy", "agreement", "output_", "top5", "latency"))
        or c in ("sparsity", "max_unique_per_channel")
        or c.endswith("_seconds")
    )
    and c != "latency_note"
)
# The columns a person reads in the Markdown table (the CSV has all of them).
DISPLAY = [
    "artifact",
    "format",
    "size_mb",
    "compression",
    "accuracy",
    "accuracy_delta",
    "agreement",
    "output_sqnr_db",
    "top5",
    "latency_ms",
    "train_seconds",
    "baseline_cache",
    "status",
    "error",
    "target",
    "target_status",
    "ram_bytes",
    "flash_bytes",
    "npu_ops",
    "target_latency_ms",
    "target_accuracy",
    "target_agreement",
    "target_reason",
    "worst_layer",
    "float_layers",
    "route",
    "note",
]


def empty_row(**values: Any) -> Row:
    """A :class:`Row` with every column, None where ``values`` gives nothing."""
    unknown = set(values) - set(COLUMNS)
    if unknown:
        raise KeyError(f"not a column of the table: {sorted(unknown)}")
    row = dict.fromkeys(COLUMNS)
    row.update(values)
    return row  # type: ignore[return-value]


def to_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] = COLUMNS) -> str:
    return csv_text(rows, columns)


def to_markdown(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] = DISPLAY) -> str:
    cols = [
        c
        for c in columns
        if any(r.get(c) not in (None, "") for r in rows) or c in ("artifact", "status")
    ]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_md_cell(c, r.get(c)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def write_tables(
    rows: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike, stem: str = "comparison"
) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    csv_path = atomic_write_text(out_dir / f"{stem}.csv", to_csv(rows))
    md_path = atomic_write_text(out_dir / f"{stem}.md", to_markdown(rows))
    return csv_path, md_path


def _md_cell(col: str, v: Any) -> str:
    if v is None or v == "":
        return ""
    if isinstance(v, float):
        if col.startswith("accuracy_delta"):
            return f"{v:+.4f}"
        if col.split("_")[0] in ("accuracy", "agreement", "top5"):
            return f"{v:.4f}"
        if col.startswith("compression"):
            return f"{v:.2f}x"
        if col == "sparsity":
            return f"{v:.3f}"
        if col == "output_sqnr_db":
            return f"{v:.1f}"
        if col == "output_max_abs_error":
            return f"{v:.2g}"
        if col == "size_mb" or col.startswith("latency"):
            return f"{v:.3f}"
        return f"{v:.2f}"
    return str(v).replace("|", "\\|")
