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
    from runner.errors import RunnerError
    from runner.pipeline import failed_job_rows, run

    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        result = run(cfg, out)
    except RunnerError as e:
        if multirun:  # keep the sweep going; the job's failure is its row
            log.error("job failed: %s", e)
            report.write_tables(failed_job_rows(cfg, str(e)), out)
            return
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(report.to_markdown(result.rows))
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"results: {out}", file=sys.stderr)
    if not result.ok and not multirun:
        failed = ", ".join(r["artifact"] for r in result.rows if r["status"] != "ok")
        print(f"error: failed: {failed} (see the error column)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
