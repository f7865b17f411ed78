"""The sweep's fixed cost: each job's config composed once (the runner's sweeper), and a process
that ends without TensorFlow's teardown but with every exit handler and stream flushed."""

from __future__ import annotations

import pickle
import subprocess
import sys

from helpers import ROOT, run_cli
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.plugins import Plugins

from runner.config import CONF_DIR, register_bases

# Hydra's plugin scan executes every module of the hydra_plugins namespace again (a new class
# object): scan first, so the class imported here is the one a later scan leaves in sys.modules
Plugins.instance()
from hydra_plugins.tfq_runner.sweeper import KEPT, ComposedOnce  # noqa: E402


class CountingLoader:
    """Stands in for Hydra's config loader: counts compositions."""

    def __init__(self):
        self.calls = []

    def load_sweep_config(self, master_config, sweep_overrides):
        self.calls.append(tuple(sweep_overrides))
        return {"overrides": list(sweep_overrides), "n": len(self.calls)}

    def get_search_path(self):
        return "the loader's own"


def test_a_checked_job_is_not_composed_again_by_the_launcher():
    inner = CountingLoader()
    loader = ComposedOnce(inner)
    batch = [["recipe=none"], ["recipe=float16"], ["recipe=qat", "train.seed=1"]]
    for overrides in batch:  # the sweeper checks the batch
        loader.compose("master", overrides)
    launched = [loader.load_sweep_config("master", list(o)) for o in batch]  # the launcher
    assert inner.calls == [tuple(o) for o in batch]  # three compositions, not six
    assert [c["overrides"] for c in launched] == batch
    # a job launched again (or never checked) is composed anew; the rest is the loader's
    assert loader.load_sweep_config("master", ["recipe=none"])["n"] == 4
    assert loader.get_search_path() == "the loader's own"


def test_a_copy_sent_to_a_worker_carries_no_configs_and_memory_is_bounded():
    loader = ComposedOnce(CountingLoader())
    for i in range(KEPT + 5):
        loader.compose("master", [f"train.seed={i}"])
    assert len(loader.held) == KEPT  # past KEPT, the launcher composes again
    copy = pickle.loads(pickle.dumps(loader))  # joblib and Ray pickle the launcher's context
    assert copy.held == {} and copy.load_sweep_config("m", ["x=1"])["overrides"] == ["x=1"]


def test_the_default_sweeper_is_the_runners_and_a_bad_value_stops_the_sweep_first(tmp_path):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        register_bases()
        cfg = hydra_compose("config", ["recipe=float16"], return_hydra_config=True)
    assert cfg.hydra.sweeper._target_ == "hydra_plugins.tfq_runner.sweeper.RunnerSweeper"
    # a swept option that does not exist fails before any job runs, as with Hydra's sweeper
    p = run_cli("-m", "recipe=float16,nope", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert p.returncode == 2, p.stderr[-1500:]
    assert "recipe=nope: no such option; did you mean recipe=none?" in p.stderr
    assert not list((tmp_path / "sweep").glob("[0-9]*"))  # no job started


def test_quick_exit_runs_exit_handlers_flushes_and_keeps_the_code():
    code = (
        "import atexit, sys; from runner.cli import quick_exit;"
        "atexit.register(lambda: print('handler ran', file=sys.stderr));"
        "sys.stdout.write('buffered, no newline'); quick_exit({})"
    )
    for arg, rc in (("0", 0), ("None", 0), ("143", 143), ("'a message'", 1)):
        p = subprocess.run(
            [sys.executable, "-c", code.format(arg)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert p.returncode == rc and p.stdout == "buffered, no newline", (arg, p)
        assert "handler ran" in p.stderr and ("a message" in p.stderr) == (rc == 1)
