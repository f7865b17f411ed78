"""The float-baseline cache: train once per (dataset, model, train, seed) key, load it after.

An entry is a folder ``<cache_dir>/<key>/`` holding ``model.h5`` and ``meta.json`` (with the
model file's SHA-256). It is written in a temp folder and renamed into place, so a killed run
never leaves a half entry under the real name; an entry whose hash or load fails is rebuilt.
A file lock per key makes concurrent jobs of a sweep wait for the first trainer.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.errors import summarize_error
from runner.files import atomic_write_json, free_mb, sha256_file, temp_dir

log = logging.getLogger(__name__)

MODEL_FILE = "model.h5"  # HDF5: saves without optimizer state; QAT models load back from it
META_FILE = "meta.json"


def cache_key(spec: dict[str, Any]) -> str:
    """A short stable hash of a JSON-able spec (resolved configs and the seed)."""
    blob = json.dumps(spec, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class CacheResult:
    model: Any
    status: str  # "hit", "miss", or "uncached" (the cache could not be written)
    path: Path | None  # None when uncached
    train_seconds: float
    history: dict[str, Any]


def get_or_train(
    root: str | os.PathLike, spec: dict[str, Any], train_fn: Callable[[], Any]
) -> CacheResult:
    """Load the baseline for ``spec`` from the cache, or call ``train_fn`` and store its result.

    ``train_fn`` returns an object with ``model``, ``seconds`` and ``history``
    (:class:`runner.train.TrainResult`).
    """
    from filelock import FileLock, Timeout

    root = Path(root)
    key = cache_key(spec)
    entry = root / key
    # entries are renamed into place whole, so a valid one is read without the lock: a
    # read-only (shared) cache serves its entries
    loaded = _load_entry(entry) if (entry / META_FILE).is_file() else None
    if loaded is not None:
        return _hit(entry, *loaded)
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(root / f"{key}.lock"))
        lock.acquire(timeout=0)
    except Timeout:
        log.info("baseline %s is being trained by another job; waiting for it", key)
        lock.acquire()
    except OSError as e:  # a full or read-only disk: train, but keep nothing
        return _uncached(root, e, train_fn)
    try:
        # only the lock holder builds this entry: any temp folder of it is a killed run's
        for stale in root.glob(f".tmp-{key}-*"):
            log.info("removing %s, left by a run killed while storing this baseline", stale)
            shutil.rmtree(stale, ignore_errors=True)
        if entry.exists():
            loaded = _load_entry(entry)
            if loaded is not None:
                return _hit(entry, *loaded)
            shutil.rmtree(entry, ignore_errors=True)
        log.info("baseline cache miss: training %s", key)
        result = train_fn()
        try:
            _store_entry(root, entry, spec, result)
        except (OSError, RuntimeError) as e:  # h5py raises RuntimeError on a full disk
            return _uncached(root, e, lambda: result)  # the training is never thrown away
        return CacheResult(
            result.model, "miss", entry / MODEL_FILE, float(result.seconds), result.history
        )
    finally:
        lock.release()


def _uncached(root: Path, e: Exception, train_fn: Callable[[], Any]) -> CacheResult:
    log.warning(
        "cannot keep the baseline in %s (%s; %.0f MB free): the run goes on without caching it",
        root,
        getattr(e, "strerror", None) or summarize_error(e),
        free_mb(root),
    )
    result = train_fn()
    return CacheResult(result.model, "uncached", None, float(result.seconds), result.history)


def _hit(entry: Path, model: Any, meta: dict[str, Any]) -> CacheResult:
    log.info("baseline cache hit: %s (trained in %.1fs)", entry, meta["train_seconds"])
    return CacheResult(
        model, "hit", entry / MODEL_FILE, float(meta["train_seconds"]), meta.get("history", {})
    )


# The entry a launcher process loaded last, kept for the process's next job (the basic and
# joblib launchers run several jobs per process): {entry: (its files' stamps, model, meta)}.
_LOADED: dict[Path, tuple[tuple, Any, dict[str, Any]]] = {}


def _stamp(entry: Path) -> tuple:
    """What changes when an entry's files do (rebuilt, replaced, damaged)."""
    return tuple(
        (st.st_ino, st.st_size, st.st_mtime_ns)
        for st in ((entry / f).stat() for f in (META_FILE, MODEL_FILE))
    )


