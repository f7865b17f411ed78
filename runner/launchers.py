"""Hydra's submitit launchers, with every way a job can die turned into a failed row.

Hydra's own ``submitit_slurm`` / ``submitit_local`` end a sweep with submitit's
``UncompletedJobError`` traceback and no table when one job is cancelled (``scancel``), runs past
its time limit, runs out of memory or loses its node; and with no accounting database
(``slurmdbd``) they poll ``sacct`` forever. These subclasses submit the same way, then collect
each job on its own: a job that ended without a result leaves ``stopped.json`` in its folder
with the reason ("cancelled by SLURM", "time limit", ...), which the sweep table shows as its
failed row, and the sweep goes on to its table, its verdict and exit 1. Ctrl-C (or SIGTERM) on
the submitting process cancels the jobs still queued or running, says which, and ends like any
interrupted sweep (the finished jobs' table, exit 130 / 143).

Used through ``conf/hydra/launcher/slurm.yaml`` and ``local.yaml``; the launcher classes live in
``hydra_plugins/tfq_runner/launchers.py`` (Hydra takes launchers only from its plugin namespace).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import OmegaConf

from runner.files import atomic_write_json, atomic_write_text
from runner.report.sweep import STOPPED_FILE

log = logging.getLogger(__name__)

# a job SLURM no longer lists and that wrote no result is given this long for its result file
# to appear (a shared filesystem's delay) before it is called dead
GRACE_SECONDS = 30.0
POLL_SECONDS = 2.0

# SLURM job states -> what the row says
REASONS = {
    "CANCELLED": "cancelled by SLURM (scancel, or an administrator)",
    "TIMEOUT": "time limit: the job ran past hydra.launcher.timeout_min={timeout}",
    "DEADLINE": "time limit: the job reached its deadline",
    "OUT_OF_MEMORY": "out of memory: raise hydra.launcher.mem_gb (now {mem})",
    "PREEMPTED": "preempted by SLURM (a higher-priority job took the node)",
    "NODE_FAIL": "its node failed",
    "BOOT_FAIL": "its node failed to boot",
    "FAILED": "killed: the job's process ended without a result (see its .submitit log)",
}


def reason_for(state: str, params: dict[str, Any]) -> str:
    """The row's reason for a job that ended in SLURM (or submitit) ``state`` without a result."""
    word = state.split()[0].upper() if state else "UNKNOWN"
    text = REASONS.get(word)
    if text is None:
        return f"killed (state {state or 'unknown'}): the job ended without a result"
    return text.format(timeout=params.get("timeout_min"), mem=params.get("mem_gb"))


def mark_stopped(
    job_dir: Path, overrides: list[str], reason: str, names: dict[str, str] | None = None
) -> None:
    """Leave ``reason`` (and the job's dataset, model and recipe ``names``) in the job's folder,
    made when the job never started, for the sweep table."""
    hydra_dir = job_dir / ".hydra"
    if not (hydra_dir / "overrides.yaml").exists():
        hydra_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(hydra_dir / "overrides.yaml", OmegaConf.to_yaml(list(overrides)))
    atomic_write_json(job_dir / STOPPED_FILE, {"reason": reason, **(names or {})})


