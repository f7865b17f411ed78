"""Report stage: the comparison table of a run (CSV, Markdown) and the run's results.json.

Imports neither TensorFlow nor LiteRT, so tables can be rebuilt anywhere.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

from runner.files import atomic_write_text, csv_text
from runner.report.select import INCOMPLETE, pareto

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


# --------------------------------------------------------------------------- sweeps
SWEEP_COLUMNS = [*COLUMNS, "pareto", "overrides", "varies", "job"]
SWEEP_DISPLAY = ["varies", *DISPLAY]  # `varies`: the overrides that differ between the jobs
BASELINE_ROLES = ("float", "reference")  # rows every job of a baseline repeats: kept once


def is_baseline_row(r: Mapping[str, Any]) -> bool:
    """The float model's and the reference's rows (results written before ``role`` existed: by
    their recipe name)."""
    role = r.get("role")
    return role in BASELINE_ROLES if role else r.get("recipe") in ("float", "none")


def job_dirs(path: str | os.PathLike) -> list[Path]:
    """Run folders under ``path``: the folder itself if it is a run, else its job subfolders."""
    p = Path(path)
    if (p / "results.json").exists() or (p / ".hydra").is_dir() and not _subjobs(p):
        return [p]
    return _subjobs(p)


def _subjobs(p: Path) -> list[Path]:
    subs = [
        d
        for d in p.iterdir()
        if d.is_dir() and ((d / ".hydra").is_dir() or (d / "results.json").exists())
    ]
    return sorted(subs, key=lambda d: (int(d.name) if d.name.isdigit() else 1 << 30, d.name))


# left in a job's folder by a launcher (runner.launchers) when the job ended without results
STOPPED_FILE = "stopped.json"


def stopped(job: Path) -> dict[str, Any]:
    """What a launcher left when it saw the job end without results: ``reason`` ("cancelled by
    SLURM", ...) and the job's ``dataset``, ``model`` and ``recipe`` names; empty if nothing."""
    try:
        data = json.loads((job / STOPPED_FILE).read_text())
        return data if isinstance(data, dict) and isinstance(data.get("reason"), str) else {}
    except (OSError, ValueError):
        return {}


def job_rows(job: Path) -> list[dict[str, Any]]:
    """The rows one job left on disk; a job that left none (killed, crashed) is one failed row."""
    overrides = " ".join(_overrides(job))
    results = job / "results.json"
    rows: list[dict[str, Any]]
    shape = None
    try:
        data = json.loads(results.read_text())
        rows = data["rows"]
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise TypeError
    except (OSError, ValueError, KeyError):
        data, rows = {}, []
    except TypeError:  # valid JSON of another shape (a hand edit, another tool's file)
        data, rows = {}, []
        shape = f'{results} is not a runner results file (expected {{"rows": [{{...}}, ...]}})'
    left = stopped(job)
    why = left.get("reason") or shape
    if not rows:
        names = {k: left[k] for k in ("dataset", "model", "recipe") if k in left}
        rows = [
            empty_row(
                **names,
                status="failed",
                error=why or "the job left no results (killed or crashed before its first row)",
            )
        ]
    elif data.get("status") == "running":  # stopped after some rows: its recipe never finished
        config = data.get("config") or {}
        recipe = (config.get("recipe") or {}).get("name", "?")
        rows = [
            *rows,
            empty_row(
                dataset=rows[0].get("dataset"),
                model=rows[0].get("model"),
                recipe=recipe,
                role="recipe",
                status="failed",
                error=f"{INCOMPLETE} {why}"
                if why
                else f"{INCOMPLETE} the job stopped (killed or interrupted) before its recipe finished",
            ),
        ]
    return [
        {
            **empty_row(),
            **r,
            "path": _here(job, r.get("path")),
            "overrides": overrides,
            "job": job.name,
        }
        for r in rows
    ]


def _here(job: Path, path: Any) -> Any:
    """A row's file in the folder being read (``<job>/models/<file>``) when it is there: a sweep
    folder that was moved or copied names its own files, not the original's."""
    if not path:
        return path
    p = Path(str(path))
    local = job / p.parent.name / p.name
    return str(local) if local.is_file() else path


def _overrides(job: Path) -> list[str]:
    f = job / ".hydra" / "overrides.yaml"
    if not f.exists():
        return []
    from omegaconf import OmegaConf

    return [str(o) for o in OmegaConf.load(f)]


def aggregate(paths: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """Every job's rows, with each baseline's float rows (Keras model, float32 TFLite) once."""
    rows, seen = [], set()
    jobs = [job for path in paths for job in job_dirs(path)]
    per_job = {job: _overrides(job) for job in jobs}
    common = set.intersection(*(set(o) for o in per_job.values())) if len(jobs) > 1 else set()
    for job in jobs:
        varies = " ".join(o for o in per_job[job] if o not in common)
        for r in job_rows(job):
            r["varies"] = varies
            if is_baseline_row(r) and r.get("status") == "ok":
                key = (r.get("dataset"), r.get("model"), r.get("baseline_key"), r.get("artifact"))
                if key in seen:
                    continue
                seen.add(key)
            rows.append(r)
    return rows


SUMMARY_COLUMNS = [
    "dataset",
    "model",
    "recipe",
    "artifact",
    "varies",
    "runs",
    "failed",
    "accuracy_mean",
    "accuracy_min",
    "accuracy_max",
    "accuracy_delta_mean",
    "accuracy_delta_min",
    "accuracy_delta_max",
    "agreement_mean",
    "agreement_min",
    "size_mb_mean",
]


def seed_summary(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows of a sweep over ``seed`` grouped per artifact: runs, failures, mean/min/max.

    Empty when no artifact was run with more than one seed. A baseline's float rows are grouped
    across recipes too (each job of a seed repeats them).
    """
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    seeds: dict[tuple, set[str]] = {}
    for r in rows:
        drop = ("seed=", "recipe=") if is_baseline_row(r) else ("seed=",)
        tokens = str(r.get("varies") or "").split()
        rest = " ".join(t for t in tokens if not t.startswith(drop))
        key = (r.get("dataset"), r.get("model"), r.get("recipe"), r.get("artifact"), rest)
        groups.setdefault(key, []).append(r)
        seeds.setdefault(key, set()).update(t for t in tokens if t.startswith("seed="))
    if not any(len(s) > 1 for s in seeds.values()):
        return []
    out = []
    for (dataset, model, recipe, artifact, rest), rs in groups.items():
        ok = [r for r in rs if r.get("status") == "ok"]
        row: dict[str, Any] = {
            "dataset": dataset,
            "model": model,
            "recipe": recipe,
            "artifact": artifact,
            "varies": rest,
            "runs": len(rs),
            "failed": len(rs) - len(ok),
        }
        for col in ("accuracy", "accuracy_delta", "agreement", "size_mb"):
            vals = [float(r[col]) for r in ok if isinstance(r.get(col), (int, float))]
            if vals:
                row[f"{col}_mean"] = sum(vals) / len(vals)
                row[f"{col}_min"], row[f"{col}_max"] = min(vals), max(vals)
        out.append(row)
    return out


def write_sweep_report(
    paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike, chart: bool = True
) -> list[dict[str, Any]]:
    """``comparison.{csv,md,json}`` in ``out_dir`` from the job folders under ``paths``, and the
    chart ``comparison.png`` unless ``chart`` is false (the verdict draws it, its choice starred)."""
    rows = aggregate(paths)
    for r, on_front in zip(rows, pareto(rows), strict=True):
        r["pareto"] = on_front  # per (data set, model): size vs accuracy
    out = Path(out_dir)
    atomic_write_text(out / "comparison.csv", to_csv(rows, SWEEP_COLUMNS))
    atomic_write_text(out / "comparison.md", to_markdown(rows, SWEEP_DISPLAY))
    atomic_write_text(
        out / "comparison.json",
        json.dumps(
            [{c: r.get(c) for c in SWEEP_COLUMNS} for r in rows], indent=2, ensure_ascii=False
        )
        + "\n",
    )
    if chart:
        from runner.report.plot import plot

        plot(rows, out / "comparison.png")
    summary = seed_summary(rows)
    if summary:  # a sweep over seeds: how much of a difference is noise
        atomic_write_text(out / "summary.csv", to_csv(summary, SUMMARY_COLUMNS))
        atomic_write_text(out / "summary.md", to_markdown(summary, SUMMARY_COLUMNS))
    return rows
