"""The whole run on a tiny slice of the default data, composed from the real conf/."""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest
from helpers import compose_config

from runner.artifacts import Artifact, Metrics
from runner.config import sweep_values
from runner.evaluation.scoring import fidelity_warnings
from runner.files import sha256_file
from runner.pipeline import run

# the converter recipes of the main job's sweep (+experiment=core_recipes), and the ptq alias
POST_TRAINING = [
    *(r for r in sweep_values("core_recipes") if r not in ("qat", "int4_weight_only")),
    "ptq",
]
EXPECTED_COLUMNS = [
    "dataset",
    "model",
    "recipe",
    "artifact",
    "format",
    "size_bytes",
    "size_mb",
    "compression",
    "accuracy",
    "accuracy_delta",
    "agreement",
    "top5",
    "latency_ms",
    "train_seconds",
    "baseline_cache",
    "status",
    "error",
    "use_case",
]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", POST_TRAINING)
def test_each_recipe_gives_a_scored_row_near_the_float_model(tiny_cfg, tmp_path, recipe):
    # setup
    cfg = tiny_cfg(f"recipe={recipe}")
    # execute
    result = run(cfg, tmp_path)
    # assert
    rows = {r["artifact"]: r for r in result.rows}
    expected = ["float.h5", "none.tflite"] + ([] if recipe == "none" else [f"{recipe}.tflite"])
    assert list(rows) == expected and result.ok
    keras_row, ref = rows["float.h5"], rows["none.tflite"]
    assert keras_row["accuracy"] > 0.8  # the tiny baseline is really trained
    assert ref["agreement"] >= 0.99 and abs(ref["accuracy_delta"]) < 1e-9  # conversion is faithful
    art = rows[expected[-1]]
    assert abs(art["accuracy_delta"]) <= 0.03 and art["agreement"] >= 0.95
    assert art["latency_ms"] > 0 and art["compression"] == pytest.approx(
        ref["size_bytes"] / art["size_bytes"]
    )
    assert art["sha256"] == sha256_file(tmp_path / "models" / art["artifact"])
    # the files agree with the result
    with open(tmp_path / "comparison.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["artifact"] for r in table] == expected
    assert set(EXPECTED_COLUMNS) <= set(table[0])
    md = (tmp_path / "comparison.md").read_text()
    assert md.count("\n") == len(expected) + 2 and art["artifact"] in md


@pytest.mark.slow
def test_results_json_makes_every_row_traceable(tiny_cfg, tmp_path):
    result = run(tiny_cfg("recipe=full_integer", "recipe.calibration_samples=50"), tmp_path)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["status"] == "ok" and len(data["rows"]) == len(result.rows) == 3
    assert data["config"]["recipe"]["calibration_samples"] == 50
    assert data["seeds"] == {
        "seed": 0,
        "dataset.split_seed": 0,
        "train.seed": 0,
        "recipe.calibration_seed": 0,
    }
    assert data["input_scaling"]["kind"] == "unit" and data["num_threads"] == 1
    assert {
        "python",
        "tensorflow",
        "tf-keras",
        "tensorflow-model-optimization",
        "ai-edge-litert",
        "hydra-core",
        "numpy",
    } <= set(data["versions"])
    assert data["sha256"]["full_integer.tflite"] == sha256_file(
        tmp_path / "models" / "full_integer.tflite"
    )


@pytest.mark.slow
def test_baseline_is_trained_once_then_loaded(tmp_path):
    from helpers import TINY

    cfg = compose_config(f"cache_dir={tmp_path / 'cache'}", *TINY, "recipe=none")
    first = run(cfg, tmp_path / "a")
    second = run(cfg, tmp_path / "b")
    assert [r["baseline_cache"] for r in first.rows] == ["miss", "miss"]
    assert [r["baseline_cache"] for r in second.rows] == ["hit", "hit"]
    assert second.row("float.h5")["train_seconds"] == first.row("float.h5")["train_seconds"] > 0
    assert second.row("float.h5")["accuracy"] == first.row("float.h5")["accuracy"]
    other_seed = run(
        compose_config(f"cache_dir={tmp_path / 'cache'}", *TINY, "recipe=none", "seed=1"),
        tmp_path / "c",
    )
    assert other_seed.row("float.h5")["baseline_cache"] == "miss"


@pytest.mark.slow
def test_a_failing_recipe_gives_a_failed_row_and_keeps_the_rest(tiny_cfg, tmp_path):
    # int8-only ops without calibration data: the converter itself refuses
    cfg = tiny_cfg("recipe=full_integer", "recipe.converter.representative_dataset=false")
    result = run(cfg, tmp_path)
    assert not result.ok
    failed = result.row("full_integer.tflite")
    assert failed["status"] == "failed" and "representative_dataset" in failed["error"]
    assert "\n" not in failed["error"] and len(failed["error"]) <= 300
    assert [r["status"] for r in result.rows] == ["ok", "ok", "failed"]
    with open(tmp_path / "comparison.csv") as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["ok", "ok", "failed"]
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "failed"
    assert not (tmp_path / "models" / "full_integer.tflite").exists()


@pytest.mark.slow  # trains or converts real models: over 5 s on 2 cores
def test_low_fidelity_is_warned_by_name(tiny_cfg, tmp_path):
    # a floor above what any file reaches (SQNR is capped at 150 dB): the float16 file is named
    result = run(tiny_cfg("recipe=float16", "evaluation.min_output_sqnr_db=1000"), tmp_path)
    assert any(
        w.startswith("float16.tflite: output SQNR") and "conversion" in w for w in result.warnings
    )
    # agreement: a float artifact that changed 2 labels in 100
    art = Artifact("f16.tflite", "float16", tmp_path / "x", "tflite", quantized=False)
    m = Metrics(0.9, None, 0.98, np.zeros(100), None, None, None, 0.0, 60.0, 0.1)
    ecfg = tiny_cfg().evaluation
    (warning,) = fidelity_warnings(art, m, ecfg)
    assert warning.startswith("f16.tflite: agreement") and "0.9800 < 0.99" in warning
    assert fidelity_warnings(dataclasses.replace(art, quantized=True), m, ecfg) == []


@pytest.mark.slow
def test_default_run_meets_the_accuracy_bar(tmp_path):
    """The default config on the full digits set: float >= 0.97, every recipe within 1 point."""
    cache = tmp_path / "cache"
    rows = {}
    for recipe in POST_TRAINING:
        cfg = compose_config(
            f"cache_dir={cache}",
            f"recipe={recipe}",
            "evaluation.latency_samples=5",
            "evaluation.progress=false",
        )
        rows.update({r["artifact"]: r for r in run(cfg, tmp_path / recipe).rows})
    assert rows["float.h5"]["accuracy"] >= 0.97
    for recipe in POST_TRAINING:
        r = rows[f"{recipe}.tflite"]
        assert r["status"] == "ok" and abs(r["accuracy_delta"]) <= 0.01, r


@pytest.mark.slow
def test_cifar100_run_from_a_fixture_archive_reports_top5(tmp_path):
    from helpers import write_cifar_tarball

    archive = write_cifar_tarball(tmp_path / "cifar-100-python.tar.gz", n_train=60, n_test=30)
    cfg = compose_config(
        "dataset=cifar100",
        f"dataset.path={archive}",
        f"cache_dir={tmp_path / 'cache'}",
        "recipe=float16",
        "train.epochs=1",
        "train.validation_split=0",
        "model.filters=[4]",
        "evaluation.latency_samples=1",
    )
    result = run(cfg, tmp_path / "run")
    assert result.ok and len(result.rows) == 3
    for r in result.rows:
        assert r["dataset"] == "cifar100" and 0.0 <= r["top5"] <= 1.0 and r["top5"] >= r["accuracy"]
    header = (tmp_path / "run" / "comparison.md").read_text().splitlines()[0]
    assert "top5" in header


@pytest.mark.slow
def test_a_second_run_reuses_the_conversions_cached_with_its_baseline(tmp_path):
    from helpers import TINY

    cfg = compose_config(f"cache_dir={tmp_path / 'cache'}", *TINY, "recipe=full_integer")
    first = run(cfg, tmp_path / "a")
    second = run(cfg, tmp_path / "b")
    for name in ("none.tflite", "full_integer.tflite"):
        assert (tmp_path / "a" / "models" / name).read_bytes() == (
            tmp_path / "b" / "models" / name
        ).read_bytes()
        assert second.row(name)["accuracy"] == first.row(name)["accuracy"]
    # changing a conversion setting is a different cache entry, not a stale reuse
    other = run(
        compose_config(
            f"cache_dir={tmp_path / 'cache'}",
            *TINY,
            "recipe=full_integer",
            "recipe.calibration_samples=7",
        ),
        tmp_path / "c",
    )
    assert (tmp_path / "c" / "models" / "full_integer.tflite").read_bytes() != (
        tmp_path / "a" / "models" / "full_integer.tflite"
    ).read_bytes()
    assert other.row("full_integer.tflite")["status"] == "ok"
    assert len(list((tmp_path / "cache").glob("*/full_integer-*.tflite"))) == 2


def test_another_reference_recipe_gives_the_compression_column(tiny_cfg, tmp_path):
    # setup / execute: sizes measured against float16 instead of the float32 file
    result = run(tiny_cfg("recipe=dynamic_range", "recipe@reference=float16"), tmp_path)
    # assert: the reference row is float16 at 1.00x; the recipe's ratio is float16's size / its own
    ref, rec = result.row("float16.tflite"), result.row("dynamic_range.tflite")
    assert ref["role"] == "reference" and ref["compression"] == 1.0
    assert rec["role"] == "recipe"
    assert rec["compression"] == pytest.approx(ref["size_bytes"] / rec["size_bytes"])
    assert 1.3 < rec["compression"] < 2.5  # int8 weights against float16 ones
    assert result.row("float.h5")["role"] == "float"


def test_an_aeq_recipe_refuses_a_quantized_reference(tiny_cfg, tmp_path):
    result = run(tiny_cfg("recipe=int8_weight_only", "recipe@reference=float16"), tmp_path)
    row = result.row("int8_weight_only.tflite")
    assert row["status"] == "failed" and "recipe@reference=none" in row["error"]
    assert result.row("float16.tflite")["status"] == "ok"  # the rest of the table is kept


def test_an_interrupted_job_never_looks_complete(tiny_cfg, tmp_path, monkeypatch):
    # issue #23, case 1: killed after the float rows, results.json said "ok"
    from runner.recipes.ptq import ConverterRecipe
    from runner.report import job_rows

    real = ConverterRecipe.produce

    def interrupted(self, ctx):
        if self.name == "float16":
            raise KeyboardInterrupt  # what Ctrl-C or a kill between rows leaves behind
        return real(self, ctx)

    monkeypatch.setattr(ConverterRecipe, "produce", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_cfg("recipe=float16"), tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["status"] == "running" and len(saved["rows"]) == 2  # float + reference only
    rows = job_rows(tmp_path)
    assert rows[-1]["status"] == "failed" and rows[-1]["recipe"] == "float16"
    assert "incomplete" in rows[-1]["error"]
    # a run that finishes says so
    run(tiny_cfg("recipe=dynamic_range"), tmp_path / "done")
    assert json.loads((tmp_path / "done" / "results.json").read_text())["status"] == "ok"


@pytest.mark.slow
def test_the_same_seed_trains_the_same_baseline_twice(tmp_path):
    # issue #23: the same command and seed trained to different epochs (the initial weights were
    # drawn before the seed was set); two caches, two trainings, one model
    from helpers import TINY

    rows = []
    for cache in ("a", "b"):
        cfg = compose_config(f"cache_dir={tmp_path / cache}", *TINY, "recipe=none")
        rows.append(run(cfg, tmp_path / f"run_{cache}").row("none.tflite"))
    assert rows[0]["baseline_cache"] == rows[1]["baseline_cache"] == "miss"
    assert rows[0]["sha256"] == rows[1]["sha256"] and rows[0]["accuracy"] == rows[1]["accuracy"]


@pytest.mark.slow
def test_a_full_cache_disk_keeps_the_training_and_the_run_goes_on(
    tiny_cfg, tmp_path, monkeypatch, caplog
):
    # issue #23, case 3: a full cache disk ended in a traceback and threw the training away
    import errno

    from runner import cache

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "c"))

    monkeypatch.setattr(cache, "_store_entry", full)
    cfg = tiny_cfg("recipe=dynamic_range", f"cache_dir={tmp_path / 'c'}")
    result = run(cfg, tmp_path / "run")
    assert result.ok and result.row("float.h5")["baseline_cache"] == "uncached"
    assert (tmp_path / "run" / "models" / "float.h5").is_file()
    assert "the run goes on without caching it" in caplog.text and "MB free" in caplog.text


def test_disk_problems_are_one_line_with_the_free_space(tmp_path):
    import errno

    from runner.cli import disk_problem
    from runner.config import problems

    line = disk_problem(OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.csv")))
    assert (
        line.startswith(f"cannot write {tmp_path / 'x.csv'}: No space left") and "MB free" in line
    )
    assert disk_problem(OSError(errno.ENOENT, "nope")) is None
    (tmp_path / "file").write_text("")
    (bad,) = problems(compose_config(f"cache_dir={tmp_path / 'file'}"))
    assert (
        bad == f"cache_dir={tmp_path / 'file'}: is a file; expected a folder (created when missing)"
    )
