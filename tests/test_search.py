"""hydra/sweeper=search: recipes cheapest first, skipped when they cannot beat the best file
found, parameters searched with Optuna, a killed search resumed with no finished trial run
again, and its options checked before any work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT, TINY, run_cli

from runner.report.search import SearchOptions
from runner.report.select import SelectOptions
from runner.search.driver import Search
from runner.search.plan import Candidate, Reference

# a float32 reference of 100,000 weights (400,000 bytes of them) in a 420,000-byte file
REFERENCE = Reference(size_bytes=420_000, weights=100_000)


def _job(folder: Path, recipe: str, bits: int, accuracy: float, extra: str = "") -> Path:
    """A job folder as a finished job leaves it: the float row and the recipe's file."""
    folder.mkdir(parents=True)
    size = REFERENCE.estimate(bits) + 3_000  # scales and zero points add a little
    common = {"dataset": "d", "model": "m", "baseline_key": "k", "status": "ok"}
    rows = [
        {**common, "recipe": "float", "role": "float", "artifact": "float.h5", "format": "keras"}
        | {"size_bytes": 430_000, "accuracy": 0.95, "accuracy_delta": 0.0, "agreement": 1.0},
        {**common, "recipe": recipe, "role": "recipe", "artifact": f"{recipe}.tflite"}
        | {"format": "tflite", "size_bytes": size, "accuracy": accuracy}
        | {"accuracy_delta": accuracy - 0.95, "agreement": 1.0 if accuracy >= 0.94 else 0.9},
    ]
    (folder / "results.json").write_text(
        json.dumps({"status": "done", "rows": rows, "timings": {"job_seconds": 1.0}})
    )
    return folder


class FakeLauncher:
    """Makes each job's folder as a finished job would: accuracy from the recipe's bits (and a
    sampled sparsity), counting what ran; raises after ``die_after`` jobs (a killed search)."""

    def __init__(self, root: Path, bits: dict[str, int], die_after: int | None = None):
        self.root, self.bits, self.die_after, self.ran = root, bits, die_after, []

    def __call__(self, batch: list[list[str]], first: int) -> list[Path]:
        out = []
        for i, overrides in enumerate(batch):
            if self.die_after is not None and len(self.ran) >= self.die_after:
                raise KeyboardInterrupt  # the process dies mid-batch: its trials stay unfinished
            opts = dict(o.split("=", 1) for o in overrides)
            recipe, sparsity = opts["recipe"], float(opts.get("recipe.sparsity", 0))
            accuracy = 0.95 - (0.02 if self.bits[recipe] == 4 else 0.0) - max(0, sparsity - 0.6)
            self.ran.append(tuple(overrides))
            out.append(_job(self.root / str(first + i), recipe, self.bits[recipe], accuracy))
        return out


BITS = {"float16": 16, "int4_weight_only": 4, "full_integer": 8, "qat": 8, "prune": 8}
CANDIDATES = sorted(
    [
        Candidate("float16", "conversion", 16),
        Candidate("int4_weight_only", "conversion", 4),
        Candidate("full_integer", "calibration", 8),
        Candidate("qat", "fine_tuning", 8),
    ],
    key=lambda c: c.order,
)


def _search(tmp_path, launcher, budget=None, candidates=CANDIDATES, **opts) -> Search:
    s = Search(
        SearchOptions(**opts),
        budget or SelectOptions(),
        candidates,
        ["seed=0"],
        tmp_path / "study.journal",
        launcher,
    )
    s.reference = REFERENCE
    return s


def test_the_search_runs_the_cheapest_first_and_skips_what_cannot_be_smaller(tmp_path):
    # setup: int4 meets a 3-point budget; then no 8- or 16-bit file can be smaller than it
    launcher = FakeLauncher(tmp_path / "jobs", BITS)
    budget = SelectOptions(max_accuracy_drop=0.03, min_agreement=0.9)
    # execute
    records = _search(tmp_path, launcher, budget).run()
    # assert: one job; every other recipe skipped with its estimate and the file it lost to
    assert [o[1] for o in launcher.ran] == ["recipe=int4_weight_only"]
    states = {r["recipe"]: (r["state"], r.get("estimated_bytes")) for r in records}
    assert states["int4_weight_only"][0] == "ran"
    assert states["float16"] == ("skipped", 20_000 + 200_000)
    assert states["full_integer"] == ("skipped", 20_000 + 100_000)
    skipped = next(r for r in records if r["recipe"] == "qat")
    assert "8-bit weights make at least ~120,000 bytes" in skipped["reason"]
    assert "int4_weight_only.tflite (73,000 bytes)" in skipped["reason"]


