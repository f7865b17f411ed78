"""Quantization-aware training: the round trip of the Keras artifact, unsupported layers, the loop."""

from __future__ import annotations

import numpy as np
import pytest
import tf_keras as keras

from runner.data import Dataset, Scaling
from runner.data.digits import load_digits
from runner.errors import RunnerError
from runner.models.builders import small_cnn
from runner.models.loading import load_model
from runner.models.qat_scope import load_scope
from runner.pipeline import run
from runner.recipes.base import RecipeContext
from runner.recipes.qat import QATRecipe
from runner.recipes.qat.wrap import quantize_aware
from runner.train import TrainConfig, train


@pytest.mark.slow
def test_qat_keras_artifact_round_trips_with_identical_predictions(tmp_path):
    # setup
    model = small_cnn((8, 8, 1), 10, filters=(8, 16), dense_units=16)
    qat, floats = quantize_aware(model)
    x = Scaling("unit")(load_digits(test_size=50).test.x)
    # execute
    with load_scope():
        qat.save(tmp_path / "qat.h5")
    loaded = load_model(tmp_path / "qat.h5")
    # assert
    assert floats == [] and any(
        type(layer).__name__ == "QuantizeWrapperV2" for layer in loaded.layers
    )
    np.testing.assert_allclose(
        loaded(x, training=False).numpy(), qat(x, training=False).numpy(), atol=1e-6
    )


def _with_layer_norm(norm=keras.layers.UnitNormalization):
    """A layer tfmot has no config for and this runner gives none (L2 normalization)."""
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, name="conv")(inp)
    x = norm(name="odd_norm")(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inp, keras.layers.Dense(10, activation="softmax", name="head")(x))


def test_unsupported_layer_without_fallback_names_layer_class_and_fix():
    with pytest.raises(RunnerError) as e:
        quantize_aware(_with_layer_norm(), fallback=False)
    msg = str(e.value)
    assert "'odd_norm' (UnitNormalization)" in msg and "recipe.skip_layers=[odd_norm]" in msg


def test_layers_with_an_elementwise_int8_kernel_get_an_output_quantizer():
    # LayerNormalization is not in tfmot's registry; its int8 file quantizes its output
    qat, floats = quantize_aware(_with_layer_norm(keras.layers.LayerNormalization), fallback=False)
    wrapped = {layer.name for layer in qat.layers if type(layer).__name__ == "QuantizeWrapperV2"}
    assert floats == [] and "quant_odd_norm" in wrapped


def test_unsupported_layer_falls_back_to_float_and_still_converts(tmp_path):
    model = _with_layer_norm()
    qat, floats = quantize_aware(model, fallback=True)
    assert floats == [("odd_norm", "UnitNormalization")]
    wrapped = {layer.name for layer in qat.layers if type(layer).__name__ == "QuantizeWrapperV2"}
    assert {"quant_conv", "quant_head"} <= wrapped and not any(
        "odd_norm" in n and n.startswith("quant_") for n in wrapped
    )
    # skipping by hand does the same without the fallback; an unknown name is refused
    assert quantize_aware(model, skip_layers=["odd_norm"], fallback=False)[1] == [
        ("odd_norm", "UnitNormalization")
    ]
    with pytest.raises(RunnerError, match="does not have"):
        quantize_aware(model, skip_layers=["nope"])


def test_batchnorm_after_an_activation_gets_an_output_quantizer_not_a_crash():
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inp)
    x = keras.layers.Activation("relu", name="act")(x)
    x = keras.layers.BatchNormalization(name="late_bn")(x)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inp, keras.layers.Dense(10, activation="softmax")(x))
    qat, floats = quantize_aware(model, fallback=False)
    # tfmot cannot fold it into a conv; its int8 file is a per-channel MUL and ADD on the output
    assert floats == [] and "quant_late_bn" in {layer.name for layer in qat.layers}


def test_a_normalization_reading_the_raw_input_stays_float():
    # the hard case: features of very different scales normalized inside the model. Quantizing
    # the normalization would put tfmot's int8 quantizer on the raw input (qat_mixed lost 25
    # points of accuracy in the benchmark's hard case when it did)
    inp = keras.Input((6,))
    norm = keras.layers.Normalization(name="norm")
    norm.adapt(np.random.default_rng(0).normal(size=(32, 6)) * [1, 10, 100, 1e3, 1e4, 1e5])
    x = keras.layers.Dense(8, activation="relu", name="hidden")(norm(inp))
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax", name="out")(x))
    qat, floats = quantize_aware(model, fallback=False)
    assert floats == [("norm", "Normalization")]
    names = {layer.name for layer in qat.layers}
    assert "quant_norm" not in names and "quant_hidden" in names
    # the row's note says what became of it: calibrated by qat's export, float in qat_mixed's
    from runner.recipes.qat import left_float_note

    assert left_float_note(floats).endswith("calibrated at export: norm (Normalization)")
    assert left_float_note(floats, calibrated=False).endswith(
        "float in the file: norm (Normalization)"
    )


