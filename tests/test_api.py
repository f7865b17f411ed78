"""The seed task both ways on a seed-style model: Sequential Embedding->LSTM, float input, .h5."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tf_keras as keras
from helpers import WEIBO, compose_config, run_cli, write_text_csv

from runner.api import predict_labels, prediction_label, quantize_model
from runner.data.vocabulary import Vocabulary
from runner.errors import RunnerError
from runner.evaluation.interpreter import TFLiteModel
from runner.pipeline import run


@pytest.fixture(scope="module")
def seed_model(tmp_path_factory):
    """What the seed hands over: model.h5 (trained, dynamic batch, float32 input) + word_index.json."""
    folder = tmp_path_factory.mktemp("seed")
    csv = write_text_csv(folder / "news.csv", n=300)
    df = pd.read_csv(csv)
    train, test = df[df.split == "train"], df[df.split == "test"]
    vocab = Vocabulary.fit(train.text)
    vocab.save(folder / "word_index.json")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.layers.Embedding(vocab.size, 16, input_length=100),
            keras.layers.LSTM(16),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile("adam", "binary_crossentropy")
    model.fit(
        vocab.encode(list(train.text), 100).astype("float32"),
        train.label.to_numpy(),
        epochs=12,
        batch_size=16,
        verbose=0,
    )
    model.save(folder / "model.h5")
    return folder, csv, list(test.text), model


@pytest.fixture(scope="module")
def float16_file(seed_model, tmp_path_factory):
    """The seed task's file: quantize_model's default recipe (float16) on the seed model."""
    folder = seed_model[0]
    return quantize_model(folder / "model.h5", tmp_path_factory.mktemp("f16") / "q.tflite")


def keras_labels(model, texts, folder):
    vocab = Vocabulary.load(folder / "word_index.json")
    return (
        (model.predict(vocab.encode(texts, 100).astype("float32"), verbose=0)[:, 0] > 0.5)
        .astype(int)
        .tolist()
    )


@pytest.mark.slow
def test_api_float16_under_4mb_and_predictions_equal_keras(seed_model, float16_file, monkeypatch):
    folder, _, test_texts, model = seed_model
    out = float16_file
    assert out.stat().st_size < 4 * 1024 * 1024
    assert TFLiteModel(out).input_dtype == np.float32  # the seed model's own input type is kept
    # the seed's two-argument call: word_index.json from the working directory
    monkeypatch.chdir(folder)
    got = [prediction_label(s, str(out)) for s in test_texts]
    assert got == keras_labels(model, test_texts, folder)
    assert (
        0.2 < np.mean(got) < 0.8
    )  # both labels occur: a constant model would pass trivially otherwise
    assert predict_labels(test_texts[:3], out, folder / "word_index.json") == got[:3]


@pytest.mark.slow
def test_api_raw_chinese_is_segmented_like_the_training_text(seed_model, float16_file, tmp_path):
    folder, _, test_texts, _ = seed_model
    out = tmp_path / "q.tflite"  # beside its own word_index.json (the seed's two-argument call)
    out.write_bytes(float16_file.read_bytes())
    (tmp_path / "word_index.json").write_text((folder / "word_index.json").read_text())
    raw = test_texts[0].replace(" ", "")
    assert prediction_label(raw, out) == prediction_label(test_texts[0], out)


@pytest.mark.slow
def test_api_full_integer_with_calibration_runs_and_agrees(seed_model, tmp_path):
    folder, _, test_texts, model = seed_model
    vocab = Vocabulary.load(folder / "word_index.json")
    calib = vocab.encode(test_texts, 100).astype("float32")
    out = quantize_model(
        folder / "model.h5", tmp_path / "i8.tflite", recipe="full_integer", calibration=calib
    )
    got = predict_labels(test_texts, out, folder / "word_index.json")
    ref = keras_labels(model, test_texts, folder)
    assert np.mean(np.array(got) == np.array(ref)) >= 0.9
    with pytest.raises(RunnerError, match="calibration="):
        quantize_model(folder / "model.h5", tmp_path / "x.tflite", recipe="full_integer")


@pytest.mark.slow
def test_api_errors_are_clear(seed_model, float16_file, tmp_path):
    folder, _, _, _ = seed_model
    out = float16_file
    with pytest.raises(RunnerError, match="does not exist"):
        quantize_model(tmp_path / "missing.h5", tmp_path / "x.tflite")
    with pytest.raises(RunnerError, match="empty"):
        prediction_label("   ", out, folder / "word_index.json")
    with pytest.raises(RunnerError, match="does not exist"):
        prediction_label("今天", tmp_path / "nope.tflite", folder / "word_index.json")
    big = {f"词{i}": i + 1 for i in range(5000)}
    (tmp_path / "big.json").write_text(json.dumps(big, ensure_ascii=False))
    with pytest.raises(RunnerError, match="embedding has .* rows"):
        prediction_label("今天", out, tmp_path / "big.json")
    with pytest.raises(RunnerError, match="bad recipe .int3."):
        quantize_model(folder / "model.h5", tmp_path / "x.tflite", recipe="int3")
    assert not (tmp_path / "x.tflite").exists()


@pytest.mark.slow
def test_cli_pretrained_seed_task_needs_no_training(seed_model, tmp_path):
    folder, csv, _, _ = seed_model
    p = run_cli(
        "model=pretrained",
        f"model.path={folder / 'model.h5'}",
        "dataset=fake_news",
        f"dataset.path={csv}",
        f"dataset.word_index={folder / 'word_index.json'}",
        "recipe=float16",
        f"hydra.run.dir={tmp_path / 'run'}",
        "evaluation.latency_samples=2",
    )
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    rows = {r["artifact"]: r for r in res["rows"]}
    assert (
        rows["model.h5"]["baseline_cache"] == "pretrained"
        and rows["model.h5"]["train_seconds"] == 0
    )
    assert (
        rows["float16.tflite"]["agreement"] == 1.0
        and rows["float16.tflite"]["size_bytes"] < 4 * 1024 * 1024
    )
    assert rows["none.tflite"]["agreement"] == 1.0


@pytest.mark.slow
def test_cli_pretrained_with_a_foreign_vocabulary_is_refused(seed_model, tmp_path):
    folder, csv, _, _ = seed_model
    big = {f"词{i}": i + 1 for i in range(5000)}  # more words than the model's embedding has rows
    (tmp_path / "big.json").write_text(json.dumps(big, ensure_ascii=False))
    p = run_cli(
        "model=pretrained",
        f"model.path={folder / 'model.h5'}",
        "dataset=fake_news",
        f"dataset.path={csv}",
        f"dataset.word_index={tmp_path / 'big.json'}",
        "dataset.num_words=null",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert p.returncode == 2 and "embedding has" in p.stderr and "dataset.word_index=" in p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.slow
@pytest.mark.skipif(not WEIBO.exists(), reason=f"the shared Weibo rumor set is not at {WEIBO}")
def test_weibo_default_text_model_meets_the_bar(tmp_path):
    """Real data: text CNN >= 0.85; float16 and dynamic range within 0.5 points, agreement >= 0.99."""
    rows = {}
    for recipe in ("float16", "dynamic_range"):
        cfg = compose_config(
            "dataset=fake_news",
            f"dataset.path={WEIBO}",
            f"recipe={recipe}",
            f"cache_dir={tmp_path / 'cache'}",
            "evaluation.latency_samples=5",
            "evaluation.progress=false",
        )
        rows.update({r["artifact"]: r for r in run(cfg, tmp_path / recipe).rows})
    assert rows["float.h5"]["accuracy"] >= 0.85
    for name in ("none.tflite", "float16.tflite", "dynamic_range.tflite"):
        assert rows[name]["agreement"] >= 0.99 and abs(rows[name]["accuracy_delta"]) <= 0.005, rows[
            name
        ]
    assert rows["float16.tflite"]["size_bytes"] < 4 * 1024 * 1024


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"model_path": 3}, "model_path must be a path"),
        ({"quantized_model_path": None}, "quantized_model_path must be a path"),
        ({"recipe": ["float16"]}, "recipe must be a recipe name"),
        ({"calibration": np.full((4, 8), np.nan)}, "calibration holds 32 NaN or infinite"),
        ({"calibration": np.zeros(8)}, "calibration must be a numeric array .* shape \\(8,\\)"),
        ({"calibration": np.array([["a", "b"]])}, "calibration must be a numeric array"),
        ({"calibration": np.zeros((4, 8)), "labels": [0, 1]}, "one label per calibration sample"),
        (
            {"calibration": np.zeros((2, 8)), "labels": ["cat", "dog"]},
            "labels must be class ids .* got dtype <U3 .*map class names to ids",
        ),
        ({"calibration": np.zeros((2, 8)), "labels": [0.5, 1]}, "labels must be class ids"),
        ({"check": "yes"}, "check must be True or False, got 'yes'"),
    ],
)
def test_quantize_model_checks_its_arguments_in_one_line(tmp_path, kwargs, message):
    args = {"model_path": tmp_path / "m.h5", "quantized_model_path": tmp_path / "q.tflite"}
    args |= {k: v for k, v in kwargs.items() if k in args}
    rest = {k: v for k, v in kwargs.items() if k not in args}
    with pytest.raises(RunnerError, match=message):
        quantize_model(args["model_path"], args["quantized_model_path"], **rest)
    assert not list(tmp_path.iterdir())  # nothing written


def test_quantize_model_refuses_a_folder_as_the_file_to_write(tmp_path):
    with pytest.raises(RunnerError, match="is a folder: give the file to write"):
        quantize_model(tmp_path / "m.h5", tmp_path)


def _tiny_dense_file(tmp_path):
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3, activation="softmax")])
    model.save(tmp_path / "m.h5")
    return tmp_path / "m.h5"


def test_calibration_of_the_wrong_shape_is_one_line_naming_the_models_input(tmp_path):
    path = _tiny_dense_file(tmp_path)
    with pytest.raises(RunnerError, match=r"shape \(4, 9\), but the model takes \(samples, 8\)"):
        quantize_model(path, tmp_path / "q.tflite", "full_integer", calibration=np.zeros((4, 9)))
    assert not (tmp_path / "q.tflite").exists()


def test_calibration_given_as_a_python_list_is_used_as_the_models_dtype(tmp_path):
    # setup: float64 rows in a list (what a notebook often holds)
    path = _tiny_dense_file(tmp_path)
    rows = np.random.default_rng(0).normal(size=(32, 8)).tolist()
    # execute
    out = quantize_model(path, tmp_path / "q.tflite", "full_integer", calibration=rows)
    # assert: calibrated and written as full int8
    model = TFLiteModel(out)
    assert model.input["dtype"] == np.int8


@pytest.mark.parametrize("sentence", [123, None, b"bytes"])
def test_prediction_label_of_something_not_text_says_so(tmp_path, sentence):
    with pytest.raises(RunnerError, match="must be text"):
        prediction_label(sentence, tmp_path / "m.tflite")
