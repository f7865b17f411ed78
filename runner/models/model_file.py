"""What a model file says it is, read from its own metadata and config as JSON: nothing in it
is deserialized (so nothing in it runs) before :mod:`runner.models.loading` has checked it."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runner.errors import RunnerError


def model_input_shape(path: str | Path) -> tuple[int | None, ...] | None:
    """A model file's input shape without its batch axis, read from its config (nothing is
    deserialized; a bare SavedModel's from its signature); None when the file does not say."""
    p = Path(path).expanduser()
    kind, _ = file_format(p)
    if kind == "saved_model":
        from runner.models.saved_model import signature_input_shape

        return signature_input_shape(p)  # not loaded: load_pretrained loads it once, after
    for obj in objects(configs(p)):
        cfg = obj.get("config")
        if not isinstance(cfg, dict):
            continue
        shape = cfg.get("batch_input_shape") or cfg.get("batch_shape")
        if isinstance(shape, list) and len(shape) >= 2:
            return tuple(None if d is None else int(d) for d in shape[1:])
    return None


def file_format(p: Path) -> tuple[str, str | None]:
    """(kind, Keras version) of a model file, read from its own metadata.

    Raises:
        RunnerError: a TFLite file, a weights-only HDF5 file, or something that is no model.
    """
    if p.is_dir():
        if not (p / "saved_model.pb").exists():
            raise RunnerError(
                f"{p} is a folder without saved_model.pb; expected a SavedModel folder"
            )
        return ("tf_keras", None) if (p / "keras_metadata.pb").exists() else ("saved_model", None)
    with open(p, "rb") as f:
        head = f.read(8)
    if head[4:8] == b"TFL3":
        raise RunnerError(
            f"{p} is a TensorFlow Lite flatbuffer (already converted): model.path takes the float "
            "model it came from (.keras, .h5 or a SavedModel folder); a .tflite file is run with "
            "runner.api.prediction_label or runner.evaluation.interpreter.TFLiteModel"
        )
    if zipfile.is_zipfile(p):
        try:
            with zipfile.ZipFile(p) as z:
                meta = (
                    json.loads(read_member(z, "metadata.json", p))
                    if "metadata.json" in z.namelist()
                    else {}
                )
        except (zipfile.BadZipFile, ValueError, KeyError) as e:
            raise RunnerError(f"{p} is not a readable .keras archive ({e})") from None
        version = str(meta.get("keras_version") or "")
        return ("keras3" if version.startswith("3") else "tf_keras"), version or None
    try:
        import h5py

        with h5py.File(p, "r") as f:
            version = f.attrs.get("keras_version")
            version = version.decode() if isinstance(version, bytes) else version
            has_model = f.attrs.get("model_config") is not None
    except OSError:
        raise RunnerError(
            f"{p} is not a Keras model file (neither a .keras zip, an HDF5 .h5, nor a SavedModel folder)"
        ) from None
    if not has_model:
        raise RunnerError(
            f"{p} holds weights only (saved with save_weights), no architecture: save the whole "
            "model with model.save('model.keras') (or .h5) and pass that file"
        )
    version = str(version or "")
    return ("keras3" if version.startswith("3") else "tf_keras"), version or None


def objects(obj: Any) -> Iterator[dict]:
    """Every serialized object (a dict with a string ``class_name``) in a config, depth first."""
    if isinstance(obj, dict):
        if isinstance(obj.get("class_name"), str):
            yield obj
        for v in obj.values():
            yield from objects(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from objects(v)


def layer_name(obj: dict) -> str:
    """The layer name of a serialized object (its config's, else its own)."""
    cfg = obj.get("config")
    if isinstance(cfg, dict):
        return str(cfg.get("name", obj.get("name", "?")))
    return str(obj.get("name", "?"))


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:300] + ("..." if len(text) > 300 else "")


# A .keras archive's JSON members (config, metadata) are a few MB even for large models; one
# that inflates beyond this is refused before it is read (a zip bomb took 60 s and 6.9 GB).
MAX_JSON_MEMBER = 64 << 20


def read_member(z: zipfile.ZipFile, name: str, path: Path, limit: int | None = None) -> bytes:
    """``name`` from the archive, refusing one that inflates beyond ``limit`` bytes (declared or
    actual: a header can lie); ``limit`` None: :data:`MAX_JSON_MEMBER`."""
    limit = MAX_JSON_MEMBER if limit is None else limit
    declared = z.getinfo(name).file_size
    if declared <= limit:
        with z.open(name) as f:
            data = f.read(limit + 1)
        if len(data) <= limit:
            return data
    raise RunnerError(
        f"{path}: its {name} inflates to more than {limit >> 20} MB; a .keras file's {name} "
        "is a few MB at most: this archive is damaged or not a Keras model"
    )


def configs(p: Path) -> list[Any]:
    """The model config(s) a file holds, read as JSON (nothing is deserialized)."""
    try:
        if p.is_dir():
            return _saved_model_configs(p)
        if p.suffix == ".keras" or zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as z:
                return [json.loads(read_member(z, "config.json", p))]
        import h5py

        with h5py.File(p, "r") as f:
            raw = f.attrs.get("model_config")
            if raw is None:
                raise ValueError("no 'model_config' attribute (a weights-only file?)")
            return [json.loads(raw.decode() if isinstance(raw, bytes) else raw)]
    except RunnerError:
        raise
    except Exception as e:  # noqa: BLE001
        raise RunnerError(
            f"{p} is not a readable Keras model ({type(e).__name__}: {one_line(e)}); expected a .keras "
            "zip, an HDF5 .h5 saved with model.save(), or a SavedModel folder"
        ) from None


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