@pytest.mark.slow
def test_fine_tuning_runs_the_requested_steps_on_a_tiny_dataset(tmp_path):
    # 10 samples, batch 32: less than one batch, yet 3 epochs x 5 steps must all run
    d = load_digits(train_size=10, test_size=10)
    data = Dataset("tiny", d.train, d.test, 10)
    model = small_cnn((8, 8, 1), 10, filters=(4,), dense_units=0, dropout=0)
    ctx = RecipeContext(
        model=model,
        dataset=data,
        scaling=Scaling("unit"),
        models_dir=tmp_path,
        train_cfg={"batch_size": 32},
    )
    # (restore_best=False: no int8 file per epoch to judge; the step count is the point here)
    recipe = QATRecipe.with_options(epochs=3, steps_per_epoch=5, restore_best=False)
    assert recipe.fine_tune(model, ctx).steps == 15
    derived = QATRecipe.with_options(epochs=2, restore_best=False)
    assert derived.fine_tune(model, ctx).steps == 2  # one step per epoch: ceil(10 / 32)


def _tiny_ctx(tmp_path, n=60):
    d = load_digits(train_size=n, test_size=10)
    model = small_cnn((8, 8, 1), 10, filters=(4,), dense_units=0, dropout=0)
    model(Scaling("unit")(d.train.x[:2]))
    return model, RecipeContext(
        model=model,
        dataset=Dataset("tiny", d.train, d.test, 10),
        scaling=Scaling("unit"),
        models_dir=tmp_path,
        train_cfg={"batch_size": 8, "validation_split": 0.2},
    )


def _bn(model):
    return next(w.numpy() for w in model.weights if "block1_bn/moving_mean" in w.name)


@pytest.mark.slow
def test_frozen_batch_norm_keeps_the_float_models_moving_statistics(tmp_path):
    model, ctx = _tiny_ctx(tmp_path)
    unfolded = {"epochs": 1, "fold_batch_norm": False}  # a folded BatchNorm has no statistics
    frozen = QATRecipe.with_options(freeze_batch_norm=True, **unfolded).fine_tune(model, ctx).model
    np.testing.assert_array_equal(_bn(frozen), _bn(model))
    moving = (
        QATRecipe.with_options(freeze_batch_norm=False, restore_best=False, **unfolded)
        .fine_tune(model, ctx)
        .model
    )
    assert np.abs(_bn(moving) - _bn(model)).max() > 1e-3


def _activation_ranges(model) -> list[float]:
    return [
        float(w.numpy())
        for w in model.non_trainable_weights
        if w.name.split("/")[-1].split(":")[0].endswith(("_min", "_max")) and "kernel" not in w.name
    ]


def _kernels(model) -> list:
    return [w.numpy() for w in model.trainable_weights if "kernel" in w.name]


@pytest.mark.slow
def test_frozen_ranges_stay_where_calibration_started_them_while_the_weights_learn(tmp_path):
    from runner.recipes.qat.quantizer_ranges import calibrate_ranges
    from runner.recipes.qat.wrap import qat_ready, quantize_aware

    model, ctx = _tiny_ctx(tmp_path)
    # Adam: weights must visibly move in two tiny epochs (the SGD default at 1e-3 barely does)
    one = {"epochs": 2, "restore_best": False, "learning_rate_scale": 1.0, "optimizer": "adam"}
    frozen = QATRecipe.with_options(freeze_ranges=True, **one)
    tuned = frozen.fine_tune(model, ctx).model
    moving = QATRecipe.with_options(**one).fine_tune(model, ctx).model
    # the start both fine-tunings had: the same draw, calibrated by the first estimator
    calib = frozen.opts.draw(ctx)
    folded, _ = frozen.folded(qat_ready(model, calib), calib)
    start, _ = quantize_aware(folded, freeze_batch_norm=True)
    calibrate_ranges(start, folded, calib, "minmax")
    kept, moved, began = map(_activation_ranges, (tuned, moving, start))
    assert len(kept) >= 4 and len(kept) == len(moved) == len(began)
    assert kept == pytest.approx(began, rel=1e-6)  # frozen: where calibration put them
    assert any(
        abs(m - b) > 1e-4 for m, b in zip(moved, began, strict=True)
    )  # tfmot's average moved some
    # ... while the weights learned
    assert any(
        np.abs(a - b).max() > 1e-4 for a, b in zip(_kernels(tuned), _kernels(start), strict=True)
    )


