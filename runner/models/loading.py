"""Loading a user's trained model (or any file the runner writes), checked before it is used."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import Field

from runner.errors import RunnerError
from runner.models.loaded import LoadedModel, TwinStore, fits
from runner.models.model_file import configs, file_format, layer_name, objects, one_line
from runner.schema import Options, options

log = logging.getLogger(__name__)

MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")


def _keras():
    import tf_keras

    return tf_keras


class PretrainedOptions(Options):
    """``model=pretrained``: a user's trained model file is the baseline."""

    path: str | None = Field(
        None, min_length=1, description="a .keras / .h5 file or a SavedModel folder (required)"
    )
    custom_objects: str | None = Field(
        None, min_length=1, description="a module to import first that registers custom layers"
    )
    safe_mode: bool = Field(True, description="refuse Lambda layers (false: files you trust)")


@options(PretrainedOptions)
def load_pretrained(
    path: str | None,
    input_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
    vocab_size: int | None = None,
    sample: Any = None,
    *,
    safe_mode: bool,
    custom_objects: str | None,
    twins: TwinStore | None = None,
) -> LoadedModel:
    """Load a user's trained model instead of building one, and check it fits the data.

    Args:
        sample: model-ready real inputs; a Keras 3 model's tf_keras twin must match it on them.
        twins: where a Keras 3 file's checked translation is kept (None: translate every time).

    Raises:
        RunnerError: missing or unreadable file, a ``Lambda`` layer without ``safe_mode=false``,
            a model whose input or output does not match the data set, a twin that differs.
    """
    if not path:
        raise RunnerError(
            "model=pretrained needs model.path=/path/to/model.keras (or .h5, or a SavedModel folder)"
        )
    loaded = open_model(
        path, safe_mode=safe_mode, custom_objects=custom_objects, sample=sample, twins=twins
    )
    model = loaded.model
    if len(getattr(model, "inputs", [None])) != 1 or len(getattr(model, "outputs", [None])) > 1:
        raise RunnerError(
            f"{path} has {len(model.inputs)} inputs and {len(model.outputs)} outputs; the runner "
            "takes models with one input and one classification output"
        )
    if input_shape is not None and not fits(model.input_shape[1:], input_shape):
        raise RunnerError(
            f"{path} expects inputs of shape {tuple(model.input_shape[1:])}, but the data set "
            f"gives {tuple(input_shape)}: give data of the model's shape (an image folder is "
            "resized to it; dataset.image_size=[H,W]) or a model built for this data"
        )
    if num_classes is not None:
        out = int(model.output_shape[-1])
        if not (out == num_classes or (out == 1 and num_classes == 2)):
            raise RunnerError(
                f"{path} has {out} outputs, but the data set has {num_classes} classes"
            )
        if out == 1 and _final_activation(model) not in (None, "sigmoid"):
            raise RunnerError(
                f"{path} ends in one {_final_activation(model)} unit: a regression, not a "
                "classifier; the runner scores classifiers (a binary one ends in "
                "Dense(1, activation='sigmoid'); more classes in softmax or logits)"
            )
    embedding = next((layer for layer in model.layers if type(layer).__name__ == "Embedding"), None)
    if vocab_size is not None and embedding is not None and embedding.input_dim < vocab_size:
        raise RunnerError(
            f"the vocabulary has {vocab_size - 1} words but {path}'s embedding has {embedding.input_dim} rows: "
            "pass the model's own vocabulary with dataset.word_index=word_index.json "
            f"(or cap it with dataset.num_words={embedding.input_dim})"
        )
    return loaded


def _final_activation(model: Any) -> str | None:
    """The activation of a Keras model's output layer (None: unknown, e.g. a SavedModel)."""
    layers = getattr(model, "layers", ())
    if not layers:
        return None
    act = getattr(layers[-1], "activation", None)
    return getattr(act, "__name__", None) if act is not None else None


def load_model(path: str | Path, safe_mode: bool = True, custom_objects: str | None = None):
    """The convertible model of any file the runner writes or accepts (see :func:`open_model`):
    a tf_keras model (a Keras 3 file's translated twin) or a :class:`SavedModelSource`."""
    return open_model(path, safe_mode=safe_mode, custom_objects=custom_objects).model


