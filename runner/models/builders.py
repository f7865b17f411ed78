"""Model builders that take their input shape and class count from the data.

Each builder's options, defaults included, are its schema (``SmallCNNOptions`` ...): the
signature names them without defaults, ``conf/model/*.yaml`` holds only what differs. The
pipeline calls a builder with ``input_shape`` and ``num_classes`` from the data, so one
architecture config serves every data set. All models are tf-keras (Keras 2) models: tensorflow-model-optimization
cannot quantize Keras 3 models.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Annotated, Literal, get_args

from pydantic import Field, field_validator

from runner.describe import Described
from runner.errors import RunnerError
from runner.schema import Options, options

Count = Annotated[int, Field(ge=1)]
Counts = Annotated[list[Count], Field(min_length=1)]
Dropout = Annotated[float, Field(ge=0, lt=1)]
BNMomentum = Annotated[float, Field(ge=0, lt=1)]
Activation = Literal["relu", "relu6"]


class SmallCNNOptions(Options):
    filters: Counts = Field([32, 64], description="one Conv-BN-ReLU block per entry")
    dense_units: int = Field(64, ge=0, description="the Dense layer before the head (0: none)")
    dropout: Dropout = Field(0.2, description="dropout before the head")
    bn_momentum: BNMomentum = Field(0.9, description="BatchNorm moving-statistics momentum")


class MLPOptions(Options):
    units: Counts = Field([64, 32], description="one Dense-ReLU layer per entry")
    dropout: Dropout = Field(0.0, description="dropout after each layer")


Block = Annotated[
    list[int],
    Field(min_length=2, max_length=2),
    Described("[filters, stride] with filters >= 1 and stride 1 or 2"),
]


class MobileNetOptions(Options):
    blocks: Annotated[list[Block], Field(min_length=1)] = Field(
        [[32, 1], [64, 2], [64, 1], [128, 2], [128, 1]],
        description="[pointwise filters, stride] per depthwise-separable block",
    )
    width: Count = Field(16, description="stem filters")
    activation: Activation = Field("relu6", description="relu6, or relu (wider int8 ranges)")
    batch_norm: bool = Field(True, description="false: biases and no BatchNorm")
    dropout: Dropout = Field(0.2, description="dropout before the head")
    bn_momentum: BNMomentum = Field(0.9, description="BatchNorm moving-statistics momentum")

    @field_validator("blocks")
    @classmethod
    def _blocks(cls, blocks: list[list[int]]) -> list[list[int]]:
        for b in blocks:
            if b[0] < 1 or b[1] not in (1, 2):
                raise ValueError(
                    "expected [filters, stride] pairs with filters >= 1, stride 1 or 2"
                )
        return blocks


class ResNetOptions(Options):
    depth: Annotated[int, Described("an integer 6n+2 (8, 14, 20, 32, 44, 56 ...)")] = Field(
        20, description="layers: 6n+2 (n basic blocks per stage)"
    )
    width: Count = Field(16, description="filters of the first stage; stages use w, 2w, 4w")
    bn_momentum: BNMomentum = Field(0.9, description="BatchNorm moving-statistics momentum")

    @field_validator("depth")
    @classmethod
    def _depth(cls, depth: int) -> int:
        if depth < 8 or (depth - 2) % 6:
            raise ValueError("expected an integer 6n+2 (8, 14, 20, 32, 44, 56 ...)")
        return depth


class TextCNNOptions(Options):
    embedding_dim: Count = Field(64, description="embedding width")
    filters: Count = Field(128, description="Conv1D filters")
    kernel_size: Count = Field(5, description="Conv1D window (words)")
    dense_units: int = Field(64, ge=0, description="the Dense layer before the head (0: none)")
    dropout: Dropout = Field(0.5, description="dropout before the head")


class TextLSTMOptions(Options):
    embedding_dim: Count = Field(64, description="embedding width")
    units: Count = Field(64, description="LSTM units")
    bidirectional: bool = Field(False, description="a Bidirectional LSTM")
    dropout: Dropout = Field(0.3, description="dropout before the head")


log = logging.getLogger(__name__)


def _keras():
    import tf_keras

    return tf_keras


def _head(x, num_classes: int, sigmoid_for_binary: bool):
    keras = _keras()
    if num_classes == 2 and sigmoid_for_binary:
        return keras.layers.Dense(1, activation="sigmoid", name="head")(x)
    return keras.layers.Dense(num_classes, activation="softmax", name="head")(x)


def _conv_bn_relu(x, filters: int, name: str, bn_momentum: float, strides: int = 1):
    """Conv2D -> BatchNorm -> ReLU: the pattern QAT and the TFLite converter fold into one op."""
    keras = _keras()
    x = keras.layers.Conv2D(
        filters, 3, strides=strides, padding="same", use_bias=False, name=f"{name}_conv"
    )(x)
    x = keras.layers.BatchNormalization(momentum=bn_momentum, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


@options(SmallCNNOptions)
def small_cnn(
    input_shape: Sequence[int],
    num_classes: int,
    *,
    filters: Sequence[int],
    dense_units: int,
    dropout: float,
    bn_momentum: float,
):
    """A small CNN of Conv->BN->ReLU blocks; each block after the first halves the resolution
    while it is still larger than 4x4."""
    keras = _keras()
    inputs = _image_input(input_shape, "small_cnn")
    x = inputs
    for i, f in enumerate(filters):
        x = _conv_bn_relu(x, int(f), f"block{i + 1}", bn_momentum)
        if i > 0 and min(x.shape[1:3]) > 4:
            x = keras.layers.MaxPooling2D(2, name=f"block{i + 1}_pool")(x)
    x = (
        keras.layers.GlobalAveragePooling2D(name="gap")(x)
        if min(x.shape[1:3]) > 4
        else keras.layers.Flatten(name="flatten")(x)
    )
    if dense_units:
        x = keras.layers.Dense(int(dense_units), activation="relu", name="fc")(x)
    if dropout:
        x = keras.layers.Dropout(float(dropout), name="dropout")(x)
    return keras.Model(inputs, _head(x, num_classes, sigmoid_for_binary=False), name="small_cnn")


@options(MLPOptions)
def mlp(
    input_shape: Sequence[int],
    num_classes: int,
    *,
    units: Sequence[int],
    dropout: float,
):
    """Dense-ReLU layers on flattened inputs: for feature vectors (``dataset=arrays``)."""
    keras = _keras()
    inputs = keras.Input(shape=tuple(input_shape), name="input")
    x = keras.layers.Flatten(name="flatten")(inputs) if len(input_shape) > 1 else inputs
    for i, u in enumerate(units):
        x = keras.layers.Dense(int(u), activation="relu", name=f"dense{i + 1}")(x)
        if dropout:
            x = keras.layers.Dropout(float(dropout), name=f"dropout{i + 1}")(x)
    return keras.Model(inputs, _head(x, num_classes, sigmoid_for_binary=False), name="mlp")


@options(MobileNetOptions)
def mobilenet(
    input_shape: Sequence[int],
    num_classes: int,
    *,
    blocks: Sequence[Sequence[int]],
    width: int,
    activation: str,
    batch_norm: bool,
    dropout: float,
    bn_momentum: float,
):
    """A MobileNet-v1-style CNN: a Conv-BN stem, then depthwise-separable blocks (3x3
    DepthwiseConv-BN-act, 1x1 Conv-BN-act), global pooling and a softmax head.

    ``blocks``: (pointwise filters, stride) per block. ``activation``: ``relu6`` (MobileNet's
    bounded activation) or ``relu`` (unbounded: wider int8 ranges). ``batch_norm=False``: conv
    layers with biases and no BatchNorm, as for runtimes without it; each channel then keeps its
    own activation range, which one per-tensor int8 scale must cover.
    """
    keras = _keras()
    if activation not in get_args(Activation):
        raise RunnerError(f"model.activation must be relu or relu6, got {activation!r}")
    cap = 6.0 if activation == "relu6" else None

    def act(x, name):
        return keras.layers.ReLU(max_value=cap, name=name)(x)

    def norm(x, name):
        if not batch_norm:
            return x
        return keras.layers.BatchNormalization(momentum=bn_momentum, name=name)(x)

    inputs = _image_input(input_shape, "mobilenet")
    bias = not batch_norm
    x = keras.layers.Conv2D(int(width), 3, padding="same", use_bias=bias, name="stem_conv")(inputs)
    x = act(norm(x, "stem_bn"), "stem_act")
    for i, (filters, stride) in enumerate(blocks):
        n = f"block{i + 1}"
        x = keras.layers.DepthwiseConv2D(
            3, strides=int(stride), padding="same", use_bias=bias, name=f"{n}_dw"
        )(x)
        x = act(norm(x, f"{n}_dw_bn"), f"{n}_dw_act")
        x = keras.layers.Conv2D(int(filters), 1, use_bias=bias, name=f"{n}_pw")(x)
        x = act(norm(x, f"{n}_pw_bn"), f"{n}_pw_act")
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    if dropout:
        x = keras.layers.Dropout(float(dropout), name="dropout")(x)
    return keras.Model(inputs, _head(x, num_classes, sigmoid_for_binary=False), name="mobilenet")


@options(ResNetOptions)
def resnet(
    input_shape: Sequence[int],
    num_classes: int,
    *,
    depth: int,
    width: int,
    bn_momentum: float,
):
    """A CIFAR-style ResNet (He et al. 2016, section 4.2): 3 stages of (depth-2)/6 basic blocks
    with widths w, 2w, 4w; depth 20 has 0.27 M parameters at width 16."""
    if (depth - 2) % 6:
        raise RunnerError(f"model.depth must be 6n+2 (20, 32, 44, 56 ...), got {depth}")
    keras = _keras()
    n = (depth - 2) // 6
    inputs = _image_input(input_shape, "resnet")
    x = _conv_bn_relu(inputs, width, "stem", bn_momentum)
    for stage in range(3):
        filters = width * 2**stage
        for block in range(n):
            name = f"s{stage + 1}b{block + 1}"
            strides = 2 if stage > 0 and block == 0 and min(x.shape[1:3]) > 2 else 1
            shortcut = x
            y = _conv_bn_relu(x, filters, f"{name}a", bn_momentum, strides)
            y = keras.layers.Conv2D(
                filters, 3, padding="same", use_bias=False, name=f"{name}b_conv"
            )(y)
            y = keras.layers.BatchNormalization(momentum=bn_momentum, name=f"{name}b_bn")(y)
            if strides != 1 or shortcut.shape[-1] != filters:
                shortcut = keras.layers.Conv2D(
                    filters, 1, strides=strides, use_bias=False, name=f"{name}_proj_conv"
                )(x)
                shortcut = keras.layers.BatchNormalization(
                    momentum=bn_momentum, name=f"{name}_proj_bn"
                )(shortcut)
            x = keras.layers.Add(name=f"{name}_add")([shortcut, y])
            x = keras.layers.ReLU(name=f"{name}_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(
        inputs, _head(x, num_classes, sigmoid_for_binary=False), name=f"resnet{depth}"
    )


# --------------------------------------------------------------------------- text
def _token_input(input_shape: Sequence[int], vocab_size: int | None, model: str):
    """The int32 input of a text model; a data set of anything but token ids is refused."""
    if vocab_size is None or len(input_shape) != 1:
        raise RunnerError(
            f"model={model} takes token ids (dataset=fake_news, or dataset=arrays with integer "
            f"ids), but the data set gives samples of shape {tuple(input_shape)}: use "
            "model=small_cnn, resnet or mobilenet for images, model=mlp for feature vectors"
        )
    return _keras().Input(shape=tuple(input_shape), dtype="int32", name="token_ids")


def _image_input(input_shape: Sequence[int], model: str):
    """The input of an image model; samples that are not (height, width, channels) are refused
    here, by name, instead of by the first Conv2D's shape error."""
    if len(input_shape) != 3:
        raise RunnerError(
            f"model={model} takes images (height, width, channels), but the data set gives "
            f"samples of shape {tuple(input_shape)}: use model=mlp for feature vectors, "
            "model=text_cnn or text_lstm for token ids"
        )
    return _keras().Input(shape=tuple(input_shape), name="input")