@pytest.mark.slow
def test_distillation_fits_the_float_models_outputs(tmp_path, monkeypatch):
    model, ctx = _tiny_ctx(tmp_path)
    seen = {}
    real_fit = keras.Model.fit

    def spy(self, seq, *a, **kw):
        seen["y"], seen["loss"], seen["n"] = seq[0][1], self.loss, len(seq)
        return real_fit(self, seq, *a, **kw)

    monkeypatch.setattr(keras.Model, "fit", spy)
    recipe = QATRecipe.with_options(epochs=2, distill=True)
    recipe.fine_tune(model, ctx)
    # soft targets: one probability row per sample (the float model's), summing to 1
    assert seen["y"].shape[1:] == (10,) and np.allclose(seen["y"].sum(axis=1), 1, atol=1e-5)
    assert seen["loss"] == "categorical_crossentropy"
    assert seen["n"] == 6  # 48 of the 60 samples (the 12 of the validation split are held out)
    QATRecipe.with_options(epochs=1, distill=False).fine_tune(model, ctx)
    assert seen["y"].ndim == 1 and seen["loss"] == "sparse_categorical_crossentropy"


@pytest.mark.slow
def _trained_digits(tmp_path):
    """The digits, a small CNN trained on them, and a recipe context holding out 10 %."""
    d = load_digits()
    data = Dataset("digits", d.train, d.test, 10)
    model = small_cnn((8, 8, 1), 10, filters=(8, 16), dense_units=16)
    train(model, data, TrainConfig(epochs=8, early_stopping_patience=0), Scaling("unit"))
    return (
        d,
        model,
        RecipeContext(model, data, Scaling("unit"), tmp_path, {"validation_split": 0.1}),
    )


@pytest.mark.slow  # trains or converts real models: over 5 s on 2 cores
def test_qat_never_ends_below_its_epoch_0_int8_file(tmp_path):
    """Each epoch's real int8 file is scored on the validation split, epoch 0 (before any step)
    included; fine-tuning that only harms (a learning rate 300x too high) keeps epoch 0."""
    d, model, ctx = _trained_digits(tmp_path)
    harmful = QATRecipe.with_options(epochs=2, learning_rate_scale=300.0, steps_per_epoch=20)
    done = harmful.fine_tune(model, ctx)
    kept, start = done.kept, done.kept["start"]
    # epoch 0 is post-training int8 with QAT's own ranges: near the float model, not chance
    assert start["epoch"] == 0 and start["samples"] == 144 and start["agreement"] > 0.9
    assert kept["accuracy"] >= start["accuracy"] and kept["epoch"] == 0
    assert done.flatbuffer is not None and done.epoch == 0
    # the row says which epoch was kept, and what it was worth against epoch 0
    from runner.recipes.qat import kept_note

    assert kept_note(kept).startswith("kept epoch 0 of 2 (int8 validation accuracy")


@pytest.mark.slow  # trains or converts real models: over 5 s on 2 cores
def test_an_epoch_that_falls_behind_sends_fine_tuning_back_to_the_best_weights_at_a_tenth(
    tmp_path, monkeypatch
):
    """A rate that overshoots (300x) drops epoch 1's int8 file below epoch 0 beyond the noise:
    fine-tuning goes on from epoch 0's weights at a tenth of the rate, once (backoffs=1), and
    the row says so."""
    from runner.recipes.qat import kept_note
    from runner.recipes.qat.judge import EpochJudge

    restored = []
    original = EpochJudge.epoch_end

    def spy(judge, qat_model, epoch):
        before = len(judge.backoffs)
        original(judge, qat_model, epoch)
        if len(judge.backoffs) > before:  # the model now holds the best epoch's weights
            same = zip(qat_model.get_weights(), judge.best_weights, strict=True)
            restored.append(all(np.array_equal(a, b) for a, b in same))

    monkeypatch.setattr(EpochJudge, "epoch_end", spy)
    d, model, ctx = _trained_digits(tmp_path)
    recipe = QATRecipe.with_options(
        epochs=3, learning_rate_scale=300.0, steps_per_epoch=20, backoffs=1
    )
    done = recipe.fine_tune(model, ctx)
    lr = done.kept["learning_rate"]
    assert done.kept["backoffs"] == [(1, pytest.approx(lr / 10))] and restored == [True]
    assert done.kept["accuracy"] >= done.kept["start"]["accuracy"]
    assert f"back to the best epoch's weights at {lr / 10:.2g} after epoch 1" in kept_note(
        done.kept
    )


