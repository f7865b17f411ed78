"""logger=mlflow: each job an MLflow run, a multirun a parent with one child per job (read back)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import TINY, run_cli

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra is not installed")


def runs(uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tfq-runner")
    return client, client.search_runs([exp.experiment_id])


@pytest.mark.slow
def test_a_multirun_is_a_parent_run_with_one_child_per_job(tmp_path):
    # setup / execute: a 2-job sweep logged to the default store, launched from tmp_path
    sweep = tmp_path / "sweep"
    p = run_cli(
        "-m",
        "logger=mlflow",
        "recipe=none,float16",
        *TINY,
        f"cache_dir={tmp_path / 'cache'}",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    # assert: read back with MlflowClient from the documented SQLite file; artifacts beside it
    uri = f"sqlite:///{tmp_path / 'outputs' / 'mlruns.db'}"
    client, found = runs(uri)
    assert not (tmp_path / "mlruns").exists() and (tmp_path / "outputs" / "mlartifacts").is_dir()
    parents = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in found if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0].info.run_id
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent}
    assert {a.path for a in client.list_artifacts(parent)} >= {"comparison.csv", "comparison.png"}
    child = next(c for c in children if c.data.tags["recipe"] == "float16")
    assert (
        child.data.params["train.epochs"] == "6"
        and "recipe=float16" in child.data.params["overrides"]
    )
    assert child.data.tags["dataset"] == "digits" and child.data.tags["baseline_key"]
    m = child.data.metrics
    assert 1.6 < m["float16.tflite/compression"] < 2.1 and m["float16.tflite/agreement"] >= 0.99
    assert m["float16.tflite/output_sqnr_db"] > 40 and "float.h5/accuracy" in m
    files = {a.path for a in client.list_artifacts(child.info.run_id)}
    assert {"results.json", "comparison.csv"} <= files


def test_without_mlflow_one_line_says_what_to_install(tmp_path):
    # setup: an `mlflow` that cannot be imported, first on the path
    fake = tmp_path / "fake"
    (fake / "mlflow").mkdir(parents=True)
    (fake / "mlflow" / "__init__.py").write_text("raise ImportError('no mlflow here')\n")
    env_path = f"{fake}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    # execute
    p = run_cli(
        "logger=mlflow",
        f"hydra.run.dir={tmp_path / 'run'}",
        f"cache_dir={tmp_path / 'c'}",
        extra_pythonpath=env_path,
    )
    # assert
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1] == (
        'error: logger=mlflow needs MLflow: pip install -e ".[tracking]" (or pip install mlflow)'
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_the_documented_mlflow_ui_command_answers(tmp_path):
    """docs/sweeps.md's `mlflow ui --backend-store-uri sqlite:///outputs/mlruns.db`, on a store
    the runner wrote, answers HTTP 200 and lists the runner's experiment."""
    import shutil
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    # setup: one run logged to the default store, launched from tmp_path
    p = run_cli(
        "logger=mlflow", "recipe=float16", *TINY, f"cache_dir={tmp_path / 'c'}", cwd=tmp_path
    )
    assert p.returncode == 0, p.stderr[-3000:]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mlflow_cli = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    # execute: the documented command, on loopback
    cmd = [mlflow_cli, "ui", "--backend-store-uri", "sqlite:///outputs/mlruns.db"]
    ui = subprocess.Popen(
        [*cmd, "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        status, body, end = None, "", time.monotonic() + 90
        while time.monotonic() < end and ui.poll() is None:
            try:
                base = f"http://127.0.0.1:{port}"
                with urllib.request.urlopen(base + "/", timeout=5) as r:
                    status = r.status
                url = base + "/ajax-api/2.0/mlflow/experiments/search?max_results=10"
                with urllib.request.urlopen(url, timeout=5) as r:
                    body = r.read().decode()
                break
            except OSError:
                time.sleep(1)
    finally:
        ui.terminate()
        err = ui.communicate(timeout=30)[1]
    # assert
    assert status == 200, err[-3000:]
    assert "tfq-runner" in body
