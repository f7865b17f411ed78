"""``python -m runner [overrides]``: compose the config, run the stages, print the table."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import runner  # noqa: F401 - sets TF_USE_LEGACY_KERAS before anything imports TensorFlow

log = logging.getLogger("runner")


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from runner import quiet, report
    from runner.errors import RunnerError, summarize_error
    from runner.pipeline import run, write_job_failure

    verbose = bool(cfg.get("verbose", False))
    if not verbose:
        quiet.warnings_to_log_file()
    hidden = quiet.start_tensorflow(verbose=verbose)
    log.debug("hidden TensorFlow start-up lines: %s", hidden)

    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    if hc.mode == RunMode.MULTIRUN:
        # A job never raises: Hydra would skip the sweep table. Its failure becomes its row.
        try:
            result = run(cfg, out)
        except Exception as e:  # noqa: BLE001
            log.error(
                "job failed: %s",
                e if isinstance(e, RunnerError) else summarize_error(e),
                exc_info=not isinstance(e, RunnerError),
            )
            rows = write_job_failure(
                cfg, out, str(e) if isinstance(e, RunnerError) else summarize_error(e)
            )
            _track(cfg, rows, out, hc)
            return
        _track(cfg, result.rows, out, hc)
        status = (
            "ok"
            if result.ok
            else "failed: " + ", ".join(r["artifact"] for r in result.rows if r["status"] != "ok")
        )
        log.info("job done (%s): %s", status, out)
        return
    try:
        result = run(cfg, out)
    except RunnerError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    _track(cfg, result.rows, out, hc)
    print(report.to_markdown(result.rows))
    if result.worst_layers:
        print(
            f"worst layers: {', '.join(result.worst_layers)} (all of them: {out / 'layer_report.csv'})",
            file=sys.stderr,
        )
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"results: {out}", file=sys.stderr)
    if not result.ok:
        failed = ", ".join(r["artifact"] for r in result.rows if r["status"] != "ok")
        print(f"error: failed: {failed} (see the error column)", file=sys.stderr)
        sys.exit(1)


def _track(cfg: DictConfig, rows: list, out: Path, hc) -> None:
    """``logger=mlflow``: the job as an MLflow run (a child of the sweep's run in a multirun).
    A tracking failure is a warning: the run's own files are already written."""
    from runner import tracking
    from runner.errors import summarize_error

    if not tracking.enabled(cfg):
        return
    parent = (
        tracking.parent_run_id(Path(str(hc.sweep.dir))) if hc.mode == RunMode.MULTIRUN else None
    )
    try:
        tracking.log_job(cfg, rows, out, list(hc.overrides.task), parent)
    except Exception as e:  # noqa: BLE001 - never lose a finished run to its tracking
        print(f"warning: MLflow logging failed: {summarize_error(e)}", file=sys.stderr)


if __name__ == "__main__":
    main()
