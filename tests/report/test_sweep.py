"""Sweeps: one table across a multirun, with any launcher, failures kept as rows."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
from helpers import ROOT, TINY, run_cli

from runner.report import aggregate, write_sweep_report
from runner.report.plot import pareto_front

FILES = ("comparison.csv", "comparison.md", "comparison.json")


def sweep(tmp_path, *args, name="sweep", timeout=600):
    sweep_dir = tmp_path / name
    p = run_cli(
        "-m",
        *TINY,
        f"cache_dir={tmp_path / 'cache'}",
        f"hydra.sweep.dir={sweep_dir}",
        *args,
        timeout=timeout,
    )
    return p, sweep_dir


def table(sweep_dir):
    with open(sweep_dir / "comparison.csv") as f:
        return list(csv.DictReader(f))


def recipe_rows(rows):
    return [r for r in rows if r["recipe"] not in ("float", "none")]


@pytest.mark.slow
def test_three_recipe_sweep_trains_once_and_report_reproduces_it(tmp_path):
    # execute
    p, sweep_dir = sweep(tmp_path, "recipe=dynamic_range,float16,full_integer")
    # assert: the callback's table, every job, baseline rows once, one training
    assert p.returncode == 0, p.stderr[-3000:]
    rows = table(sweep_dir)
    assert [r["artifact"] for r in rows] == [
        "float.h5",
        "none.tflite",
        "dynamic_range.tflite",
        "float16.tflite",
        "full_integer.tflite",
    ]
    assert [r["baseline_cache"] for r in recipe_rows(rows)] == ["miss", "hit", "hit"]
    varies = [r["varies"] for r in recipe_rows(rows)]
    assert varies == ["recipe=dynamic_range", "recipe=float16", "recipe=full_integer"]
    assert all(
        r["overrides"].startswith("dataset.train_size=600") for r in rows
    )  # the whole command line
    assert len({r["baseline_key"] for r in rows}) == 1 and len(rows[0]["baseline_key"]) == 16
    assert "| recipe=float16 | float16.tflite |" in p.stdout  # the aggregated table is printed
    assert (sweep_dir / "comparison.png").stat().st_size > 10_000
    # the verdict: the smallest .tflite that meets the default budget (up to ties), named
    meets = [
        r
        for r in rows
        if r["format"] == "tflite"
        and float(r["accuracy_delta"]) >= -0.01
        and float(r["agreement"]) >= 0.99
    ]
    smallest = min(meets, key=lambda r: int(r["size_bytes"]))
    ship = [ln for ln in p.stdout.splitlines() if ln.startswith("ship (digits, small_cnn): ")]
    assert len(ship) == 1 and smallest["artifact"] in ship[0], p.stdout[-2000:]
    verdict = json.loads((sweep_dir / "recommendation.json").read_text())["verdicts"][0]
    assert verdict["chosen"]["artifact"] == smallest["artifact"]
    assert verdict["chosen"]["path"].endswith(f"models/{smallest['artifact']}")
    assert verdict["runner_up"] is not None and "noise" in verdict["why"]
    assert {r["artifact"] for r in rows if r["pareto"] == "True"} <= {
        r["artifact"] for r in rows if r["format"] == "tflite"
    }
    # runner.report rebuilds the same files byte for byte
    out = tmp_path / "rebuilt"
    r = subprocess.run(
        [sys.executable, "-m", "runner.report", str(sweep_dir), "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    for f in (*FILES, "comparison.png", "recommendation.json"):
        assert (out / f).read_bytes() == (sweep_dir / f).read_bytes(), f
    assert "ship (digits, small_cnn)" in r.stderr
    # re-running the same sweep reuses the cache and rewrites the whole table
    p2, _ = sweep(tmp_path, "recipe=dynamic_range,float16,full_integer")
    assert p2.returncode == 0
    assert [r["baseline_cache"] for r in recipe_rows(table(sweep_dir))] == ["hit", "hit", "hit"]
    # an impossible budget: one line saying so, naming the closest; still exit 0
    p3, _ = sweep(tmp_path, "recipe=dynamic_range,float16", "select.max_size_mb=0.001", name="t")
    assert p3.returncode == 0, p3.stderr[-2000:]
    (line,) = [ln for ln in p3.stdout.splitlines() if ln.startswith("ship ")]
    assert "no artifact meets the budget" in line and "the closest is" in line


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["hydra/launcher=joblib", "hydra/launcher=submitit_local"])
def test_parallel_launchers_share_one_baseline_training(tmp_path, launcher):
    extra = (
        ["hydra.launcher.n_jobs=2"] if "joblib" in launcher else ["hydra.launcher.timeout_min=15"]
    )
    # a guard, not a timing: the process must not wait out the joblib pool's 300 s idle timeout
    # at exit (it did, once, when the exit skipped the interpreter's thread shutdown)
    p, sweep_dir = sweep(tmp_path, launcher, *extra, "recipe=dynamic_range,float16", timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = table(sweep_dir)
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)
    # two concurrent jobs waited on the cache lock: exactly one of them trained
    assert sorted(r["baseline_cache"] for r in recipe_rows(rows)) == ["hit", "miss"]


@pytest.mark.slow
def test_a_failing_job_is_a_failed_row_and_the_table_is_still_written(tmp_path):
    p, sweep_dir = sweep(
        tmp_path,
        "recipe=none,dynamic_range,full_integer",
        "++recipe.converter.representative_dataset=false",
    )
    # the table is written, and the exit status says a job failed (a script can trust it); the
    # recipe=none job counts though its rows are the baseline's, shown once
    assert p.returncode == 1, p.stderr[-3000:]
    assert "error: 1 of 3 jobs failed (jobs 2; see the error column)" in p.stderr
    rows = {r["artifact"]: r for r in table(sweep_dir)}
    assert rows["dynamic_range.tflite"]["status"] == "ok"
    assert (
        rows["full_integer.tflite"]["status"] == "failed"
        and "representative_dataset" in rows["full_integer.tflite"]["error"]
    )


def _job(folder, rows, overrides):
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if rows is not None:
        (folder / "results.json").write_text(json.dumps({"rows": rows}))


def _row(artifact, recipe, key="k1", status="ok", size=100, acc=0.9):
    return {
        "dataset": "d",
        "model": "m",
        "recipe": recipe,
        "artifact": artifact,
        "format": "tflite",
        "size_bytes": size,
        "accuracy": acc,
        "status": status,
        "baseline_key": key,
        "baseline_cache": "hit",
    }


def test_aggregate_keeps_one_baseline_per_key_and_reports_killed_jobs(tmp_path):
    # setup: two jobs on baseline k1, one on k2, one job killed before writing anything
    _job(
        tmp_path / "0",
        [_row("float.h5", "float"), _row("none.tflite", "none"), _row("a.tflite", "a")],
        ["recipe=a"],
    )
    _job(
        tmp_path / "1",
        [_row("float.h5", "float"), _row("none.tflite", "none"), _row("b.tflite", "b")],
        ["recipe=b"],
    )
    _job(
        tmp_path / "2",
        [_row("float.h5", "float", "k2"), _row("none.tflite", "none", "k2")],
        ["recipe=none", "seed=1"],
    )
    _job(tmp_path / "10", None, ["recipe=c"])
    # execute
    rows = aggregate([tmp_path])
    # assert
    assert [(r["artifact"], r["baseline_key"], r["job"]) for r in rows[:6]] == [
        ("float.h5", "k1", "0"),
        ("none.tflite", "k1", "0"),
        ("a.tflite", "k1", "0"),
        ("b.tflite", "k1", "1"),
        ("float.h5", "k2", "2"),
        ("none.tflite", "k2", "2"),
    ]
    killed = rows[-1]
    assert (
        killed["status"] == "failed"
        and "left no results" in killed["error"]
        and killed["varies"] == "recipe=c"
    )
    written = write_sweep_report([tmp_path], tmp_path)
    assert len(written) == 7 and (tmp_path / "comparison.md").read_text().count("\n") == 9


def test_seed_sweep_summary_gives_runs_mean_min_max_per_artifact(tmp_path):
    # setup: recipes a and b on baselines trained with seeds 0 and 1; b fails once
    for i, (recipe, seed, acc, delta, status) in enumerate(
        [
            ("a", 0, 0.90, -0.01, "ok"),
            ("b", 0, 0.92, 0.01, "ok"),
            ("a", 1, 0.80, -0.03, "ok"),
            ("b", 1, None, None, "failed"),
        ]
    ):
        key = f"k{seed}"
        row = {**_row(f"{recipe}.tflite", recipe, key, status, acc=acc), "accuracy_delta": delta}
        _job(
            tmp_path / str(i),
            [_row("float.h5", "float", key, acc=0.9 - seed / 10), row],
            [f"seed={seed}", f"recipe={recipe}"],
        )
    # execute
    rows = write_sweep_report([tmp_path], tmp_path)
    # assert
    from runner.report import seed_summary

    summary = {r["artifact"]: r for r in seed_summary(rows)}
    assert set(summary) == {"float.h5", "a.tflite", "b.tflite"}
    a, b, f = summary["a.tflite"], summary["b.tflite"], summary["float.h5"]
    assert (a["runs"], a["failed"]) == (2, 0) and a["accuracy_mean"] == pytest.approx(0.85)
    assert (a["accuracy_delta_min"], a["accuracy_delta_max"]) == (-0.03, -0.01)
    assert (b["runs"], b["failed"], b["accuracy_max"]) == (2, 1, 0.92)
    assert f["runs"] == 2 and f["varies"] == ""  # one float row per seed, whatever the recipe
    assert "| a.tflite | recipe=a | 2 | 0 | 0.8500 |" in (tmp_path / "summary.md").read_text()
    # a sweep without seeds gets no summary
    assert seed_summary([{**r, "varies": "recipe=a"} for r in rows]) == []


def test_pareto_front_is_smallest_for_its_accuracy():
    pts = [(4.0, 0.90), (1.0, 0.80), (2.0, 0.85), (2.5, 0.84), (1.0, 0.79), (8.0, 0.90)]
    assert pareto_front(pts) == [1, 2, 0]


def test_report_cli_errors(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "runner.report", str(tmp_path / "nope")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "not a folder" in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "runner.report", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "no run results" in r.stderr


INTERRUPTING_RECIPE = """
import os
import signal