@pytest.mark.slow
def test_qat_that_ends_below_post_training_int8_ships_that_file_and_says_so(tmp_path, monkeypatch):
    """Fake-quant ranges squeezed 100x (a QAT graph far from what the converter writes): every
    epoch's file is worse than the converter's own post-training int8 file of the same model,
    which is shipped instead, named in the note."""
    import numpy as np

    from runner.recipes.qat import recipe as qat_recipe

    original = qat_recipe.calibrate_ranges

    def squeezed(qat_model, float_model, x, estimator="minmax"):
        original(qat_model, float_model, x, estimator)
        for v in qat_model.variables:
            if v.name.endswith(("_min:0", "_max:0")) and "kernel" not in v.name:
                v.assign(np.asarray(v) * 0.01)

    monkeypatch.setattr(qat_recipe, "calibrate_ranges", squeezed)
    d, model, ctx = _trained_digits(tmp_path)
    int8 = {"optimizations": ["DEFAULT"], "supported_ops": ["TFLITE_BUILTINS_INT8"]}
    int8["representative_dataset"] = True  # as conf/recipe/qat.yaml
    recipe = QATRecipe.with_options(
        epochs=1, learning_rate_scale=1e-6, steps_per_epoch=2, converter=int8
    )
    done = recipe.fine_tune(model, ctx)
    ptq = done.kept.get("post_training")
    assert ptq is not None and ptq["accuracy"] > done.kept["accuracy"]
    from runner.evaluation.interpreter import TFLiteModel
    from runner.evaluation.metrics import labels_from_outputs

    shipped = TFLiteModel(content=done.flatbuffer).predict(d.test.x, Scaling("unit"))
    assert np.mean(labels_from_outputs(shipped) == d.test.y) > 0.9
    from runner.recipes.qat import kept_note

    assert "the .tflite is the converter's post-training int8 file" in kept_note(done.kept)


def test_the_epoch_judge_and_auto_int8_hold_out_the_data_sets_validation_split_when_it_has_one(
    tmp_path,
):
    # setup: 50 training samples; the same data with a 20-sample validation split of its own
    from runner.data import Split

    d = load_digits()
    train_50, val = Split(d.train.x[:50], d.train.y[:50]), Split(d.test.x[:20], d.test.y[:20])
    without = Dataset("digits", train_50, d.test, 10)
    shipped = Dataset("digits", train_50, d.test, 10, validation=val)
    cfg = {"validation_split": 0.2, "seed": 0}
    # execute
    fit_a, val_a, where_a = RecipeContext(None, without, Scaling("unit"), tmp_path, cfg).held_out()
    fit_p, _, where_p = RecipeContext(
        None, without, Scaling("unit"), tmp_path, cfg, pretrained=True
    ).held_out()
    fit_b, val_b, where_b = RecipeContext(None, shipped, Scaling("unit"), tmp_path, cfg).held_out()
    # assert: without one, 20 % of train is held out (never fitted on) and a pretrained model is
    # warned about; with one, all of train is fitted on and the shipped split is judged on
    assert (len(fit_a), len(val_a)) == (40, 10) and "never fitted on" in where_a
    assert len(fit_p) == 40 and "may have trained on" in where_p
    assert len(fit_b) == 50 and val_b is val and "data set's validation split" in where_b
    from runner.recipes.qat import kept_note

    score = {"epoch": 0, "accuracy": 0.5, "agreement": 0.9, "samples": 20}
    kept = {**score, "start": score, "epochs": 1, "where": where_b}
    assert kept_note(kept).endswith(
        "20 samples of the data set's validation split (disjoint from training and test))"
    )


def test_the_epoch_judge_keeps_a_later_epoch_only_for_a_gain_beyond_noise():
    from runner.recipes.qat.judge import EpochJudge

    judge = object.__new__(EpochJudge)  # the rule alone: no model, no conversion
    n = 297
    right, agrees = np.ones(n, bool), np.ones(n, bool)
    right[:40] = False  # epoch 0: 257 of 297 right, every label the float model's
    judge.best_hits = (right, agrees)

    def later(fixed: int, broken: int, disagree: int) -> bool:
        r, a = right.copy(), agrees.copy()
        r[:fixed] = True
        r[40 : 40 + broken] = False
        a[:disagree] = False
        return judge.beats_best(r, a)

    # +6 right bought with 60 labels away from the float model (seen on MobileNetV2): noise
    assert not later(fixed=30, broken=24, disagree=60)
    # +20 right, nothing lost: real
    assert later(fixed=20, broken=0, disagree=20)
    # the same accuracy, agreement back from a worse best: real
    judge.best_hits = (right, np.r_[np.zeros(30, bool), np.ones(n - 30, bool)])
    assert later(fixed=0, broken=0, disagree=0)
    # ... also at one sample less right (within the noise) ...
    assert later(fixed=0, broken=1, disagree=0)
    # ... but not at an accuracy lower beyond the noise
    assert not later(fixed=0, broken=12, disagree=0)


