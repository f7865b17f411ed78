"""Model stage: builders that take their input shape and class count from the data, and loaders.

Builders are referenced from ``conf/model/*.yaml`` by ``_target_`` with ``_partial_: true``; the
pipeline finishes them with ``input_shape`` and ``num_classes``, so one architecture config
serves every data set. All models are tf-keras (Keras 2) models: tensorflow-model-optimization
cannot quantize Keras 3 models.
"""

from __future__ import annotations

import json
import logging
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from runner.errors import RunnerError

log = logging.getLogger(__name__)

MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")


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


def small_cnn(
    input_shape: Sequence[int],
    num_classes: int,
    filters: Sequence[int] = (16, 32),
    dense_units: int = 64,
    dropout: float = 0.2,
    bn_momentum: float = 0.9,
    **_: Any,
):
    """A small CNN of Conv->BN->ReLU blocks; each block after the first halves the resolution
    while it is still larger than 4x4."""
    keras = _keras()
    inputs = keras.Input(shape=tuple(input_shape), name="input")
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


def resnet(
    input_shape: Sequence[int],
    num_classes: int,
    depth: int = 20,
    width: int = 16,
    bn_momentum: float = 0.9,
    **_: Any,
):
    """A CIFAR-style ResNet (He et al. 2016, section 4.2): 3 stages of (depth-2)/6 basic blocks
    with widths w, 2w, 4w; depth 20 has 0.27 M parameters at width 16."""
    if (depth - 2) % 6:
        raise RunnerError(f"model.depth must be 6n+2 (20, 32, 44, 56 ...), got {depth}")
    keras = _keras()
    n = (depth - 2) // 6
    inputs = keras.Input(shape=tuple(input_shape), name="input")
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


# --------------------------------------------------------------------------- loading
def load_pretrained(
    path: str,
    input_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
    safe_mode: bool = True,
    vocab_size: int | None = None,
    **_: Any,
):
    """Load a user's trained model instead of building one, and check it fits the data.

    Raises:
        RunnerError: missing or unreadable file, a ``Lambda`` layer without ``safe_mode=false``,
            or a model whose input or output does not match the data set.
    """
    if not path:
        raise RunnerError(
            "model=pretrained needs model.path=/path/to/model.keras (or .h5, or a SavedModel folder)"
        )
    model = load_model(path, safe_mode=safe_mode)
    if input_shape is not None:
        got = tuple(model.input_shape[1:])
        want = tuple(input_shape)
        if len(got) != len(want) or any(
            g is not None and g != w for g, w in zip(got, want, strict=False)
        ):
            raise RunnerError(
                f"{path} expects inputs of shape {got}, but the data set gives {want}"
            )
    if num_classes is not None:
        out = int(model.output_shape[-1])
        if not (out == num_classes or (out == 1 and num_classes == 2)):
            raise RunnerError(
                f"{path} has {out} outputs, but the data set has {num_classes} classes"
            )
    embedding = next((layer for layer in model.layers if type(layer).__name__ == "Embedding"), None)
    if vocab_size is not None and embedding is not None and embedding.input_dim < vocab_size:
        raise RunnerError(
            f"the vocabulary has {vocab_size - 1} words but {path}'s embedding has {embedding.input_dim} rows: "
            "pass the model's own vocabulary with dataset.word_index=word_index.json "
            f"(or cap it with dataset.num_words={embedding.input_dim})"
        )
    return model


