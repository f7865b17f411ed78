"""``recipe=mixed_a16w8``: integer-only int8 with int16 activations in the worst layers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tf_keras as keras
from helpers import compose_config, with_reference

from runner import tflite
from runner.data import Dataset, Scaling
from runner.data.digits import load_digits
from runner.errors import RunnerError
from runner.pipeline import build_recipe as build
from runner.recipes.base import RecipeContext
from runner.recipes.conversion import full_integer_settings
from runner.recipes.layer_report import Debugger
from runner.tflite.read import text

pytest.importorskip("ai_edge_quantizer")
UNIT = Scaling("unit")


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    """A small digits CNN, trained a little, with its float32 reference .tflite."""
    tmp = tmp_path_factory.mktemp("mixed")
    d = load_digits()
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.Flatten(name="flat")(x)
    x = keras.layers.Dense(32, activation="relu", name="hidden")(x)
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax", name="head")(x))
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(UNIT(d.train.x), d.train.y, epochs=3, verbose=0)
    c = with_reference(
        RecipeContext(model, Dataset("digits", d.train, d.test, 10), UNIT, tmp, {}, output_dir=tmp)
    )
    return c


def _produce(ctx, *overrides):
    (art,) = build(compose_config("recipe=mixed_a16w8", *overrides).recipe).produce(ctx)
    return art


def _compute_types(path) -> dict[str, set[int]]:
    """{op name: output tensor types} of the ops with weights (int8 = 9, int16 = 7)."""
    model = tflite.read(path.read_bytes())
    sg = model.subgraphs[0]
    out: dict[str, set[int]] = {}
    for op in sg.operators:
        if tflite.weight_tensors(model, sg, op):
            name = text(sg.tensors[op.outputs[0]].name)
            out.setdefault(tflite.layer_name(name), set()).add(sg.tensors[op.outputs[0]].type)
    return out


def test_the_named_layer_gets_int16_activations_and_every_other_op_stays_int8(ctx):
    art = _produce(ctx, "recipe.layers=[hidden]")
    types = _compute_types(art.path)
    assert types["hidden"] == {7}  # int16
    assert types["conv"] == {9} and types["head"] == {9}  # int8
    assert "int16 activations in 1 layer(s): hidden" in art.note
    # integer-only: no op computes in float (the int8<->int16 steps are QUANTIZE ops)
    model = tflite.read(art.path.read_bytes())
    compute = {"CONV_2D", "FULLY_CONNECTED", "DEPTHWISE_CONV_2D"}
    for op in model.subgraphs[0].operators:
        if tflite.op_name(model, op) in compute:
            assert model.subgraphs[0].tensors[op.outputs[0]].type in (7, 9)
    assert "QUANTIZE" in {tflite.op_name(model, op) for op in model.subgraphs[0].operators}
    with pytest.raises(RunnerError, match=r"recipe.layers names \['nope'\]"):
        _produce(ctx, "recipe.layers=[nope]")


@pytest.mark.slow  # trains or converts real models: over 3 s on 2 cores
def test_by_default_the_layer_reports_worst_layers_are_chosen(ctx):
    art = _produce(ctx, "recipe.sixteen_bit_layers=1", "recipe.calibration_samples=100")
    settings = full_integer_settings().replace(calibration_ranges="mean")
    from runner.data import calibration_sample

    calib = UNIT(calibration_sample(ctx.dataset.train, 100, 0))
    worst = Debugger.build(ctx.model, settings, calib).layers[0]
    assert f"int16 activations in 1 layer(s): {worst}" in art.note
    assert _compute_types(art.path)[worst] == {7}
    none = _produce(ctx, "recipe.sixteen_bit_layers=0")
    assert "no layer got int16 activations" in none.note
    assert all(t == {9} for t in _compute_types(none.path).values())
    # the 16-bit layer holds its outputs closer to the float model's
    from runner.evaluation.interpreter import TFLiteModel

    x = ctx.dataset.test.x[:200]
    ref = TFLiteModel(ctx.reference_path).predict(x, UNIT, 128)
    err = [np.abs(TFLiteModel(a.path).predict(x, UNIT, 128) - ref).mean() for a in (none, art)]
    assert err[1] <= err[0]


def test_the_ranking_is_kept_with_the_baseline_and_not_made_again(ctx, tmp_path, monkeypatch):
    from runner import cache

    ctx = dataclasses.replace(ctx, store=cache.ConversionCache(tmp_path / "entry"))
    first = _produce(ctx, "recipe.sixteen_bit_layers=1", "recipe.calibration_samples=100")
    written = first.path.read_bytes()

    def no_second_ranking(*_a, **_k):
        raise AssertionError("ranked again")

    monkeypatch.setattr(Debugger, "build", no_second_ranking)
    again = _produce(ctx, "recipe.sixteen_bit_layers=1", "recipe.calibration_samples=100")
    assert "int16 activations in 1 layer(s)" in again.note and again.note == first.note
    assert again.path.read_bytes() == written


@pytest.fixture(scope="module")
def spiky(tmp_path_factory):
    """A digits MLP whose layer ``spiky`` has one unit that fires ~3000 on the 3% of images
    with pixel 7 lit and feeds nothing: the float model ignores it, but its per-tensor int8
    range crushes every other unit of ``spiky`` to zero (full int8 is a coin toss). ``spiky``
    and its consumer ``hidden`` must leave int8 together: both in float, or both with int16
    activations."""
    data = load_digits()
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Flatten(name="flat")(inp)
    x = keras.layers.Dense(32, activation="relu", name="spiky")(x)
    x = keras.layers.Dense(32, activation="relu", name="hidden")(x)
    model = keras.Model(inp, keras.layers.Dense(10, activation="softmax", name="head")(x))
    from runner.train import TrainConfig, train

    train(model, data, TrainConfig(epochs=10, early_stopping_patience=0), UNIT)
    kernel, bias = model.get_layer("spiky").get_weights()
    kernel[:, 0], kernel[7, 0], bias[0] = 0, 3000, 0
    model.get_layer("spiky").set_weights([kernel, bias])
    kernel, bias = model.get_layer("hidden").get_weights()
    kernel[0, :] = 0  # the spike feeds nothing
    model.get_layer("hidden").set_weights([kernel, bias])
    tmp = tmp_path_factory.mktemp("spiky")
    (tmp / "models").mkdir()
    ctx = with_reference(
        RecipeContext(model, data, UNIT, tmp / "models", {"validation_split": 0.1})
    )
    return ctx


def _auto(ctx, *overrides):
    import csv

    auto = [
        "recipe=auto_int8",
        "recipe.calibration_ranges=[minmax]",  # the mean of the samples' ranges would clip it
        "recipe.max_float_layers=3",
        "recipe.max_accuracy_drop=0.03",
    ]
    (art,) = build(compose_config(*auto, *overrides).recipe).produce(ctx)
    path = ctx.run_dir / "fallback_trace.csv"
    return art, list(csv.DictReader(path.read_text().splitlines()))


def _test_accuracy(ctx, path) -> float:
    from runner.evaluation.interpreter import TFLiteModel
    from runner.evaluation.metrics import labels_from_outputs

    out = TFLiteModel(path).predict(ctx.dataset.test.x, UNIT, 128)
    return float(np.mean(labels_from_outputs(out) == ctx.dataset.test.y))


def test_auto_int8_scores_float_and_int16_for_each_step_and_takes_float_first(spiky):
    art, trace = _auto(spiky)
    assert trace[0]["fallback"] == "none" and float(trace[0]["holdout_accuracy"]) < 0.3
    steps = [(r["step"], r["fallback"]) for r in trace[1:]]
    assert steps == [(str(k), f) for k in range(1, len(steps) // 2 + 1) for f in ("float", "a16w8")]
    last = {r["fallback"]: r for r in trace if r["step"] == trace[-1]["step"]}
    assert last["float"]["meets_budget"] == last["a16w8"]["meets_budget"] == "True"
    assert {"spiky", "hidden"} <= set(last["float"]["layers"].split())
    assert last["a16w8"]["int16_layers"] == str(len(last["a16w8"]["layers"].split()))
    # both meet the budget: the first of recipe.fallback (float) is taken, the other reported
    assert art.float_layers.startswith(last["float"]["step"] + ":")
    assert "; the same layers with int16 activations: holdout score" in art.note
    assert "(meets it)" in art.note and _test_accuracy(spiky, art.path) > 0.8


@pytest.mark.slow  # trains or converts real models: over 3 s on 2 cores
def test_auto_int8_integer_only_takes_layers_to_int16_activations_not_float(spiky):
    art, trace = _auto(spiky, "recipe.fallback=[a16w8]")
    assert {r["fallback"] for r in trace[1:]} == {"a16w8"} and trace[-1]["meets_budget"] == "True"
    chosen = trace[-1]["layers"].split()
    assert {"spiky", "hidden"} <= set(chosen)
    assert art.float_layers == "0" and f"int16 activations in {', '.join(chosen)}" in art.note
    assert f"met with {len(chosen)} int16-activation layer(s)" in art.note
    types = _compute_types(art.path)
    assert all(types[layer] == {7} for layer in chosen)  # int16 where the search put it ...
    assert all(t == {9} for name, t in types.items() if name not in chosen)  # ... int8 elsewhere
    assert _test_accuracy(spiky, art.path) > 0.8  # full int8: a coin toss
    # integer-only cannot fall back to float when a16w8 cannot be made: one clear error
    no_reference = dataclasses.replace(spiky, reference_path=None)
    with pytest.raises(
        RunnerError,
        match=r"recipe.fallback=\[a16w8\]: .*float32 reference .tflite, which this run could not make",
    ):
        _auto(no_reference, "recipe.fallback=[a16w8]")
    with pytest.raises(RunnerError, match="names a fallback twice"):
        build(compose_config("recipe=auto_int8", "recipe.fallback=[float,float]").recipe)


def test_aeq_calibration_takes_the_same_range_estimators_as_the_converter(spiky):
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import recipe_manager

    from runner.recipes.mixed import A16W8Files
    from runner.recipes.ranges import aeq_calibration

    files = A16W8Files(spiky, build(compose_config("recipe=auto_int8").recipe).opts)
    reference = files.reference
    data = files.recipe._signature_data(reference, spiky, 50)
    for i, sample in enumerate(next(iter(data.values()))):  # ranges far apart: 0.1x ... 5x
        for key in sample:
            sample[key] = sample[key] * (i + 1) / 10
    manager = recipe_manager.RecipeManager()
    manager.add_quantization_config(
        regex=".*",
        operation_name="*",
        op_config=recipe_manager.qtyping.OpQuantizationConfig(
            activation_tensor_config=recipe_manager.qtyping.TensorQuantizationConfig(
                num_bits=8, symmetric=False
            ),
            weight_tensor_config=recipe_manager.qtyping.TensorQuantizationConfig(num_bits=8),
            compute_precision=recipe_manager.qtyping.ComputePrecision.INTEGER,
        ),
    )
    name = Interpreter(model_content=reference).get_input_details()[0]["name"]
    x = np.stack([next(iter(d.values()))[0] for d in next(iter(data.values()))])
    lows, highs = x.reshape(len(x), -1).min(1), x.reshape(len(x), -1).max(1)
    for ranges, want in (
        ("minmax", (lows.min(), highs.max())),
        ("mean", (lows.mean(), highs.mean())),
    ):
        qsv = aeq_calibration(reference, manager, data, ranges)[name]
        assert np.allclose([np.min(qsv["min"]), np.max(qsv["max"])], want, rtol=1e-5), ranges
        assert "samples" not in qsv  # nothing of ours is left for AEQ to read
    assert highs.max() > 1.5 * highs.mean()  # the two estimators are told apart here


def test_an_ai_edge_quantizer_failure_mid_search_leaves_the_float_search_and_says_so(
    spiky, monkeypatch
):
    from runner.recipes.aeq import AEQRecipe

    calls = []

    def broken(self, *_a, **_k):
        calls.append(1)
        raise RunnerError("ai-edge-quantizer failed: ValueError: unsupported op")

    monkeypatch.setattr(AEQRecipe, "quantize_calibrated", broken)
    art, trace = _auto(spiky)
    assert {r["fallback"] for r in trace} == {"none", "float"} and len(calls) == 1  # tried once
    assert trace[-1]["meets_budget"] == "True" and art.float_layers != "0"
    (warning,) = [w for w in art.warnings if "a16w8" in w]
    assert "float fallback only" in warning and "unsupported op" in warning
    with pytest.raises(
        RunnerError, match=r"fallback=\[a16w8\]: no a16w8 candidate.*unsupported op"
    ):
        _auto(spiky, "recipe.fallback=[a16w8]")
