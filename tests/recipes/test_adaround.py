"""Gradient-based post-training rounding (``adaround``, issue #36): learned rounding lowers each
layer's output error, the file holds exactly the rounded kernels, and a rounding that does worse
than the plain converter never ships without the row saying so."""

from __future__ import annotations

import re

import numpy as np
import pytest
from helpers import compose_config

from runner.pipeline import run
from runner.recipes import adaround as ar
from runner.recipes.qat.fold import fold_batch_norm

COMMON = [
    "model=mobilenet",
    "model.blocks=[[16,1],[32,2]]",
    "model.width=8",
    "dataset.train_size=600",
    "train.epochs=8",
    "train.early_stopping_patience=0",
    "evaluation.latency_samples=3",
    "recipe.iterations=150",
    "recipe.calibration_samples=128",
]


def test_learned_rounding_is_on_the_converters_grid_and_beats_nearest_rounding():
    import tf_keras as keras

    rng = np.random.default_rng(0)
    x = keras.Input((8, 8, 3))
    y = keras.layers.Conv2D(8, 3, padding="same", name="conv")(x)
    y = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, strides=2, name="dw")(y)
    model = keras.Model(x, keras.layers.Dense(5, name="head")(keras.layers.Flatten()(y)))
    calib = rng.normal(size=(64, 8, 8, 3)).astype(np.float32)
    opts = ar.AdaRoundOptions(iterations=200, batch_size=16, calibration_samples=64)
    rounded, stats = ar.adaround(model, calib, opts)
    assert [s["layer"] for s in stats] == ["conv", "dw", "head"]
    for s in stats:  # each layer's output error no worse than nearest rounding, and lower overall
        assert s["adaround"] <= s["nearest"] * 1.02, s
    assert sum(s["adaround"] for s in stats) < 0.9 * sum(s["nearest"] for s in stats)
    for name in ("conv", "dw", "head"):
        kind = type(model.get_layer(name)).__name__
        w, q = model.get_layer(name).get_weights()[0], rounded.get_layer(name).get_weights()[0]
        scale = ar.grid_scale(kind, w)
        steps = q / scale
        assert np.allclose(steps, np.round(steps), atol=1e-3)  # on the grid
        assert np.max(np.abs(steps)) <= 127 + 1e-3
        assert np.all(np.abs(steps - w / scale) < 1 + 1e-3)  # rounded down or up, never further
        # each channel's largest weight stays put, so the converter finds the same scale
        assert np.allclose(ar.grid_scale(kind, q), scale, rtol=1e-6)


def test_a_depthwise_kernel_has_one_scale_per_channel_and_multiplier():
    w = np.random.default_rng(1).normal(size=(3, 3, 4, 2)).astype(np.float32)
    assert ar.grid_scale("DepthwiseConv2D", w).shape == (1, 1, 4, 2)
    assert ar.grid_scale("Conv2D", w).shape == (1, 1, 1, 2)
    assert ar.grid_scale("Conv2D", w, per_tensor=True).shape == (1, 1, 1, 1)
    assert ar.grid_scale("Dense", w[0, 0], per_tensor=True).shape == (1, 2)  # dense: per channel


@pytest.mark.slow
def test_adaround_writes_the_rounded_kernels_and_keeps_full_integers_accuracy(tmp_path):
    common = [f"cache_dir={tmp_path / 'cache'}", *COMMON]
    row = run(compose_config("recipe=adaround", *common), tmp_path / "a").row("adaround.tflite")
    plain = run(compose_config("recipe=full_integer", *common[:-2]), tmp_path / "p")
    plain = plain.row("full_integer.tflite")
    assert row["status"] == "ok", row["error"]
    note = row["note"]
    assert "BatchNorm folded first" in note
    moved, kernels = re.search(r"max \|weight diff\| (\S+) over (\d+) kernel", note).groups()
    assert float(moved) <= 1e-6 and int(kernels) >= 4  # stem, depthwise, pointwise, head
    change = float(re.search(r"layer output error (\S+)% vs nearest", note).group(1))
    assert change < 0  # learned rounding lowered the median layer's output error
    # the same int8 weights; the folded graph's tensor names cost a few hundred bytes (9 KB model)
    assert row["size_bytes"] == pytest.approx(plain["size_bytes"], rel=0.05)
    assert row["accuracy"] >= plain["accuracy"] - 0.02  # digits: int8 loses little to recover
    assert "validation accuracy" in note


@pytest.mark.slow  # trains or converts real models: over 5 s on 2 cores
def test_a_rounding_worse_than_the_plain_converter_ships_the_plain_file_and_says_so(
    tmp_path, monkeypatch
):
    """The rounded model is broken on purpose (every kernel negated): the plain int8 file beats
    it on the held-out samples, ships, and the note says so."""
    learned = ar.adaround

    def broken(model, calib, opts, per_tensor=False):
        rounded, stats = learned(model, calib, opts, per_tensor)
        for s in stats:
            layer = rounded.get_layer(s["layer"])
            w = layer.get_weights()
            layer.set_weights([-w[0], *w[1:]])
        return rounded, stats

    monkeypatch.setattr(ar, "adaround", broken)
    cfg = compose_config(
        "recipe=adaround",
        f"cache_dir={tmp_path / 'cache'}",
        "dataset.train_size=400",
        "train.epochs=6",
        "evaluation.latency_samples=3",
        "recipe.iterations=20",
        "recipe.calibration_samples=64",
    )
    row = run(cfg, tmp_path / "r").row("adaround.tflite")
    assert row["status"] == "ok", row["error"]
    assert "the .tflite is the converter's plain int8 file" in row["note"]
    assert row["accuracy"] >= 0.8  # the plain file's accuracy; the negated kernels score ~0.1
    assert row["agreement"] >= 0.95


def test_fold_keeps_a_model_without_batch_norm_as_it_is():
    import tf_keras as keras

    x = keras.Input((4,))
    model = keras.Model(x, keras.layers.Dense(2)(x))
    assert fold_batch_norm(model)[1] == []