def _load_entry(entry: Path):
    from runner.models.loading import load_model

    try:
        stamp = _stamp(entry)
        kept = _LOADED.get(entry)
        if kept is not None and kept[0] == stamp:  # this process loaded it for an earlier job
            log.info("baseline %s: the model this process loaded for an earlier job", entry.name)
            return kept[1], kept[2]
        meta = json.loads((entry / META_FILE).read_text())
        model_path = entry / MODEL_FILE
        if sha256_file(model_path) != meta["sha256"]:
            raise ValueError("model file does not match its recorded SHA-256")
        model = load_model(model_path)
        _LOADED.clear()  # one entry: a sweep over models keeps one in memory, not all
        _LOADED[entry] = (stamp, model, meta)
        return model, meta
    except Exception as e:  # noqa: BLE001 - any defect means: rebuild
        log.warning(
            "baseline cache entry %s is incomplete or corrupt (%s); rebuilding it", entry, e
        )
        return None


# Beyond the weights' own bytes, what an HDF5 model file and its metadata take (a small CNN's
# file is ~60 KB over its weights).
ENTRY_OVERHEAD = 512 * 1024


def _store_entry(root: Path, entry: Path, spec: dict[str, Any], result: Any) -> None:
    # HDF5 cannot be trusted to fail cleanly on a full disk (a later segfault): check first
    needed = sum(w.nbytes for w in result.model.get_weights()) + ENTRY_OVERHEAD
    free = shutil.disk_usage(root).free
    if free < needed:
        raise OSError(
            errno.ENOSPC, f"No space left: the entry needs ~{needed / 2**20:.1f} MB", str(root)
        )
    tmp = temp_dir(f".tmp-{entry.name}-", root)
    try:
        with warnings.catch_warnings():  # HDF5 is chosen on purpose (see MODEL_FILE)
            warnings.filterwarnings("ignore", message=".*HDF5 file.*legacy")
            result.model.save(tmp / MODEL_FILE, include_optimizer=False)
        atomic_write_json(
            tmp / META_FILE,
            {
                "key": entry.name,
                "spec": spec,
                "sha256": sha256_file(tmp / MODEL_FILE),
                "train_seconds": result.seconds,
                "history": result.history,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        )
        if entry.exists():
            shutil.rmtree(entry)
        os.replace(tmp, entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- conversions
SHA_KEY = "_sha256"  # in a conversion's metadata: the flatbuffer's hash
CONVERTER_LIBRARIES = (
    "tensorflow",
    "ai-edge-litert",
    "ai-edge-quantizer",
    "tensorflow-model-optimization",
)


def package_versions(names: Iterable[str]) -> dict[str, str]:
    """{distribution: installed version or "not installed"} (what results.json records, and
    part of every conversion's key)."""
    from importlib import metadata

    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


@functools.cache
def converter_versions() -> dict[str, str]:
    """The versions of what makes and runs a flatbuffer (part of every conversion's key)."""
    return package_versions(CONVERTER_LIBRARIES)


class ConversionCache:
    """The deterministic conversions of one baseline, kept in its cache entry.

    Implements :class:`runner.recipes.base.ArtifactStore`: recipes reach it through their
    context and never import this module. Each flatbuffer is ``<name>-<spec hash>.tflite`` with
    its metadata beside it (``.json``); both are written atomically, the metadata last, so a
    flatbuffer without metadata is never read.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    def _paths(self, name: str, spec: Any) -> tuple[Path, Path]:
        # an upgraded converter, interpreter or quantizer never reuses an old flatbuffer
        stem = self.folder / f"{name}-{cache_key({**dict(spec), 'versions': converter_versions()})}"
        return stem.with_suffix(".tflite"), stem.with_suffix(".json")

    def get(self, name: str, spec: Any) -> tuple[bytes, dict[str, Any]] | None:
        """The stored flatbuffer and its metadata, when its SHA-256 still matches (else None:
        a truncated or replaced file is converted again, never served)."""
        data_path, meta_path = self._paths(name, spec)
        if not (data_path.is_file() and meta_path.is_file()):
            return None
        try:
            data, meta = data_path.read_bytes(), json.loads(meta_path.read_text())
        except (OSError, ValueError) as e:
            log.warning("cached conversion %s is unreadable (%s); converting again", data_path, e)
            return None
        if meta.pop(SHA_KEY, None) != hashlib.sha256(data).hexdigest():
            log.warning(
                "cached conversion %s does not match its SHA-256; converting again", data_path
            )
            for p in (data_path, meta_path):
                with contextlib.suppress(OSError):
                    p.unlink()
            return None
        return data, meta

    def put(self, name: str, spec: Any, data: bytes, meta: dict[str, Any]) -> None:
        from runner.files import atomic_write_bytes

        data_path, meta_path = self._paths(name, spec)
        try:
            atomic_write_bytes(data_path, data)
            atomic_write_json(meta_path, {**meta, SHA_KEY: hashlib.sha256(data).hexdigest()})
        except OSError as e:  # a read-only cache only costs the speed-up
            log.warning("could not keep the conversion in %s (%s)", self.folder, e)


# --------------------------------------------------------------------------- a user's model file
TWIN_FILE = "twin.h5"  # a Keras 3 file's tf_keras translation
TWIN_META = "twin.json"


class TwinCache:
    """A Keras 3 file's checked tf_keras translation, kept in the file's cache entry.

    Implements :class:`runner.models.loaded.TwinStore`: ``twin.h5`` and ``twin.json`` (its
    SHA-256 and the translation's note), written atomically, the metadata last; a twin whose
    hash does not match is made again. A launcher process keeps the last one it loaded.
    """

    def __init__(self, entry: str | os.PathLike) -> None:
        self.entry = Path(entry)

    def get(self) -> tuple[Any, str] | None:
        from runner.models.loading import load_model

        path, meta_path = self.entry / TWIN_FILE, self.entry / TWIN_META
        try:
            stamp = self._stamp()
        except OSError:
            return None
        kept = _TWINS.get(self.entry)
        if kept is not None and kept[0] == stamp:
            return kept[1], kept[2]
        try:
            meta = json.loads(meta_path.read_text())
            if sha256_file(path) != meta["sha256"]:
                raise ValueError("twin.h5 does not match its recorded SHA-256")
            model = load_model(path)
        except Exception as e:  # noqa: BLE001 - any defect means: translate again
            log.warning("cached translation %s is unusable (%s); translating again", path, e)
            return None
        _TWINS.clear()
        _TWINS[self.entry] = (stamp, model, str(meta.get("note", "")))
        return model, str(meta.get("note", ""))

    def put(self, twin: Any, note: str) -> None:
        from runner.files import atomic_write_with

        path = self.entry / TWIN_FILE
        try:
            needed = sum(w.nbytes for w in twin.get_weights()) + ENTRY_OVERHEAD
            if shutil.disk_usage(self.entry).free < needed:  # HDF5 may crash on a full disk
                raise OSError(errno.ENOSPC, "No space left", str(self.entry))
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*HDF5 file.*legacy")
                atomic_write_with(path, lambda tmp: twin.save(tmp, include_optimizer=False))
            atomic_write_json(self.entry / TWIN_META, {"sha256": sha256_file(path), "note": note})
            _TWINS.clear()  # the next job of this process takes it as it is
            _TWINS[self.entry] = (self._stamp(), twin, note)
        except (OSError, RuntimeError) as e:
            log.warning("could not keep the translation in %s (%s)", self.entry, e)

    def _stamp(self) -> tuple:
        return tuple(
            (st.st_ino, st.st_mtime_ns)
            for st in ((self.entry / f).stat() for f in (TWIN_FILE, TWIN_META))
        )

    def lock(self) -> contextlib.AbstractContextManager[object]:
        from filelock import FileLock

        if not os.access(self.entry, os.W_OK):  # a read-only cache: nobody writes a twin there
            return contextlib.nullcontext()
        return FileLock(str(self.entry / "twin.lock"))


# The translation a launcher process loaded last: {entry: (stamp, model, note)}.
_TWINS: dict[Path, tuple[tuple, Any, str]] = {}
