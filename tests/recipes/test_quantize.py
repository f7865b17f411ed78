"""Quantize stage: every recipe config converts, and sizes shrink by the ratio they should."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import compose_config

from runner.data import Scaling
from runner.data.digits import load_digits
from runner.errors import RunnerError, summarize_error
from runner.evaluation.interpreter import TFLiteModel
from runner.models.builders import small_cnn
from runner.pipeline import build_recipe
from runner.recipes.base import RecipeContext
from runner.recipes.conversion import ConverterOptions, convert


@pytest.fixture(scope="module")
def weight_heavy():
    """An (untrained) model whose size is almost all weights: 0.5 M parameters, 2 MB in float32."""
    data = load_digits(train_size=300, test_size=50)
    model = small_cnn(data.input_shape, 10, filters=(16, 64), dense_units=512)
    return model, data


def produce(recipe: str, model, data, tmp_path, *overrides):
    cfg = compose_config(f"recipe={recipe}", *overrides)
    ctx = RecipeContext(model=model, dataset=data, scaling=Scaling("unit"), models_dir=tmp_path)
    (art,) = build_recipe(cfg.recipe).produce(ctx)
    return art


# expected compression against float32 TFLite on a weight-dominated model
RATIOS = {
    "dynamic_range": (3.8, 4.05),
    "ptq": (3.8, 4.05),
    "full_integer": (3.8, 4.05),
    "int16x8": (3.7, 4.05),
    "float16": (1.95, 2.01),
}


@pytest.mark.slow
def test_every_recipe_shrinks_by_its_ratio(weight_heavy, tmp_path):
    model, data = weight_heavy
    ref = produce("none", model, data, tmp_path).path.stat().st_size
    assert ref > 1.9e6
    for recipe, (lo, hi) in RATIOS.items():
        art = produce(
            recipe,
            model,
            data,
            tmp_path,
            "recipe.calibration_samples=20" if recipe in ("full_integer", "int16x8") else "seed=0",
        )
        ratio = ref / art.path.stat().st_size
        assert lo <= ratio <= hi, f"{recipe}: {ratio:.3f}x"
        assert art.name == f"{recipe}.tflite" and art.path.parent == tmp_path


@pytest.mark.slow
def test_per_tensor_recipe_drops_the_per_channel_scales(weight_heavy, tmp_path):
    model, data = weight_heavy
    per_channel = produce(
        "full_integer", model, data, tmp_path / "c", "recipe.calibration_samples=20"
    )
    per_tensor = produce(
        "full_integer_per_tensor", model, data, tmp_path / "t", "recipe.calibration_samples=20"
    )
    # the 16 + 64 conv channels lose their scales and int64 zero points (kernel and bias)
    saved = per_channel.path.stat().st_size - per_tensor.path.stat().st_size
    assert saved >= 80 * 24, saved
    per_channel_tensors = [
        t["name"]
        for t in TFLiteModel(per_tensor.path)._interp.get_tensor_details()
        if t["quantization_parameters"]["scales"].size > 1
    ]
    assert per_channel_tensors and not any("conv" in n.lower() for n in per_channel_tensors)
    assert per_tensor.name == "full_integer_per_tensor.tflite"


@pytest.mark.slow
def test_full_integer_has_int8_io_and_int16x8_keeps_float_io(weight_heavy, tmp_path):
    model, data = weight_heavy
    fi = TFLiteModel(
        produce("full_integer", model, data, tmp_path, "recipe.calibration_samples=20").path
    )
    assert fi.input_dtype == np.int8 and np.dtype(fi.output["dtype"]) == np.int8
    assert fi.input["quantization"][0] == pytest.approx(
        1 / 255, rel=0.01
    )  # calibrated on [0, 1] inputs
    i16 = TFLiteModel(
        produce("int16x8", model, data, tmp_path, "recipe.calibration_samples=20").path
    )
    assert i16.input_dtype == np.float32
    types = {np.dtype(t["dtype"]) for t in i16._interp.get_tensor_details()}
    assert np.dtype(np.int16) in types and np.dtype(np.int8) in types


@pytest.mark.slow
def test_calibration_draw_follows_its_seed(weight_heavy, tmp_path):
    model, data = weight_heavy
    a = produce(
        "full_integer",
        model,
        data,
        tmp_path / "a",
        "recipe.calibration_samples=5",
        "recipe.calibration_seed=0",
    )
    b = produce(
        "full_integer",
        model,
        data,
        tmp_path / "b",
        "recipe.calibration_samples=5",
        "recipe.calibration_seed=0",
    )
    c = produce(
        "full_integer",
        model,
        data,
        tmp_path / "c",
        "recipe.calibration_samples=5",
        "recipe.calibration_seed=7",
    )
    assert a.path.read_bytes() == b.path.read_bytes()
    assert a.path.read_bytes() != c.path.read_bytes()


def test_converter_settings_are_validated_with_the_valid_choices():
    with pytest.raises(RunnerError, match="did you mean recipe.converter.optimizations"):
        ConverterOptions.from_mapping({"optimisations": ["DEFAULT"]})
    model = small_cnn((8, 8, 1), 10, filters=(4,))
    with pytest.raises(RunnerError, match="TFLITE_BUILTINS_INT8"):
        convert(model, ConverterOptions(supported_ops=("INT8_ONLY",)))
    with pytest.raises(RunnerError, match="float16"):  # refused when made, before converting
        ConverterOptions.from_mapping({"supported_types": ["half"]})
    with pytest.raises(RunnerError, match="calibration_samples"):
        convert(model, ConverterOptions(representative_dataset=True), calibration=None)


def test_summarize_error_keeps_the_error_line():
    e = RuntimeError(
        "loc(foo): something\n  <unknown>:0: error: 'tf.Op' op is neither a custom op nor a flex op\nnote: see"
    )
    assert summarize_error(e) == "RuntimeError: 'tf.Op' op is neither a custom op nor a flex op"
    assert len(summarize_error(ValueError("x" * 1000))) == 300


@pytest.mark.slow
def test_calibration_samples_beyond_the_split_are_said_on_the_row(tiny_cfg, tmp_path):
    from runner.pipeline import run

    result = run(tiny_cfg("recipe=full_integer", "recipe.calibration_samples=100000"), tmp_path)
    row = result.row("full_integer.tflite")
    said = "recipe.calibration_samples=100000 is more than the"
    assert row["status"] == "ok" and said in row["note"]
    assert any(said in w for w in result.warnings)


@pytest.mark.slow  # trains or converts real models: over 5 s on 2 cores
def test_converting_a_tf_keras_model_does_not_import_keras_3():
    """TFLite's converter imports Keras 3 (1.8 s) only to ask whether the model is one; a
    process that never loaded Keras 3 holds no such model, so conversion skips the import and
    the file is the same."""
    import subprocess
    import sys

    code = (
        "import runner, sys, numpy as np\n"
        "from runner.models.builders import small_cnn\n"
        "from runner.recipes.conversion import ConverterOptions, convert\n"
        "m = small_cnn((8, 8, 1), 10)\n"
        "flat = convert(m, ConverterOptions())\n"
        "assert 'keras' not in sys.modules, 'Keras 3 was imported'\n"
        "import keras\n"
        "again = convert(m, ConverterOptions())\n"
        "print(len(flat), len(again))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    first, second = out.stdout.split()
    assert first == second  # with Keras 3 loaded the converter's own path gives the same size