@options(TextCNNOptions)
def text_cnn(
    input_shape: Sequence[int],
    num_classes: int,
    vocab_size: int | None = None,
    *,
    embedding_dim: int,
    filters: int,
    kernel_size: int,
    dense_units: int,
    dropout: float,
):
    """Embedding -> Conv1D -> GlobalMaxPool -> Dense: fast, and every op has an int8 kernel."""
    keras = _keras()
    inputs = _token_input(input_shape, vocab_size, "text_cnn")
    x = keras.layers.Embedding(int(vocab_size), int(embedding_dim), name="embedding")(inputs)
    x = keras.layers.Conv1D(int(filters), int(kernel_size), activation="relu", name="conv")(x)
    x = keras.layers.GlobalMaxPooling1D(name="pool")(x)
    if dropout:
        x = keras.layers.Dropout(float(dropout), name="dropout")(x)
    if dense_units:
        x = keras.layers.Dense(int(dense_units), activation="relu", name="fc")(x)
    return keras.Model(inputs, _head(x, num_classes, sigmoid_for_binary=True), name="text_cnn")


@options(TextLSTMOptions)
def text_lstm(
    input_shape: Sequence[int],
    num_classes: int,
    vocab_size: int | None = None,
    *,
    embedding_dim: int,
    units: int,
    bidirectional: bool,
    dropout: float,
):
    """Embedding -> LSTM (optionally bidirectional) -> Dense: the classic text classifier."""
    keras = _keras()
    inputs = _token_input(input_shape, vocab_size, "text_lstm")
    x = keras.layers.Embedding(int(vocab_size), int(embedding_dim), name="embedding")(inputs)
    lstm = keras.layers.LSTM(int(units), name="lstm")
    x = keras.layers.Bidirectional(lstm, name="bilstm")(x) if bidirectional else lstm(x)
    if dropout:
        x = keras.layers.Dropout(float(dropout), name="dropout")(x)
    return keras.Model(inputs, _head(x, num_classes, sigmoid_for_binary=True), name="text_lstm")
