"""The search loop: candidates cheapest first, each skipped when it cannot beat the best file
found, stopped at ``search.max_trials`` / ``search.max_minutes``; every job a trial of the
study, so a resumed search replays the finished ones and runs the rest."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.report.search import SearchOptions
from runner.report.select import SelectOptions
from runner.search.plan import (
    Candidate,
    Outcome,
    Reference,
    cannot_win,
    objective_value,
    outcome,
    reference_of,
)
from runner.search.study import constrain, distributions, finished, open_study

log = logging.getLogger(__name__)

# (job overrides, the number of the first job) -> each job's folder
Launch = Callable[[list[list[str]], int], list[Path]]


@dataclass
class Search:
    opts: SearchOptions
    budget: SelectOptions
    candidates: list[Candidate]
    fixed: list[str]  # every job's overrides besides the recipe and its parameters
    study_path: Path
    launch: Launch
    clock: Callable[[], float] = time.monotonic
    records: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None  # the best file meeting the budget so far
    reference: Reference | None = None
    names: dict[str, Any] = field(default_factory=dict)  # dataset and model, from the rows
    resumed: int = 0

    def run(self) -> list[dict[str, Any]]:
        """Run the search; returns its trial records (what ``search.json`` lists)."""
        study = open_study(self.study_path, self.opts.sampler, self.opts.seed, self.opts.trials)
        space = distributions(self.opts.space)
        done = [t for t in finished(study) if t.user_attrs.get("done")]
        for t in done:  # a resumed search: what earlier runs finished, judged again
            self._learn(t.number, t.user_attrs["recipe"], t.params, Path(t.user_attrs["job"]))
        self.resumed = len(done)
        pending = [
            c
            for c in self.candidates
            for _ in range(self._slots(c) - sum(t.user_attrs["recipe"] == c.recipe for t in done))
        ]
        start, count = self.clock(), len(done)
        while pending:
            stop = self._stop(count, start)
            if stop:
                for c in dict.fromkeys(pending):
                    self._note(c, "stopped", stop)
                break
            batch: list[Candidate] = []
            while pending and len(batch) < self._room(count):
                why = cannot_win(pending[0], self.best, self.reference, self.budget.objective)
                if why is None:
                    batch.append(pending.pop(0))
                    continue
                skipped = pending[0]
                self._note(skipped, "skipped", why)
                pending = [c for c in pending if c != skipped]
            if batch:
                self._launch(study, space, batch, count)
                count += len(batch)
        return self.records

    # ------------------------------------------------------------------ steps
    def _slots(self, c: Candidate) -> int:
        return self.opts.trials if c.space else 1

    def _room(self, count: int) -> int:
        left = self.opts.max_trials - count if self.opts.max_trials else math.inf
        return int(min(self.opts.parallel, left))

    def _stop(self, count: int, start: float) -> str | None:
        if self.opts.max_trials is not None and count >= self.opts.max_trials:
            return f"search.max_trials={self.opts.max_trials} reached"
        minutes = (self.clock() - start) / 60
        if self.opts.max_minutes is not None and minutes >= self.opts.max_minutes:
            return f"search.max_minutes={self.opts.max_minutes:g} reached ({minutes:.1f} min)"
        return None

    def _launch(self, study: Any, space: dict[str, Any], batch: list[Candidate], first: int):
        trials, jobs = [], []
        for c in batch:
            trial = study.ask({k: space[k] for k in c.space})
            trial.set_user_attr("recipe", c.recipe)
            overrides = [*self.fixed, f"recipe={c.recipe}"]
            overrides += [f"{k}={v}" for k, v in trial.params.items()]
            trials.append(trial)
            jobs.append(overrides)
        for trial, c, job in zip(trials, batch, self.launch(jobs, first), strict=True):
            out = self._learn(trial.number, c.recipe, trial.params, job)
            trial.set_user_attr("job", str(job))
            trial.set_user_attr("done", True)
            constrain(trial, out.constraints or [1.0, 1.0])
            if out.values is None:
                study.tell(trial, state=_failed())
            else:
                study.tell(trial, list(out.values))

    def _learn(self, number: int, recipe: str, params: dict, job: Path) -> Outcome:
        """Read a finished job, keep the best file and the reference, and record the trial."""
        out = outcome(job, self.budget)
        ref = reference_of(out.rows)
        self.reference = self.reference or ref
        for r in out.rows:
            self.names.setdefault("dataset", r.get("dataset"))
            self.names.setdefault("model", r.get("model"))
        cand = next((c for c in self.candidates if c.recipe == recipe), None)
        estimate = self.reference.estimate(cand.weight_bits) if self.reference and cand else None
        size = out.best.get("size_bytes") if out.best else None
        if estimate is not None and size is not None and size < estimate:
            log.warning("search: %s is %d bytes, under its estimate %d", recipe, size, estimate)
        if out.meets and (self.best is None or _better(out.best, self.best, self.budget)):
            self.best = out.best
        self.records.append(
            {
                "trial": number,
                "recipe": recipe,
                "params": " ".join(f"{k}={v}" for k, v in params.items()),
                "state": "ran" if out.best else "failed",
                "reason": "meets the budget" if out.meets else out.reason,
                "seconds": out.seconds,
                "estimated_bytes": estimate,
                "size_bytes": size,
                "accuracy": out.best.get("accuracy") if out.best else None,
                "meets_budget": out.meets,
                "job_dir": str(job),
            }
        )
        return out

    def _note(self, c: Candidate, state: str, why: str) -> None:
        estimate = self.reference.estimate(c.weight_bits) if self.reference else None
        self.records.append(
            {
                "trial": None,
                "recipe": c.recipe,
                "state": state,
                "reason": why,
                "estimated_bytes": estimate,
            }
        )


def _better(a: dict[str, Any], b: dict[str, Any], budget: SelectOptions) -> bool:
    return objective_value(a, budget.objective) < objective_value(b, budget.objective)


def _failed() -> Any:
    import optuna

    return optuna.trial.TrialState.FAIL


def pareto_front(records: Sequence[dict[str, Any]]) -> list[str]:
    """The tried recipes' files no other is both smaller and more accurate than."""
    ran = [r for r in records if r.get("size_bytes") is not None and r.get("accuracy") is not None]
    return [
        f"{r['recipe']}{(' ' + r['params']) if r.get('params') else ''}"
        for r in ran
        if not any(
            o["size_bytes"] <= r["size_bytes"]
            and o["accuracy"] >= r["accuracy"]
            and (o["size_bytes"] < r["size_bytes"] or o["accuracy"] > r["accuracy"])
            for o in ran
        )
    ]
