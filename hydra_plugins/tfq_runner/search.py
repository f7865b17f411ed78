"""``hydra/sweeper=search``: find the file to ship without running every recipe.

The loop, its plan and its study are :mod:`runner.search`; this sweeper hands it Hydra's
launcher (basic, joblib, SLURM, Ray: each trial is a normal job) and the composed job configs,
each checked before its job runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from hydra_plugins.tfq_runner.sweeper import RunnerSweeper


class SearchSweeper(RunnerSweeper):
    """Runs recipes cheapest first, skipping those that cannot beat the best file found."""

    def sweep(self, arguments: list[str]) -> Any:
        from runner.errors import RunnerError
        from runner.preflight import ConfigProblems
        from runner.search.entry import run_search

        assert self.config is not None and self.launcher is not None
        assert self.hydra_context is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([*self._parse_config(), *arguments])

        def compose(job: list[str]) -> Any:
            return self.checked(job)  # every candidate checked before any job runs

        def launch(batch: list[list[str]], first: int) -> list[Path]:
            self.validate_batch_is_legal(batch)
            returns = self.launcher.launch(batch, initial_job_idx=first)
            return [_job_dir(r, sweep_dir, first + i) for i, r in enumerate(returns)]

        try:
            return run_search(self.config, overrides, compose, launch)
        except RunnerError as e:
            raise ConfigProblems([str(e)]) from None


def _job_dir(ret: Any, sweep_dir: Path, number: int) -> Path:
    cfg = getattr(ret, "hydra_cfg", None) or {}
    folder = OmegaConf.select(cfg, "hydra.runtime.output_dir", default=None) or OmegaConf.select(
        cfg, "runtime.output_dir", default=None
    )
    return Path(folder) if folder else sweep_dir / str(number)
