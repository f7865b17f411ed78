"""The sweep's table: every job folder's rows read back from disk (any launcher, any machine),
each baseline's float rows once, a killed or stopped job as a failed row, the files a row names
found in the folder being read, and the summary over seeds (``python -m runner.report``)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from runner.files import atomic_write_text
from runner.report.search import extra_rows
from runner.report.select import INCOMPLETE, pareto
from runner.report.table import COLUMNS, DISPLAY, empty_row, to_csv, to_markdown

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
    searched = [extra_rows(Path(path)) for path in paths]  # a search's earlier and skipped
    jobs += [job for earlier, _ in searched for job in earlier if job not in jobs]
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
    return rows + [r for _, skipped in searched for r in skipped]


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