def open_model(
    path: str | Path,
    safe_mode: bool = True,
    custom_objects: str | None = None,
    sample: Any = None,
    twins: TwinStore | None = None,
) -> LoadedModel:
    """Open a model file by what it says it is (the Keras version it records), not its suffix.

    - tf.keras / tf_keras ``.h5``, ``.keras``, SavedModel with Keras metadata: loaded by tf_keras
      (QAT models inside tfmot's ``quantize_scope``);
    - Keras 3 ``.keras`` / ``.h5``: loaded by Keras 3 and translated into an equal tf_keras model,
      checked on ``sample`` (model-ready real inputs) when given, and kept in ``twins`` (the
      model's cache entry) when given, so the next job loads the checked translation;
    - a bare SavedModel (``model.export()``, ``tf.saved_model.save``): its serving signature.

    The file's layer list is read and checked before any layer is deserialized: a ``Lambda``
    layer holds arbitrary Python code, so it is refused unless ``safe_mode`` is False.

    Raises:
        RunnerError: one line saying what was wrong and how to fix it.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise RunnerError(
            f"model file {p} does not exist; expected a .keras/.h5 file or a SavedModel folder"
        )
    kind, version = file_format(p)
    layers = _checked_layers(p, kind, safe_mode, custom_objects)
    try:
        if kind == "saved_model":
            from runner.models.saved_model import SavedModelSource

            source = SavedModelSource(p)
            return LoadedModel(source, source, kind, "a SavedModel used through its signature")
        if kind == "keras3":
            from runner.models.keras3 import open_keras3

            return open_keras3(p, safe_mode, version, sample, twins)
        keras = _keras()
        kw = {**_safe_kw(p, safe_mode), "custom_objects": _application_layers(layers)}
        if any(cls.startswith("Quantize") for cls, _ in layers):
            from runner.models.qat_scope import load_scope

            with load_scope():
                model = keras.models.load_model(p, compile=False, **kw)
        else:
            model = keras.models.load_model(p, compile=False, **kw)
        return LoadedModel(model, model, kind)
    except RunnerError:
        raise
    except Exception as e:  # noqa: BLE001 - any load failure is reported as a bad file
        raise RunnerError(_load_error(p, e, custom_objects)) from None


def _checked_layers(
    p: Path, kind: str, safe_mode: bool, custom_objects: str | None
) -> list[tuple[str, str]]:
    """The file's (class, name) layer list, read as JSON (nothing deserialized), after refusing
    ``Lambda`` layers (unless ``safe_mode`` is off) and custom classes nobody registered."""
    found = list(objects(configs(p))) if kind != "saved_model" else []
    layers = [(o["class_name"], layer_name(o)) for o in found]
    lambdas = [name for cls, name in layers if cls == "Lambda"]
    if lambdas and safe_mode:
        raise RunnerError(
            f"{p} contains Lambda layer(s) {', '.join(map(repr, lambdas))}, which run arbitrary code when "
            "loaded; refusing. If you trust this file, set model.safe_mode=false"
        )
    _import_custom_objects(custom_objects)
    missing = _missing_custom_classes(found, kind)
    if missing:
        raise RunnerError(
            f"{p} uses the custom class(es) {', '.join(map(repr, missing))}, which are not "
            "registered: set model.custom_objects=<module> to a module that defines them with "
            "@keras.saving.register_keras_serializable()"
            + (f" (model.custom_objects={custom_objects} does not)" if custom_objects else "")
        )
    return layers


def _application_layers(layers: list[tuple[str, str]]) -> dict[str, Any]:
    """The layer classes tf_keras's own ``applications`` define without registering them
    (ConvNeXt's ``LayerScale``, ``StochasticDepth``): a ConvNeXt saved by tf_keras loads as is."""
    used = {cls for cls, _ in layers}
    if not used & {"LayerScale", "StochasticDepth"}:
        return {}
    from tf_keras.src.applications import convnext

    return {n: getattr(convnext, n) for n in ("LayerScale", "StochasticDepth") if n in used}


def _missing_custom_classes(objects: list[dict], kind: str) -> list[str]:
    """Registered (custom) class names the file uses that the loading Keras does not know."""
    if not objects:
        return []
    if kind == "keras3":
        import keras

        known = keras.saving.get_registered_object
    else:
        known = _keras().saving.get_registered_object
    missing = []
    for entry in objects:
        name = entry.get("registered_name") or entry.get("class_name")
        if isinstance(name, str) and ">" in name and known(name) is None:
            missing.append(name)
    return sorted(set(missing))


def _import_custom_objects(module: str | None) -> None:
    """Import ``model.custom_objects``: the module registers its layers (Keras's
    ``register_keras_serializable``) with whichever Keras loads the file."""
    if not module:
        return
    import importlib

    try:
        importlib.import_module(module)
    except ImportError as e:
        raise RunnerError(
            f"model.custom_objects={module}: cannot import it ({e}); give an importable module "
            "name (on PYTHONPATH) that defines and registers your custom layers"
        ) from None


def _load_error(p: Path, e: BaseException, custom_objects: str | None) -> str:
    import re

    text = one_line(e)
    m = re.search(r"(?:Could not locate class|Unknown layer:?) '?([A-Za-z_][\w.]*)'?", text)
    if m:
        return (
            f"{p} uses the custom class {m.group(1)!r}, which is not registered: set "
            "model.custom_objects=<module> to a module that defines it and registers it with "
            "@keras.saving.register_keras_serializable()"
            + (f" (model.custom_objects={custom_objects} did not)" if custom_objects else "")
        )
    return f"could not load model {p}: {type(e).__name__}: {text}"


def _safe_kw(p: Path, safe_mode: bool) -> dict[str, Any]:
    return {"safe_mode": safe_mode} if p.suffix == ".keras" else {}
