"""The architectures people ship: ``keras.applications`` families, saved by Keras 3 and by tf_keras,
through the loader, QAT's rebuild and the recipes a user tries first.

The models are the families' own generic builders at their smallest (the same layer classes,
blocks and wiring as ResNet50V2, EfficientNetB0, ConvNeXtTiny ...: tests/applications_fixtures.py),
made in subprocesses by each Keras. Every family is checked for an exact load in both Keras and
an exact QAT rebuild; the recipes run on a subset in the default suite (CI_SUBSET) and on all of
them with ``RUNNER_ALL_FAMILIES=1`` (and in ``python -m benchmarks --only families``).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from applications_fixtures import CI_SUBSET, FAMILIES, input_scaling, make, write_digits32
from helpers import compose_config

from runner.models.loading import open_model
from runner.models.tf_keras_graph import flatten_tf_keras
from runner.pipeline import run

ALL = os.environ.get("RUNNER_ALL_FAMILIES") == "1"
RECIPE_CASES = [(k, f) for k in ("3", "2") for f in FAMILIES] if ALL else CI_SUBSET


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Digits at 32x32 RGB with a validation split (x_val: what auto_int8 holds out)."""
    path = tmp_path_factory.mktemp("families") / "digits32.npz"
    return write_digits32(path, n_train=1000, n_val=200, n_test=200)


def _make(folder: Path, data: Path, keras: str, families: list[str], epochs: int) -> Path:
    return make(folder, data, keras, families, epochs=epochs, samples=600)


def _path(folder: Path, keras: str, family: str) -> Path:
    return folder / f"{family}.{'keras' if keras == '3' else 'h5'}"


@pytest.fixture(scope="module")
def untrained(tmp_path_factory, data) -> Path:
    """Every family, built and saved unfitted by each Keras: what loading must get exactly right."""
    root = tmp_path_factory.mktemp("untrained")
    for keras in ("3", "2"):
        _make(root / keras, data, keras, FAMILIES, epochs=0)
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data) -> Path:
    """The recipe cases' families, fitted a few epochs (a model with margins to keep)."""
    root = tmp_path_factory.mktemp("trained")
    for keras in ("3", "2"):
        families = sorted({f for k, f in RECIPE_CASES if k == keras})
        if families:
            _make(root / keras, data, keras, families, epochs=3)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("keras", ["3", "2"])
def test_every_family_loads_exactly_in_both_keras(untrained, data, keras):
    # setup: real inputs, as the model takes them
    raw = np.load(data)["x_test"][:32].astype(np.float32)
    failures = {}
    for family in FAMILIES:
        x = raw if input_scaling(family) == "none" else raw / 255.0
        path = _path(untrained / keras, keras, family)
        # execute: load (Keras 3: translated and checked on x), then QAT's rebuild
        loaded = open_model(path, sample=x)
        flat = flatten_tf_keras(loaded.model)
        # assert: the tf_keras model and its QAT rebuild give the original's outputs
        want = np.asarray(loaded.original(x, training=False))
        for what, model in (("loaded", loaded.model), ("rebuilt", flat)):
            diff = float(np.abs(want - model.predict(x, verbose=0)).max())
            if diff > 1e-5:
                failures[(family, what)] = diff
        nested = [layer.name for layer in flat.layers if hasattr(layer, "layers")]
        # TFOpLambda arithmetic as layers; SeparableConv2D split in halves QAT calibrates
        ops = [
            layer.name
            for layer in flat.layers
            if type(layer).__name__ in ("TFOpLambda", "SeparableConv2D")
        ]
        if nested or ops:
            failures[(family, "left for tfmot")] = nested + ops
        if keras == "3":
            assert loaded.kind == "keras3" and "translated from Keras 3" in loaded.note
    assert not failures, failures


