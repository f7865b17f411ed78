"""A search's options (``conf/search``) and its report: the trials in order, each tried, skipped
or stopped with its reason, kept in ``search.json`` beside the sweep table, whose skipped and
stopped recipes become rows of that table. No TensorFlow here."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from runner.files import atomic_write_json, atomic_write_text
from runner.report.rows import SKIPPED
from runner.report.table import empty_row, to_markdown
from runner.schema import Options, tags

SEARCH_FILE = "search.json"
Sampler = Literal["tpe", "nsga2", "random", "qmc"]


class SearchOptions(Options):
    """``conf/search``: what ``hydra/sweeper=search`` tries and when it stops (the budget and the
    objective are ``select.*``)."""

    recipes: list[str] | None = Field(
        None,
        description="the candidate recipes (null: the swept recipe=a,b,... or, without one, "
        "every recipe of conf/recipe)",
        **tags(names="recipe"),
    )
    max_trials: int | None = Field(None, ge=1, description="jobs run at most (null: no limit)")
    max_minutes: float | None = Field(
        None, gt=0, description="no job starts after this many minutes (null: no limit)"
    )
    parallel: int = Field(1, ge=1, description="jobs launched at once (each a normal job)")
    space: dict[str, str] = Field(
        default_factory=dict,
        description="parameters searched inside the recipes that have them, as Hydra sweep "
        "values: {recipe.sparsity: 'interval(0.3, 0.95)', recipe.clusters: 'range(4, 33)'}",
    )
    trials: int = Field(8, ge=1, description="trials of each recipe that has a space")
    sampler: Sampler = Field(
        "tpe", description="Optuna's sampler of the space: tpe, nsga2, random or qmc"
    )
    seed: int = Field(0, ge=0, description="the sampler's seed", **tags(follows="seed", seed=True))
    study: str | None = Field(
        None,
        description="the Optuna journal the search is kept in (null: <cache_dir>/search/<key>"
        ".journal, the same for the same command, so a killed search resumes)",
    )


# What the report lists of a trial, in this order.
COLUMNS = [
    "trial",
    "recipe",
    "params",
    "state",
    "reason",
    "seconds",
    "estimated_bytes",
    "size_bytes",
    "accuracy",
    "meets_budget",
    "job_dir",
]


def write_report(folder: Path, summary: Mapping[str, Any], trials: Sequence[Mapping]) -> None:
    """``search.json`` and ``search.md`` in the sweep folder."""
    atomic_write_json(folder / SEARCH_FILE, {**summary, "trials": list(trials)})
    head = [f"# Search ({summary.get('objective')} under the budget)", ""]
    head += [f"- {k}: {v}" for k, v in summary.items()]
    atomic_write_text(
        folder / "search.md", "\n".join(head) + "\n\n" + to_markdown(list(trials), COLUMNS)
    )


def read_report(folder: Path) -> dict[str, Any]:
    """The search's ``search.json`` in ``folder`` ({} when it is not a search's folder)."""
    try:
        data = json.loads((Path(folder) / SEARCH_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def sampled_jobs(folder: Path) -> set[str]:
    """The job folder names of a search's parameter trials (a sampled value that breaks a recipe
    is the search learning where the edge is, not a failed command)."""
    trials = read_report(folder).get("trials", [])
    return {Path(t["job_dir"]).name for t in trials if t.get("params") and t.get("job_dir")}


def extra_rows(folder: Path) -> tuple[list[Path], list[dict[str, Any]]]:
    """(job folders of earlier runs of a resumed search, a row per skipped or stopped recipe)."""
    data = read_report(folder)
    jobs, rows = [], []
    for t in data.get("trials", []):
        job = t.get("job_dir")
        if job and Path(job).parent != Path(folder) and Path(job).is_dir():
            jobs.append(Path(job))
        if t.get("state") in ("skipped", "stopped"):
            row = empty_row(
                dataset=data.get("dataset"),
                model=data.get("model"),
                recipe=t.get("recipe"),
                role="recipe",
                status=SKIPPED,
                error=f"{t['state']} by the search: {t.get('reason')}",
            )
            rows.append({**row, "varies": f"recipe={t.get('recipe')}", "job": None})
    return jobs, rows


def search_line(data: Mapping[str, Any], folder: Path) -> str:
    """One line: what the search ran, skipped and stopped, its time, and where its report is."""
    resumed = f" ({data.get('resumed')} from an earlier run)" if data.get("resumed") else ""
    return (
        f"search: {data.get('ran')} trials run{resumed}, {data.get('skipped')} recipes "
        f"skipped, {data.get('stopped')} stopped, in {float(data.get('seconds') or 0):.0f} s; "
        f"report: {Path(folder) / 'search.md'}; study: {data.get('study')}"
    )