def _sacct_answers() -> bool:
    """Does SLURM's accounting database answer (``sacct``)? submitit follows jobs with it."""
    if shutil.which("sacct") is None:
        return False
    try:
        p = subprocess.run(["sacct", "-n", "-X", "-j", "1"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return p.returncode == 0


def _once_per_sweep(record: logging.LogRecord, _seen: set[str] = set()) -> bool:  # noqa: B006
    """submitit repeats "Bypassing sacct error" on every poll of a cluster without accounting:
    said once (the reason a stopped job's row gives no SLURM state)."""
    text = record.getMessage()
    if "sacct" not in text:
        return True
    first = "sacct" not in _seen
    _seen.add("sacct")
    if first:
        record.msg, record.args = (
            "SLURM accounting (sacct) does not answer here: jobs are followed with squeue, "
            "and one that ends without a result is a failed row after %d s",
            (int(GRACE_SECONDS),),
        )
    return first


class Collecting:
    """Submit like Hydra's launcher; collect every job whatever its end."""

    _EXECUTOR = "abstract"
    params: dict[str, Any]
    config: Any
    hydra_context: Any

    def launch(self, job_overrides, initial_job_idx: int) -> list[JobReturn]:
        logging.getLogger("submitit").addFilter(_once_per_sweep)
        self._accounting = self._EXECUTOR != "slurm" or _sacct_answers()
        if not self._accounting:
            log.warning(
                "SLURM accounting (sacct) does not answer here: jobs are followed with squeue, "
                "and one that ends without a result is a failed row after %d s",
                int(GRACE_SECONDS),
            )
        jobs, overrides = self._submit(job_overrides, initial_job_idx)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        try:
            return self._collect(jobs, overrides, initial_job_idx, sweep_dir)
        except KeyboardInterrupt:
            self._cancel_unfinished(jobs, initial_job_idx)
            raise

    def _submit(self, job_overrides, initial_job_idx: int):
        """Hydra's submitit launcher's submission (hydra-submitit-launcher 1.2), unchanged."""
        import submitit

        params = self.params
        init_keys = {"max_num_timeout"}
        init_params = {"folder": params["submitit_folder"]}
        init_params |= {f"{self._EXECUTOR}_{k}": v for k, v in params.items() if k in init_keys}
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init_params)
        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

        known = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{
                k if k in known else f"{self._EXECUTOR}_{k}": v
                for k, v in params.items()
                if k not in init_keys | {"submitit_folder"}
            }
        )
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        job_params, overrides = [], []
        for i, job in enumerate(job_overrides):
            idx = initial_job_idx + i
            log.info(f"\t#{idx} : {' '.join(filter_overrides(job))}")
            state = Singleton.get_state()
            job_params.append((list(job), "hydra.sweep.dir", idx, f"job_id_for_{idx}", state))
            overrides.append(list(job))
        return executor.map_array(self, *zip(*job_params, strict=True)), overrides

    def _collect(self, jobs, overrides, first: int, sweep_dir: Path) -> list[JobReturn]:
        returns: dict[int, JobReturn] = {}
        gone_since: dict[int, float] = {}
        while len(returns) < len(jobs):
            for i, job in enumerate(jobs):
                if i in returns:
                    continue
                reason = None
                if job.paths.result_pickle.exists() or self._finished(job):
                    try:
                        returns[i] = job.results()[0]
                        continue
                    except Exception as e:  # noqa: BLE001 - submitit's uncompleted/failed job
                        reason = self._reason(job, e)
                elif self._gone(job):
                    since = gone_since.setdefault(i, time.monotonic())
                    if time.monotonic() - since < GRACE_SECONDS:
                        continue
                    reason = "ended without a result, and SLURM keeps no accounting here to say why"
                if reason is not None:
                    idx = first + i
                    log.error("job %d (%s): %s", idx, job.job_id, reason)
                    names = self._names(overrides[i])
                    mark_stopped(sweep_dir / str(idx), overrides[i], reason, names)
                    ret = JobReturn(overrides=overrides[i], status=JobStatus.COMPLETED)
                    ret.return_value = None  # its failure is its row, not an exception here
                    returns[i] = ret
            if len(returns) < len(jobs):
                time.sleep(POLL_SECONDS)
        return [returns[i] for i in range(len(jobs))]

    def _names(self, overrides: list[str]) -> dict[str, str]:
        """The job's dataset, model and recipe names, from its own config (empty if unknown)."""
        try:
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
            return {k: str(cfg[k].get("name", "?")) for k in ("dataset", "model", "recipe")}
        except Exception:  # noqa: BLE001 - the row still says why the job stopped
            return {}

    def _finished(self, job) -> bool:
        if not getattr(self, "_accounting", True):  # submitit would ask sacct, and wait forever
            return False
        try:
            return bool(job.done())
        except Exception:  # noqa: BLE001 - a failing sacct: judged by _gone instead
            return False

    def _gone(self, job) -> bool:
        """SLURM no longer runs or queues ``job`` (asked of squeue, which needs no slurmdbd)."""
        if self._EXECUTOR != "slurm" or shutil.which("squeue") is None:
            return False
        try:
            out = subprocess.run(
                ["squeue", "-h", "-j", str(job.job_id), "-o", "%T"],
                capture_output=True,
                text=True,
                timeout=30,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        states = out.stdout.split()
        return out.returncode != 0 or not any(
            s in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED") for s in states
        )

    def _reason(self, job, e: Exception) -> str:
        try:
            state = str(job.state)
        except Exception:  # noqa: BLE001
            state = ""
        if self._EXECUTOR == "local" or not state or state.upper().startswith("UNKNOWN"):
            text = " ".join(str(e).split())
            if "state: " in text:  # submitit: "... has not produced any output (state: X)"
                state = text.split("state: ", 1)[1].split(")")[0]
            elif "timed-out" in text:
                state = "TIMEOUT"
        if "COMPLETED" in state.upper() or "FINISHED" in state.upper():
            return f"failed inside the job: {' '.join(str(e).split())[:300]}"
        return reason_for(state, self.params)

    def _cancel_unfinished(self, jobs, first: int) -> None:
        running = [(first + i, j) for i, j in enumerate(jobs) if not j.paths.result_pickle.exists()]
        for _, job in running:
            with contextlib.suppress(Exception):  # best effort: the line below names them
                job.cancel(check=False)
        if running:
            names = ", ".join(f"#{idx} ({j.job_id})" for idx, j in running)
            log.warning("interrupted: cancelled the unfinished job(s) %s", names)
            print(f"cancelled the unfinished job(s) {names}", flush=True)


def broken_pool_returns(config: Any, job_overrides, first: int, reason: str) -> list[JobReturn]:
    """A sweep whose worker pool broke (a joblib worker killed: SIGKILL, out of memory): every job
    that left no final results gets ``reason`` in its folder, and the sweep goes on to its
    table (each such job a failed row) instead of joblib's TerminatedWorkerError traceback."""
    import json

    sweep_dir = Path(str(config.hydra.sweep.dir))
    returns = []
    for i, overrides in enumerate(job_overrides):
        job_dir = sweep_dir / str(first + i)
        try:
            status = json.loads((job_dir / "results.json").read_text()).get("status")
        except (OSError, ValueError, AttributeError):
            status = None
        if status not in ("ok", "failed"):
            mark_stopped(job_dir, list(overrides), reason)
        ret = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
        ret.return_value = None
        returns.append(ret)
    log.error("the worker pool broke (%s); the sweep's table follows", reason)
    return returns