@pytest.mark.slow
def test_qat_recipe_in_the_pipeline_gives_both_seed_rows(tiny_cfg, tmp_path):
    result = run(tiny_cfg("recipe=qat", "recipe.calibration_samples=50"), tmp_path)
    rows = {r["artifact"]: r for r in result.rows}
    assert result.ok and list(rows) == ["float.h5", "none.tflite", "qat.tflite", "qat.h5"]
    tfl, ker = rows["qat.tflite"], rows["qat.h5"]
    assert (
        tfl["compression"] > 2.5  # 40 KB model: flatbuffer overhead keeps it under 4x
        and tfl["train_seconds"] > 0
        and ker["train_seconds"] == tfl["train_seconds"]
    )
    assert abs(tfl["accuracy_delta"]) <= 0.03 and tfl["agreement"] >= 0.95
    # the int8 file is faithful to the fine-tuned Keras model it came from
    assert abs(tfl["accuracy"] - ker["accuracy"]) <= 0.01
    assert rows["float.h5"]["train_seconds"] > 0  # the baseline's own training time is kept


@pytest.mark.slow
def test_qat_on_an_lstm_is_a_failed_row_with_the_reason(tmp_path):
    from helpers import compose_config, write_text_csv

    csv = write_text_csv(tmp_path / "n.csv", 60)
    cfg = compose_config(
        "dataset=fake_news",
        f"dataset.path={csv}",
        "model=text_lstm",
        "model.units=4",
        "model.embedding_dim=4",
        "recipe=qat",
        f"cache_dir={tmp_path / 'c'}",
        "train.epochs=1",
        "evaluation.latency_samples=1",
    )
    row = run(cfg, tmp_path / "run").row("qat.tflite")
    assert (
        row["status"] == "failed"
        and "'lstm' (LSTM) cannot be quantization-aware-trained" in row["error"]
    )


@pytest.mark.slow
def test_the_auto_learning_rate_is_the_trial_with_the_lowest_loss_and_skips_a_harmful_one(
    tmp_path, caplog
):
    """learning_rate_scale=auto tries 0.1, 0.01 and 0.001 x train.learning_rate
    from the same start; with a training rate of 30, the 3.0 and 0.3 trials wreck the model
    and the 0.03 one is taken, said in the log and the row's note."""
    import logging

    d = load_digits()
    data = Dataset("digits", d.train, d.test, 10)
    keras.utils.set_random_seed(0)
    model = small_cnn((8, 8, 1), 10, filters=(8, 16), dense_units=16)
    train(model, data, TrainConfig(epochs=8, early_stopping_patience=0), Scaling("unit"))
    ctx = RecipeContext(
        model, data, Scaling("unit"), tmp_path, {"validation_split": 0.1, "learning_rate": 30.0}
    )
    with caplog.at_level(logging.INFO, logger="runner.recipes.qat.lr"):
        auto = QATRecipe.with_options(
            epochs=1, steps_per_epoch=5, learning_rate_scale="auto", optimizer=None
        )
        done = auto.fine_tune(model, ctx)
    (line,) = [r.getMessage() for r in caplog.records if "QAT learning rate" in r.getMessage()]
    losses = [
        float(x.split(" -> ")[1]) for x in line.split(": ", 1)[1].split(" after")[0].split(", ")
    ]
    assert losses[2] == min(losses) and losses[0] > losses[2]
    assert done.kept["learning_rate"] == pytest.approx(0.03)
    from runner.recipes.qat import kept_note

    assert "; learning rate 0.03" in kept_note(done.kept)


