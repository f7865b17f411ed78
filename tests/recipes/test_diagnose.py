"""Per-layer int8 error report, selective quantization and the automatic float fallback."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import tf_keras as keras
from helpers import compose_config, with_reference

from runner.data import Scaling
from runner.data.digits import load_digits
from runner.errors import RunnerError
from runner.evaluation.interpreter import TFLiteModel
from runner.evaluation.metrics import labels_from_outputs, predict_keras
from runner.pipeline import build_recipe as build
from runner.pipeline import run
from runner.recipes.base import RecipeContext
from runner.recipes.layer_report import Debugger
from runner.train import TrainConfig, train

UNIT = Scaling("unit")


@pytest.fixture(scope="module")
def fragile():
    """A trained digits MLP whose layer ``fragile`` cannot survive per-channel int8.

    Pixel (0, 0) is 0 in every digits image, so giving its weights the value 1e4 leaves the float
    model's outputs unchanged while every output channel's int8 scale becomes ~79: the useful
    weights (~0.1) all round to zero.
    """
    data = load_digits()
    keras.utils.set_random_seed(0)  # the same model whichever tests ran before in this worker
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Flatten(name="flat")(inp)
    x = keras.layers.Dense(32, activation="relu", name="fragile")(x)
    x = keras.layers.Dense(32, activation="relu", name="hidden")(x)
    model = keras.Model(inp, keras.layers.Dense(10, activation="softmax", name="head")(x))
    train(model, data, TrainConfig(epochs=10, early_stopping_patience=0), UNIT)
    kernel, bias = model.get_layer("fragile").get_weights()
    assert data.train.x[:, 0, 0, 0].max() == 0 and data.test.x[:, 0, 0, 0].max() == 0
    kernel[0, :] = 1e4
    model.get_layer("fragile").set_weights([kernel, bias])
    return model, data


def _ctx(model, data, tmp_path):
    """The run's context, with its float32 reference (what auto_int8's a16w8 candidates start
    from)."""
    (tmp_path / "models").mkdir(parents=True, exist_ok=True)
    ctx = with_reference(
        RecipeContext(model, data, UNIT, tmp_path / "models", {"validation_split": 0.1})
    )
    return ctx


def _produce(recipe, ctx, *overrides):
    cfg = compose_config(f"recipe={recipe}", "recipe.calibration_samples=100", *overrides)
    rec = build(cfg.recipe)  # as the runner builds it: a RunnerError comes out unwrapped
    (art,) = rec.produce(ctx)
    return rec, art


def _rows(tmp_path):
    return list(csv.DictReader((tmp_path / "fallback_trace.csv").read_text().splitlines()))


def _trace(tmp_path, art):
    """fallback_trace.csv's float-fallback rows of the activation ranges the search started
    from (the other estimators' full-int8 rows, and the a16w8 candidates, are there too)."""
    import re

    ranges = re.search(r"activation ranges: (\w+)", art.note).group(1)
    rows = _rows(tmp_path)
    assert {r["calibration_ranges"] for r in rows} == {"minmax", "mean"}
    return [r for r in rows if r["calibration_ranges"] == ranges and r["fallback"] != "a16w8"]


def _accuracy(path, data):
    out = TFLiteModel(path).predict(data.test.x, UNIT, 128)
    return float(np.mean(labels_from_outputs(out) == data.test.y))


@pytest.mark.slow
def test_the_fragile_layer_is_ranked_worst(fragile, tmp_path):
    model, data = fragile
    rec = build(compose_config("recipe=full_integer").recipe)
    rows = Debugger.build(model, rec.converter, UNIT(data.train.x[:100])).rows
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    assert rows[0]["layer"] == "fragile" and rows[0]["op"] == "FULLY_CONNECTED"
    rel = [r["relative_rmse"] for r in rows]
    assert rel == sorted(rel, reverse=True) and rel[0] > 0.5 > rel[1]
    # the useful weights were crushed: the op's error is ~80 quantization steps, not ~0.3
    assert rows[0]["error_ratio"] > 10 and rows[1]["error_ratio"] < 1


@pytest.mark.slow
def test_selective_keeps_the_worst_layer_float_and_recovers_the_loss(fragile, tmp_path):
    model, data = fragile
    ctx = _ctx(model, data, tmp_path)
    float_acc = float(
        np.mean(labels_from_outputs(predict_keras(model, data.test.x, UNIT)) == data.test.y)
    )
    _, full = _produce("full_integer", ctx)
    _, sel = _produce("selective", ctx)
    full_acc, sel_acc = _accuracy(full.path, data), _accuracy(sel.path, data)
    assert float_acc - full_acc > 0.3  # the loss is measurable ...
    assert sel_acc - full_acc >= 0.5 * (float_acc - full_acc)  # ... and at least half comes back
    assert sel.float_layers == "1: fragile" and sel.worst_layer == "fragile"
    # what it cost: the float32 kernel of 64 x 32 weights instead of int8 (~6 KB)
    assert 4000 < sel.path.stat().st_size - full.path.stat().st_size < 12000
    report = sel.layer_rows  # made while producing; the results layer writes layer_report.csv
    assert report[0]["layer"] == "fragile" and report[0]["rank"] == 1
    # by name: the same result; an unknown name is refused with the known ones
    _, by_name = _produce("selective", ctx, "recipe.denylist=[fragile]")
    assert by_name.float_layers == "1: fragile"
    with pytest.raises(RunnerError, match=r"'nope'.*layers in the report"):
        _produce("selective", ctx, "recipe.denylist=[nope]")


def test_auto_int8_stops_at_the_first_point_within_budget(fragile, tmp_path):
    model, data = fragile
    ctx = _ctx(model, data, tmp_path)
    rec, art = _produce("auto_int8", ctx, "recipe.max_accuracy_drop=0.01")
    trace = _trace(tmp_path, art)
    counts = [int(t["float_layers"]) for t in trace]
    assert counts == list(range(len(trace)))  # monotone: one more float layer per step
    assert [t["meets_budget"] for t in trace] == ["False"] * (len(trace) - 1) + ["True"]
    assert counts[-1] == 1 and trace[-1]["layers"] == "fragile"
    assert art.float_layers == "1: fragile"
    assert "budget accuracy drop <= 0.01 met with 1 float layer(s)" in art.note
    assert trace[-1]["budget"] == "accuracy drop <= 0.01" and trace[-1]["samples"] == "144"
    assert _accuracy(art.path, data) > 0.85
    # the same layer with int16 activations keeps its crushed int8 weights: scored, reported,
    # not taken
    (a16w8,) = [r for r in _rows(tmp_path) if r["fallback"] == "a16w8"]
    assert a16w8["step"] == "1" and a16w8["layers"] == "fragile" and a16w8["int16_layers"] == "1"
    assert a16w8["meets_budget"] == "False" and float(a16w8["holdout_accuracy"]) < 0.5
    assert "; the same layers with int16 activations: holdout score" in art.note
    assert "(misses it)" in art.note and not [w for w in art.warnings if "a16w8" in w]


@pytest.mark.slow
def test_auto_int8_budgets_agreement_for_a_pretrained_model_and_warns_when_too_coarse(
    fragile, tmp_path
):
    model, data = fragile
    ctx = _ctx(model, data, tmp_path)
    ctx.pretrained = True  # a user's file: its training data is unknown
    _, art = _produce("auto_int8", ctx)
    trace = _trace(tmp_path, art)
    assert {t["budget"] for t in trace} == {"agreement >= 0.99"}
    assert float(trace[0]["agreement"]) < 0.99 <= float(trace[-1]["agreement"])
    assert "budget agreement >= 0.99 met with 1 float layer(s)" in art.note
    assert "on 144 samples" in art.note
    # 1% of 144 holdout samples is 1.4 samples: too coarse, and the user is told how to fix it
    (warning,) = art.warnings
    assert "holdout has 144 samples" in warning and "recipe.holdout_samples" in warning
    # the runner's own baseline (its validation split never fitted on): accuracy by default
    ctx.pretrained = False
    _, own = _produce("auto_int8", ctx, "recipe.max_accuracy_drop=0.05")
    assert "budget accuracy drop <= 0.05" in own.note and own.warnings == ()


@pytest.mark.slow  # trains or converts real models: over 3 s on 2 cores
def test_auto_int8_without_a_point_in_budget_says_so_and_keeps_the_best(fragile, tmp_path):
    model, data = fragile
    ctx = _ctx(model, data, tmp_path)
    rec, art = _produce("auto_int8", ctx, "recipe.max_float_layers=0")
    trace = _trace(tmp_path, art)
    assert len(trace) == 1 and trace[0]["meets_budget"] == "False"
    assert "no point within 0 layer(s) out of int8 meets the budget" in art.note
    assert art.float_layers == "0"
    # a budget or count that cannot be meant is refused by name
    for bad in ("recipe.max_accuracy_drop=-0.01", "recipe.max_float_layers=-2"):
        with pytest.raises(RunnerError, match=r"recipe\.max_\w+=-[\d.]+: expected a"):
            _produce("auto_int8", ctx, bad)


@pytest.mark.slow
def test_layer_report_in_a_run_and_a_debugger_failure_is_a_failed_row(
    tiny_cfg, tmp_path, monkeypatch
):
    cfg = tiny_cfg(
        "recipe=full_integer", "evaluation.layer_report=true", "recipe.calibration_samples=50"
    )
    result = run(cfg, tmp_path / "a")
    row = result.row("full_integer.tflite")
    report = list(csv.DictReader((tmp_path / "a" / "layer_report.csv").read_text().splitlines()))
    assert row["worst_layer"] == report[0]["layer"] and len(report) >= 4
    worst = json.loads((tmp_path / "a" / "results.json").read_text())["worst_layers"]
    assert worst == [r["layer"] for r in report[:3]] == result.worst_layers

    def broken(*_a, **_k):
        raise RunnerError("TensorFlow Lite's quantization debugger cannot handle this model: boom")

    monkeypatch.setattr(Debugger, "build", broken)
    result = run(tiny_cfg("recipe=selective"), tmp_path / "b")
    row = result.row("selective.tflite")
    assert row["status"] == "failed" and "debugger cannot handle this model" in row["error"]
    assert result.row("none.tflite")["status"] == "ok"  # the rest of the table is kept


@pytest.mark.slow
def test_a_layer_report_that_cannot_be_made_is_a_warning_not_a_lost_row(
    tiny_cfg, tmp_path, monkeypatch
):
    # float16 calibrates nothing: named in a warning; the float reference gets no warning
    result = run(tiny_cfg("recipe=float16", "evaluation.layer_report=true"), tmp_path / "f")
    assert result.ok and result.row("float16.tflite")["worst_layer"] is None
    assert [w for w in result.warnings if "layer report" in w] == [
        "no layer report for recipe float16: the layer report needs an int8 recipe with "
        "calibration (full_integer, full_integer_per_tensor, selective, auto_int8)"
    ]

    def broken(*_a, **_k):
        raise RunnerError("TensorFlow Lite's quantization debugger cannot handle this model: boom")

    monkeypatch.setattr(Debugger, "build", broken)
    cfg = tiny_cfg("recipe=full_integer", "evaluation.layer_report=true")
    result = run(cfg, tmp_path / "i")
    assert result.row("full_integer.tflite")["status"] == "ok"
    assert any(
        "no layer report for recipe full_integer" in w and "boom" in w for w in result.warnings
    )
    # the requested report still holds what the file itself says: each layer's weights
    weights_only = list(
        csv.DictReader((tmp_path / "i" / "layer_report.csv").read_text().splitlines())
    )
    assert weights_only and all(r["relative_rmse"] == "" for r in weights_only)
    assert all(0 <= float(r["weight_sparsity"]) < 0.2 for r in weights_only)
    assert result.worst_layers == []


def test_a_layer_of_several_ops_moves_to_float_whole():
    rows = [
        {"layer": "normalize", "tensor_name": "mul"},
        {"layer": "dense1", "tensor_name": "fc1"},
        {"layer": "normalize", "tensor_name": "sub"},
    ]
    dbg = Debugger(None, rows)
    assert dbg.layers == ["normalize", "dense1"]
    assert [r["tensor_name"] for r in dbg.worst(1)] == ["mul", "sub"]


@pytest.mark.slow
def test_raw_features_normalized_inside_the_model_lose_in_int8_and_auto_int8_wins_it_back(
    tmp_path,
):
    """The benchmark's hard case, small: features from ~0.001 to ~4,000 normalized by the
    model's first layer. Full-integer int8 gives the raw input one scale (step ~16), so the small
    features become 0; auto_int8 keeps that one layer (two ops) float and loses nothing."""
    from benchmarks.hard import make_tabular_case

    model, data = make_tabular_case(tmp_path / "case")
    common = [
        "model=pretrained",
        f"model.path={model}",
        "dataset=arrays",
        f"dataset.path={data}",
        "evaluation.progress=false",
        "evaluation.latency_samples=2",
    ]
    full = run(compose_config(*common, "recipe=full_integer"), tmp_path / "full")
    auto = run(compose_config(*common, "recipe=auto_int8"), tmp_path / "auto")
    float_acc = full.row("breast_cancer.h5")["accuracy"]
    assert float_acc - full.row("full_integer.tflite")["accuracy"] > 0.2
    row = auto.row("auto_int8.tflite")
    assert abs(row["accuracy"] - float_acc) <= 0.005 and row["float_layers"] == "1: normalize"
    assert "budget agreement >= 0.99 met with 1 float layer(s)" in row["note"]
