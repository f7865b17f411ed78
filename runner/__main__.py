"""``python -m runner [overrides]``: Hydra composes the config; :func:`runner.cli.job` runs it."""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import runner  # noqa: F401 - sets TF_USE_LEGACY_KERAS before anything imports TensorFlow


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from runner.cli import job

    hc = HydraConfig.get()
    job(cfg, hc, multirun=hc.mode == RunMode.MULTIRUN)


if __name__ == "__main__":
    from runner.cli import guarded, quick_exit
    from runner.config import register_bases

    register_bases()  # the schemas' nodes that conf/*.yaml extend (Hydra carries them to jobs)
    try:
        guarded(main)
    except SystemExit as e:
        quick_exit(e.code)
    quick_exit(0)