def test_distillation_at_a_temperature_teaches_where_both_models_already_agree():
    """Teacher and student both say class 0 with 0.9, but swap the runner-up: at temperature 1
    that costs little (the runner-ups are 1-9 % of the mass), at 4 it costs ~6x more. A model
    ending in a softmax distills exactly as one ending in logits."""
    import tensorflow as tf

    from runner.recipes.qat.recipe import _probabilities, distillation_loss

    teacher = tf.constant([[0.9, 0.09, 0.01]])
    student = tf.constant([[0.9, 0.01, 0.09]])

    def excess(t: float) -> float:
        loss = distillation_loss(t, probabilities=True)
        return float(loss(teacher, student)[0] - loss(teacher, teacher)[0])

    plain = keras.losses.categorical_crossentropy(teacher, student)
    assert np.isclose(float(distillation_loss(1, True)(teacher, student)[0]), float(plain[0]))
    assert excess(1) > 0 and excess(4) > 5 * excess(1)
    logits = distillation_loss(4, probabilities=False)
    assert np.isclose(
        float(logits(tf.math.log(teacher), tf.math.log(student))[0]),
        float(distillation_loss(4, True)(teacher, student)[0]),
        rtol=1e-5,
    )
    # one sigmoid unit is two classes, p and 1 - p
    binary = distillation_loss(4, True)(tf.constant([[0.8]]), tf.constant([[0.6]]))
    two = distillation_loss(4, True)(tf.constant([[0.2, 0.8]]), tf.constant([[0.4, 0.6]]))
    assert np.isclose(float(binary[0]), float(two[0]), rtol=1e-5)
    assert _probabilities(np.array([[0.2, 0.8]])) and not _probabilities(np.array([[-1.0, 3.0]]))


@pytest.mark.slow  # trains or converts real models: over 5 s on 2 cores
def test_qat_folds_batch_norm_first_so_fine_tuning_stays_well_conditioned(tmp_path):
    """A conv whose kernel is 100x smaller and whose BatchNorm's sigma is 100x smaller computes
    the same function (what few training steps and no weight decay leave), but through the frozen
    BatchNorm the loss's curvature in that kernel is 10^4 times larger: fine-tuning at an
    ordinary rate diverges. Folded first, as the converter folds, it stays at the float model."""
    from runner.evaluation.metrics import labels_from_outputs, predict_keras

    d, unit = load_digits(), Scaling("unit")
    keras.utils.set_random_seed(0)
    model = small_cnn((8, 8, 1), 10)
    train(model, d, TrainConfig(epochs=3, early_stopping_patience=0), unit)
    before = predict_keras(model, d.test.x, unit)
    conv, bn = model.get_layer("block1_conv"), model.get_layer("block1_bn")
    conv.set_weights([w / 100 for w in conv.get_weights()])
    gamma, beta, mean, var = bn.get_weights()
    bn.epsilon = 1e-9
    bn.set_weights([gamma, beta, mean / 100, (var + 1e-3) / 1e4])
    same = predict_keras(model, d.test.x, unit)
    assert np.abs(same - before).max() < 1e-2  # the same function
    ctx = RecipeContext(
        model, Dataset("digits", d.train, d.test, 10), unit, tmp_path,
        {"batch_size": 32, "learning_rate": 0.01},
    )  # fmt: skip
    labels = labels_from_outputs(same)

    def agreement(fold: bool) -> float:
        recipe = QATRecipe.with_options(
            epochs=1, optimizer="sgd", learning_rate_scale=1.0, restore_best=False,
            fold_batch_norm=fold,
        )  # fmt: skip
        tuned = recipe.fine_tune(model, ctx).model
        assert fold == (not any("_bn" in layer.name for layer in tuned.layers))
        return float(np.mean(labels_from_outputs(predict_keras(tuned, d.test.x, unit)) == labels))

    assert agreement(True) > 0.95
    assert agreement(False) < 0.5  # diverged


def test_a_misspelt_fine_tuning_optimizer_is_refused_by_its_key():
    from helpers import compose_config

    from runner.pipeline import build_recipe

    assert (
        build_recipe(compose_config("recipe=qat", "recipe.optimizer=SGD").recipe).opts.optimizer
        == "sgd"
    )
    with pytest.raises(RunnerError, match=r"recipe\.optimizer='sdg': expected one of .*sgd"):
        build_recipe(compose_config("recipe=qat", "recipe.optimizer=sdg").recipe)


def _depthwise_model():
    """Depthwise conv (2 per channel) whose 8 kernels span 4 orders of magnitude, then a
    BatchNorm with uneven statistics (it folds into the kernel in the file)."""
    keras.utils.set_random_seed(0)
    x = keras.Input((8, 8, 4))
    h = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", use_bias=False)(x)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.ReLU()(h)
    model = keras.Model(x, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(h)))
    dw, bn = model.layers[1], model.layers[2]
    scale = np.array([1, 100, 0.01, 3, 0.1, 30, 1, 0.3], "float32")  # (c, m) -> c * 2 + m
    dw.depthwise_kernel.assign(dw.depthwise_kernel.numpy() * scale.reshape(1, 1, 4, 2))
    g = np.random.default_rng(1)
    bn.set_weights(
        [g.uniform(0.5, 2, 8), g.normal(0, 0.1, 8), g.normal(0, 0.1, 8), g.uniform(0.01, 9, 8)]
    )
    return model


