"""One fidelity rule (runner.evaluation.fidelity): changed labels on near ties are rounding, not drift."""

from __future__ import annotations

import numpy as np
import pytest

from runner.errors import RunnerError
from runner.evaluation.fidelity import FLOAT_FIDELITY_DB, compare, margins


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_margins_are_top1_minus_top2_and_a_sigmoids_distance_from_a_tie():
    assert margins(np.array([[0.7, 0.2, 0.1]]))[0] == pytest.approx(0.5)
    assert margins(np.array([[0.5], [0.9]])).tolist() == pytest.approx([0.0, 0.8])


def test_near_tie_flips_are_rounding_and_a_sure_flip_is_drift():
    # setup: 200 samples, 10 of them near ties; a small even noise on every output
    rng = np.random.default_rng(0)
    z = rng.normal(size=(200, 5)) * 3
    z[:10, 1] = z[:10, 0] = z[:10].max(axis=1) + 1  # ten exact ties between classes 0 and 1
    z[:10, 1] -= 1e-4
    ref = _softmax(z)
    noisy = ref + rng.normal(scale=1e-4, size=ref.shape)
    noisy[:10, 1] += 3e-4  # the ties tip over
    # execute
    rounding = compare(ref, noisy)
    drifted = noisy.copy()
    drifted[50] = np.roll(ref[50], 1)  # one confident sample's label moved
    drift = compare(ref, drifted)
    # assert
    assert rounding.flips == rounding.near_tie_flips == 10 and rounding.agreement == 0.95
    assert rounding.output_sqnr_db > FLOAT_FIDELITY_DB and rounding.faithful
    assert drift.sure_flips == 1 and not drift.faithful


def test_low_sqnr_is_never_faithful_even_without_flips():
    ref = _softmax(np.random.default_rng(1).normal(size=(100, 3)) * 5)
    assert not compare(ref, ref * 0.9 + 0.1 / 3).faithful  # 20 dB of distortion, same labels


def _low_margin_cnn(path, x):
    """A CNN whose classes 0 and 1 nearly tie on half of the inputs (margins spread around 0)."""
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    inp = keras.Input((16, 16, 3))
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(16, 3, activation="relu")(inp))
    head = keras.layers.Dense(10, name="head")
    model = keras.Model(inp, keras.layers.Softmax()(head(h)))
    feats = keras.Model(inp, h).predict(x, verbose=0)
    k, b = head.get_weights()
    k = k * 5
    k[:, 1] = k[:, 0] + 0.01 * rng.standard_normal(k.shape[0])
    b[:] = 0
    b[2:] = -5
    b[1] = -np.median(feats @ (k[:, 1] - k[:, 0]))
    head.set_weights([k, b])
    model.save(path)
    return model


@pytest.mark.slow
def test_quantize_model_writes_a_faithful_float16_file_of_a_low_margin_cnn(tmp_path):
    # setup
    from runner.api import quantize_model
    from runner.data import Scaling
    from runner.evaluation.interpreter import TFLiteModel

    rng = np.random.default_rng(0)
    x = (rng.random((256, 16, 16, 3)) * rng.random((256, 1, 1, 3))).astype("float32")
    model = _low_margin_cnn(tmp_path / "cnn.h5", x)
    # execute: the default recipe is float16
    out = quantize_model(tmp_path / "cnn.h5", tmp_path / "cnn16.tflite", calibration=x)
    # assert: some labels changed (the old fixed 0.995 agreement refused this file), all on
    # near ties, with the outputs 40+ dB from Keras
    f = compare(model.predict(x, verbose=0), TFLiteModel(out).predict(x, Scaling("none")))
    assert f.output_sqnr_db >= 40 and f.agreement < 0.995
    assert f.flips == f.near_tie_flips > 0 and f.faithful


def test_a_drifting_float_file_is_refused_with_a_hint_that_fits_a_cnn(tmp_path, monkeypatch):
    # setup: a CNN whose float16 file is made to drift (its outputs turned around)
    import tf_keras as keras

    from runner import api
    from runner.evaluation.interpreter import TFLiteModel

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Flatten()(keras.layers.Conv2D(4, 3)(inp))
    keras.Model(inp, keras.layers.Dense(3, activation="softmax")(x)).save(tmp_path / "m.h5")
    real_predict = TFLiteModel.predict
    monkeypatch.setattr(
        TFLiteModel, "predict", lambda self, *a, **k: real_predict(self, *a, **k)[:, ::-1]
    )
    target = tmp_path / "m16.tflite"
    # execute / assert
    with pytest.raises(RunnerError, match=r"not faithful.*recipe='none' shows whether"):
        api.quantize_model(tmp_path / "m.h5", target)
    assert not target.exists()
