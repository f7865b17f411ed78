"""The command line's edge: what ``python -m runner`` does around :func:`runner.pipeline.run`.

The job Hydra calls (:func:`job`) lives here, and so does the exit-code policy (the callbacks of
``conf/hydra/callbacks/runner.yaml`` are :mod:`runner.callbacks`, which exit through it):

- ``0``: every row ``ok``;
- ``1`` (:data:`FAILED`): the run finished but a row failed, or a sweep job did (its table is
  written first);
- ``2`` (:data:`USAGE`): the user's input is wrong (a bad config value, a missing file, MLflow
  not installed): one line per problem, before anything is written;
- ``130`` (:data:`INTERRUPTED`): Ctrl-C; one line, and a sweep's table of its finished jobs;
- ``143`` (:data:`TERMINATED`): SIGTERM (``scancel``, a SLURM time limit, preemption): the same.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NoReturn

from omegaconf import DictConfig

from runner import console, report, tracking
from runner.errors import RunnerError, summarize_error
from runner.files import existing_ancestor, free_mb
from runner.report import recommend

log = logging.getLogger("runner")

FAILED, USAGE, INTERRUPTED, TERMINATED = 1, 2, 130, 143


def exit_with(code: int, lines: Iterable[str], prefix: str = "error: ") -> NoReturn:
    for line in lines:
        print(f"{prefix}{line}", file=sys.stderr)
    sys.exit(code)


def start_tensorflow() -> list[str]:
    """Import TensorFlow and list its devices with the start-up chatter hidden (returned)."""
    hidden: list[str] = []
    with console.filtered(hidden):
        import tensorflow as tf
        import tf_keras  # noqa: F401 - the Keras every model is built with

        tf.config.list_physical_devices()
    return hidden


def quick_exit(code: int | str | None) -> NoReturn:
    """End the process as ``sys.exit(code)`` would, without tearing TensorFlow down.

    Every file is written and closed by now; the threads are joined and the exit handlers still
    run (logging, MLflow, a Ray cluster the launcher started, a joblib pool), the output streams
    are flushed, and then the interpreter's teardown is skipped: with TensorFlow loaded it takes
    over a second of every run and sweep. An unexpected exception still ends the normal way.
    """
    import atexit
    import contextlib
    import os
    import threading

    if isinstance(code, str):  # sys.exit("message"): printed, exit 1
        print(code, file=sys.stderr)
        code = FAILED
    # what the interpreter's own exit does first, in its order: join the non-daemon threads and
    # run their exit hooks (a joblib pool's workers are told to stop here; without it they idle
    # out after 300 s), then the atexit handlers; only the teardown of modules is skipped
    threading._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        # a closed or broken pipe: nothing more can be said
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code or 0)


# --------------------------------------------------------------------------- the job
# Where the current run writes, for a Ctrl-C that may come between two jobs (in Hydra's code).
_where: dict[str, Path] = {}


def guarded(main: Callable[[], None]) -> None:
    """Run Hydra's ``main`` so that Ctrl-C (exit 130) or SIGTERM (exit 143: ``scancel``, a
    time limit, preemption) stops with one line, not a traceback; a sweep first writes the table
    of its finished jobs, the stopped one marked failed."""
    from runner import preflight

    console.catch_interrupts()
    bad = yaml_problems(sys.argv[1:])
    if bad:
        exit_with(USAGE, bad, "error: bad YAML: ")
    bad = flag_problems(sys.argv[1:])
    if bad:
        exit_with(USAGE, bad)
    preflight.install()
    try:
        main()
        if _after_jobs:  # a step after the jobs failed and ExitStatusCallback did not say so
            exit_with(FAILED, _after_jobs)
    except preflight.ConfigProblems as e:
        exit_with(USAGE, e.lines, "error: bad config value: ")
    except KeyboardInterrupt as e:
        term = isinstance(e, console.Terminated)
        code, what = (TERMINATED, "terminated (SIGTERM)") if term else (INTERRUPTED, "interrupted")
        sweep_dir = _where.get("sweep")
        if sweep_dir is None or not sweep_dir.is_dir():
            out = _where.get("run")
            exit_with(code, [what + (f"; what was finished is in {out}" if out else "")])
        rows = report.write_sweep_report([sweep_dir], sweep_dir)
        done = len({r.get("job") for r in rows if r.get("status") == "ok"})
        exit_with(
            code,
            [
                f"{what}; the table of the {done} finished job(s) (a stopped one marked "
                f"failed): {sweep_dir / 'comparison.md'}"
            ],
        )


def flag_problems(argv: list[str]) -> list[str]:
    """Hydra's flags that cannot go together, said in one line (Hydra raises a traceback)."""
    modes = [a for a in argv if a in ("-m", "--multirun", "-c", "--cfg", "-i", "--info")]
    if any(a in ("-m", "--multirun") for a in modes) and len(modes) > 1:
        return [
            "-m and --cfg/--info cannot go together: --cfg job prints one run's config; "
            "drop -m and give one value per key (python -m runner --cfg job recipe=qat)"
        ]
    return []


