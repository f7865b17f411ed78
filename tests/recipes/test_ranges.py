"""``calibration_ranges``: how the representative samples set each int8 activation range."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tf_keras as keras
from helpers import compose_config

from runner.recipes.conversion import convert, full_integer_settings
from runner.recipes.qat.quantizer_ranges import _range
from runner.recipes.ranges import converter_ranges


@pytest.fixture(scope="module")
def outlier():
    """A small conv net (many values per sample: the mean of each sample's max is a fair
    estimate of a typical sample's range), 99 ordinary calibration images and one 30x."""
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    inp = keras.Input((12, 12, 3))
    h = keras.layers.Conv2D(8, 3, activation="relu", name="hidden")(inp)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inp, keras.layers.Dense(4, name="out")(h))
    calib = rng.normal(size=(100, 12, 12, 3)).astype(np.float32)
    calib[0] *= 30
    return model, calib, rng.normal(size=(300, 12, 12, 3)).astype(np.float32)


def _file(model, calib, ranges: str) -> bytes:
    opts = full_integer_settings().replace(
        inference_input_type=None,
        inference_output_type=None,
        calibration_ranges=ranges,
    )
    return convert(model, opts, calib)


def _hidden_scale_and_outputs(flatbuffer: bytes, x: np.ndarray):
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=flatbuffer)
    (scale,) = {
        d["quantization"][0]
        for d in interp.get_tensor_details()
        if "hidden" in d["name"] and "Relu" in d["name"] and d["dtype"] == np.int8
    }
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    interp.resize_tensor_input(inp["index"], list(x.shape))
    interp.allocate_tensors()
    interp.set_tensor(inp["index"], x)
    interp.invoke()
    return scale, interp.get_tensor(out["index"])


def _sqnr(ref, got) -> float:
    return float(10 * np.log10(np.mean(ref**2) / np.mean((ref - got) ** 2)))


def test_mean_ranges_clip_one_outlier_sample_and_give_the_others_finer_steps(outlier):
    model, calib, test = outlier
    ref = model.predict(test, verbose=0)
    wide, wide_out = _hidden_scale_and_outputs(_file(model, calib, "minmax"), test)
    fine, fine_out = _hidden_scale_and_outputs(_file(model, calib, "mean"), test)
    # the converter's range holds the outlier: every other sample uses a few of 256 steps
    assert wide / fine > 5
    assert _sqnr(ref, fine_out) > _sqnr(ref, wide_out) + 6
    # the price, said plainly: the outlier itself is clipped
    big = calib[:1]
    _, wide_big = _hidden_scale_and_outputs(_file(model, calib, "minmax"), big)
    _, fine_big = _hidden_scale_and_outputs(_file(model, calib, "mean"), big)
    ref_big = model.predict(big, verbose=0)
    assert np.abs(fine_big - ref_big).max() > np.abs(wide_big - ref_big).max()
    # minmax is the converter's own file, byte for byte
    plain = convert(
        model,
        full_integer_settings().replace(inference_input_type=None, inference_output_type=None),
        calib,
    )
    assert _file(model, calib, "minmax") == plain


def test_the_converter_is_put_back_after_the_block_even_on_error():
    from tensorflow.lite.python.optimize import calibrator

    before = calibrator.Calibrator.calibrate
    with pytest.raises(RuntimeError), converter_ranges("mean"):
        assert calibrator.Calibrator.calibrate is not before
        raise RuntimeError("boom")
    assert calibrator.Calibrator.calibrate is before


def test_qat_starts_its_ranges_with_the_same_estimator():
    values = np.zeros((10, 4))
    values[:, 0] = 1.0  # every sample reaches 1 ...
    values[0, 1] = 21.0  # ... one reaches 21
    assert _range(values, "minmax") == (0.0, 21.0)
    assert _range(values, "mean") == pytest.approx((0.0, 3.0))


def test_the_recipe_and_the_option_compose_from_the_real_conf():
    cfg = compose_config("recipe=full_integer_mean_ranges")
    assert cfg.recipe.converter.calibration_ranges == "mean"
    assert cfg.recipe.converter.inference_input_type == "int8"
    auto = compose_config("recipe=auto_int8")
    assert list(auto.recipe.calibration_ranges) == ["minmax", "mean"]
    from runner.errors import RunnerError
    from runner.pipeline import build_recipe

    # one knob: where the recipe tries the estimators itself, the converter's is refused
    for recipe in ("auto_int8", "qat", "prune_qat"):
        with pytest.raises(RunnerError, match=r"set recipe.calibration_ranges=\[mean\] instead"):
            build_recipe(
                compose_config(
                    f"recipe={recipe}", "recipe.converter.calibration_ranges=mean"
                ).recipe
            )
    with pytest.raises(RunnerError, match="calibration_ranges"):
        build_recipe(
            compose_config("recipe=full_integer", "recipe.converter.calibration_ranges=p99").recipe
        )


