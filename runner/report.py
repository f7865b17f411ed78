"""Report stage: the comparison table of a run (CSV, Markdown) and the run's results.json.

Imports neither TensorFlow nor LiteRT, so tables can be rebuilt anywhere.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from runner.files import atomic_write_text

log = logging.getLogger(__name__)

# Every row has these columns, in this order.
COLUMNS = [
    "dataset",
    "model",
    "recipe",
    "artifact",
    "format",
    "size_bytes",
    "size_mb",
    "compression",
    "accuracy",
    "accuracy_delta",
    "agreement",
    "top5",
    "latency_ms",
    "latency_p50_ms",
    "latency_p90_ms",
    "train_seconds",
    "convert_seconds",
    "baseline_cache",
    "status",
    "error",
    "use_case",
    "path",
    "sha256",
]
# The columns a person reads in the Markdown table (the CSV has all of them).
DISPLAY = [
    "artifact",
    "format",
    "size_mb",
    "compression",
    "accuracy",
    "accuracy_delta",
    "agreement",
    "top5",
    "latency_ms",
    "train_seconds",
    "baseline_cache",
    "status",
    "error",
]
MB = 1 << 20  # size_mb is MiB, as `ls -lh` shows it


def empty_row(**values: Any) -> dict[str, Any]:
    row = dict.fromkeys(COLUMNS)
    row.update(values)
    return row


def to_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] = COLUMNS) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(
        buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n"
    )
    writer.writeheader()
    for r in rows:
        writer.writerow({c: _csv_cell(r.get(c)) for c in columns})
    return buf.getvalue()


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


def _csv_cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(round(v, 6))
    return v


def _md_cell(col: str, v: Any) -> str:
    if v is None or v == "":
        return ""
    if isinstance(v, float):
        if col in ("accuracy", "agreement", "top5"):
            return f"{v:.4f}"
        if col == "accuracy_delta":
            return f"{v:+.4f}"
        if col == "compression":
            return f"{v:.2f}x"
        if col == "size_mb" or col.startswith("latency"):
            return f"{v:.3f}"
        return f"{v:.2f}"
    return str(v).replace("|", "\\|")