def _relative_rms(a, b) -> float:
    """RMS of ``a - b`` relative to ``b``'s."""
    return float(np.sqrt(np.mean((a - b) ** 2) / np.mean(b**2)))


def _depthwise_scales(flatbuffer: bytes) -> np.ndarray:
    from runner.evaluation.interpreter import TFLiteModel

    (t,) = [
        t
        for t in TFLiteModel(content=flatbuffer)._interp.get_tensor_details()
        if list(t["shape"]) == [1, 3, 3, 8] and t["dtype"] == np.int8
    ]
    return t["quantization_parameters"]["scales"]


@pytest.mark.slow  # trains or converts real models: over 3 s on 2 cores
def test_depthwise_kernels_are_fake_quantized_and_written_per_channel_as_post_training_int8():
    """tfmot's own depthwise quantizer is per-tensor (its axis is the depth multiplier): the QAT
    file then had one weight scale for all channels, and the channels 10^4 below the largest
    lost their weights. Now each channel has its own, the same as post-training int8 writes."""
    from runner.evaluation.interpreter import TFLiteModel
    from runner.recipes.conversion import convert, full_integer_settings
    from runner.recipes.qat.quantizer_ranges import calibrate_ranges

    model = _depthwise_model()
    x = np.random.default_rng(2).normal(size=(64, 8, 8, 4)).astype("float32")
    qat, _ = quantize_aware(model, freeze_batch_norm=True)
    calibrate_ranges(qat, model, x)
    settings = full_integer_settings()
    qat_file, ptq_file = convert(qat, settings, x), convert(model, settings, x)

    qat_scales, ptq_scales = _depthwise_scales(qat_file), _depthwise_scales(ptq_file)
    assert qat_scales.size == 8 and qat_scales.max() / qat_scales.min() > 100
    np.testing.assert_allclose(qat_scales, ptq_scales, rtol=0.02)  # channel order too

    def error(flatbuffer: bytes) -> float:
        out = TFLiteModel(content=flatbuffer).predict(x, lambda a: a, 64)
        return _relative_rms(out, model.predict(x, verbose=0))

    assert error(qat_file) < 1.5 * error(ptq_file) + 0.01
    # the fake-quant model is what the file computes (what fine-tuning optimizes)
    np.testing.assert_allclose(
        TFLiteModel(content=qat_file).predict(x, lambda a: a, 64),
        qat.predict(x, verbose=0),
        atol=0.05 * float(np.abs(model.predict(x, verbose=0)).max()),
    )


def test_a_qat_model_with_depthwise_convs_saves_and_loads_back(tmp_path):
    model = _depthwise_model()
    qat, _ = quantize_aware(model)
    x = np.random.default_rng(2).normal(size=(16, 8, 8, 4)).astype("float32")
    qat(x, training=True)  # the weight ranges follow the weights
    with load_scope():
        qat.save(tmp_path / "qat.h5")
    loaded = load_model(tmp_path / "qat.h5")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), qat.predict(x, verbose=0), atol=1e-6)


@pytest.mark.slow  # trains or converts real models: over 3 s on 2 cores
def test_a_kernel_read_directly_by_a_relu_is_fake_quantized_as_the_file_quantizes_it():
    """tfmot's ReLU transforms gave a Conv2D/DepthwiseConv2D/Dense read directly by a ReLU a
    no-op config, dropping its weight quantizer: those kernels fine-tuned in float while the
    file holds them in int8 (every conv once BatchNorm is folded). The fake-quant model now
    computes what its file computes."""
    from runner.evaluation.interpreter import TFLiteModel
    from runner.recipes.conversion import convert, full_integer_settings
    from runner.recipes.qat.quantizer_ranges import calibrate_ranges

    keras.utils.set_random_seed(0)
    x_in = keras.Input((8, 8, 3))
    h = keras.layers.ReLU()(keras.layers.Conv2D(8, 3, padding="same", name="c")(x_in))
    h = keras.layers.ReLU()(keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(h))
    h = keras.layers.GlobalAveragePooling2D()(h)
    h = keras.layers.ReLU()(keras.layers.Dense(16, name="d")(h))
    model = keras.Model(x_in, keras.layers.Dense(3, name="out")(h))
    x = np.random.default_rng(2).normal(size=(64, 8, 8, 3)).astype("float32")
    qat, _ = quantize_aware(model)
    calibrate_ranges(qat, model, x)

    quantized = {
        w.layer.name
        for w in qat.layers
        if any(
            v.name.split("/")[-1].startswith(("kernel_min", "depthwise_kernel_min"))
            for v in w.weights
        )
    }
    assert quantized == {"c", "dw", "d", "out"}
    settings = full_integer_settings()
    out = TFLiteModel(content=convert(qat, settings, x)).predict(x, lambda a: a, 64)
    fake, ref = qat.predict(x, verbose=0), model.predict(x, verbose=0)

    rel = _relative_rms
    assert rel(out, fake) < 0.2 * rel(out, ref), (rel(out, fake), rel(out, ref))


