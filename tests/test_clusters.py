"""Sweeps on real engines: a one-node SLURM cluster with accounting (``.ci/slurm-up``, root) and
a local Ray cluster. Each test skips, saying why, where its engine is not running; CI starts
both (``.ci/run``). Every way a SLURM job can die is a failed row of the sweep table (issue #35).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest
from helpers import ROOT, TINY

pytestmark = pytest.mark.slow  # real clusters and launchers: minutes

SLEEPING_RECIPE = """
import time

from runner.recipes.base import RecipeBase


class Sleep(RecipeBase):
    \"\"\"Never finishes on its own: what scancel, a time limit or Ctrl-C stops. It says when
    it has started (the file ``sleeping`` in its job folder), so a test waits on that event.\"\"\"

    def produce(self, ctx):
        (ctx.output_dir / "sleeping").touch()
        time.sleep(3600)
        return []
"""


def _wait_for(event, seconds: float) -> bool:
    """Poll ``event()`` until it holds (True) or ``seconds`` pass (False)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if event():
            return True
        time.sleep(0.2)
    return bool(event())


def _slurm_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    p = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return p.returncode == 0 and any(s in p.stdout for s in ("idle", "mix", "alloc"))


def _sleeping_site(tmp_path) -> tuple[list[str], dict[str, str]]:
    """(the command line's search-path argument, the environment) of a ``sleep`` recipe."""
    site = tmp_path / "site" / "sleeping"
    site.mkdir(parents=True)
    (site / "__init__.py").write_text(SLEEPING_RECIPE)
    conf = tmp_path / "conf" / "recipe"
    conf.mkdir(parents=True)
    (conf / "sleep.yaml").write_text("_target_: sleeping.Sleep\nname: sleep\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(ROOT)])}
    env["TFQ_RUNNER_PLUGINS"] = "sleeping"  # a config may name only the plugins the user names
    return [f"hydra.searchpath=[file://{tmp_path / 'conf'}]"], env


def test_a_killed_joblib_worker_is_a_failed_row_and_the_table_is_written(tmp_path):
    search, env = _sleeping_site(tmp_path)
    sweep_dir = tmp_path / "sweep"
    args = [
        sys.executable,
        "-m",
        "runner",
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
    ]
    args += [*TINY, *search, f"cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={sweep_dir}"]
    sweep = subprocess.Popen(
        [*args, "recipe=none,sleep"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # job 0 finished and job 1's recipe is running in its worker: both are events on disk
    done, sleeping = sweep_dir / "0" / "results.json", sweep_dir / "1" / "sleeping"
    assert _wait_for(
        lambda: (
            done.is_file()
            and json.loads(done.read_text()).get("status") == "ok"
            and sleeping.is_file()
        ),
        300,
    ), "job 1 never started its recipe"
    children = subprocess.run(
        ["pgrep", "-f", "-P", str(sweep.pid), "popen_loky"], capture_output=True, text=True
    ).stdout.split()
    assert children, "no joblib worker found"
    for pid in children:  # what the kernel's OOM killer does
        os.kill(int(pid), signal.SIGKILL)
    out, err = sweep.communicate(timeout=300)
    assert sweep.returncode == 1, err[-3000:]
    assert "Traceback" not in err and "TerminatedWorkerError" not in err
    rows = {r["job"]: r for r in _rows(sweep_dir) if r["status"] == "failed"}
    assert "its joblib worker process died" in rows["1"]["error"]
    assert "ship (digits, small_cnn): none.tflite" in out


@pytest.fixture
def slurm(tmp_path):
    """The arguments of a SLURM sweep in ``tmp_path`` (a ``sleep`` recipe on the search path)."""
    if not _slurm_up():
        pytest.skip("no SLURM cluster here: start one with `sudo .ci/slurm-up` (Debian)")
    site = tmp_path / "site" / "sleeping"
    site.mkdir(parents=True)
    (site / "__init__.py").write_text(SLEEPING_RECIPE)
    conf = tmp_path / "conf" / "recipe"
    conf.mkdir(parents=True)
    (conf / "sleep.yaml").write_text("_target_: sleeping.Sleep\nname: sleep\n")
    name = f"tfq-test-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(ROOT)])}
    env["TFQ_RUNNER_PLUGINS"] = "sleeping"  # a config may name only the plugins the user names
    args = [sys.executable, "-m", "runner", "-m", "hydra/launcher=slurm", *TINY]
    args += [f"hydra.launcher.name={name}", f"cache_dir={tmp_path / 'cache'}"]
    args += [f"hydra.searchpath=[file://{tmp_path / 'conf'}]"]
    args += [f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    yield args, env, name, tmp_path / "sweep"
    subprocess.run(["scancel", "-n", name], capture_output=True)


def _rows(sweep_dir):
    return json.loads((sweep_dir / "comparison.json").read_text())


def _wait_running(name: str, task: int, timeout: float = 120) -> str:
    """The SLURM id of array task ``task`` of job ``name`` once it runs."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        out = subprocess.run(
            ["squeue", "-h", "-n", name, "-o", "%i %T"], capture_output=True, text=True
        ).stdout
        for line in out.splitlines():
            job, state = line.split()
            if job.endswith(f"_{task}") and state == "RUNNING":
                return job
        time.sleep(0.5)
    raise AssertionError(f"task {task} of {name} never ran")


def test_a_slurm_sweep_gives_one_table_with_the_baseline_trained_once(slurm):
    args, env, _, sweep_dir = slurm
    t0 = time.perf_counter()
    p = subprocess.run(
        [*args, "recipe=none,dynamic_range,float16"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    seconds = time.perf_counter() - t0
    assert p.returncode == 0, p.stderr[-3000:]
    rows = _rows(sweep_dir)
    assert {r["artifact"] for r in rows} == {
        "float.h5",
        "none.tflite",
        "dynamic_range.tflite",
        "float16.tflite",
    }
    assert all(r["status"] == "ok" for r in rows)
    # three jobs on one node share the cache's file lock: one trains, the others load
    caches = [r["baseline_cache"] for r in rows if r["role"] != "float"]
    assert sorted(caches).count("miss") == 1, caches
    assert "ship (digits, small_cnn)" in p.stdout
    print(f"SLURM 3-recipe sweep: {seconds:.1f} s")


def test_scancel_and_a_time_limit_are_failed_rows_and_the_table_is_written(slurm):
    args, env, name, sweep_dir = slurm
    more = ["hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=15"]
    sweep = subprocess.Popen(
        [*args, *more, "recipe=none,sleep,sleep"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    job = _wait_running(name, 1)
    subprocess.run(["scancel", job], check=True)
    out, err = sweep.communicate(timeout=600)
    assert sweep.returncode == 1, err[-3000:]
    assert "Traceback" not in err
    assert "error: 2 of 3 jobs failed" in err
    by_job = {}
    for r in _rows(sweep_dir):
        by_job.setdefault(r["job"], []).append(r)
    assert all(r["status"] == "ok" for r in by_job["0"])
    (cancelled,) = by_job["1"]
    assert cancelled["status"] == "failed" and "cancelled by SLURM" in cancelled["error"]
    assert cancelled["recipe"] == "sleep" and cancelled["dataset"] == "digits"
    timed_out = [r for r in by_job["2"] if r["status"] == "failed"]
    assert timed_out and "time limit" in timed_out[0]["error"], by_job["2"]
    assert "ship (digits, small_cnn): none.tflite" in out


def test_ctrl_c_on_the_submitter_cancels_its_jobs_and_writes_the_table(slurm):
    args, env, name, sweep_dir = slurm
    sweep = subprocess.Popen(
        [*args, "recipe=sleep,sleep"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_running(name, 0)
    sweep.send_signal(signal.SIGINT)
    out, err = sweep.communicate(timeout=300)
    assert sweep.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    assert "cancelled the unfinished job(s)" in out
    assert "interrupted; the table of the 0 finished job(s)" in err
    assert (sweep_dir / "comparison.md").is_file()

    def queue_empty() -> bool:
        p = subprocess.run(["squeue", "-h", "-n", name], capture_output=True, text=True)
        return not p.stdout.strip()

    assert _wait_for(queue_empty, 60), "the cancelled jobs are still queued"


def _ray_head_running() -> bool:
    """A head started here (`ray start --head`) writes its address to this file while it runs."""
    import tempfile
    from pathlib import Path

    return (Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster").is_file()


def test_a_ray_sweep_gives_one_table_with_the_baseline_trained_once(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason='pip install -e ".[ray]"')
    if shutil.which("ray") is None or not _ray_head_running():
        pytest.skip("no Ray cluster running here: start one with `ray start --head`")
    # hydra/launcher=ray joins the running cluster (Hydra's own config would refuse it:
    # "object_store_memory must not be provided")
    sweep_dir = tmp_path / "sweep"
    args = [sys.executable, "-m", "runner", "-m", "hydra/launcher=ray", *TINY]
    args += [f"cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={sweep_dir}"]
    t0 = time.perf_counter()
    p = subprocess.run(
        [*args, "recipe=none,dynamic_range,float16"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    seconds = time.perf_counter() - t0
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Connecting to existing Ray cluster" in p.stdout + p.stderr
    rows = _rows(sweep_dir)
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)
    caches = [r["baseline_cache"] for r in rows if r["role"] != "float"]
    assert sorted(caches).count("miss") == 1, caches
    print(f"Ray 3-recipe sweep: {seconds:.1f} s")


def test_without_accounting_a_cancelled_job_is_a_failed_row_after_a_bounded_wait(slurm):
    # slurmdbd stopped: submitit's sacct polls fail ("Bypassing sacct error", forever)
    if os.geteuid() != 0 or shutil.which("slurmdbd") is None:
        pytest.skip("stopping slurmdbd needs root on the cluster's machine")
    args, env, name, sweep_dir = slurm
    subprocess.run(["pkill", "-x", "slurmdbd"], check=False)
    try:
        time.sleep(1)
        sweep = subprocess.Popen(
            [*args, "recipe=none,sleep"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        subprocess.run(["scancel", _wait_running(name, 1)], check=True)
        out, err = sweep.communicate(timeout=300)
    finally:
        subprocess.Popen(["/usr/sbin/slurmdbd"]).wait()
        for _ in range(60):  # accounting back for the other tests
            if subprocess.run(["sacct", "-n", "-X"], capture_output=True).returncode == 0:
                break
            time.sleep(0.5)
    assert sweep.returncode == 1, err[-3000:]
    said = [ln for ln in (out + err).splitlines() if "sacct" in ln]
    assert len(said) == 1 and "does not answer here" in said[0], said
    rows = {r["job"]: r for r in _rows(sweep_dir) if r["status"] == "failed"}
    assert "SLURM keeps no accounting here" in rows["1"]["error"]


def test_the_launcher_extras_install_together():
    """hydra-ray-launcher pins cloudpickle 2, which joblib 1.6 refuses: the ray extra pins
    joblib below 1.6, so `pip check` stays clean with every extra of the test install."""
    p = subprocess.run(
        [sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0, p.stdout + p.stderr