from runner.recipes.base import RecipeBase


class Interrupt(RecipeBase):
    \"\"\"Sends its own process SIGNAL (Ctrl-C, or SLURM's SIGTERM) in the middle of producing
    (at a known point instead of after a sleep).\"\"\"

    def produce(self, ctx):
        (ctx.models_dir / "interrupt.tflite.tmp").write_bytes(b"half")
        os.kill(os.getpid(), getattr(signal, os.environ["STOP_SIGNAL"]))
        raise AssertionError("the signal did not stop the recipe")
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "stop, code, said", [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "terminated (SIGTERM)")]
)
def test_ctrl_c_or_sigterm_in_a_sweep_stops_with_one_line_and_the_finished_jobs_table(
    tmp_path, stop, code, said
):
    # setup: job 0 converts, job 1's recipe receives the signal mid-way, job 2 must never start
    import os

    site = tmp_path / "site" / "interrupting"
    site.mkdir(parents=True)
    (site / "__init__.py").write_text(INTERRUPTING_RECIPE)
    conf = tmp_path / "conf" / "recipe"
    conf.mkdir(parents=True)
    (conf / "interrupt.yaml").write_text("_target_: interrupting.Interrupt\nname: interrupt\n")
    sweep_dir = tmp_path / "sweep"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(ROOT)])}
    env["STOP_SIGNAL"] = stop
    env["TFQ_RUNNER_PLUGINS"] = "interrupting"
    args = [sys.executable, "-m", "runner", "-m", *TINY, f"cache_dir={tmp_path / 'cache'}"]
    args += [f"hydra.searchpath=[file://{tmp_path / 'conf'}]", f"hydra.sweep.dir={sweep_dir}"]
    # execute
    p = subprocess.run(
        [*args, "recipe=none,interrupt,float16"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    # assert: one line, exit 130 / 143, no traceback, the finished job's table
    err = p.stderr
    assert p.returncode == code, err[-2000:]
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and f"{said}; the table of the" in lines[0], err[-2000:]
    rows = table(sweep_dir)
    assert any(r["job"] == "0" and r["status"] == "ok" for r in rows)
    # the job stopped mid-way is a failed row saying so; the one after it never started
    stopped = [r for r in rows if r["job"] == "1"]
    assert stopped and all(r["status"] == "failed" for r in stopped), rows
    assert all("incomplete" in r["error"] or "interrupt" in r["error"] for r in stopped), rows
    assert not any(r["job"] == "2" for r in rows) and not (sweep_dir / "2").exists()


@pytest.mark.parametrize("content", ['{"rows": {"a": 1}}', "[1, 2]", '{"rows": ["x"]}'])
def test_a_results_json_of_another_shape_is_a_failed_row_not_a_traceback(tmp_path, content):
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "results.json").write_text(content)
    rows = write_sweep_report([tmp_path], tmp_path)
    (row,) = rows
    assert row["status"] == "failed" and "is not a runner results file" in row["error"]


def test_report_into_a_folder_it_cannot_write_is_one_line(tmp_path, monkeypatch, capsys):
    from runner.report import recommend

    def refuse(*_a, **_k):
        raise PermissionError(13, "Permission denied", str(tmp_path / "out" / "comparison.md"))

    (tmp_path / "0").mkdir()
    monkeypatch.setattr(recommend, "sweep", refuse)
    with pytest.raises(SystemExit) as e:
        recommend.main([str(tmp_path), "--out", str(tmp_path / "out")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "cannot write the table in" in err and "give a writable --out DIR" in err


def test_a_moved_sweep_folder_names_its_own_files(tmp_path):
    # setup: a job whose results name files under the original sweep's absolute path
    job = tmp_path / "moved" / "0"
    row = _row("a.tflite", "a")
    row["path"] = "/gone/original/sweep/0/models/a.tflite"
    _job(job, [row], ["recipe=a"])
    (job / "models").mkdir()
    (job / "models" / "a.tflite").write_bytes(b"x")
    # execute
    rows = {r["artifact"]: r for r in aggregate([tmp_path / "moved"])}
    # assert: the file that is here is named here, not at the original sweep's path
    assert rows["a.tflite"]["path"] == str(job / "models" / "a.tflite")


def _sweep_folder(tmp_path):
    _job(tmp_path / "0", [_row("a.tflite", "a")], ["recipe=a"])
    from omegaconf import OmegaConf

    return OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})


def test_a_failing_verdict_step_fails_the_command_with_one_line(tmp_path, monkeypatch, capsys):
    # setup: the verdict raises after the table is written (Hydra would make it a warning)
    from runner import callbacks, cli
    from runner.report import recommend

    cfg = _sweep_folder(tmp_path)

    def boom(*a, **k):
        raise ValueError("injected")

    monkeypatch.setattr(recommend, "write", boom)
    # execute
    callbacks.SweepReportCallback().on_multirun_end(cfg)
    with pytest.raises(SystemExit) as e:
        callbacks.ExitStatusCallback().on_multirun_end(cfg)
    # assert: exit 1, one line, the table kept
    assert e.value.code == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert err == [
        "error: the sweep table and verdict failed after the jobs: ValueError: injected"
    ], err
    assert (tmp_path / "comparison.md").exists()
    assert not cli._after_jobs


def test_report_rebuild_never_shows_a_traceback(tmp_path, monkeypatch, capsys):
    from runner.report import recommend

    _sweep_folder(tmp_path)
    monkeypatch.setattr(recommend, "write", lambda *a, **k: 1 / 0)
    assert recommend.main([str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ZeroDivisionError" in err and "Traceback" not in err


INJECTED = """
import runpy, sys
import runner.report.recommend as r
def boom(*a, **k):
    raise ValueError("injected")
r.write = boom
sys.argv = ["runner", *sys.argv[1:]]
runpy.run_module("runner", run_name="__main__")
"""


@pytest.mark.slow
def test_a_real_sweep_whose_verdict_raises_exits_1_with_its_table(tmp_path):
    import os

    sweep_dir = tmp_path / "sweep"
    p = subprocess.run(
        [sys.executable, "-c", INJECTED, "-m", *TINY, f"cache_dir={tmp_path / 'cache'}"]
        + [f"hydra.sweep.dir={sweep_dir}", "recipe=dynamic_range"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 1, p.stderr[-3000:]
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: the sweep table and verdict failed after the jobs: ValueError: injected"
    ]
    assert "dynamic_range.tflite" in (sweep_dir / "comparison.md").read_text()
