"""The search's ledger: an Optuna study in a journal file (Optuna >= 4), one trial per job, so a
killed search resumes where it stopped and no finished trial runs again; the parameters searched
inside a recipe are sampled from it (TPE or NSGA-II with the budget as a constraint, seeded)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runner.errors import RunnerError

log = logging.getLogger(__name__)

# (objective to minimize, accuracy to maximize): the Pareto front the study keeps
DIRECTIONS = ["minimize", "maximize"]


def _optuna():
    try:
        import optuna
    except ImportError:
        raise RunnerError(
            "hydra/sweeper=search keeps its trials in an Optuna study: pip install 'optuna>=4' "
            '(or pip install -e ".[search]")'
        ) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def constraints(trial: Any) -> list[float]:
    """The budget of a finished trial (<= 0: met), as the samplers read it."""
    return list(trial.user_attrs.get("constraints", [1.0, 1.0]))


def native_constraints() -> bool:
    """Optuna >= 5 reads a trial's constraints from the trial (``set_constraint``); 4 from the
    sampler's ``constraints_func``."""
    return hasattr(_optuna().trial.Trial, "set_constraint")


def constrain(trial: Any, values: list[float]) -> None:
    """Record the budget of a trial before it is told (<= 0: met)."""
    trial.set_user_attr("constraints", values)
    if native_constraints():
        trial.set_constraint("accuracy_drop", values[0])
        trial.set_constraint("agreement", values[1])


def sampler(kind: str, seed: int, trials: int) -> Any:
    """The seeded sampler of ``search.sampler``; TPE starts from a third of the trials drawn at
    random (at least 2), then models where the budget is met."""
    optuna = _optuna()
    kw = {} if native_constraints() else {"constraints_func": constraints}
    if kind == "tpe":
        import warnings

        with warnings.catch_warnings():  # multivariate TPE is "experimental" since Optuna 2.2
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                seed=seed, n_startup_trials=max(2, trials // 3), multivariate=True, **kw
            )
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, **kw)
    if kind == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, scramble=True)
    return optuna.samplers.RandomSampler(seed=seed)


def open_study(path: Path, kind: str, seed: int, trials: int) -> Any:
    """The study in the journal at ``path`` (made when missing; resumed when there)."""
    optuna = _optuna()
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        storage = JournalStorage(JournalFileBackend(str(path)))
    except OSError as e:
        raise RunnerError(
            f"cannot keep the search's study in {path} ({e.strerror or e}): give a writable "
            "search.study=<file>.journal or cache_dir=<folder>"
        ) from None
    return optuna.create_study(
        study_name="search",
        storage=storage,
        directions=DIRECTIONS,
        sampler=sampler(kind, seed, trials),
        load_if_exists=True,
    )


def distributions(space: Mapping[str, str]) -> dict[str, Any]:
    """Optuna distributions of ``search.space``'s Hydra sweep values: ``interval(a, b)`` a float
    range, ``range(a, b[, step])`` an integer one (b excluded, as Hydra's), ``choice(...)`` or
    ``a,b,c`` a categorical.

    Raises:
        RunnerError: a value that is not one of those, with the key.
    """
    optuna = _optuna()
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    d = optuna.distributions
    out: dict[str, Any] = {}
    parser = OverridesParser.create()
    for key, text in space.items():
        try:
            value = parser.parse_override(f"{key}={text}").value()
        except Exception as e:  # noqa: BLE001 - the grammar's own message, on one line
            raise RunnerError(f"search.space.{key}={text}: {str(e).splitlines()[0]}") from None
        if isinstance(value, IntervalSweep):
            out[key] = d.FloatDistribution(float(value.start), float(value.end))
        elif isinstance(value, RangeSweep) and all(
            isinstance(v, int) for v in (value.start, value.stop, value.step)
        ):
            out[key] = d.IntDistribution(value.start, value.stop - 1, step=value.step)
        elif isinstance(value, ChoiceSweep):
            out[key] = d.CategoricalDistribution(list(value.list))
        else:
            raise RunnerError(
                f"search.space.{key}={text}: expected interval(a, b), range(a, b[, step]) or "
                "choice(x, y, ...)"
            )
    return out


def finished(study: Any) -> list[Any]:
    """The study's trials, a killed run's unfinished ones marked failed first (so they are run
    again, and never counted as done)."""
    state = _optuna().trial.TrialState
    for t in study.get_trials(deepcopy=False, states=(state.RUNNING, state.WAITING)):
        recipe = t.user_attrs.get("recipe")
        log.info("search: trial %d (%s) stopped unfinished; it runs again", t.number, recipe)
        study.tell(t.number, state=state.FAIL)
    return study.get_trials(deepcopy=False)