def test_a_file_that_misses_the_budget_lets_the_next_recipes_run(tmp_path):
    # setup: a 1-point budget: int4 (2 points lost) misses it, so 8-bit recipes can still win
    launcher = FakeLauncher(tmp_path / "jobs", BITS)
    budget = SelectOptions(max_accuracy_drop=0.01, min_agreement=0.9)
    # execute
    records = _search(tmp_path, launcher, budget).run()
    # assert: int4 ran and missed; float16 (16-bit) could still be the smallest within budget;
    # full_integer beat it, and qat ran too: its least size (120,000 bytes) is under
    # full_integer's real 123,000, so it might have been smaller
    assert [o[1] for o in launcher.ran] == [
        "recipe=int4_weight_only",
        "recipe=float16",
        "recipe=full_integer",
        "recipe=qat",
    ]
    by = {r["recipe"]: r for r in records}
    assert by["int4_weight_only"]["reason"].startswith("accuracy drop 0.0200 > 0.01")
    assert by["float16"]["meets_budget"] and by["qat"]["estimated_bytes"] == 120_000
    assert by["qat"]["size_bytes"] == 123_000  # the estimate is checked against the real file


def test_max_trials_stops_the_search_and_says_so(tmp_path):
    launcher = FakeLauncher(tmp_path / "jobs", BITS)
    budget = SelectOptions(max_accuracy_drop=0.0, min_agreement=0.99)  # nothing meets it
    records = _search(tmp_path, launcher, budget, max_trials=2).run()
    assert len(launcher.ran) == 2
    stopped = [r for r in records if r["state"] == "stopped"]
    assert [r["recipe"] for r in stopped] == ["full_integer", "qat"]
    assert all(r["reason"] == "search.max_trials=2 reached" for r in stopped)


def test_a_killed_parameter_search_resumes_without_running_a_finished_trial_again(tmp_path):
    # setup: a sparsity search of 6 trials on prune, killed after its 3rd job started
    prune = [Candidate("prune", "fine_tuning", 8, ("recipe.sparsity",))]
    opts = {"trials": 6, "space": {"recipe.sparsity": "interval(0.3, 0.95)"}, "sampler": "tpe"}
    budget = SelectOptions(objective="size", max_accuracy_drop=0.1, min_agreement=0.0)
    first = FakeLauncher(tmp_path / "jobs", BITS, die_after=3)
    with pytest.raises(KeyboardInterrupt):
        _search(tmp_path, first, budget, prune, **opts).run()
    # execute: the same search again
    again = FakeLauncher(tmp_path / "jobs2", BITS)
    records = _search(tmp_path, again, budget, prune, **opts).run()
    # assert: the 3 finished trials are replayed, 3 more run, none twice, the sampled values
    # differ, and the record holds all 6 with their job folders
    assert len(first.ran) == 3 and len(again.ran) == 3
    assert not set(first.ran) & set(again.ran)
    assert len(records) == 6 and len({r["params"] for r in records}) == 6
    assert sorted(Path(r["job_dir"]).parent.name for r in records) == ["jobs"] * 3 + ["jobs2"] * 3
    values = [float(r["params"].split("=")[1]) for r in records]
    assert all(0.3 <= v <= 0.95 for v in values)


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("search.max_trials=0", "search.max_trials=0"),
        ("search.max_minutes=-1", "search.max_minutes=-1"),
        ("search.recipes=[full_integr]", "did you mean full_integer?"),
    ],
)
def test_a_bad_search_option_is_one_line_and_exit_2_before_any_work(tmp_path, override, needle):
    p = run_cli(
        "-m", "hydra/sweeper=search", override, f"hydra.sweep.dir={tmp_path / 's'}", timeout=120
    )
    assert p.returncode == 2, p.stderr[-2000:]
    assert needle in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert not (tmp_path / "s" / "0").exists()


def test_a_bad_search_space_is_one_line(tmp_path):
    p = run_cli(
        "-m",
        "hydra/sweeper=search",
        "recipe=prune",
        "+search.space={recipe.sparsity: 'between(1,2)'}",
        f"hydra.sweep.dir={tmp_path / 's'}",
        timeout=300,
    )
    assert p.returncode == 2, p.stderr[-2000:]
    assert "search.space.recipe.sparsity=between(1,2)" in p.stderr, p.stderr[-2000:]
    assert "Traceback" not in p.stderr


