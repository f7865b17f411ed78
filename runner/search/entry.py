"""From a sweep's command line to a search: the candidates and fixed overrides, the options,
the study's file, the loop, and the report beside the sweep table."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner.cache import cache_key
from runner.errors import RunnerError
from runner.references import group_options
from runner.report import recommend
from runner.report.search import SearchOptions, write_report
from runner.schema import parse
from runner.search.driver import Launch, Search, pareto_front
from runner.search.plan import candidates

log = logging.getLogger(__name__)


def split(overrides: Sequence[Any]) -> tuple[list[str] | None, dict[str, str], list[str]]:
    """(the swept recipe names or None, the searched space, every other override as a string).

    ``recipe=a,b,c`` names the candidates; any other swept key is searched inside the recipes
    that have it, as ``search.space`` would: ``recipe.sparsity=interval(0.3,0.95)``,
    ``recipe.clusters=range(4,33)``, ``recipe.epochs=2,4,8`` (a choice).

    Raises:
        RunnerError: the recipe is swept by a range (it takes a list of names).
    """
    swept, space, fixed = None, {}, []
    for o in overrides:
        key = o.get_key_element()
        if not o.is_sweep_override():
            fixed.append(f"{key}={o.get_value_element_as_str()}")
        elif key != "recipe":
            text = str(o.input_line).split("=", 1)[1]
            space[key] = text if "(" in text else f"choice({text})"
        elif o.is_discrete_sweep():
            swept = list(o.sweep_string_iterator())
        else:
            raise RunnerError("recipe: hydra/sweeper=search takes recipe names (recipe=a,b,...)")
    return swept, space, fixed


def study_path(config: DictConfig, opts: SearchOptions, fixed: list[str], names: list[str]) -> Path:
    """``search.study``, or a journal under the cache named by what the search is (the same
    command finds the same study, and resumes it)."""
    if opts.study:
        return Path(opts.study).expanduser()
    what = {
        "fixed": sorted(o for o in fixed if not o.startswith(("hydra.", "search.max_"))),
        "recipes": names,
        "search": opts.model_dump(exclude={"max_trials", "max_minutes", "parallel", "study"}),
        "select": OmegaConf.to_container(config.select, resolve=True),
    }
    return Path(str(config.cache_dir)) / "search" / f"{cache_key(what)}.journal"


def run_search(
    config: DictConfig,
    overrides: Sequence[Any],
    compose: Callable[[list[str]], DictConfig],
    launch: Launch,
) -> list[dict[str, Any]]:
    """The search of a multirun's ``config`` and parsed command-line ``overrides``; each job's
    config from ``compose``, each batch run by ``launch``. Writes ``search.{json,md}`` in the
    sweep folder and returns the trial records."""
    opts = parse(OmegaConf.to_container(config.search, resolve=True), SearchOptions, "search")
    budget = recommend.budget_of(config)
    swept, space, fixed = split(overrides)
    if space:
        opts = opts.model_copy(update={"space": {**opts.space, **space}})
    given = [o.split("=", 1)[1] for o in fixed if o.startswith("recipe=")]
    fixed = [o for o in fixed if not o.startswith("recipe=")]
    names = opts.recipes or swept or given or group_options("recipe")
    found = candidates(
        names,
        lambda n: compose([*fixed, f"recipe={n}"]),
        opts.space,
        lambda n: compose([f"recipe={n}"]).recipe.get("weight_bits"),  # the YAML's own
    )
    unused = set(opts.space) - {k for c in found for k in c.space}
    if unused:
        raise RunnerError(
            f"search.space: no candidate recipe has {', '.join(sorted(unused))} (check the key, "
            "e.g. recipe.sparsity for prune)"
        )
    path = study_path(config, opts, fixed, [c.recipe for c in found])
    t0 = time.perf_counter()
    search = Search(opts, budget, found, fixed, path, launch)
    records = search.run()
    seconds = time.perf_counter() - t0
    ran = [r for r in records if r["state"] in ("ran", "failed")]
    summary = {
        **search.names,
        "objective": budget.objective,
        "budget": budget.model_dump(),
        "ran": len(ran),
        "resumed": search.resumed,
        "skipped": sum(r["state"] == "skipped" for r in records),
        "stopped": sum(r["state"] == "stopped" for r in records),
        "seconds": seconds,
        "job_seconds": sum(r.get("seconds") or 0 for r in ran),
        "best": (search.best or {}).get("artifact"),
        "pareto": pareto_front(records),
        "study": str(path),
        "dashboard": f"optuna-dashboard {path}",
    }
    sweep_dir = Path(str(config.hydra.sweep.dir))
    write_report(sweep_dir, summary, records)
    log.info(
        "search: %d trials run (%d resumed), %d skipped, %d stopped in %.0f s; study %s",
        *(len(ran), search.resumed, summary["skipped"], summary["stopped"], seconds, path),
    )
    return records
