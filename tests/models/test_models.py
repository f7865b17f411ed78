"""Model stage: builders fit the data; the loader refuses what it should, with clear messages."""

from __future__ import annotations

import numpy as np
import pytest
import tf_keras as keras

from runner.errors import RunnerError
from runner.models import builders
from runner.models.builders import resnet, small_cnn
from runner.models.loading import load_model, load_pretrained
from runner.schema import call


@pytest.mark.parametrize("shape,classes", [((8, 8, 1), 10), ((32, 32, 3), 100)])
def test_builders_take_shape_and_classes_from_the_data(shape, classes):
    for build in (small_cnn, resnet):
        m = build(input_shape=shape, num_classes=classes)
        assert m.input_shape == (None, *shape)
        assert m.output_shape == (None, classes)
        out = m(np.zeros((2, *shape), np.float32), training=False).numpy()
        np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)  # softmax head


@pytest.mark.parametrize(
    "builder, shape, kwargs, message",
    [
        ("small_cnn", (30,), {}, r"model=small_cnn takes images .* shape \(30,\): use model=mlp"),
        ("mobilenet", (12,), {"vocab_size": 50}, r"model=mobilenet takes images .*text_cnn"),
        ("resnet", (8, 8), {}, r"model=resnet takes images"),
        ("text_cnn", (8, 8, 1), {}, r"model=text_cnn takes token ids .* shape \(8, 8, 1\)"),
        ("text_lstm", (30,), {}, r"model=text_lstm takes token ids"),  # floats: no vocabulary
    ],
)
def test_a_model_that_cannot_take_the_data_says_which_models_can(builder, shape, kwargs, message):
    with pytest.raises(RunnerError, match=message):
        # as the runner calls it: with what the data offers, of which it takes what it names
        fn = getattr(builders, builder)
        call(fn, fn.Options(), input_shape=shape, num_classes=3, **kwargs)
    builders.mlp(shape, 3)  # feature vectors, images or ids: a dense net takes any of them


def test_resnet_depth_must_be_6n_plus_2():
    assert resnet((32, 32, 3), 100, depth=20).count_params() == pytest.approx(0.28e6, rel=0.05)
    with pytest.raises(RunnerError, match="6n\\+2"):
        resnet((32, 32, 3), 100, depth=21)


def _with_lambda():
    inp = keras.Input((4,))
    x = keras.layers.Lambda(lambda t: t * 2, name="double_it")(inp)
    return keras.Model(inp, keras.layers.Dense(2, activation="softmax")(x))


@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_a_lambda_layer_is_refused_by_name_unless_safe_mode_is_off(tmp_path, suffix):
    path = tmp_path / f"m{suffix}"
    _with_lambda().save(path)
    with pytest.raises(RunnerError, match="double_it.*model.safe_mode=false"):
        load_model(path)
    loaded = load_model(path, safe_mode=False)
    assert any(type(layer).__name__ == "Lambda" for layer in loaded.layers)


def test_a_lambda_layer_in_a_saved_model_folder_is_refused(tmp_path):
    _with_lambda().save(tmp_path / "sm", save_format="tf")
    with pytest.raises(RunnerError, match="double_it"):
        load_model(tmp_path / "sm")


def test_missing_and_corrupt_files_name_the_path_and_what_was_expected(tmp_path):
    with pytest.raises(RunnerError, match=r"nope\.h5 does not exist.*\.keras/\.h5"):
        load_model(tmp_path / "nope.h5")
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"\x89HDF garbage")
    with pytest.raises(RunnerError, match=r"bad\.h5 is not a Keras model file.*HDF5"):
        load_model(bad)
    with pytest.raises(RunnerError, match="model.path"):
        load_pretrained(path=None)


def test_pretrained_model_must_match_the_data(tmp_path):
    path = tmp_path / "m.h5"
    small_cnn((8, 8, 1), 10, filters=(4,)).save(path)
    assert load_pretrained(str(path), input_shape=(8, 8, 1), num_classes=10).model.output_shape == (
        None,
        10,
    )
    with pytest.raises(RunnerError, match="10 outputs, but the data set has 100 classes"):
        load_pretrained(str(path), input_shape=(8, 8, 1), num_classes=100)
    with pytest.raises(RunnerError, match="expects inputs of shape"):
        load_pretrained(str(path), input_shape=(32, 32, 3), num_classes=10)


def test_a_regression_model_is_refused_not_scored_as_a_sigmoid(tmp_path):
    # issue #23, case 8: one linear unit on 2-class data was scored as a sigmoid
    inp = keras.Input((8, 8, 1))
    flat = keras.layers.Flatten()(keras.layers.Conv2D(4, 3)(inp))
    for act, ok in (("linear", False), ("relu", False), ("sigmoid", True)):
        path = tmp_path / f"{act}.h5"
        keras.Model(inp, keras.layers.Dense(1, activation=act)(flat)).save(path)
        if ok:
            load_pretrained(str(path), input_shape=(8, 8, 1), num_classes=2)
            continue
        with pytest.raises(RunnerError, match=f"ends in one {act} unit: a regression"):
            load_pretrained(str(path), input_shape=(8, 8, 1), num_classes=2)


def test_a_keras_archive_whose_config_inflates_too_far_is_refused_before_reading_it(
    tmp_path, monkeypatch
):
    import zipfile

    from runner.models import model_file

    monkeypatch.setattr(model_file, "MAX_JSON_MEMBER", 1 << 20)  # 1 MB stands in for 64
    bomb = tmp_path / "bomb.keras"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("metadata.json", '{"keras_version": "3.10.0"}')
        z.writestr("config.json", "[" + " " * (3 << 20) + "]")  # 3 MB of spaces, deflated tiny
    assert bomb.stat().st_size < 64 << 10
    with pytest.raises(RunnerError, match=r"config.json inflates to more than 1 MB"):
        model_file.configs(bomb)
