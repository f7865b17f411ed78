"""4-bit weight QAT exported through ai-edge-quantizer: the file holds exactly the fine-tuned
weights (issue #34)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from helpers import TINY_MOBILENET, compose_config

from runner.pipeline import run
from runner.recipes.qat.fold import fold_batch_norm
from runner.recipes.qat.int4 import grid

pytest.importorskip("ai_edge_quantizer", reason="qat_int4 exports with ai-edge-quantizer")


def _model_with_batch_norm(keras, sequential: bool = False):
    layers = [
        keras.layers.Conv2D(6, 3, use_bias=False, name="conv"),
        keras.layers.BatchNormalization(name="bn"),
        keras.layers.ReLU(),
        keras.layers.DepthwiseConv2D(3, name="dw"),
        keras.layers.BatchNormalization(name="dw_bn"),
        keras.layers.ReLU(),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(4, name="head"),
    ]
    if sequential:
        model = keras.Sequential([keras.Input((8, 8, 2)), *layers])
    else:
        x = inputs = keras.Input((8, 8, 2))
        for layer in layers:
            x = layer(x)
        model = keras.Model(inputs, x)
    rng = np.random.default_rng(0)
    for layer in model.layers:  # statistics far from the identity, so folding shows
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights([rng.uniform(0.5, 2.0, w.shape) for w in layer.get_weights()])
    return model


@pytest.mark.parametrize("sequential", [False, True])
def test_folding_batch_norm_keeps_the_outputs_and_removes_every_batch_norm(sequential):
    import tf_keras as keras

    model = _model_with_batch_norm(keras, sequential)
    x = np.random.default_rng(1).uniform(0, 1, (16, 8, 8, 2)).astype(np.float32)
    folded, names = fold_batch_norm(model, x)
    assert names == ["bn", "dw_bn"]
    assert not any(isinstance(la, keras.layers.BatchNormalization) for la in folded.layers)
    diff = np.abs(np.asarray(model(x, training=False)) - np.asarray(folded(x, training=False)))
    assert diff.max() < 1e-5


def test_the_int4_grid_is_symmetric_per_channel_with_at_most_15_levels():
    w = np.random.default_rng(2).normal(size=(3, 3, 4, 8)).astype(np.float32)
    q = grid(w, -1)
    for c in range(8):
        channel = q[..., c]
        assert len(np.unique(channel)) <= 15
        assert np.max(np.abs(channel)) == pytest.approx(np.max(np.abs(w[..., c])), rel=1e-6)
        step = np.max(np.abs(w[..., c])) / 7
        assert np.allclose(channel / step, np.round(channel / step), atol=1e-4)


@pytest.mark.slow
def test_qat_int4_writes_exactly_the_fine_tuned_weights_on_a_model_with_batch_norm(tmp_path):
    common = [
        f"cache_dir={tmp_path / 'cache'}",
        *TINY_MOBILENET,
    ]
    qat = run(compose_config("recipe=qat_int4", *common), tmp_path / "qat").row("qat_int4.tflite")
    ptq = run(compose_config("recipe=int4_weight_only", *common), tmp_path / "ptq")
    ptq = ptq.row("int4_weight_only.tflite")
    assert qat["status"] == "ok", qat["error"]
    note = qat["note"]
    assert "BatchNorm folded first" in note
    moved, kernels = re.search(r"max \|weight diff\| (\S+) over (\d+) int4 kernel", note).groups()
    assert float(moved) <= 1e-6 and int(kernels) >= 3  # the stem, the pointwise convs, the head
    output = float(re.search(r"max \|output diff\| (\S+) on", note).group(1))
    assert output <= 1e-4
    assert qat["size_bytes"] == pytest.approx(ptq["size_bytes"], rel=0.05)
    start, kept = map(float, re.search(r"accuracy (\S+) at epoch 0 -> (\S+),", note).groups())
    assert kept >= start  # never below its own epoch 0