@pytest.mark.slow
@pytest.mark.parametrize(("keras", "family"), RECIPE_CASES)
def test_family_through_the_first_recipes(trained, data, tmp_path, keras, family):
    # setup
    path = _path(trained / keras, keras, family)
    rows = {}
    # execute: float16, full int8, int4 weights and QAT, each scored in LiteRT beside the float
    # TFLite file every run makes first (none.tflite, the reference)
    for recipe in ("float16", "full_integer", "int4_weight_only", "qat"):
        cfg = compose_config(
            "model=pretrained",
            f"model.path={path}",
            f"model.input_scaling={input_scaling(family)}",
            "dataset=arrays",
            f"dataset.path={data}",
            f"recipe={recipe}",
            *(["recipe.epochs=1"] if recipe == "qat" else []),
            "evaluation.latency_samples=2",
            "evaluation.progress=false",
        )
        result = run(cfg, tmp_path / recipe)
        rows.update({r["artifact"]: r for r in result.rows})
    # assert: every row ok; float conversions faithful; int8 and int4 near the float model
    assert all(r["status"] == "ok" for r in rows.values()), {
        k: r["error"] for k, r in rows.items() if r["status"] != "ok"
    }
    assert rows["none.tflite"]["agreement"] >= 0.999
    # QAT picks its epoch on the data set's own validation split (x_val), as auto_int8 does
    assert "200 samples of the data set's validation split" in rows["qat.tflite"]["note"]
    assert rows["float16.tflite"]["agreement"] >= 0.99
    float_acc = rows[path.name]["accuracy"]
    assert float_acc > 0.5, f"the fixture did not learn: {float_acc}"
    for name in ("full_integer.tflite", "qat.tflite", "int4_weight_only.tflite"):
        assert rows[name]["agreement"] >= 0.8, (name, rows[name]["agreement"])
    # int8 files: smaller than float32 by at least 1.8x (the fixed flatbuffer part counts on
    # models this small)
    assert rows["none.tflite"]["size_bytes"] / rows["full_integer.tflite"]["size_bytes"] > 1.8
    assert rows["none.tflite"]["size_bytes"] / rows["qat.tflite"]["size_bytes"] > 1.8


@pytest.mark.slow
def test_auto_int8_on_a_family_reports_its_noise_bound_and_never_hides_a_worse_file(
    trained, data, tmp_path
):
    # setup: a pretrained model and a data set that ships a validation split
    keras, family = RECIPE_CASES[0]
    path = _path(trained / keras, keras, family)
    common = [
        "model=pretrained",
        f"model.path={path}",
        f"model.input_scaling={input_scaling(family)}",
        "dataset=arrays",
        f"dataset.path={data}",
        "evaluation.latency_samples=2",
        "evaluation.progress=false",
    ]
    # execute
    full = run(compose_config(*common, "recipe=full_integer"), tmp_path / "full")
    auto = run(
        compose_config(*common, "recipe=auto_int8", "recipe.max_float_layers=3"),
        tmp_path / "auto",
    )
    # assert: the trace shows each step's gain and noise bound, on the data set's validation split
    trace = list(csv.DictReader((tmp_path / "auto" / "fallback_trace.csv").open()))
    assert trace[0]["gain_over_int8"] == "0.0" and all(float(t["noise_bound"]) >= 0 for t in trace)
    assert {t["samples"] for t in trace} == {"200"}
    row, int8 = auto.row("auto_int8.tflite"), full.row("full_integer.tflite")
    assert "holdout: 200 samples of the data set's validation split" in row["note"]
    # the file is one of the trace's candidates (float I/O, so not byte-equal to
    # full_integer.tflite's int8 I/O); one past full int8 is kept only for a gain beyond the
    # noise, and the note says so
    (step,) = [t for t in trace if int(t["size_bytes"]) == row["size_bytes"]][:1]
    assert step["step"] == "0" or step["beyond_noise"] == "True", step
    larger_and_worse = (
        row["size_bytes"] > int8["size_bytes"] and row["agreement"] < int8["agreement"]
    )
    assert not larger_and_worse or "noise" in row["note"]
