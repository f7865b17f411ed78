"""Stages 1 and 2 of a run: the data set, and the float baseline (from the user's file, the
cache, or trained now), keyed by everything that changes the trained model."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner import cache
from runner.config import plugin, schema_of
from runner.data import Dataset, Scaling, check_dataset
from runner.files import atomic_write_json, sha256_tree
from runner.schema import call, tagged

log = logging.getLogger(__name__)

# Part of every baseline cache key: bumped when a loader yields other data for the same config
# (2: the runner's own stratified split replaced scikit-learn's), so stale entries are not reused.
DATA_VERSION = 2


def scaling_from(model_cfg: Any, data: Dataset | None = None) -> Scaling:
    """The model's input scaling; ``auto`` is what the data needs (raw pixels: ``unit``; token
    ids and model-ready float arrays: ``none``)."""
    kind = str(model_cfg.get("input_scaling", "unit"))
    if kind == "auto":
        kind = data.default_scaling if data is not None else "unit"
    return Scaling(
        kind=kind,
        mean=tuple(model_cfg.get("input_mean") or (0.0,)),
        std=tuple(model_cfg.get("input_std") or (1.0,)),
    )


def build_model(node: DictConfig | Mapping[str, Any]) -> Callable[..., Any]:
    """The model builder of a ``conf/model`` node; called with what the data offers
    (``input_shape``, ``num_classes``, ``vocab_size``, ``sample``), it takes what it names."""
    p = plugin("model", node)
    return functools.partial(call, p.target, p.options)


def load_dataset(cfg: DictConfig) -> Dataset:
    """The data set of ``cfg.dataset``. With ``model=pretrained``, a loader that names a
    ``model_input_shape`` parameter receives the model file's input shape (an image folder
    takes its unset image size and colour mode from it)."""
    runtime: dict[str, Any] = {}
    if not cfg.model.get("needs_training", True):
        from runner.models.model_file import model_input_shape

        runtime["model_input_shape"] = model_input_shape(cfg.model.path)
    key = _data_key(cfg.dataset, runtime)
    if key in _LOADED_DATA:  # this process loaded it for an earlier job of the sweep
        log.info("data: %s as loaded for an earlier job of this process", cfg.dataset.get("name"))
        return _LOADED_DATA[key]
    p = plugin("dataset", cfg.dataset)
    data = call(p.target, p.options, name=p.meta.name, **runtime)
    odd = check_dataset(data)  # raises on data no table can be made from
    data = dataclasses.replace(data, warnings=(*data.warnings, *odd)) if odd else data
    _LOADED_DATA.clear()  # one data set kept: a sweep over data sets holds one in memory
    _LOADED_DATA[key] = data
    return data


# The data set a launcher process loaded last, for its next job (the basic and joblib launchers
# run several jobs per process; a text set's segmentation or an image listing is paid once).
_LOADED_DATA: dict[str, Dataset] = {}


def _data_key(node: DictConfig, runtime: dict[str, Any]) -> str:
    """The data config, what the runner adds, and the stamp of the file or folder it names."""
    import json
    import os

    values = OmegaConf.to_container(node, resolve=True)
    stamp = None
    path = values.get("path") if isinstance(values, dict) else None
    if isinstance(path, str) and path:
        try:
            st = os.stat(Path(path).expanduser())
            stamp = [st.st_ino, st.st_size, st.st_mtime_ns]
        except OSError:
            stamp = "missing"
    return json.dumps([values, runtime, stamp], sort_keys=True, default=str)


def _trained_by(group: str, node: DictConfig) -> dict[str, Any]:
    """``node``'s keys that change the trained model (its schema tags the others
    ``trains=False``: a test subset, how the model is converted)."""
    values = OmegaConf.to_container(node, resolve=True)
    keep = set(tagged(schema_of(group, values), "trains"))
    return {k: v for k, v in values.items() if k in keep or k.startswith("_")}


def baseline_spec(cfg: DictConfig, data: Dataset | None = None) -> dict[str, Any]:
    """What a trained baseline depends on: the configs, the seed, and (for a user's folder or
    file) the data's own content key, so changed files are never served an old model."""
    spec: dict[str, Any] = {"data_source": data.source_key} if data and data.source_key else {}
    return spec | {
        "dataset": _trained_by("dataset", cfg.dataset),
        "model": _trained_by("model", cfg.model),
        "train": OmegaConf.to_container(cfg.train, resolve=True),
        "seed": cfg.seed,
        "data_version": DATA_VERSION,
    }


