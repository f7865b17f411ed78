"""``quantize_model`` runs every recipe of ``conf/recipe/`` through the Recipe protocol.

One tiny digits baseline is trained by the runner itself; the API then quantizes its
``float.h5`` with the same training inputs. Deterministic recipes must give the runner's file
byte for byte; the others must do what their name says (QAT fine-tunes, auto_int8 and selective
keep float ops, AEQ recipes start from a float32 conversion).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import CONF

from runner.api import quantize_model
from runner.errors import RunnerError
from runner.evaluation.interpreter import TFLiteModel
from runner.evaluation.metrics import labels_from_outputs
from runner.pipeline import load_dataset, run, scaling_from

pytestmark = pytest.mark.slow

RECIPES = sorted(p.stem for p in (CONF / "recipe").glob("*.yaml"))
# Recipes whose file depends only on the model, the recipe and the calibration inputs.
DETERMINISTIC = [
    "none",
    "float16",
    "dynamic_range",
    "ptq",
    "full_integer",
    "full_integer_per_tensor",
    "int16x8",
    "int8_weight_only",
]


@pytest.fixture(scope="module")
def runner_rows(tmp_path_factory):
    """The runner's rows for the deterministic recipes on one cached tiny baseline."""
    from helpers import TINY, compose_config

    tmp = tmp_path_factory.mktemp("cli")
    files = {}
    for recipe in DETERMINISTIC:
        cfg = compose_config(
            f"cache_dir={tmp / 'cache'}", *TINY, f"recipe={recipe}", "dataset.test_size=120"
        )
        out = run(cfg, tmp / recipe)
        assert out.row(f"{recipe}.tflite")["status"] == "ok"
        files[recipe] = (tmp / recipe / "models" / f"{recipe}.tflite").read_bytes()
    data = load_dataset(cfg)
    scaling = scaling_from(cfg.model, data)
    return {
        "float": tmp / recipe / "models" / "float.h5",
        "files": files,
        "x": scaling(data.train.x),
        "y": data.train.y,
        "test_x": scaling(data.test.x),
        "test_y": data.test.y,
    }


def _accuracy(path: Path, x, y) -> float:
    from runner.data import Scaling

    out = TFLiteModel(path).predict(x, Scaling("none"), 128)
    return float(np.mean(labels_from_outputs(out) == y))


@pytest.mark.parametrize("recipe", DETERMINISTIC)
def test_the_api_writes_the_runners_file_byte_for_byte(runner_rows, recipe, tmp_path):
    out = quantize_model(
        runner_rows["float"],
        tmp_path / f"{recipe}.tflite",
        recipe,
        calibration=runner_rows["x"],
        labels=runner_rows["y"],
    )
    assert out.read_bytes() == runner_rows["files"][recipe]


def test_every_recipe_in_conf_works_from_python(runner_rows, tmp_path):
    # setup: the float32 file's accuracy and size (recipe none) are the references
    r = runner_rows
    sizes, accs, kinds = {}, {}, {}
    # execute: every recipe the command line has, with the QAT runs kept short (a deterministic
    # recipe's API file is the runner's, byte for byte: the test above; it is not written twice)
    for recipe in RECIPES:
        out = tmp_path / f"{recipe}.tflite"
        if recipe in r["files"]:
            out.write_bytes(r["files"][recipe])
        else:
            fast = {"epochs": 1, "steps_per_epoch": 5} if recipe.startswith("qat") else {}
            quantize_model(r["float"], out, recipe, calibration=r["x"], labels=r["y"], **fast)
        sizes[recipe] = out.stat().st_size
        accs[recipe] = _accuracy(out, r["test_x"], r["test_y"])
        kinds[recipe] = TFLiteModel(out).input_dtype
    # assert: each file is what its recipe is, and none lost the model
    float_acc, none = (
        accs["none"],
        sizes["none"],
    )  # ~42 KB, of which ~10 KB is not weights: ratios below the ideal
    assert 1.6 < none / sizes["float16"] < 2.1, sizes
    assert none / sizes["dynamic_range"] > 2.2 and none / sizes["full_integer"] > 2.2, sizes
    assert sizes["int4_weight_only"] < sizes["int8_weight_only"] < none
    for recipe in ("full_integer", "full_integer_per_tensor", "qat", "adaround"):
        assert kinds[recipe] == np.int8, recipe  # int8 input: integer-only recipes
    for recipe in ("selective", "auto_int8", "qat_mixed", "int16x8", "dynamic_range"):
        assert kinds[recipe] == np.float32, recipe  # float I/O, as their YAML says
    # selective keeps its worst op float: a bigger file than plain full_integer, not the same one
    assert sizes["selective"] > sizes["full_integer"]
    for recipe, acc in accs.items():
        assert acc >= float_acc - 0.1, (recipe, acc, float_acc)


def test_qat_from_python_fine_tunes_and_is_not_plain_ptq(runner_rows, tmp_path):
    r = runner_rows
    ptq = r["files"]["full_integer"]  # the API's full_integer file, byte for byte (test above)
    qat = quantize_model(
        r["float"],
        tmp_path / "qat.tflite",
        "qat",
        calibration=r["x"],
        labels=r["y"],
        epochs=1,
        steps_per_epoch=5,
        restore_best=False,  # the fine-tuned epoch, not epoch 0 (which may equal PTQ)
    )
    assert qat.read_bytes() != ptq
    assert TFLiteModel(qat).input_dtype == np.int8


@pytest.mark.parametrize(
    "recipe,needs",
    [
        ("full_integer", "calibrates activations"),
        ("int16x8", "calibrates activations"),
        ("qat", "fine-tunes on labelled training samples"),
        ("qat_mixed", "fine-tunes"),
        ("selective", "worst int8 ops"),
        ("auto_int8", "worst int8 ops"),
        ("aeq_static_int8", "calibrates activations"),
    ],
)
def test_a_recipe_that_needs_data_says_so_and_writes_nothing(runner_rows, recipe, needs, tmp_path):
    target = tmp_path / "x.tflite"
    with pytest.raises(RunnerError, match=f"recipe .{recipe}. .*{needs}.*pass calibration="):
        quantize_model(runner_rows["float"], target, recipe)
    assert list(tmp_path.iterdir()) == []  # no file, no temp folder left


def test_a_misspelt_option_names_the_closest_key(runner_rows, tmp_path):
    with pytest.raises(RunnerError, match="recipe.calibraton_samples: unknown key; did you mean"):
        quantize_model(runner_rows["float"], tmp_path / "x.tflite", "float16", calibraton_samples=3)
    with pytest.raises(RunnerError, match=r"recipe.epochs=0: expected an integer >= 1"):
        quantize_model(runner_rows["float"], tmp_path / "x.tflite", "qat", epochs=0)
    assert list(tmp_path.iterdir()) == []
