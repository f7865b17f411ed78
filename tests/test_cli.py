"""`python -m runner` as a user runs it: exit codes, one-line errors, nothing half-written."""

from __future__ import annotations

import subprocess
import sys

import pytest
import tf_keras as keras
from helpers import ROOT, TINY, run_cli


def test_help_and_config_errors_answer_without_tensorflow():
    code = (
        "import sys, runner.__main__, runner.pipeline, runner.report, runner.evaluation.metrics;"
        "print('tensorflow' in sys.modules, 'tf_keras' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["False", "False"]


def test_help_says_what_the_tool_does_with_examples_and_the_groups():
    p = run_cli("--help")
    assert p.returncode == 0, p.stderr[-1000:]
    lines = p.stdout.splitlines()
    assert lines[0] == "tfq-runner: which TFLite file should I ship?"
    assert sum(ln.strip().startswith("python -m runner") for ln in lines) >= 3  # examples
    groups = {ln.split(":")[0].strip() for ln in lines if ln.startswith("  ") and ": " in ln}
    assert {"dataset", "model", "recipe", "train", "evaluation", "experiment"} <= groups
    assert "base:" not in p.stdout and "int4_weight_only" in p.stdout


@pytest.mark.slow
def test_default_run_prints_the_table_and_writes_it(tmp_path, shared_cache):
    run_dir = tmp_path / "run"
    p = run_cli(*TINY, f"cache_dir={shared_cache}", f"hydra.run.dir={run_dir}")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "| float.h5 |" in p.stdout and "| dynamic_range.tflite |" in p.stdout
    assert "ship check: dynamic_range.tflite meets the budget" in p.stdout
    assert (run_dir / "comparison.md").read_text().strip() in p.stdout
    # a 40 KB model: flatbuffer overhead keeps it under 4x (test_quantize checks 4x on a big one)
    assert (run_dir / "models" / "dynamic_range.tflite").stat().st_size * 2.5 < (
        run_dir / "models" / "none.tflite"
    ).stat().st_size


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "dataset.tarin_size=5",
            "dataset.tarin_size: unknown key; did you mean dataset.train_size?",
        ),
        ("recipe=int4", "recipe=int4: no such option; did you mean recipe=qat_int4?"),
    ],
)
def test_unknown_key_or_option_is_one_line_and_writes_nothing(tmp_path, override, message):
    p = run_cli(override, f"hydra.run.dir={tmp_path / 'run'}")
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: bad config value: {message}"), lines
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_cifar_offline_names_both_ways_without_a_traceback(tmp_path):
    env_home = tmp_path / "home"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "runner",
            "dataset=cifar100",
            f"hydra.run.dir={tmp_path / 'run'}",
            f"cache_dir={tmp_path / 'c'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "KERAS_HOME": str(env_home)},
    )
    assert p.returncode == 2
    assert "CIFAR-100 is not available offline" in p.stderr and "dataset.path=" in p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "run" / "comparison.csv").exists()


