"""runner.tflite: what a flatbuffer holds, read the same way by every report."""

from __future__ import annotations

import pytest

from runner import tflite
from runner.models.builders import small_cnn
from runner.recipes.conversion import ConverterOptions, convert


@pytest.mark.parametrize(
    "tensor, layer",
    [
        ("small_cnn/block1_conv/Conv2D", "block1_conv"),
        # a fused op lists what it absorbed; the op holding the weights comes last
        ("small_cnn/block1_relu/Relu;small_cnn/block1_conv/Conv2D", "block1_conv"),
        ("small_cnn/fc/MatMul;small_cnn/fc/Relu", "fc"),
        ("serving_default_input:0", "serving_default_input:0"),
        ("arith.constant", "arith.constant"),
    ],
)
def test_one_rule_names_the_layer_of_a_tensor(tensor, layer):
    assert tflite.layer_name(tensor) == layer


@pytest.fixture(scope="module")
def files():
    model = small_cnn((8, 8, 1), 10, filters=[4, 8])
    return {
        "float32": convert(model, ConverterOptions()),
        "float16": convert(
            model, ConverterOptions(optimizations=("DEFAULT",), supported_types=("float16",))
        ),
        "dynamic": convert(model, ConverterOptions(optimizations=("DEFAULT",))),
    }


@pytest.mark.slow
def test_ops_and_weights_are_read_by_their_real_names(files):
    fb = files["float32"]
    layers = ["block1_conv (CONV_2D)", "block2_conv (CONV_2D)"]
    assert tflite.float_weight_ops(fb) == [
        *layers,
        "fc (FULLY_CONNECTED)",
        "head (FULLY_CONNECTED)",
    ]
    producers = tflite.tensor_producers(fb)
    assert producers["small_cnn/block2_pool/MaxPool"] == "MAX_POOL_2D"  # not only ops AEQ knows
    assert tflite.custom_ops(fb) == []
    # int8 weights are no longer float weights (the converter leaves tensors < 1024 values float)
    assert len(tflite.float_weight_ops(files["dynamic"])) < 4


@pytest.mark.slow
def test_a_float32_reference_is_told_from_a_quantized_or_float16_file(files):
    assert tflite.all_float32(files["float32"])
    assert not tflite.all_float32(files["float16"])
    assert not tflite.all_float32(files["dynamic"])
