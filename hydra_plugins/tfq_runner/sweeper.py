"""The runner's sweeper, where Hydra looks for sweepers (its plugin namespace).

Hydra's basic sweeper composes every job's config twice: once to check the batch before
launching anything (so a bad override stops the sweep before a job runs), and again when the
launcher starts the job. With the runner's config groups a composition costs ~0.13 s, a sizable
share of a sweep's fixed cost. This sweeper (``hydra/sweeper=runner``, the default in
``conf/config.yaml``) hands the launcher the config it composed to check the job; everything
else is Hydra's basic sweeper (``hydra.sweeper.params``, ``max_batch_size``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.types import HydraContext

# Configs kept between the check and the launch, at most (a config is ~1 MB of Python objects);
# jobs past this many are composed again by the launcher, as with Hydra's own sweeper.
KEPT = 64


class ComposedOnce:
    """A config loader that gives a job the config composed when its batch was checked (once),
    and composes anew what it does not hold. Everything else is the wrapped loader's. A copy sent
    to another process (joblib, Ray) travels without the held configs."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.held: dict[tuple[str, ...], Any] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["loader"], name)

    def __getstate__(self) -> dict[str, Any]:
        return {"loader": self.loader, "held": {}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def compose(self, master_config: Any, overrides: Sequence[str]) -> Any:
        """The job's config, composed now or held from an earlier check of the same job."""
        config = self.held.get(tuple(overrides))
        if config is None:
            config = self.loader.load_sweep_config(master_config, list(overrides))
            if len(self.held) < KEPT:
                self.held[tuple(overrides)] = config
        return config

    def load_sweep_config(self, master_config: Any, sweep_overrides: list[str]) -> Any:
        config = self.held.pop(tuple(sweep_overrides), None)
        if config is None:
            config = self.loader.load_sweep_config(master_config, sweep_overrides)
        return config


class RunnerSweeper(BasicSweeper):
    """Hydra's basic sweeper, composing each job's config once (see the module's text)."""

    def setup(self, *, hydra_context: HydraContext, task_function: Any, config: Any) -> None:
        loader = ComposedOnce(hydra_context.config_loader)
        context = HydraContext(config_loader=loader, callbacks=hydra_context.callbacks)
        super().setup(hydra_context=context, task_function=task_function, config=config)

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Every job of the batch composed and checked against the runner's schemas before any
        job starts: one line per problem, prefixed with the job's overrides, exit 2."""
        from runner.preflight import ConfigProblems

        bad: list[str] = []
        for overrides in batch:
            try:
                self.checked(overrides)
            except ConfigProblems as e:
                bad += e.lines
        if bad:
            raise ConfigProblems(bad)

    def checked(self, overrides: Sequence[str]) -> Any:
        """One job's config, composed (once: the launcher gets the same) and checked against the
        runner's schemas.

        Raises:
            ConfigProblems: one line per problem, prefixed with the job's overrides.
        """
        from runner.config import problems
        from runner.preflight import ConfigProblems

        assert self.hydra_context is not None and self.config is not None
        where = " ".join(overrides) or "(no overrides)"
        try:  # raises as Hydra's check does
            config = self.hydra_context.config_loader.compose(self.config, overrides)
        except ConfigProblems as e:
            raise ConfigProblems([f"job {where}: {line}" for line in e.lines]) from None
        bad = problems(config)
        if bad:
            raise ConfigProblems([f"job {where}: {line}" for line in bad])
        return config
