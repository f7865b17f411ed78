"""``recipe=mixed_a16w8``: integer-only int8 with int16 activations in the worst layers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tf_keras as keras
from helpers import compose_config

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
    c = RecipeContext(model, Dataset("digits", d.train, d.test, 10), UNIT, tmp, {}, output_dir=tmp)
    (ref,) = build(compose_config("recipe=none").recipe).produce(c)
    c.reference_path = ref.path
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


def test_by_default_the_layer_reports_worst_layers_are_chosen(ctx):
    art = _produce(ctx, "recipe.sixteen_bit_layers=1", "recipe.calibration_samples=100")
    settings = dataclasses.replace(full_integer_settings().to_options(), calibration_ranges="mean")
    from runner.data import calibration_sample

    calib = UNIT(calibration_sample(ctx.dataset.train, 100, 0))
    worst = Debugger.build(ctx.model, settings, calib).layers[0]
    assert f"int16 activations in 1 layer(s): {worst}" in art.note
    assert _compute_types(art.path)[worst] == {7}
    none = _produce(ctx, "recipe.sixteen_bit_layers=0")
    assert "no layer got int16 activations" in none.note
    assert all(t == {9} for t in _compute_types(none.path).values())
    # the 16-bit layer holds its outputs closer to the float model's
    from runner.evaluation.metrics import TFLiteModel

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
