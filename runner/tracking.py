"""MLflow tracking (optional, ``logger=mlflow``): each job is an MLflow run, a multirun is a parent
run with one child per job.

A job's run holds the composed config flattened (params) and its overrides, one metric per
artifact and column (``float16.tflite/accuracy``), tags (recipe, dataset, model, baseline key,
status) and its files (comparison table, results.json, layer report; the ``.tflite`` files with
``logger.log_models=true``). Install with ``pip install -e ".[tracking]"`` (MLflow and its UI).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from runner.errors import RunnerError
from runner.report.table import METRIC_COLUMNS
from runner.schema import Options

# MLflow's SQLite store, relative to where you launch: `mlflow ui --backend-store-uri` takes the
# same URI (MLflow 3 keeps its folder store only behind MLFLOW_ALLOW_FILE_STORE=true)
DEFAULT_STORE = "sqlite:///outputs/mlruns.db"

log = logging.getLogger(__name__)

METRICS = METRIC_COLUMNS  # every numeric column of the comparison table
RUN_FILES = ("comparison.csv", "comparison.md", "results.json", "layer_report.csv")
RUN_FILES += ("fallback_trace.csv",)
SWEEP_FILES = ("comparison.csv", "comparison.md", "comparison.json", "comparison.png")
SWEEP_FILES += ("summary.csv", "summary.md", "recommendation.json", "recommendation.md")
PARENT_FILE = ".mlflow_parent_run"  # in the sweep folder: the parent run's id, for every job


class LoggerOptions(Options):
    """``conf/logger/*.yaml``: where runs are tracked."""

    name: Literal["none", "mlflow"] = Field("none", description="none, or MLflow runs")
    tracking_uri: str = Field(
        DEFAULT_STORE,
        min_length=1,
        description="where runs are logged: a SQLite file (sqlite:///path.db), a server "
        "(http://...) or a local folder (MLflow's file store, kept only behind "
        "MLFLOW_ALLOW_FILE_STORE=true, which the runner sets)",
    )
    experiment: str = Field("tfq-runner", min_length=1, description="the MLflow experiment")
    log_models: bool = Field(False, description="also upload every .tflite file of the run")


def enabled(cfg: Any) -> bool:
    logger = cfg.get("logger") if hasattr(cfg, "get") else None
    return bool(logger) and str(logger.get("name", "none")) == "mlflow"


def mlflow_module():
    try:
        import mlflow
    except ImportError:
        raise RunnerError(
            'logger=mlflow needs MLflow: pip install -e ".[tracking]" (or pip install mlflow)'
        ) from None
    return mlflow


def connect(logger: Mapping[str, Any]):
    """The mlflow module, pointed at ``logger.tracking_uri`` and ``logger.experiment``.

    A local folder is MLflow's file store, which MLflow 3 keeps only behind
    ``MLFLOW_ALLOW_FILE_STORE=true`` (set here for a local path; a server or database URI is used
    as given).
    """
    mlflow = mlflow_module()
    uri = str(logger.get("tracking_uri") or DEFAULT_STORE)
    if uri.startswith("sqlite:///"):  # the database file's folder must exist
        Path(uri.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)
    if "://" not in uri and not uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        uri = Path(uri).expanduser().resolve().as_uri()
    elif uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri(uri)
    name = str(logger.get("experiment") or "tfq-runner")
    if uri.startswith("sqlite:///") and mlflow.get_experiment_by_name(name) is None:
        # artifacts beside the database (MLflow's default is ./mlruns under the working folder)
        db = Path(uri.removeprefix("sqlite:///")).expanduser().resolve()
        # another job of the sweep may create it first
        with contextlib.suppress(Exception):
            mlflow.create_experiment(name, artifact_location=(db.parent / "mlartifacts").as_uri())
    mlflow.set_experiment(name)
    return mlflow


def flatten(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from flatten(v, f"{prefix}.{k}" if prefix else str(k))
    else:
        yield prefix, obj


def log_job(
    cfg: Any,
    rows: list[dict[str, Any]],
    output_dir: Path,
    overrides: list[str],
    parent_run_id: str | None = None,
) -> str:
    """One MLflow run for one job (its rows, config, files). Returns the run id."""
    from omegaconf import OmegaConf

    mlflow = connect(cfg.logger)
    config = OmegaConf.to_container(cfg, resolve=True)
    config.pop("hydra", None)
    recipe = str(cfg.recipe.get("name", "?"))
    ok = all(r.get("status") == "ok" for r in rows)
    tags = {
        "recipe": recipe,
        "dataset": str(cfg.dataset.get("name", "?")),
        "model": str(cfg.model.get("name", "?")),
        "baseline_key": str(
            next((r.get("baseline_key") for r in rows if r.get("baseline_key")), "")
        ),
        "status": "ok" if ok else "failed",
    }
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    with mlflow.start_run(run_name=" ".join(overrides) or recipe, tags=tags) as run:
        params = {k: str(v)[:500] for k, v in flatten(config)}
        params["overrides"] = " ".join(overrides)[:500]
        mlflow.log_params(params)
        metrics = {
            f"{r['artifact']}/{m}": float(r[m])
            for r in rows
            if r.get("status") == "ok" and r.get("artifact")
            for m in METRICS
            if isinstance(r.get(m), (int, float)) and not isinstance(r.get(m), bool)
        }
        if metrics:
            mlflow.log_metrics(metrics)
        for name in RUN_FILES:
            if (output_dir / name).is_file():
                mlflow.log_artifact(str(output_dir / name))
        if cfg.logger.get("log_models"):
            for f in sorted((output_dir / "models").glob("*.tflite")):
                mlflow.log_artifact(str(f), artifact_path="models")
        run_id = run.info.run_id
    log.info("MLflow run %s (%s)", run_id, mlflow.get_tracking_uri())
    return run_id


def parent_run_id(sweep_dir: Path) -> str | None:
    f = Path(sweep_dir) / PARENT_FILE
    return f.read_text().strip() if f.is_file() else None


def open_parent_run(config: Any) -> None:
    """A multirun's parent MLflow run; its id is left in the sweep folder for every job."""
    mlflow = connect(config.logger)
    sweep_dir = Path(str(config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    run = mlflow.start_run(run_name=f"sweep {sweep_dir.name}", tags={"sweep": str(sweep_dir)})
    (sweep_dir / PARENT_FILE).write_text(run.info.run_id)
    mlflow.end_run()


def log_sweep(config: Any) -> None:
    """The sweep table's files, logged to the parent run."""
    sweep_dir = Path(str(config.hydra.sweep.dir))
    run_id = parent_run_id(sweep_dir)
    if run_id is None:
        return
    mlflow = connect(config.logger)
    with mlflow.start_run(run_id=run_id):
        for name in SWEEP_FILES:
            if (sweep_dir / name).is_file():
                mlflow.log_artifact(str(sweep_dir / name))
