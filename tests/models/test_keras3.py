"""Bring your own model: Keras 3 files (.keras, .h5) and bare SavedModels through every recipe.

The fixtures are made by Keras 3 in a subprocess (tests/keras3_fixtures.py): this process has
tf_keras, as `import runner` requires.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tf_keras as keras
from helpers import ROOT, compose_config, write_text_csv

from runner.data import Scaling
from runner.data.digits import load_digits
from runner.data.text import load_text_classification
from runner.errors import RunnerError
from runner.models.loading import open_model
from runner.models.model_file import file_format
from runner.pipeline import run

TINY = ["evaluation.latency_samples=2", "evaluation.progress=false"]


@pytest.fixture(scope="module")
def k3(tmp_path_factory):
    """Keras 3 sequential / residual / text models, trained a little, in three formats each."""
    folder = tmp_path_factory.mktemp("keras3")
    csv = write_text_csv(folder / "news.csv", n=300)
    text = load_text_classification(path=str(csv))
    digits = load_digits()
    np.savez(
        folder / "data.npz",
        x=digits.train.x,
        y=digits.train.y,
        ids=text.train.x,
        labels=text.train.y,
        vocab=text.model_kwargs["vocab_size"],
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    p = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests" / "keras3_fixtures.py"),
            str(folder),
            str(folder / "data.npz"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.startswith("keras 3."), p.stdout
    return folder, csv


def pretrained(path: Path, *extra: str, text_csv: Path | None = None):
    data = (
        [
            "dataset=fake_news",
            f"dataset.path={text_csv}",
            f"dataset.word_index={text_csv.parent / 'wi.json'}",
        ]
        if text_csv
        else []
    )
    # the fixtures scale inside (Rescaling, Normalization): they take raw pixels / token ids
    return compose_config(
        "model=pretrained", f"model.path={path}", "model.input_scaling=none", *data, *TINY, *extra
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sequential", "residual", "text"])
@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_keras3_files_are_recognised_and_translated_exactly(k3, name, suffix):
    # setup
    folder, _ = k3
    path = folder / f"{name}{suffix}"
    x = (
        np.random.default_rng(0).integers(0, 20, (64, 100)).astype(np.int32)
        if name == "text"
        else Scaling("none")(load_digits().test.x[:64]).astype(np.float32)
    )
    # execute
    kind, version = file_format(path)
    loaded = open_model(path, sample=x)
    # assert: the format comes from the file's metadata; the twin is tf_keras and equal
    assert kind == "keras3" and version.startswith("3.")
    assert isinstance(loaded.model, keras.Model) and loaded.kind == "keras3"
    diff = np.abs(
        np.asarray(loaded.original(x, training=False)) - loaded.model.predict(x, verbose=0)
    )
    assert diff.max() < 1e-5
    assert file_format(folder / f"{name}_savedmodel")[0] == "saved_model"


def _write_word_index(folder: Path, csv: Path) -> None:
    text = load_text_classification(path=str(csv))
    (folder / "wi.json").write_text(text.files["word_index.json"])


# (none.tflite, the float32 reference, is every run's first row: no run of its own)
RECIPES = ["dynamic_range", "float16", "full_integer", "qat"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sequential", "residual", "text"])
def test_keras3_models_through_every_recipe(k3, tmp_path, name):
    # setup
    folder, csv = k3
    _write_word_index(folder, csv)
    path = folder / f"{name}.keras"
    rows = {}
    # execute: each recipe on the .keras file (the float row scored by Keras 3 itself); the image
    # models also through the layer report, selective and auto_int8 (on the tf_keras twin)
    extra = [] if name == "text" else ["selective", "auto_int8"]
    if name == "sequential":  # weight compression, entering through the same tf_keras twin
        extra += ["prune", "cluster", "qat_int4", "prune_qat", "cluster_qat", "prune_cluster_qat"]
    for recipe in RECIPES + extra:
        more = ["evaluation.layer_report=true"] if recipe == "full_integer" else []
        cfg = pretrained(path, f"recipe={recipe}", *more, text_csv=csv if name == "text" else None)
        result = run(cfg, tmp_path / recipe)
        rows.update({r["artifact"]: r for r in result.rows})
        if recipe == "full_integer" and name != "text":
            assert result.worst_layers and (tmp_path / recipe / "layer_report.csv").is_file()
    # assert
    assert all(r["status"] == "ok" for r in rows.values()), {
        k: r["error"] for k, r in rows.items() if r["status"] != "ok"
    }
    float_row = rows[f"{name}.keras"]
    assert float_row["accuracy"] > 0.85 and "translated from Keras 3" in float_row["note"]
    assert rows["none.tflite"]["agreement"] >= 0.999
    assert rows["float16.tflite"]["agreement"] >= 0.99
    quantized = ["dynamic_range.tflite", "full_integer.tflite", "qat.tflite"]
    for q in quantized + [f"{r}.tflite" for r in extra]:
        assert rows[q]["agreement"] >= 0.9, (q, rows[q]["agreement"])
    ratio = rows["none.tflite"]["size_bytes"] / rows["full_integer.tflite"]["size_bytes"]
    # int8 weights: ~4x on the weight-dominated model, less where the flatbuffer's fixed part counts
    assert ratio > {"sequential": 3.5, "residual": 2.4, "text": 2.4}[name], ratio  # 2.57, 2.59 here


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sequential", "text"])
def test_h5_and_savedmodel_through_post_training_recipes(k3, tmp_path, name):
    folder, csv = k3
    _write_word_index(folder, csv)
    for fmt in (f"{name}.h5", f"{name}_savedmodel"):
        cfg = pretrained(
            folder / fmt, "recipe=full_integer", text_csv=csv if name == "text" else None
        )
        result = run(cfg, tmp_path / fmt)
        rows = {r["artifact"]: r for r in result.rows}
        assert result.ok, rows
        assert rows["none.tflite"]["agreement"] >= 0.999
        assert rows["full_integer.tflite"]["agreement"] >= 0.9
        assert rows["none.tflite"]["size_bytes"] / rows["full_integer.tflite"]["size_bytes"] > 2.5


@pytest.mark.slow
def test_a_bare_savedmodel_says_qat_needs_a_keras_graph(k3, tmp_path):
    folder, _ = k3
    result = run(pretrained(folder / "sequential_savedmodel", "recipe=qat"), tmp_path)
    row = result.row("qat.tflite")
    assert row["status"] == "failed"
    assert "SavedModel without a Keras graph" in row["error"] and ".keras or .h5" in row["error"]
    assert result.row("none.tflite")["status"] == "ok"


@pytest.mark.slow
def test_the_seed_api_takes_keras3_text_models(k3, tmp_path):
    from runner.api import prediction_label, quantize_model

    folder, csv = k3
    _write_word_index(folder, csv)
    import pandas as pd

    texts = list(pd.read_csv(csv).text[:40])
    for suffix in (".keras", ".h5"):
        out = quantize_model(folder / f"text{suffix}", tmp_path / f"t{suffix}.tflite")
        got = [prediction_label(t, out, folder / "wi.json") for t in texts]
        original = open_model(folder / f"text{suffix}").original
        from runner.data.vocabulary import Vocabulary

        ids = Vocabulary.load(folder / "wi.json").encode(texts, 100)
        want = (np.asarray(original(ids, training=False))[:, 0] > 0.5).astype(int).tolist()
        assert got == want


# --------------------------------------------------------------------------- bad input, one line
@pytest.mark.slow
def test_bad_model_files_get_one_line_each(tmp_path, k3):
    folder, _ = k3
    # a weights-only .h5 (tf_keras save_weights)
    m = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    m.save_weights(tmp_path / "w.h5")
    with pytest.raises(RunnerError, match="holds weights only") as e:
        open_model(tmp_path / "w.h5")
    assert "\n" not in str(e.value)
    # a .tflite passed as a model
    (tmp_path / "m.tflite").write_bytes(b"\x1c\x00\x00\x00TFL3" + b"\x00" * 32)
    with pytest.raises(RunnerError, match="TensorFlow Lite flatbuffer.*prediction_label"):
        open_model(tmp_path / "m.tflite")
    # a multi-input model
    a, b = keras.Input((4,)), keras.Input((4,))
    two = keras.Model([a, b], keras.layers.Dense(2)(keras.layers.Concatenate()([a, b])))
    two.save(tmp_path / "two.h5")
    from runner.models.loading import load_pretrained

    with pytest.raises(RunnerError, match="2 inputs"):
        load_pretrained(str(tmp_path / "two.h5"))


@pytest.mark.slow
def test_a_missing_custom_class_is_named_with_the_key_and_the_key_fixes_it(tmp_path, monkeypatch):
    # setup: a tf_keras model with a registered custom layer, saved; its module on the path
    module = tmp_path / "my_layers.py"
    module.write_text(
        "import tf_keras as keras\n"
        "@keras.saving.register_keras_serializable(package='mine')\n"
        "class Double(keras.layers.Layer):\n"
        "    def call(self, x):\n"
        "        return 2.0 * x\n"
    )
    script = (
        "import os, sys; os.environ['TF_USE_LEGACY_KERAS']='1'; sys.path.insert(0, sys.argv[1])\n"
        "import tf_keras as keras, my_layers\n"
        "i = keras.Input((4,)); o = keras.layers.Dense(2)(my_layers.Double()(i))\n"
        "keras.Model(i, o).save(sys.argv[2])\n"
    )
    path = tmp_path / "custom.keras"
    subprocess.run(
        [sys.executable, "-c", script, str(tmp_path), str(path)], check=True, timeout=300
    )
    # execute / assert: without the key, the class is named with the key to set
    with pytest.raises(RunnerError, match=r"custom class.*mine>Double.*model.custom_objects"):
        open_model(path)
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded = open_model(path, custom_objects="my_layers")
    assert loaded.model.predict(np.ones((1, 4), np.float32), verbose=0).shape == (1, 2)


def _keras3_file(path: Path, model: str) -> Path:
    """``model`` (Python building ``m`` with Keras 3 as ``keras``) saved to ``path`` by a process
    without tf_keras."""
    script = f"import sys, keras\n{model}\nm.save(sys.argv[1])\n"
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    subprocess.run([sys.executable, "-c", script, str(path)], check=True, env=env, timeout=300)
    return path


@pytest.mark.slow
def test_keras3_lambda_is_refused_like_any_other(tmp_path):
    path = _keras3_file(
        tmp_path / "lam.h5",
        "i = keras.Input((4,)); o = keras.layers.Lambda(lambda t: t * 2)(i)\n"
        "m = keras.Model(i, keras.layers.Dense(2)(o))",
    )
    with pytest.raises(RunnerError, match="Lambda layer.*safe_mode=false"):
        open_model(path)


@pytest.mark.slow
def test_a_keras3_model_whose_input_does_not_fit_the_data_is_one_line(tmp_path):
    # setup: a user's own 16x16 model (Keras 3), the default data is 8x8 digits (issue #47)
    from helpers import run_cli

    path = _keras3_file(
        tmp_path / "m16.keras",
        "m = keras.Sequential([keras.Input((16, 16, 1)), keras.layers.Conv2D(4, 3),"
        " keras.layers.Flatten(), keras.layers.Dense(10, activation='softmax')])",
    )
    # execute
    p = run_cli("model=pretrained", f"model.path={path}", f"hydra.run.dir={tmp_path / 'run'}")
    # assert: one line, what was expected and what the data gives, no ANSI codes, exit 2
    lines = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert p.returncode == 2 and len(lines) == 1, p.stderr[-2000:]
    assert "expects inputs of shape (16, 16, 1), but the data set gives (8, 8, 1)" in lines[0]
    assert "\x1b[" not in p.stderr


@pytest.mark.slow
def test_a_users_file_is_translated_converted_and_scored_once_per_content(
    k3, tmp_path, monkeypatch, caplog
):
    import json
    import logging
    import shutil

    from runner import cache, files
    from runner.models import keras3

    # setup: one cache; the second run as a new process would start (nothing kept in memory),
    # on a copy of the file under another name (the entry follows the content, not the name)
    folder, _ = k3
    copy = tmp_path / "renamed.keras"
    shutil.copy(folder / "sequential.keras", copy)
    store = f"cache_dir={tmp_path / 'cache'}"
    first = run(
        pretrained(folder / "sequential.keras", store, "recipe=dynamic_range"), tmp_path / "a"
    )
    cache._TWINS.clear()
    files._TREE_HASHES.clear()

    def never(*a, **k):
        raise AssertionError("the Keras 3 file was loaded again")

    monkeypatch.setattr(keras3, "load", never)
    # execute
    with caplog.at_level(logging.INFO):
        second = run(pretrained(copy, store, "recipe=float16"), tmp_path / "b")
    # assert: the second run read the twin, the reference and both shared scores from the entry
    log = caplog.text
    assert "the tf_keras translation cached for this file" in log
    assert "recipe none: reusing the conversion cached" in log
    evaluation = json.loads((tmp_path / "b" / "results.json").read_text())["evaluation_cache"]
    assert evaluation == {"renamed.keras": "hit", "none.tflite": "hit", "float16.tflite": "off"}
    a = {r["artifact"]: r for r in first.rows}
    b = {r["artifact"]: r for r in second.rows}
    assert b["none.tflite"]["sha256"] == a["none.tflite"]["sha256"]
    assert b["renamed.keras"]["accuracy"] == a["sequential.keras"]["accuracy"] > 0.85
    assert b["float16.tflite"]["agreement"] >= 0.99  # the cached twin converts like the fresh one
    assert len(list((tmp_path / "cache").glob("model-*"))) == 1
