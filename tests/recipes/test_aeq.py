"""ai-edge-quantizer as a second backend: int4/int8 weights on the float32 reference .tflite."""

from __future__ import annotations

import numpy as np
import pytest
import tf_keras as keras
from helpers import compose_config, with_reference

from runner import tflite
from runner.data import Dataset, Scaling
from runner.data.digits import load_digits
from runner.errors import RunnerError
from runner.evaluation.interpreter import TFLiteModel
from runner.evaluation.metrics import labels_from_outputs
from runner.pipeline import build_recipe as build
from runner.pipeline import run
from runner.recipes import aeq
from runner.recipes.base import RecipeContext

pytest.importorskip("ai_edge_quantizer")
UNIT = Scaling("unit")


@pytest.fixture(scope="module")
def dense_ctx(tmp_path_factory):
    """A weight-dominated digits MLP (166k of its 167k parameters are dense kernels), trained a
    little, with its float32 reference .tflite made by the none recipe."""
    tmp = tmp_path_factory.mktemp("aeq")
    d = load_digits()
    data = Dataset("digits", d.train, d.test, 10)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Flatten(name="flat")(inputs)
    x = keras.layers.Dense(512, activation="relu", name="wide")(x)
    x = keras.layers.Dense(256, activation="relu", name="middle")(x)
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax", name="head")(x))
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(UNIT(d.train.x), d.train.y, epochs=5, verbose=0)
    ctx = with_reference(
        RecipeContext(model, data, UNIT, tmp, {"validation_split": 0.1}, output_dir=tmp)
    )
    return ctx, model


def produce(recipe: str, ctx: RecipeContext):
    rec = build(compose_config(f"recipe={recipe}").recipe)
    (art,) = rec.produce(ctx)
    return rec, art


def accuracy(path, data) -> float:
    out = TFLiteModel(path).predict(data.test.x, UNIT, 128)
    return float(np.mean(labels_from_outputs(out) == data.test.y))


@pytest.mark.slow
def test_int4_is_half_of_int8_and_an_eighth_of_float32_on_a_weight_dominated_model(dense_ctx):
    ctx, _ = dense_ctx
    ref = ctx.reference_path.stat().st_size
    _, int8 = produce("int8_weight_only", ctx)
    _, int4 = produce("int4_weight_only", ctx)
    s8, s4 = int8.path.stat().st_size, int4.path.stat().st_size
    kernels = 64 * 512 + 512 * 256 + 256 * 10
    assert abs((s8 - s4) - kernels / 2) < 0.01 * kernels  # 4 bits saved per weight, exactly
    assert 1.8 < s8 / s4 < 2.0  # the file: about half (biases, scales and the graph stay)
    assert ref / s4 > 6.5 and 3.6 < ref / s8 < 4.1
    # weight-only: float compute on dequantized weights, so the labels barely move
    base = accuracy(ctx.reference_path, ctx.dataset)
    assert abs(accuracy(int8.path, ctx.dataset) - base) <= 0.01
    assert abs(accuracy(int4.path, ctx.dataset) - base) <= 0.03
    assert int4.float_layers == "0" and "ai-edge-quantizer" in int4.note


@pytest.mark.slow
def test_mixed_keeps_the_first_and_last_layers_int8(dense_ctx):
    ctx, _ = dense_ctx
    _, int4 = produce("int4_weight_only", ctx)
    _, mixed = produce("int4_mixed", ctx)
    extra = mixed.path.stat().st_size - int4.path.stat().st_size
    # the first (64x512) and last (256x10) kernels gain 4 bits per weight: 17.7 KB, not the
    # 65.5 KB of the middle layer
    assert abs(extra - (64 * 512 + 256 * 10) / 2) < 500


def test_static_int8_is_calibrated_on_the_runs_data_and_matches_the_float_model(dense_ctx):
    ctx, _ = dense_ctx
    _, static = produce("aeq_static_int8", ctx)
    assert (
        abs(accuracy(static.path, ctx.dataset) - accuracy(ctx.reference_path, ctx.dataset)) < 0.02
    )