def config_dirs(argv: list[str]) -> list[Path]:
    """The config folders a command line composes from: the runner's ``conf/``, ``--config-dir``
    / ``-cd`` and the ``file://`` entries of ``hydra.searchpath=[...]``."""
    from runner.config import CONF_DIR

    dirs = [CONF_DIR]
    for i, arg in enumerate(argv):
        if arg in ("--config-dir", "-cd") and i + 1 < len(argv):
            dirs.append(Path(argv[i + 1]))
        elif arg.startswith(("--config-dir=", "-cd=")):
            dirs.append(Path(arg.split("=", 1)[1]))
        elif arg.startswith("hydra.searchpath="):
            for item in arg.split("=", 1)[1].strip("[]").split(","):
                item = item.strip().strip("'\"")
                if item.startswith("file://"):
                    dirs.append(Path(item.removeprefix("file://")))
    return [d for d in dirs if d.is_dir()]


def yaml_problems(argv: list[str]) -> list[str]:
    """One line per config file that is not valid YAML (file, line, column, what): Hydra would
    print a 40-line traceback for it."""
    import yaml

    out = []
    for folder in config_dirs(argv):
        for path in sorted(folder.rglob("*.yaml")):
            try:
                yaml.safe_load(path.read_text(encoding="utf-8"))
            except yaml.MarkedYAMLError as e:
                mark = e.problem_mark
                where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
                out.append(f"{path}{where}: {e.problem or e.context}")
            except (yaml.YAMLError, OSError, UnicodeDecodeError) as e:
                out.append(f"{path}: {' '.join(str(e).split())[:200]}")
    return out


def job(cfg: DictConfig, hc: Any, multirun: bool) -> None:
    """One run (or one job of a sweep) as Hydra starts it."""
    _where["run"] = Path(hc.runtime.output_dir)
    if multirun:
        _where["sweep"] = Path(str(hc.sweep.dir))
    _job(cfg, hc, multirun)


def _job(cfg: DictConfig, hc: Any, multirun: bool) -> None:
    from runner.pipeline import run, write_job_failure

    console.configure(verbose=bool(cfg.get("verbose", False)))
    t0 = time.perf_counter()
    log.debug("hidden TensorFlow start-up lines: %s", start_tensorflow())
    # the framework import: paid by the first job of a process only
    started = {"framework_seconds": time.perf_counter() - t0}
    out = Path(hc.runtime.output_dir)
    parent = tracking.parent_run_id(Path(str(hc.sweep.dir))) if multirun else None
    overrides = list(hc.overrides.task)
    if multirun:  # a job never raises: Hydra would skip the sweep table; its failure is its row
        try:
            rows = run(cfg, out, started).rows
        except Exception as e:  # noqa: BLE001
            known = isinstance(e, RunnerError)
            log.error("job failed: %s", e if known else summarize_error(e), exc_info=not known)
            rows = write_job_failure(cfg, out, str(e) if known else summarize_error(e))
        _track(cfg, rows, out, overrides, parent)
        failed = [r["artifact"] or r["recipe"] for r in rows if r["status"] != "ok"]
        log.info("job done (%s): %s", "failed: " + ", ".join(failed) if failed else "ok", out)
        return
    try:
        result = run(cfg, out, started)
    except RunnerError as e:
        exit_with(USAGE, [str(e)])
    except OSError as e:
        why = disk_problem(e)
        if why is None:
            raise
        exit_with(USAGE, [why])
    _track(cfg, result.rows, out, overrides, None)
    print(report.to_markdown(result.rows))
    line = recommend.run_line(result.rows, recommend.budget_of(cfg))
    if line:
        print(line)
    if result.worst_layers:
        worst = ", ".join(result.worst_layers)
        print(f"worst layers: {worst} (all of them: {out / 'layer_report.csv'})", file=sys.stderr)
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"results: {out}", file=sys.stderr)
    if not result.ok:
        failed = ", ".join(r["artifact"] for r in result.rows if r["status"] != "ok")
        exit_with(FAILED, [f"failed: {failed} (see the error column)"])


def disk_problem(e: OSError) -> str | None:
    """One line for a full or read-only disk (the folder, the free space), else None."""
    import errno

    if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
        return None
    # a copy that fills the disk names its source first and its destination second
    where = Path(getattr(e, "filename2", None) or e.filename or ".").expanduser()
    if where.name.startswith("."):  # an atomic write's temp file: the folder it was going to
        where = where.parent
    folder = existing_ancestor(where)
    return (
        f"cannot write {where}: {e.strerror} ({free_mb(folder):.0f} MB free in {folder}); free some space "
        "or give a writable folder (hydra.run.dir=..., cache_dir=...)"
    )


def _track(cfg: DictConfig, rows: list, out: Path, overrides: list[str], parent: str | None):
    """``logger=mlflow``: the job as an MLflow run (a child of the sweep's run in a multirun).
    A tracking failure is a warning: the run's own files are already written."""
    if not tracking.enabled(cfg):
        return
    try:
        tracking.log_job(cfg, rows, out, overrides, parent)
    except Exception as e:  # noqa: BLE001 - never lose a finished run to its tracking
        print(f"warning: MLflow logging failed: {summarize_error(e)}", file=sys.stderr)


# What failed after a sweep's jobs (the table, the verdict, the chart, MLflow): Hydra turns an
# exception in a callback into a warning and exit 0, so each end hook (runner.callbacks) records
# its failure here and the command exits 1 with these lines.
_after_jobs: list[str] = []