def test_pretrained_missing_file_names_the_path(tmp_path):
    p = run_cli(
        "model=pretrained",
        f"model.path={tmp_path / 'model.h5'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert p.returncode == 2 and f"{tmp_path / 'model.h5'} does not exist" in p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "run").exists()  # caught by the config check, before any data loads


@pytest.mark.slow
def test_pretrained_with_lambda_is_refused_naming_the_layer(tmp_path):
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Lambda(lambda t: t * 1.0, name="sneaky")(inp)
    x = keras.layers.Flatten()(x)
    keras.Model(inp, keras.layers.Dense(10, activation="softmax")(x)).save(tmp_path / "m.h5")
    p = run_cli(
        "model=pretrained", f"model.path={tmp_path / 'm.h5'}", f"hydra.run.dir={tmp_path / 'run'}"
    )
    assert p.returncode == 2 and "'sneaky'" in p.stderr and "model.safe_mode=false" in p.stderr


@pytest.mark.slow
def test_pretrained_model_runs_without_training(tmp_path, shared_cache):
    from runner.models.builders import small_cnn

    small_cnn((8, 8, 1), 10, filters=(4,)).save(tmp_path / "m.h5")
    p = run_cli(
        "model=pretrained",
        f"model.path={tmp_path / 'm.h5'}",
        "recipe=float16",
        f"hydra.run.dir={tmp_path / 'run'}",
        *TINY[-3:],
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert (
        "| m.h5 | keras |" in p.stdout
        and "pretrained" in p.stdout
        and "| float16.tflite |" in p.stdout
    )


@pytest.mark.slow
def test_failing_recipe_exits_non_zero_with_the_table_written(tmp_path, shared_cache):
    run_dir = tmp_path / "run"
    p = run_cli(
        *TINY,
        f"cache_dir={shared_cache}",
        "recipe=full_integer",
        "recipe.converter.representative_dataset=false",
        f"hydra.run.dir={run_dir}",
    )
    assert p.returncode == 1
    assert "failed: full_integer.tflite" in p.stderr
    table = (run_dir / "comparison.csv").read_text().splitlines()
    assert len(table) == 4 and table[-1].count(",failed,") == 1


@pytest.mark.slow
def test_a_run_starts_quietly_and_verbose_shows_what_was_hidden(tmp_path):
    import re

    from runner.console import NOISE

    # ai-edge-quantizer's static recipe calibrates (a progress bar) and logs "Serializing model"
    args = (
        "recipe=aeq_static_int8",
        "dataset.train_size=200",
        "train.epochs=1",
        "evaluation.progress=false",
    )
    # execute: the same run quiet (default) and verbose
    quiet = run_cli(*args, f"hydra.run.dir={tmp_path / 'q'}", f"cache_dir={tmp_path / 'c'}")
    loud = run_cli(
        *args, "verbose=true", f"hydra.run.dir={tmp_path / 'v'}", f"cache_dir={tmp_path / 'c'}"
    )
    # assert: both ran; TensorFlow's start-up lines (CUDA probing, oneDNN) only with verbose=true
    assert quiet.returncode == 0 and loud.returncode == 0, quiet.stderr[-2000:]
    assert [ln for ln in loud.stderr.splitlines() if NOISE.search(ln)], loud.stderr[:2000]
    assert not [ln for ln in quiet.stderr.splitlines() if NOISE.search(ln)], quiet.stderr[:2000]
    assert not re.search(r"Warning|warn\(", quiet.stderr), quiet.stderr[:2000]
    assert "| aeq_static_int8.tflite |" in quiet.stdout
    aeq_lines = re.compile(r"Running Calibration|Serializing model")
    assert not aeq_lines.search(quiet.stdout + quiet.stderr), quiet.stdout[-2000:]


def test_a_read_only_run_folder_is_one_line_before_hydras_traceback(tmp_path):
    # issue #23, case 4 (needs a read-only mount: skipped where the machine allows none)
    mnt = tmp_path / "ro"
    mnt.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(mnt)]
    if subprocess.run(mount, capture_output=True).returncode:
        pytest.skip("this machine does not allow mounting a read-only tmpfs")
    try:
        p = run_cli("recipe=none", f"hydra.run.dir={mnt / 'run'}", f"cache_dir={tmp_path / 'c'}")
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip() == (
        f"error: hydra.run.dir={mnt / 'run'}: cannot write in {mnt} (Read-only file system); "
        "give a writable folder"
    )


def test_a_yaml_syntax_error_in_a_users_config_is_one_line_naming_file_and_line(tmp_path):
    conf = tmp_path / "conf" / "recipe"
    conf.mkdir(parents=True)
    bad = conf / "mine.yaml"
    bad.write_text("_target_: runner.recipes.ptq.PTQRecipe\nname: mine\n  converter: [\n")
    p = run_cli("recipe=mine", f"hydra.searchpath=[file://{tmp_path / 'conf'}]")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip() == (
        f"error: bad YAML: {bad}, line 3, column 12: mapping values are not allowed here"
    )


@pytest.mark.parametrize(
    "override, message",
    [
        ("hydra.run.dir={f}", "error: hydra.run.dir={f}: is a file; expected a folder"),
        ("hydra.run.dir={f}/run", "error: hydra.run.dir={f}/run: {f} above it is a file"),
        ("dataset.cache_dir={f}", "error: bad config value: dataset.cache_dir={f}: is a file"),
    ],
)
def test_a_folder_key_naming_a_file_is_one_line_before_anything_runs(tmp_path, override, message):
    f = tmp_path / "a-file"
    f.write_text("not a folder")
    extra = ["dataset=image_folder", f"dataset.path={tmp_path}"] if "dataset." in override else []
    p = run_cli("recipe=none", *extra, override.format(f=f))
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert p.stderr.startswith(message.format(f=f)), p.stderr


@pytest.mark.slow
def test_a_full_run_folder_is_named_not_the_cache_it_was_copying_from(tmp_path, shared_cache):
    # issue #35: the message named the cache's model file and the cache's disk
    mnt = tmp_path / "full"
    mnt.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=24k", "tmpfs", str(mnt)]
    if subprocess.run(mount, capture_output=True).returncode:
        pytest.skip("this machine does not allow mounting a small tmpfs")
    try:
        p = run_cli(
            "recipe=none", *TINY, f"hydra.run.dir={mnt / 'run'}", f"cache_dir={shared_cache}"
        )
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    line = p.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: cannot write {mnt / 'run' / 'models'}: No space left"), line
    assert str(shared_cache) not in line


def test_library_log_lines_go_to_the_current_jobs_file_only(tmp_path):
    """One process runs several jobs: TensorFlow's log lines of job 2 belong in job 2's log,
    never also in job 1's (its handler used to stay on the ``tensorflow`` logger)."""
    import logging

    from runner import console

    root = logging.getLogger()
    saved = root.handlers[:]
    try:
        files = []
        for job in ("0", "1"):
            for h in root.handlers[:]:
                root.removeHandler(h)
            handler = logging.FileHandler(tmp_path / f"{job}.log")
            root.addHandler(handler)
            console.configure(verbose=False)
            logging.getLogger("tensorflow").warning("line of job %s", job)
            handler.flush()
            files.append(tmp_path / f"{job}.log")
        assert files[0].read_text().splitlines() == ["line of job 0"]
        assert files[1].read_text().splitlines() == ["line of job 1"]
    finally:
        for h in root.handlers[:]:
            root.removeHandler(h)
            h.close()
        for h in saved:
            root.addHandler(h)
        console.configure(verbose=True)
