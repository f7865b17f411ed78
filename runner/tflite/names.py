"""The Keras layer a TFLite tensor came from: one rule for every report."""

from __future__ import annotations


def layer_name(tensor_name: str) -> str:
    """``model/block1_conv/Conv2D`` -> ``block1_conv``.

    A fused op's tensor lists every op it absorbed, separated by ``;``, with the op that holds
    the weights last (``model/block1_relu/Relu;model/block1_conv/Conv2D``): the layer named is
    that one, the layer a user would keep float or look up in the model. A name without a
    layer path (``serving_default_input:0``, ``arith.constant``) is returned as it is.
    """
    last = tensor_name.split(";")[-1]
    parts = [p for p in last.split("/") if p]
    return parts[1] if len(parts) >= 3 else last
