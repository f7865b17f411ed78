"""Evaluate stage: LiteRT scoring is batched, exact, and handles quantized I/O and both heads."""

from __future__ import annotations

import numpy as np
import pytest
import tf_keras as keras

from runner.data import Scaling
from runner.data.digits import load_digits
from runner.evaluation.metrics import (
    MAX_SQNR_DB,
    EvalConfig,
    TFLiteModel,
    evaluate_tflite,
    labels_from_outputs,
    output_fidelity,
    predict_keras,
    score,
)
from runner.files import atomic_write_bytes
from runner.models.builders import small_cnn
from runner.recipes.conversion import ConverterOptions, convert


def test_labels_from_sigmoid_and_softmax_heads():
    np.testing.assert_array_equal(labels_from_outputs(np.array([[0.2], [0.7]])), [0, 1])
    np.testing.assert_array_equal(labels_from_outputs(np.array([[0.1, 0.9], [0.8, 0.2]])), [1, 0])


def test_score_accuracy_agreement_and_top5():
    out = np.eye(12)[[0, 1, 2, 3]] + 0.01 * np.arange(12)  # predicts 0, 1, 2, 3
    m = score(
        out,
        np.array([0, 1, 2, 11]),
        np.eye(12)[[0, 1, 5, 3]],  # the float model's outputs: it predicts 0, 1, 5, 3
        num_classes=12,
        latencies_ms=[1.0, 2.0, 3.0],
    )
    assert m.accuracy == 0.75 and m.agreement == 0.75
    assert m.top5 == 1.0  # label 11 has the second-highest score of the last row
    assert m.latency_ms == 2.0 and m.latency_p50_ms == 2.0
    assert score(out, np.zeros(4, int), None, num_classes=10).top5 is None


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    data = load_digits(test_size=100)
    model = small_cnn(data.input_shape, 10, filters=(8,))
    folder = tmp_path_factory.mktemp("m")
    calib = Scaling("unit")(data.train.x[:20])
    paths = {
        "float": atomic_write_bytes(folder / "f.tflite", convert(model, ConverterOptions())),
        "int8": atomic_write_bytes(
            folder / "i.tflite",
            convert(
                model,
                ConverterOptions(
                    optimizations=("DEFAULT",),
                    supported_ops=("TFLITE_BUILTINS_INT8",),
                    inference_input_type="int8",
                    inference_output_type="int8",
                    representative_dataset=True,
                ),
                calib,
            ),
        ),
    }
    return model, data, paths


def test_float_tflite_matches_keras_and_batched_equals_one_by_one(digits_model):
    model, data, paths = digits_model
    ref = predict_keras(model, data.test.x, Scaling("unit"))
    tfl = TFLiteModel(paths["float"])
    batched = tfl.predict(data.test.x, Scaling("unit"), batch_size=32)  # 100 = 3 x 32 + 4
    single = TFLiteModel(paths["float"]).predict(data.test.x, Scaling("unit"), batch_size=1)
    np.testing.assert_allclose(batched, ref, atol=1e-5)
    np.testing.assert_allclose(batched, single, atol=1e-6)


def test_int8_io_is_quantized_and_dequantized_from_the_tensor_params(digits_model):
    model, data, paths = digits_model
    ref = predict_keras(model, data.test.x, Scaling("unit"))
    out = TFLiteModel(paths["int8"]).predict(data.test.x, Scaling("unit"), batch_size=64)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=0.05)  # dequantized probabilities
    assert np.abs(out - ref).max() < 0.1


