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
    from runner import report
    from runner.errors import RunnerError, summarize_error
    from runner.pipeline import run, write_job_failure

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
            write_job_failure(
                cfg, out, str(e) if isinstance(e, RunnerError) else summarize_error(e)
            )
            return
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
    print(report.to_markdown(result.rows))
    if result.worst_layers:
        print(
            f"worst int8 layers: {', '.join(result.worst_layers)} (all of them: {out / 'layer_report.csv'})",
            file=sys.stderr,
        )
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"results: {out}", file=sys.stderr)
    if not result.ok:
        failed = ", ".join(r["artifact"] for r in result.rows if r["status"] != "ok")
        print(f"error: failed: {failed} (see the error column)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