@pytest.mark.slow
def test_kill_9_mid_search_then_the_same_command_resumes_it(tmp_path):
    # setup: a sparsity search of 4 trials on the tiny digits model, in its own process group
    args = [
        "-m",
        "hydra/sweeper=search",
        "recipe=prune",
        "recipe.sparsity=interval(0.3,0.9)",
        "search.trials=4",
        "select.objective=gzip_size",
        f"cache_dir={tmp_path / 'cache'}",
        *TINY,
        "recipe.epochs=1",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def start(sweep: Path) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "runner", *args, f"hydra.sweep.dir={sweep}"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )

    first = tmp_path / "first"
    p = start(first)
    deadline = time.monotonic() + 600
    while not (first / "2").is_dir():  # two trials done and told, the third starting
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()[1][-3000:]
        time.sleep(0.5)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    # execute: the same command (a new sweep folder, as a new timestamp would give)
    second = tmp_path / "second"
    q = start(second)
    out, err = q.communicate(timeout=900)
    # assert: the finished trials were not run again, and the table holds every trial
    assert q.returncode == 0, err.decode()[-3000:]
    data = json.loads((second / "search.json").read_text())
    assert data["resumed"] >= 2 and data["ran"] == 4, data
    jobs = [Path(t["job_dir"]) for t in data["trials"]]
    assert len(set(jobs)) == 4 and sum(j.parent == first for j in jobs) == data["resumed"]
    rows = json.loads((second / "comparison.json").read_text())
    pruned = [r for r in rows if r["recipe"] == "prune"]
    assert len(pruned) == 4, [(r["job"], r["status"]) for r in pruned]
    assert "search: 4 trials run" in err.decode()


@pytest.mark.slow
def test_a_parallel_search_on_joblib_whose_budget_nothing_meets_names_the_closest(tmp_path):
    # setup: a size budget no file can meet, three candidates, two jobs at a time on joblib
    sweep = tmp_path / "s"
    # execute
    p = run_cli(
        "-m",
        "hydra/sweeper=search",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "search.parallel=2",
        "recipe=dynamic_range,float16,int4_weight_only",
        "select.max_size_mb=0.001",
        f"cache_dir={tmp_path / 'cache'}",
        *TINY,
        f"hydra.sweep.dir={sweep}",
        timeout=900,
    )
    # assert: every candidate ran (none met the budget, so none could be ruled out), one line
    # says no file meets it and which is closest, exit 0
    assert p.returncode == 0, p.stderr[-3000:]
    data = json.loads((sweep / "search.json").read_text())
    assert sorted(t["recipe"] for t in data["trials"] if t["state"] == "ran") == [
        "dynamic_range",
        "float16",
        "int4_weight_only",
    ]
    assert "no artifact meets the budget; the closest is" in p.stdout
    assert "search: 3 trials run, 0 recipes skipped" in p.stderr


def test_candidates_follow_their_yaml_and_a_pruned_file_takes_its_exports_bits():
    from runner.config import compose
    from runner.search.plan import candidates

    # execute: prune exported through int4_weight_only, beside the default qat
    found = candidates(
        ["qat", "prune", "none", "dynamic_range"],
        lambda name: compose(
            [f"recipe={name}"] + (["recipe.export=int4_weight_only"] if name == "prune" else [])
        ),
        {"recipe.sparsity": "interval(0.3,0.9)"},
        lambda name: compose([f"recipe={name}"]).recipe.get("weight_bits"),
    )
    # assert: the reference is no candidate; cheapest first; prune takes its export's 4 bits and
    # is the one that has the searched key
    assert [c.recipe for c in found] == ["dynamic_range", "prune", "qat"]
    by = {c.recipe: c for c in found}
    assert (by["dynamic_range"].cost, by["dynamic_range"].weight_bits) == ("conversion", 8)
    assert (by["prune"].weight_bits, by["prune"].space) == (4, ("recipe.sparsity",))
    assert (by["qat"].cost, by["qat"].space) == ("fine_tuning", ())


def test_a_study_file_that_cannot_be_written_is_one_line_before_any_job(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    p = run_cli(
        "-m",
        "hydra/sweeper=search",
        "recipe=dynamic_range",
        f"search.study={blocker / 'study.journal'}",
        f"hydra.sweep.dir={tmp_path / 's'}",
        timeout=300,
    )
    assert p.returncode == 2, p.stderr[-2000:]
    assert f"cannot keep the search's study in {blocker / 'study.journal'}" in p.stderr
    assert "search.study=" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "s" / "0").exists()