def test_an_embedding_is_run_as_a_lookup_so_its_table_is_int4_or_named_when_left_float(tmp_path):
    """A Keras Embedding converts to GATHER, which AEQ's weight-only mode does not quantize; the
    runner runs it as EMBEDDING_LOOKUP (the same numbers), whose table AEQ does quantize."""
    ids = np.random.default_rng(0).integers(1, 500, (64, 12)).astype(np.int32)
    data = Dataset("t", *(_split(ids, i) for i in (0, 1)), 2)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12,), dtype="int32")
    x = keras.layers.Embedding(500, 32, name="embedding")(inputs)
    x = keras.layers.GlobalAveragePooling1D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="head")(x))
    ctx = with_reference(RecipeContext(model, data, Scaling("none"), tmp_path, output_dir=tmp_path))
    # the rewrite alone changes no number, at any batch size
    lookup, names = tflite.gather_as_embedding_lookup(ctx.reference_path.read_bytes())
    assert names == ["embedding"]
    want = TFLiteModel(ctx.reference_path).predict(ids, Scaling("none"), 64)
    got = TFLiteModel(content=lookup).predict(ids, Scaling("none"), 64)
    np.testing.assert_array_equal(got, want)
    _, art = produce("int4_weight_only", ctx)
    assert art.float_layers == "0" and "embedding GATHER run as EMBEDDING_LOOKUP" in art.note
    int4_size = art.path.stat().st_size
    rec = build(compose_config("recipe=int4_weight_only", "recipe.embedding_lookup=false").recipe)
    (left,) = rec.produce(ctx)
    assert left.float_layers == "1: embedding (GATHER)"
    # the 500x32 float table (64 KB) against its int4 twin (8 KB plus a scale per row)
    assert left.path.stat().st_size / int4_size > 3.5
    assert "left float weights in embedding (GATHER)" in left.note


def _split(ids, half):
    from runner.data import Split

    part = ids[half * 32 : (half + 1) * 32]
    return Split(part, np.arange(32) % 2)


def test_rules_are_checked_with_one_line_each():
    with pytest.raises(RunnerError, match=r"recipe.rules\[0\].bits=3: expected one of 4, 8"):
        aeq.AEQRecipe.with_options("x", rules=[{"bits": 3}])
    with pytest.raises(RunnerError, match=r"recipe.rules\[0\].bitz: unknown key; did you mean"):
        aeq.AEQRecipe.with_options("x", rules=[{"bitz": 4}])
    from runner.config import problems

    bad = problems(compose_config("recipe=int4_weight_only", "recipe.rules=[{mode: fast}]"))
    assert bad == [
        "recipe.rules[0].mode='fast': expected one of weight_only, dynamic, static, none"
    ]
    bad = problems(compose_config("recipe=int4_weight_only", "recipe.rules=[{granularity: rows}]"))
    assert bad[0].startswith("recipe.rules[0].granularity='rows': expected one of channelwise")
    bad = problems(compose_config("recipe=int4_weight_only", "recipe.rules=[]"))
    assert bad == [
        "recipe.rules=[]: expected a non-empty list of ({scope, op, mode, bits, granularity, activation_bits, algorithm})"
    ]


@pytest.mark.slow
def test_without_the_extra_the_row_fails_saying_what_to_install(tiny_cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(aeq, "_aeq", lambda: None)
    result = run(tiny_cfg("recipe=int4_weight_only"), tmp_path)
    row = result.row("int4_weight_only.tflite")
    assert row["status"] == "failed"
    assert row["error"] == (
        "recipe int4_weight_only needs ai-edge-quantizer, which is not installed: "
        'pip install -e ".[aeq]"  (or pip install ai-edge-quantizer==0.10.0)'
    )
    assert result.row("none.tflite")["status"] == "ok"  # the rest of the table is there


@pytest.mark.slow
def test_an_aeq_row_in_a_run_is_scored_and_cached_with_the_baseline(
    tiny_cfg, tmp_path, monkeypatch
):
    first = run(tiny_cfg("recipe=int4_dynamic"), tmp_path / "a")
    row = first.row("int4_dynamic.tflite")
    assert row["status"] == "ok" and row["compression"] > 4  # a tiny CNN: the graph weighs too
    assert row["agreement"] >= 0.9 and row["output_sqnr_db"] > 15

    def refuse(*a, **k):
        raise AssertionError("quantized again")

    monkeypatch.setattr(aeq.AEQRecipe, "quantize", refuse)  # the second job reuses the file
    again = run(tiny_cfg("recipe=int4_dynamic"), tmp_path / "b")
    assert again.row("int4_dynamic.tflite")["sha256"] == row["sha256"]


def test_a_result_with_custom_ops_litert_cannot_run_is_refused(dense_ctx):
    ctx, _ = dense_ctx
    rec = aeq.AEQRecipe.with_options(
        "hadamard", rules=[{"mode": "weight_only", "bits": 4, "algorithm": "hadamard_rotation"}]
    )
    with pytest.raises(
        RunnerError, match=r"custom op\(s\) aeq.hadamard_rotation.*LiteRT cannot run"
    ):
        rec.produce(ctx)
    assert not (ctx.models_dir / "hadamard.tflite").exists()  # nothing half-written


def test_the_layer_report_is_aeqs_per_tensor_comparison_worst_first(dense_ctx):
    ctx, _ = dense_ctx
    rec, _ = produce("int4_weight_only", ctx)
    rows = rec.layer_report(ctx, requested=True)
    assert rec.layer_report(ctx, requested=False) is None
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    rel = [r["relative_rmse"] for r in rows]
    assert rel == sorted(rel, reverse=True) and 0 < rel[0] < 1  # int4 noise, not a broken layer
    assert {r["op"] for r in rows} >= {"FULLY_CONNECTED"}
    assert any(r["layer"] == "wide" for r in rows)