def test_the_mended_layout_transforms_are_tfmots_own_in_its_order(monkeypatch):
    """The scheme copies tfmot 0.8.1's list of layout transforms to swap its two ReLU ones: a
    tfmot that adds, drops or reorders one must fail here, not silently quantize differently."""
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_layout_transform as layout,
    )

    from runner.recipes.qat.scheme import _layout_transforms

    seen = []

    class Spy:
        def __init__(self, model, transforms, *args):
            seen.extend(transforms)

        def transform(self):
            return None, {}

    monkeypatch.setattr(layout.model_transformer, "ModelTransformer", Spy)
    layout.Default8BitQuantizeLayoutTransform().apply(None, {})
    ours = _layout_transforms()
    assert [type(t).__name__ for t in seen][-2:] == [
        "LayerReLUQuantize",
        "LayerReluActivationQuantize",
    ]
    assert len(ours) == len(seen) >= 19
    assert all(isinstance(o, type(s)) for o, s in zip(ours, seen, strict=True))
    assert [type(o) is type(s) for o, s in zip(ours, seen, strict=True)][-2:] == [False, False]


@pytest.mark.slow  # trains or converts real models: over 3 s on 2 cores
@pytest.mark.parametrize("recipe", ["prune_qat", "prune_cluster_qat"])
def test_preserving_qat_keeps_the_zeros_of_a_kernel_read_directly_by_a_relu(recipe):
    """tfmot's ReLU transform dropped the weight quantizer of a Conv2D read by a ReLU layer, and
    with it the preserving scheme's mask: PQAT fine-tuned that pruned kernel to no zeros at all
    (0.5 -> 0.0). The kept quantizer is the scheme's own, so the zeros (and clusters) stay."""
    from helpers import compose_config

    from runner.pipeline import build_recipe

    keras.utils.set_random_seed(0)
    x_in = keras.Input((8, 8, 1))
    h = keras.layers.ReLU()(keras.layers.Conv2D(8, 3, name="c")(x_in))
    model = keras.Model(x_in, keras.layers.Dense(10, name="d")(keras.layers.Flatten()(h)))
    conv = model.get_layer("c")
    kernel, bias = conv.get_weights()
    kernel = np.where(np.arange(kernel.size).reshape(kernel.shape) % 2, kernel, 0)  # half zero
    kernel = np.round(kernel * 8) / 8  # a few shared values, as clustering leaves them
    conv.set_weights([kernel, bias])
    values = set(np.unique(kernel))

    scheme = build_recipe(compose_config(f"recipe={recipe}").recipe).scheme()
    qat, _ = quantize_aware(model, scheme=scheme)
    qat.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(True))
    g = np.random.default_rng(0)
    qat.fit(g.normal(size=(64, 8, 8, 1)), g.integers(0, 10, 64), epochs=2, verbose=0)

    (wrapped,) = [w for w in qat.layers if getattr(w, "layer", None) and w.layer.name == "c"]
    assert type(wrapped.quantize_config.weight_quantizer).__name__.startswith(
        ("PrunePreserve", "ClusterPreserve")
    )
    from runner.evaluation.interpreter import TFLiteModel
    from runner.recipes.conversion import convert, full_integer_settings
    from runner.recipes.qat.quantizer_ranges import calibrate_ranges

    x = g.normal(size=(32, 8, 8, 1)).astype("float32")
    calibrate_ranges(qat, model, x)
    flatbuffer = convert(qat, full_integer_settings(), x)
    interp = TFLiteModel(content=flatbuffer)._interp
    (t,) = [t for t in interp.get_tensor_details() if list(t["shape"]) == [8, 3, 3, 1]]
    written = interp.get_tensor(t["index"])  # the int8 kernel in the file
    assert np.mean(written == 0) >= np.mean(kernel == 0) >= 0.5, np.mean(written == 0)
    if recipe == "prune_cluster_qat":  # per output channel, no more values than it had
        assert max(len(np.unique(c)) for c in written) <= len(values)
