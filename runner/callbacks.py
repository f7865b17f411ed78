"""The Hydra callbacks of ``conf/hydra/callbacks/runner.yaml``: the config checked before a run
or sweep, MLflow's parent run, the sweep's table and verdict, and the exit status.

Every ``on_multirun_end`` hook records its own failure (:func:`after_jobs`) instead of raising:
Hydra would turn the exception into a warning and exit 0. :class:`ExitStatusCallback`, the last
to end, exits 1 with those lines and the count of failed jobs. The exit-code policy itself is
:mod:`runner.cli`'s.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from runner import report, tracking
from runner.cli import FAILED, USAGE, _after_jobs, _where, exit_with
from runner.config import problems
from runner.errors import RunnerError, summarize_error
from runner.files import existing_ancestor
from runner.report import recommend
from runner.report import rows as report_rows
from runner.report.search import read_report, sampled_jobs, search_line

log = logging.getLogger("runner")


def after_jobs(step: str) -> Callable:
    """Decorate an ``on_multirun_end`` hook: an exception is one line in :data:`_after_jobs`."""

    def wrap(hook: Callable) -> Callable:
        def run(self: Any, config: Any, **kw: Any) -> None:
            try:
                hook(self, config, **kw)
            except Exception as e:  # noqa: BLE001 - recorded, and the exit code says so
                log.error("%s failed", step, exc_info=True)
                _after_jobs.append(f"{step} failed after the jobs: {summarize_error(e)}")

        return run

    return wrap


def _callback_base() -> type:
    from hydra.experimental.callback import Callback

    return Callback


class ValidateConfigCallback(_callback_base()):
    """Before a run or a sweep: every config value checked against its schema.

    A bad value prints one line per value and exits 2, writing nothing. A multirun checks its
    common config before any job starts; a bad value that only some jobs sweep over fails those
    jobs (their rows say why), through the check at :func:`runner.pipeline.run`'s door.
    """

    def on_run_start(self, config: DictConfig, **_: Any) -> None:
        self._check(config)
        _writable(Path(str(config.hydra.run.dir)), "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **_: Any) -> None:
        _where["sweep"] = Path(str(config.hydra.sweep.dir))  # a Ctrl-C before any job ran here
        # a swept key is null or its default here: each job checks its own value
        self._check(config, swept_keys(list(config.hydra.overrides.task)))
        _writable(Path(str(config.hydra.sweep.dir)), "hydra.sweep.dir")

    @staticmethod
    def _check(config: DictConfig, skip: frozenset[str] = frozenset()) -> None:
        # a key under a swept group (recipe.epochs with recipe=a,b) is checked per job
        bad = [
            line
            for line in problems(config)
            if _key_of(line) not in skip and _key_of(line).split(".")[0] not in skip
        ]
        if bad:
            exit_with(USAGE, bad, "error: bad config value: ")


def _writable(folder: Path, key: str) -> None:
    """The run folder can be created and written (else one line before Hydra's traceback)."""
    import tempfile

    from runner.references import not_a_folder

    why = not_a_folder(folder)
    if why:
        exit_with(USAGE, [f"{key}={folder}: {why}; give a folder"])
    base = existing_ancestor(folder)
    try:
        with tempfile.TemporaryFile(dir=base):
            pass
    except OSError as e:
        exit_with(
            USAGE,
            [f"{key}={folder}: cannot write in {base} ({e.strerror}); give a writable folder"],
        )


def swept_keys(overrides: list[str]) -> frozenset[str]:
    """The keys a multirun's overrides sweep over (``model.path=a.h5,b.keras``, ``range(...)``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return frozenset(o.key_or_group for o in parsed if o.is_sweep_override())


def _key_of(line: str) -> str:
    """The dotted key a problem line names (``model.path=null: ...`` -> ``model.path``)."""
    return line.split(":", 1)[0].split("=", 1)[0].split("[", 1)[0]


class TrackingCallback(_callback_base()):
    """``logger=mlflow``: MLflow checked before anything runs, the sweep's parent run opened,
    and the sweep table logged to it at the end."""

    def on_run_start(self, config: Any, **_: Any) -> None:
        if tracking.enabled(config):
            _or_exit(tracking.mlflow_module)

    def on_multirun_start(self, config: Any, **_: Any) -> None:
        if tracking.enabled(config):
            _or_exit(lambda: tracking.open_parent_run(config))

    @after_jobs("MLflow logging of the sweep")
    def on_multirun_end(self, config: Any, **_: Any) -> None:
        if tracking.enabled(config):
            tracking.log_sweep(config)


class SweepReportCallback(_callback_base()):
    """After a multirun: one table across all its jobs, read from disk (any launcher works)."""

    @after_jobs("the sweep table and verdict")
    def on_multirun_end(self, config: Any, **_: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        rows, verdicts = recommend.sweep([sweep_dir], sweep_dir, recommend.budget_of(config))
        failed = [r for r in rows if report_rows.failed(r)]
        print(report.to_markdown(rows, report.SWEEP_DISPLAY))
        summary = report.seed_summary(rows)
        if summary:
            print(report.to_markdown(summary, report.SUMMARY_COLUMNS))
        for v in verdicts:  # which file to ship, under the budget of conf/select
            print("\n".join(v.lines()))
        print(
            f"sweep table: {sweep_dir / 'comparison.md'} ({len(rows)} rows, {len(failed)} failed)",
            file=sys.stderr,
        )
        searched = read_report(sweep_dir)
        if searched:
            print(search_line(searched, sweep_dir), file=sys.stderr)


class ExitStatusCallback(_callback_base()):
    """Last to end: a multirun in which any job failed exits 1, after its table (and its MLflow
    run) are written, with one line saying how many jobs failed."""

    def on_multirun_end(self, config: Any, **_: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        after = list(_after_jobs)
        _after_jobs.clear()
        try:
            rows = json.loads((sweep_dir / "comparison.json").read_text())
        except (OSError, ValueError):
            rows = []
            after = after or [f"the sweep table {sweep_dir / 'comparison.json'} was not written"]
        # a job whose rows were all another's (recipe=none beside its baseline) has none of its own
        jobs = {str(r.get("job")) for r in rows} | {d.name for d in report.job_dirs(sweep_dir)}
        sampled = sampled_jobs(sweep_dir)
        failed = sorted(
            {
                str(r.get("job"))
                for r in rows
                if report_rows.failed(r) and str(r.get("job")) not in sampled
            },
            key=lambda j: (len(j), j),
        )
        lines = after + (
            [
                f"{len(failed)} of {len(jobs)} jobs failed "
                f"(jobs {', '.join(map(str, failed))}; see the error column)"
            ]
            if failed
            else []
        )
        if lines:
            exit_with(FAILED, lines)


def _or_exit(fn):
    try:
        return fn()
    except RunnerError as e:
        exit_with(USAGE, [str(e)])
