"""CIFAR-100 read offline from the ``cifar-100-python`` archive, its folder, or Keras's cache."""

from __future__ import annotations

import io
import logging
import os
import pickle
import shutil
import tarfile
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
from pydantic import Field

from runner.data.base import Dataset, Split, SubsetOptions, subset
from runner.errors import RunnerError
from runner.files import temp_dir
from runner.schema import options, tags

log = logging.getLogger(__name__)


CIFAR_DIRNAME = "cifar-100-python"
# SHA-256 of the official cifar-100-python.tar.gz (the hash tf.keras checks after downloading it).
CIFAR_SHA256 = "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7"


def keras_cache_dir() -> Path:
    """Where Keras's ``cifar100.load_data()`` keeps its download (``$KERAS_HOME`` or ``~/.keras``)."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets"


LabelMode = Literal["fine", "coarse"]


class Cifar100Options(SubsetOptions):
    """``dataset=cifar100``: the ``cifar-100-python`` archive or folder, read offline."""

    path: str | None = Field(
        None, min_length=1, description="the .tar.gz or its folder (null: Keras's cache)"
    )
    label_mode: LabelMode = Field("fine", description="fine: 100 classes; coarse: 20 superclasses")
    subset_seed: int = Field(
        0, ge=0, description="which samples the subsets take", **tags(seed=True)
    )
    extract_dir: str | None = Field(
        None, min_length=1, description="where an archive is extracted once", **tags(trains=False)
    )


@options(Cifar100Options)
def load_cifar100(
    name: str = "cifar100",
    *,
    path: str | None,
    label_mode: str,
    train_size: int | None,
    test_size: int | None,
    subset_seed: int,
    extract_dir: str | None,
) -> Dataset:
    """CIFAR-100 from a local ``cifar-100-python.tar.gz``, its extracted folder, or Keras's cache.

    The archive holds Python pickles, so only the files the user names are read, and they are
    unpickled with a loader that accepts nothing but NumPy arrays and plain containers.

    Raises:
        RunnerError: the data cannot be found offline, the archive has unsafe members, or the
            folder is not in the ``cifar-100-python`` layout.
    """
    if label_mode not in get_args(LabelMode):
        raise RunnerError(
            f"dataset.label_mode must be one of {get_args(LabelMode)}, got {label_mode!r}"
        )
    folder = _find_cifar_folder(path, extract_dir)
    meta = _load_pickle(folder / "meta")
    train = _load_pickle(folder / "train")
    test = _load_pickle(folder / "test")
    key = f"{label_mode}_labels"
    names_key = f"{label_mode}_label_names"
    try:
        class_names = tuple(_s(n) for n in meta[names_key])
        tr = Split(_cifar_images(train["data"]), np.asarray(train[key], np.int64))
        te = Split(_cifar_images(test["data"]), np.asarray(test[key], np.int64))
    except (KeyError, ValueError, TypeError) as e:
        raise RunnerError(
            f"{folder} is not in the cifar-100-python layout (train/test pickles with 'data' and "
            f"'{key}', meta with '{names_key}'): {e}"
        ) from None
    return Dataset(
        name=name,
        train=subset(tr, train_size, subset_seed),
        test=subset(te, test_size, subset_seed),
        num_classes=len(class_names),
        class_names=class_names,
    )


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _cifar_images(data: Any) -> np.ndarray:
    arr = np.asarray(data, dtype=np.uint8)
    if arr.ndim != 2 or arr.shape[1] != 3 * 32 * 32:
        raise ValueError(f"'data' has shape {arr.shape}, expected (N, 3072)")
    # Rows are channel-major (R plane, G plane, B plane); reshape in place, then one NHWC copy.
    return np.ascontiguousarray(arr.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def _find_cifar_folder(path: str | None, extract_dir: str | None) -> Path:
    if path:
        p = Path(path).expanduser()
        if not p.exists():
            raise RunnerError(
                f"dataset.path={p} does not exist; point it at cifar-100-python.tar.gz or its extracted folder"
            )
        if p.is_dir():
            inner = p / CIFAR_DIRNAME
            return inner if inner.is_dir() and not (p / "train").exists() else p
        return _extract_archive(p, Path(extract_dir or p.parent / ".cifar-extract"))
    cache = keras_cache_dir()
    if (cache / CIFAR_DIRNAME / "train").exists():
        return cache / CIFAR_DIRNAME
    if (cache / f"{CIFAR_DIRNAME}.tar.gz").exists():
        return _extract_archive(cache / f"{CIFAR_DIRNAME}.tar.gz", cache)
    raise RunnerError(
        "CIFAR-100 is not available offline. Provide it one of two ways: put the extracted "
        f"folder at {cache / CIFAR_DIRNAME} (Keras's cache, as cifar100.load_data() leaves it), "
        "or pass dataset.path=/path/to/cifar-100-python.tar.gz (or its extracted folder)."
    )


def _extract_archive(archive: Path, target: Path) -> Path:
    """Extract a CIFAR tarball into ``target`` once; refuse members that would escape it."""
    done = target / CIFAR_DIRNAME
    if (done / "train").exists() and (done / ".complete").exists():
        return done
    from runner.files import sha256_file

    if sha256_file(archive) != CIFAR_SHA256:
        log.warning(
            "%s is not the official CIFAR-100 release (SHA-256 differs); using it as given", archive
        )
    try:
        tar = tarfile.open(archive, "r:*")  # noqa: SIM115 - closed by the `with tar:` below
    except (tarfile.TarError, OSError) as e:
        raise RunnerError(
            f"{archive} is not a readable tar archive ({e}); expected cifar-100-python.tar.gz"
        ) from None
    with tar:
        members = _checked_members(tar, archive)
        target.mkdir(parents=True, exist_ok=True)
        tmp = temp_dir(".extract-", target)
        try:
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.12
                tar.extractall(tmp, filter="data")
            else:  # older: the same rule by hand (plain files and folders only)
                odd = [m.name for m in members if not (m.isfile() or m.isdir())]
                if odd:
                    raise RunnerError(
                        f"refusing {archive}: member {odd[0]!r} is a link or device, not a file; "
                        "use an untouched copy of cifar-100-python.tar.gz"
                    )
                tar.extractall(tmp, members=members)  # noqa: S202 - names and kinds checked above
            (tmp / CIFAR_DIRNAME / ".complete").touch()
            if done.exists():
                shutil.rmtree(done)
            os.replace(tmp / CIFAR_DIRNAME, done)
        except getattr(tarfile, "FilterError", tarfile.TarError) as e:
            raise RunnerError(f"refusing {archive}: {e}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("extracted %s to %s", archive, done)
    return done


def _checked_members(tar: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    """The archive's members, refused when one would escape the target folder or the CIFAR
    folder is missing."""
    members = tar.getmembers()
    for m in members:
        parts = Path(m.name).parts
        if m.name.startswith(("/", "\\")) or os.path.isabs(m.name) or ".." in parts:
            raise RunnerError(
                f"refusing {archive}: member {m.name!r} would be written outside the target folder "
                "(absolute path or '..'); use an untouched copy of cifar-100-python.tar.gz"
            )
    if not any(Path(m.name).parts[:1] == (CIFAR_DIRNAME,) for m in members):
        raise RunnerError(
            f"{archive} has no '{CIFAR_DIRNAME}/' folder; it is not the CIFAR-100 python archive"
        )
    return members


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and NumPy arrays only; any other class is refused."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "float64"),
        ("numpy", "int64"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 rebuild bytes
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def _load_pickle(path: Path) -> dict:
    if not path.is_file():
        raise RunnerError(
            f"{path} is missing: the folder is not in the cifar-100-python layout (meta, train, test)"
        )
    try:
        with open(path, "rb") as f:
            obj = _ArrayOnlyUnpickler(io.BufferedReader(f), encoding="bytes").load()
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not a CIFAR pickle"
        raise RunnerError(f"{path} is not a CIFAR-100 pickle ({e})") from None
    if not isinstance(obj, dict):
        raise RunnerError(
            f"{path} is not a CIFAR-100 pickle (expected a dict, got {type(obj).__name__})"
        )
    # The real files are Python 2 pickles with bytes keys; accept str keys too.
    return {_s(k): v for k, v in obj.items()}