def test_the_split_is_scored_the_same_on_every_core_and_in_memory_capped_batches(
    digits_model, monkeypatch
):
    from runner.evaluation import interpreter
    from runner.evaluation.metrics import EvalConfig, evaluate_tflite

    # setup
    _, data, paths = digits_model
    x, y = data.test.x, data.test.y
    one = EvalConfig(eval_threads=1, latency_samples=0, progress=False)
    every = EvalConfig(eval_threads=None, latency_samples=0, progress=False)
    # execute: one thread, every core, and a batch cap of 3 samples (64 input values each)
    a = evaluate_tflite(paths["int8"], x, y, Scaling("unit"), None, 10, one)
    b = evaluate_tflite(paths["int8"], x, y, Scaling("unit"), None, 10, every)
    monkeypatch.setattr(interpreter, "BATCH_VALUES", 3 * 64)
    c = evaluate_tflite(paths["int8"], x, y, Scaling("unit"), None, 10, every)
    # assert: the same labels and outputs whatever the threads and batch
    assert interpreter.batch_cap(x) == 3
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.outputs, b.outputs)
    np.testing.assert_array_equal(b.outputs, c.outputs)
    assert a.accuracy == b.accuracy == c.accuracy


def test_fixed_batch_model_pads_its_last_batch(tmp_path, digits_model):
    model, data, _ = digits_model
    inp = keras.Input((8, 8, 1), batch_size=8)
    fixed = keras.Model(inp, model(inp))
    path = atomic_write_bytes(tmp_path / "fixed.tflite", convert(fixed, ConverterOptions()))
    tfl = TFLiteModel(path)
    assert tfl.fixed_batch == 8
    out = tfl.predict(data.test.x[:21], Scaling("unit"))
    np.testing.assert_allclose(
        out, predict_keras(model, data.test.x[:21], Scaling("unit")), atol=1e-5
    )
    m = evaluate_tflite(
        path,
        data.test.x[:21],
        data.test.y[:21],
        Scaling("unit"),
        None,
        10,
        EvalConfig(latency_samples=3),
    )
    assert len(m.labels) == 21 and m.latency_ms > 0


def test_output_fidelity_is_sqnr_in_db_and_the_largest_difference():
    ref = np.array([[0.6, 0.4], [0.1, 0.9]])
    noisy = ref + np.array([[0.006, -0.006], [0.0, 0.0]])
    sqnr, worst = output_fidelity(ref, noisy)
    expected = 10 * np.log10(np.sum(ref**2) / (2 * 0.006**2))
    assert sqnr == pytest.approx(expected) and worst == pytest.approx(0.006)
    assert output_fidelity(ref, ref) == (MAX_SQNR_DB, 0.0)  # bit-exact: the cap, not inf


def test_fidelity_orders_float32_over_float16_over_int8(digits_model, tmp_path):
    # setup: the same model as float32, float16 and int8 files
    model, data, paths = digits_model
    paths["float16"] = atomic_write_bytes(
        tmp_path / "h.tflite",
        convert(model, ConverterOptions(optimizations=("DEFAULT",), supported_types=("float16",))),
    )
    ref = model.predict(Scaling("unit")(data.test.x), verbose=0)
    cfg = EvalConfig(latency_samples=0, progress=False)
    # execute
    sqnr = {
        k: evaluate_tflite(
            p, data.test.x, data.test.y, Scaling("unit"), ref, 10, cfg
        ).output_sqnr_db
        for k, p in paths.items()
    }
    # assert: each step down in precision costs at least 15 dB
    assert sqnr["float"] > 90, sqnr
    assert sqnr["float"] - 15 > sqnr["float16"] > sqnr["int8"] + 15, sqnr
    assert sqnr["int8"] > 10, sqnr


def test_latency_spread_is_p90_over_p50_and_a_wide_one_is_noted():
    from runner.evaluation.metrics import score

    out, y = np.eye(3)[[0, 1, 2]], np.array([0, 1, 2])
    steady = score(out, y, None, 3, latencies_ms=[1.0] * 10)
    assert steady.latency_spread == pytest.approx(1.0) and steady.latency_note is None
    noisy = score(out, y, None, 3, latencies_ms=[1.0] * 8 + [3.0] * 2, latency_note="loaded")
    assert noisy.latency_spread == pytest.approx(3.0)
    assert noisy.latency_note == "loaded; wide spread (p90/p50 3.00)"