@dataclass
class Baseline:
    model: Any  # what recipes convert (tf_keras model, Keras 3 twin, or a SavedModel source)
    path: Path | None  # None: trained but not cached (the cache could not be written)
    cache: str  # hit, miss or pretrained
    train_seconds: float
    key: str  # the cache key (or the pretrained file): rows of one baseline share it
    # what the float row is scored with (the model that made the file), loaded when first asked
    # for: a memoized float score never loads a Keras 3 original again
    reference: Callable[[], Any]
    note: str = ""
    # the cache entry its conversions and shared scores are kept in (None: not kept)
    entry: Path | None = None


def get_baseline(cfg: DictConfig, data: Dataset, scaling: Scaling) -> Baseline:
    """The trained float model: loaded from ``model.path``, from the cache, or trained now."""
    import tf_keras as keras

    from runner.train import TrainConfig, train

    keras.backend.clear_session()  # a reused worker process (joblib) starts clean
    builder = build_model(cfg.model)
    if not cfg.model.get("needs_training", True):
        return pretrained_baseline(cfg, data, scaling, builder)

    def _train():
        train_cfg = TrainConfig.from_mapping(cfg.train)
        keras.utils.set_random_seed(train_cfg.seed)  # the initial weights too, not only the fit
        model = builder(
            input_shape=data.input_shape, num_classes=data.num_classes, **data.model_kwargs
        )
        return train(model, data, train_cfg, scaling)

    spec = baseline_spec(cfg, data)
    got = cache.get_or_train(Path(cfg.cache_dir), spec, _train)
    entry = got.path.parent if got.path is not None else None
    return Baseline(
        got.model,
        got.path,
        got.status,
        got.train_seconds,
        cache.cache_key(spec),
        lambda: got.model,
        entry=entry,
    )


def pretrained_baseline(
    cfg: DictConfig, data: Dataset, scaling: Scaling, builder: Callable[..., Any]
) -> Baseline:
    """A user's model file as the baseline, with its cache entry: a Keras 3 file's checked
    translation, the float32 reference conversion and the shared scores are made once per
    (file content, data, scaling), and every later job or sweep reads them."""
    from runner.data import calibration_sample

    path = Path(cfg.model.path)
    entry = None
    if path.exists():  # a missing file is load_pretrained's one-line error
        entry = model_entry(cfg.cache_dir, pretrained_spec(cfg, data, scaling))
    # a Keras 3 model's tf_keras twin is checked on real training inputs
    loaded = builder(
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        sample=scaling(calibration_sample(data.train, 64, 0)),
        twins=cache.TwinCache(entry) if entry is not None else None,
        **data.model_kwargs,
    )
    key = str(path.resolve())
    return Baseline(
        loaded.model, path, "pretrained", 0.0, key, loaded.reference, loaded.note, entry
    )


def pretrained_spec(cfg: DictConfig, data: Dataset, scaling: Scaling) -> dict[str, Any]:
    """What a user's model file's cache entry depends on: the file's content (not its name), the
    data its conversions calibrate on, the scaling, and the Keras versions that translate it."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    return {
        "model_sha256": sha256_tree(Path(cfg.model.path)),
        "model": {k: v for k, v in model.items() if k != "path"},
        "dataset": _trained_by("dataset", cfg.dataset),
        "data_source": data.source_key,
        "scaling": scaling.as_dict(),
        "data_version": DATA_VERSION,
        "keras": cache.package_versions(("keras", "tf-keras")),
    }


def model_entry(root: str | os.PathLike, spec: dict[str, Any]) -> Path | None:
    """The cache entry of a user's model file (``<root>/model-<key>/``, made when missing), where
    its translation, its float32 reference conversion and their scores are kept, or None when
    the cache cannot hold it (every job then makes them again)."""
    import time

    entry = Path(root) / f"model-{cache.cache_key(spec)}"
    try:
        entry.mkdir(parents=True, exist_ok=True)
        if not (entry / cache.META_FILE).is_file():
            atomic_write_json(
                entry / cache.META_FILE, {"spec": spec, "created": time.strftime("%c")}
            )
    except OSError as e:
        log.warning("cannot keep this model's conversions in %s (%s): each job makes them", root, e)
        return None
    return entry
