"""Recurrent models convert faithfully: the fused LSTM kernel is measured, never assumed.

The fixture reproduces the drift seen on the real Weibo LSTM: weights x5 saturate the gates and
grow the cell state, and TFLite's fused UNIDIRECTIONAL_SEQUENCE_LSTM kernel then departs from
Keras (the unrolled graph does not).
"""

from __future__ import annotations

import numpy as np
import pytest
import tf_keras as keras
from helpers import compose_config, write_text_csv

from runner.api import prediction_label, quantize_model
from runner.data import Scaling
from runner.data.vocabulary import Vocabulary
from runner.errors import RunnerError
from runner.evaluation.interpreter import TFLiteModel
from runner.evaluation.metrics import labels_from_outputs, output_fidelity
from runner.recipes.conversion import ConverterOptions
from runner.recipes.recurrent import unrolled
from runner.recipes.routes import convert_checked

LENGTH = 40
FLOAT16 = ConverterOptions(optimizations=("DEFAULT",), supported_types=("float16",))


def saturated(kind: str, vocab: int = 300, seed: int = 0, float_ids: bool = False):
    """Embedding -> <kind> -> Dense(sigmoid) with every weight x5 (saturated gates)."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((LENGTH,), dtype="float32" if float_ids else "int32")
    x = keras.layers.Embedding(vocab, 16)(inp)
    layers = {
        "lstm": lambda x: keras.layers.LSTM(16)(x),
        "gru": lambda x: keras.layers.GRU(16)(x),
        "bidirectional": lambda x: keras.layers.Bidirectional(keras.layers.LSTM(16))(x),
        "stacked": lambda x: keras.layers.LSTM(8)(keras.layers.LSTM(16, return_sequences=True)(x)),
        "sequences": lambda x: keras.layers.GlobalMaxPooling1D()(
            keras.layers.LSTM(16, return_sequences=True)(x)
        ),
    }
    out = keras.layers.Dense(1, activation="sigmoid")(layers[kind](x))
    model = keras.Model(inp, out)
    model.set_weights([w * 5 for w in model.get_weights()])
    return model


def ids(n: int, vocab: int = 300, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, (n, LENGTH)).astype(np.int32)


@pytest.mark.slow
def test_the_saturated_fixture_reproduces_the_fused_drift_and_auto_unrolls():
    # setup
    model, probe, test = saturated("lstm"), ids(64), ids(200, seed=2)
    # execute
    fused = convert_checked(model, ConverterOptions(), recurrent="fused", probe=probe)
    auto = convert_checked(
        model, ConverterOptions(), recurrent="auto", probe=probe, quantized=False
    )
    # assert: on unseen inputs the fused file drifts and the chosen one matches Keras
    ref = model.predict(test, verbose=0)
    drift = TFLiteModel(content=fused.flatbuffer).predict(test, Scaling("none"))
    kept = TFLiteModel(content=auto.flatbuffer).predict(test, Scaling("none"))
    assert output_fidelity(ref, drift)[0] < 20 and np.abs(ref - drift).max() > 0.3
    assert auto.route == "unrolled" and "not faithful" in auto.reason
    assert output_fidelity(ref, kept)[0] > 80 and np.abs(ref - kept).max() < 1e-3
    trials = {t.route: t for t in auto.trials}
    assert trials["fused"].output_sqnr_db < 20 < 80 < trials["unrolled"].output_sqnr_db


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gru", "bidirectional", "stacked", "sequences"])
def test_auto_route_is_faithful_for_every_recurrent_shape(kind):
    model, probe = saturated(kind), ids(48)
    done = convert_checked(
        model, ConverterOptions(), recurrent="auto", probe=probe, quantized=False
    )
    chosen = next(t for t in done.trials if t.route == done.route)
    assert chosen.output_sqnr_db > 60 and chosen.agreement == 1.0, done.reason
    # GRU has no fused kernel that drifts: the first route is kept, the others are unrolled
    assert done.route == ("fused" if kind == "gru" else "unrolled"), done.reason


@pytest.mark.slow
def test_quantized_recipes_measure_both_routes_and_keep_the_more_faithful():
    model, probe = saturated("lstm"), ids(48)
    dynamic = ConverterOptions(optimizations=("DEFAULT",))
    done = convert_checked(model, dynamic, recurrent="auto", probe=probe, quantized=True)
    assert {t.route for t in done.trials} == {"fused", "unrolled"}
    best = max(done.trials, key=lambda t: t.output_sqnr_db)
    assert done.route == best.route


def test_unrolled_needs_a_fixed_sequence_length():
    inp = keras.Input((None,), dtype="int32")
    model = keras.Model(inp, keras.layers.LSTM(4)(keras.layers.Embedding(10, 4)(inp)))
    with pytest.raises(RunnerError, match="fixed sequence length"):
        unrolled(model)


def test_unknown_route_is_refused_by_name():
    with pytest.raises(RunnerError, match="model.recurrent must be one of"):
        convert_checked(saturated("gru"), ConverterOptions(), recurrent="loop")


# --------------------------------------------------------------------------- the seed API
@pytest.fixture(scope="module")
def seed_style(tmp_path_factory):
    """A seed-style .h5: Sequential Embedding->LSTM->Dense, float32 ids, dynamic batch,
    saturated so the fused kernel drifts, with its word_index.json."""
    folder = tmp_path_factory.mktemp("seed")
    csv = write_text_csv(folder / "news.csv", n=160)
    import pandas as pd

    df = pd.read_csv(csv)
    vocab = Vocabulary.fit(df.text)
    vocab.save(folder / "word_index.json")
    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [
            keras.layers.Embedding(vocab.size, 16, input_length=LENGTH),
            keras.layers.LSTM(16),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.build((None, LENGTH))
    model.set_weights([w * 5 for w in model.get_weights()])
    model.save(folder / "model.h5")
    texts = list(df.text)
    x = vocab.encode(texts, LENGTH).astype("float32")
    labels = labels_from_outputs(model.predict(x, verbose=0)).tolist()
    return folder, texts, x, labels


@pytest.mark.slow
def test_quantize_model_writes_a_file_that_gives_keras_labels_everywhere(seed_style, tmp_path):
    folder, texts, x, labels = seed_style
    assert 0.05 < np.mean(labels) < 0.95  # both labels occur
    # execute: the seed's call, no calibration (inputs drawn from the model's input domain)
    out = quantize_model(folder / "model.h5", tmp_path / "model_fp16.tflite")
    # assert: the runner's prediction and the seed's own consumer code both give Keras's labels
    got = [prediction_label(t, out, folder / "word_index.json") for t in texts]
    assert got == labels
    import tensorflow as tf

    interp = tf.lite.Interpreter(model_path=str(out))
    interp.allocate_tensors()
    inp, outp = interp.get_input_details()[0], interp.get_output_details()[0]
    seed_labels = []
    for row in x:
        interp.set_tensor(inp["index"], row[None].astype(np.float32))
        interp.invoke()
        seed_labels.append(int(interp.get_tensor(outp["index"])[0][0] > 0.5))
    assert seed_labels == labels


@pytest.mark.slow
def test_quantize_model_refuses_to_write_a_drifting_float_file(seed_style, tmp_path):
    folder, _, x, _ = seed_style
    target = tmp_path / "fused.tflite"
    with pytest.raises(RunnerError, match="not faithful.*Nothing was written"):
        quantize_model(folder / "model.h5", target, recurrent="fused", calibration=x)
    assert not target.exists() and not list(tmp_path.iterdir())
    written = quantize_model(folder / "model.h5", target, recurrent="fused", check=False)
    assert written.is_file()


# --------------------------------------------------------------------------- the runner
# (a run records the route and scores output fidelity: tests/data/test_text.py, text_lstm float16)
def test_the_route_is_a_conversion_choice_not_a_new_baseline():
    from runner.baseline import baseline_spec
    from runner.cache import cache_key

    keys = {
        cache_key(baseline_spec(compose_config("model=text_lstm", f"model.recurrent={r}")))
        for r in ("auto", "fused", "unrolled")
    }
    assert len(keys) == 1
