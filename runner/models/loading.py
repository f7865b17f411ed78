"""Loading a user's trained model (or any file the runner writes), checked before it is used."""

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
            from runner.models.qat_scope import load_scope

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