@pytest.fixture(scope="module")
def bright():
    """A small digits CNN, and the digits with one training image 100x brighter."""
    from runner.data import Scaling
    from runner.data.digits import load_digits
    from runner.models.builders import small_cnn
    from runner.train import TrainConfig, train

    unit, data = Scaling("unit"), load_digits()
    keras.utils.set_random_seed(0)
    model = small_cnn((8, 8, 1), 10)
    train(model, data, TrainConfig(epochs=5, early_stopping_patience=0), unit)
    x = data.train.x.astype(np.float32)
    x[0] *= 100
    return model, data, dataclasses.replace(data, train=dataclasses.replace(data.train, x=x))


def _bright_ctx(bright, tmp_path):
    from runner.data import Scaling
    from runner.recipes.base import RecipeContext

    model, _, data = bright
    (tmp_path / "models").mkdir(exist_ok=True)
    return RecipeContext(
        model, data, Scaling("unit"), tmp_path / "models", {"validation_split": 0.1}
    )


@pytest.mark.slow  # trains or converts real models: over 5 s on 2 cores
def test_auto_int8_starts_from_the_estimator_that_meets_the_budget(bright, tmp_path):
    """The bright image is drawn into the calibration: the converter's ranges hold it and miss
    the budget; the mean ranges meet it, and auto_int8 takes them."""
    import csv

    from runner.data import Scaling
    from runner.evaluation.interpreter import TFLiteModel
    from runner.evaluation.metrics import labels_from_outputs
    from runner.pipeline import build_recipe

    _, data, lit = bright
    ctx = _bright_ctx(bright, tmp_path)
    every = f"recipe.calibration_samples={len(lit.train)}"  # the bright image is always drawn

    def accuracy(recipe):
        (art,) = build_recipe(compose_config(f"recipe={recipe}", every).recipe).produce(ctx)
        out = TFLiteModel(art.path).predict(data.test.x, Scaling("unit"), 128)
        return art, float(np.mean(labels_from_outputs(out) == data.test.y))

    _, plain = accuracy("full_integer")
    art, auto = accuracy("auto_int8")
    trace = list(csv.DictReader((tmp_path / "fallback_trace.csv").read_text().splitlines()))
    first = {r["calibration_ranges"]: r for r in trace if r["step"] == "0"}
    assert first["minmax"]["meets_budget"] == "False" and first["mean"]["meets_budget"] == "True"
    assert "activation ranges: mean (of minmax, mean)" in art.note
    assert art.float_layers == "0" and auto > plain


@pytest.mark.slow
def test_qat_starts_from_the_estimator_whose_epoch_0_file_is_better(bright, tmp_path):
    from runner.recipes.qat import QATRecipe, kept_note

    model, _, lit = bright
    ctx = _bright_ctx(bright, tmp_path)
    recipe = QATRecipe.with_options(
        epochs=1, steps_per_epoch=2, calibration_samples=len(lit.train), learning_rate_scale=1e-4
    )
    done = recipe.fine_tune(model, ctx)
    assert done.ranges == "mean" and done.kept["start"]["ranges"] == "mean"
    assert "activation ranges mean" in kept_note(done.kept)
    # one start only: no choice, and the export is calibrated the same way
    only = QATRecipe.with_options(
        epochs=1,
        steps_per_epoch=2,
        calibration_samples=len(lit.train),
        learning_rate_scale=1e-4,
        calibration_ranges=["minmax"],
    ).fine_tune(model, ctx)
    assert (
        only.ranges == "minmax" and only.kept["start"]["accuracy"] < done.kept["start"]["accuracy"]
    )


@pytest.mark.slow  # trains or converts real models: over 5 s on 2 cores
def test_adaround_writes_its_rounding_with_the_estimator_whose_file_is_better(bright, tmp_path):
    """The converter's ranges hold the bright image and cost more than any rounding wins back:
    adaround scores the file of each estimator on held-out samples and ships the mean one, as
    accurate on test as full_integer_mean_ranges and above full_integer."""
    from runner.data import Scaling
    from runner.evaluation.interpreter import TFLiteModel
    from runner.evaluation.metrics import labels_from_outputs
    from runner.pipeline import build_recipe, recipe_by_name

    _, data, lit = bright
    ctx = dataclasses.replace(_bright_ctx(bright, tmp_path), recipes=recipe_by_name)
    every = f"recipe.calibration_samples={len(lit.train)}"

    def accuracy(recipe, *more):
        cfg = compose_config(f"recipe={recipe}", every, *more)
        (art,) = build_recipe(cfg.recipe).produce(ctx)
        out = TFLiteModel(art.path).predict(data.test.x, Scaling("unit"), 128)
        return art, float(np.mean(labels_from_outputs(out) == data.test.y))

    quick = ("recipe.iterations=30",)
    art, rounded = accuracy("adaround", *quick)
    assert "activation ranges mean (int8 validation accuracy / agreement minmax" in art.note
    _, plain = accuracy("full_integer")
    _, mean = accuracy("full_integer_mean_ranges")
    assert rounded > plain + 0.05 and rounded >= mean - 0.02, (rounded, plain, mean)
    # one estimator: no choice, and the converter's ranges cost what full_integer's do
    art, only = accuracy("adaround", *quick, "recipe.calibration_ranges=[minmax]")
    assert "activation ranges minmax" in art.note and only < rounded - 0.05