def load_model(path: str | Path, safe_mode: bool = True):
    """Load any model file the runner writes or accepts: ``.keras``, ``.h5`` or a SavedModel folder,
    QAT models included (they are loaded inside tfmot's ``quantize_scope``).

    The file's layer list is read and checked before any layer is deserialized: a ``Lambda``
    layer holds arbitrary Python code, so it is refused unless ``safe_mode`` is False.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise RunnerError(
            f"model file {p} does not exist; expected a .keras/.h5 file or a SavedModel folder"
        )
    layers = list(_layers_in_file(p))
    lambdas = [name for cls, name in layers if cls == "Lambda"]
    if lambdas and safe_mode:
        raise RunnerError(
            f"{p} contains Lambda layer(s) {', '.join(map(repr, lambdas))}, which run arbitrary code when "
            "loaded; refusing. If you trust this file, set model.safe_mode=false"
        )
    keras = _keras()
    quantized = any(cls.startswith("Quantize") for cls, _ in layers)
    try:
        if quantized:
            from runner.qat import load_scope

            with load_scope():
                return keras.models.load_model(p, compile=False, **_safe_kw(p, safe_mode))
        return keras.models.load_model(p, compile=False, **_safe_kw(p, safe_mode))
    except RunnerError:
        raise
    except Exception as e:  # noqa: BLE001 - any load failure is reported as a bad file
        raise RunnerError(f"could not load model {p}: {type(e).__name__}: {_one_line(e)}") from None


def _safe_kw(p: Path, safe_mode: bool) -> dict[str, Any]:
    return {"safe_mode": safe_mode} if p.suffix == ".keras" else {}


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:300] + ("..." if len(text) > 300 else "")


def _layers_in_file(p: Path) -> Iterator[tuple[str, str]]:
    """(class_name, layer name) of every layer a model file declares, without deserializing it."""
    try:
        if p.is_dir():
            config = _saved_model_configs(p)
        elif p.suffix == ".keras" or zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as z:
                config = [json.loads(z.read("config.json"))]
        else:
            import h5py

            with h5py.File(p, "r") as f:
                raw = f.attrs.get("model_config")
                if raw is None:
                    raise ValueError("no 'model_config' attribute (a weights-only file?)")
                config = [json.loads(raw.decode() if isinstance(raw, bytes) else raw)]
    except RunnerError:
        raise
    except Exception as e:  # noqa: BLE001
        raise RunnerError(
            f"{p} is not a readable Keras model ({type(e).__name__}: {_one_line(e)}); expected a .keras "
            "zip, an HDF5 .h5 saved with model.save(), or a SavedModel folder"
        ) from None
    for c in config:
        yield from _walk_layers(c)


def _saved_model_configs(p: Path) -> list[dict]:
    meta = p / "keras_metadata.pb"
    if not (p / "saved_model.pb").exists():
        raise ValueError("folder has no saved_model.pb")
    if not meta.exists():
        return []
    from tf_keras.protobuf import saved_metadata_pb2

    proto = saved_metadata_pb2.SavedMetadata()
    proto.ParseFromString(meta.read_bytes())
    return [json.loads(node.metadata) for node in proto.nodes if node.metadata]


def _walk_layers(obj: Any) -> Iterator[tuple[str, str]]:
    if isinstance(obj, dict):
        cls = obj.get("class_name")
        cfg = obj.get("config")
        if isinstance(cls, str) and isinstance(cfg, dict):
            yield cls, str(cfg.get("name", obj.get("name", "?")))
        elif isinstance(cls, str) and "name" in obj:
            yield cls, str(obj["name"])
        for v in obj.values():
            yield from _walk_layers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk_layers(v)


# --------------------------------------------------------------------------- text
def _token_input(input_shape: Sequence[int]):
    keras = _keras()
    return keras.Input(shape=tuple(input_shape), dtype="int32", name="token_ids")


def text_cnn(
    input_shape: Sequence[int],
    num_classes: int,
    vocab_size: int,
    embedding_dim: int = 64,
    filters: int = 128,
    kernel_size: int = 5,
    dense_units: int = 64,
    dropout: float = 0.5,
    **_: Any,
):
    """Embedding -> Conv1D -> GlobalMaxPool -> Dense: fast, and every op has an int8 kernel."""
    keras = _keras()
    inputs = _token_input(input_shape)
    x = keras.layers.Embedding(int(vocab_size), int(embedding_dim), name="embedding")(inputs)
    x = keras.layers.Conv1D(int(filters), int(kernel_size), activation="relu", name="conv")(x)
    x = keras.layers.GlobalMaxPooling1D(name="pool")(x)
    if dropout:
        x = keras.layers.Dropout(float(dropout), name="dropout")(x)
    if dense_units:
        x = keras.layers.Dense(int(dense_units), activation="relu", name="fc")(x)
    return keras.Model(inputs, _head(x, num_classes, sigmoid_for_binary=True), name="text_cnn")


def text_lstm(
    input_shape: Sequence[int],
    num_classes: int,
    vocab_size: int,
    embedding_dim: int = 64,
    units: int = 64,
    bidirectional: bool = False,
    dropout: float = 0.3,
    **_: Any,
):
    """Embedding -> LSTM (optionally bidirectional) -> Dense, like the seed's classifier."""
    keras = _keras()
    inputs = _token_input(input_shape)
    x = keras.layers.Embedding(int(vocab_size), int(embedding_dim), name="embedding")(inputs)
    lstm = keras.layers.LSTM(int(units), name="lstm")
    x = keras.layers.Bidirectional(lstm, name="bilstm")(x) if bidirectional else lstm(x)
    if dropout:
        x = keras.layers.Dropout(float(dropout), name="dropout")(x)
    return keras.Model(inputs, _head(x, num_classes, sigmoid_for_binary=True), name="text_lstm")
