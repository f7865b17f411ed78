"""Data stage: load a data set into uint8 images (or int token ids) and integer labels.

Images stay uint8 in memory; :func:`batches` scales one batch at a time to float32, so a float
copy of a whole split never exists (CIFAR-100 as float32 would be 4x the memory).

Each loader is referenced from ``conf/dataset/*.yaml`` by ``_target_``; a new data set is a new
YAML file plus, when it needs new code, a new loader function here.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import math
import os
import pickle
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runner.errors import RunnerError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Split:
    """One split: ``x`` uint8 images (N, H, W, C) or int32 token ids (N, L); ``y`` int labels."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Dataset:
    name: str
    train: Split
    test: Split
    num_classes: int
    class_names: tuple[str, ...] = ()
    # Extra keyword arguments a model builder needs from the data (e.g. vocab_size).
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    # Files every exported model needs beside it (name -> text), e.g. word_index.json.
    files: dict[str, str] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.train.x.shape[1:])

    @property
    def is_text(self) -> bool:
        return np.issubdtype(self.train.x.dtype, np.integer) and self.train.x.ndim == 2


# --------------------------------------------------------------------------- input scaling
@dataclass(frozen=True)
class Scaling:
    """How raw inputs become model inputs; recorded in results.json.

    kind: ``unit`` (pixels to [0, 1]), ``symmetric`` ([-1, 1]), ``standardize`` ((x/255 - mean) / std,
    per channel) or ``none`` (pass through, e.g. token ids).
    """

    kind: str = "unit"
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        if self.kind not in _SCALINGS:
            raise RunnerError(
                f"unknown input_scaling {self.kind!r}; choose one of {sorted(_SCALINGS)}"
            )

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return _SCALINGS[self.kind](self, x)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "mean": list(self.mean), "std": list(self.std)}


_SCALINGS = {
    "unit": lambda s, x: x.astype(np.float32) * np.float32(1 / 255),
    "symmetric": lambda s, x: x.astype(np.float32) * np.float32(1 / 127.5) - np.float32(1),
    "standardize": lambda s, x: (
        (x.astype(np.float32) * np.float32(1 / 255) - np.asarray(s.mean, np.float32))
        / np.asarray(s.std, np.float32)
    ),
    "none": lambda s, x: x,
}


def batches(x: np.ndarray, batch_size: int, scaling: Scaling) -> Iterator[np.ndarray]:
    """Yield scaled batches of ``x`` in order; only one batch is ever converted at a time."""
    for start in range(0, len(x), batch_size):
        yield scaling(x[start : start + batch_size])


def subset(split: Split, size: int | None, seed: int) -> Split:
    """A seeded random subset of ``size`` samples (the whole split when ``size`` is None or larger)."""
    if size is None or size >= len(split):
        return split
    if size <= 0:
        raise RunnerError(f"a subset size must be positive, got {size}")
    idx = np.sort(np.random.default_rng(seed).permutation(len(split))[:size])
    return Split(split.x[idx], split.y[idx])


def calibration_sample(split: Split, n: int, seed: int) -> np.ndarray:
    """``n`` raw samples of ``split`` drawn with ``seed`` (the representative data of a recipe)."""
    n = min(int(n), len(split))
    idx = np.random.default_rng(seed).choice(len(split), size=n, replace=False)
    return split.x[np.sort(idx)]


def stratified_split(
    y: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split: (train indices, test indices), both sorted.

    ``ceil(test_fraction * n)`` samples go to the test side, shared among the classes in
    proportion to their counts (largest remainders first), each class's picked at random.
    """
    y = np.asarray(y)
    if not 0 < test_fraction < 1:
        raise RunnerError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    n_test = math.ceil(test_fraction * len(y))
    exact = counts * n_test / len(y)
    take = np.floor(exact).astype(int)
    remainder = exact - take + rng.random(len(classes)) * 1e-9  # random tie-break
    take[np.argsort(-remainder)[: n_test - take.sum()]] += 1
    test = [rng.permutation(np.flatnonzero(y == c))[:k] for c, k in zip(classes, take, strict=True)]
    te = np.sort(np.concatenate(test)) if test else np.array([], dtype=np.int64)
    tr = np.setdiff1d(np.arange(len(y)), te)
    return tr, te


def _sklearn_data_file(name: str) -> Path:
    """A data file shipped inside scikit-learn, found without importing it (2 s of imports)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise RunnerError("the digits set ships with scikit-learn: pip install scikit-learn")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / name


# --------------------------------------------------------------------------- digits
def load_digits(
    name: str = "digits",
    test_fraction: float = 0.2,
    split_seed: int = 0,
    train_size: int | None = None,
    test_size: int | None = None,
    **_: Any,
) -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, shipped with the package).

    Pixel values 0..16 are stretched to uint8 0..255 so every image set shares one scaling.
    The stratified split is reproducible from ``split_seed``.
    """
    table = np.loadtxt(_sklearn_data_file("digits.csv.gz"), delimiter=",", dtype=np.float64)
    x = np.rint(table[:, :-1] * (255.0 / 16.0)).astype(np.uint8).reshape(-1, 8, 8, 1)
    y = table[:, -1].astype(np.int64)
    tr, te = stratified_split(y, test_fraction, split_seed)
    return Dataset(
        name=name,
        train=subset(Split(x[tr], y[tr]), train_size, split_seed),
        test=subset(Split(x[te], y[te]), test_size, split_seed),
        num_classes=10,
        class_names=tuple(str(i) for i in range(10)),
    )


# --------------------------------------------------------------------------- CIFAR-100
CIFAR_DIRNAME = "cifar-100-python"
# SHA-256 of the official cifar-100-python.tar.gz (the hash tf.keras checks after downloading it).
CIFAR_SHA256 = "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7"


def keras_cache_dir() -> Path:
    """Where Keras's ``cifar100.load_data()`` keeps its download (``$KERAS_HOME`` or ``~/.keras``)."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets"


def load_cifar100(
    name: str = "cifar100",
    path: str | None = None,
    label_mode: str = "fine",
    train_size: int | None = None,
    test_size: int | None = None,
    subset_seed: int = 0,
    extract_dir: str | None = None,
    **_: Any,
) -> Dataset:
    """CIFAR-100 from a local ``cifar-100-python.tar.gz``, its extracted folder, or Keras's cache.

    The archive holds Python pickles, so only the files the user names are read, and they are
    unpickled with a loader that accepts nothing but NumPy arrays and plain containers.

    Raises:
        RunnerError: the data cannot be found offline, the archive has unsafe members, or the
            folder is not in the ``cifar-100-python`` layout.
    """
    if label_mode not in ("fine", "coarse"):
        raise RunnerError(f"dataset.label_mode must be 'fine' or 'coarse', got {label_mode!r}")
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
        target.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=target))
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


# --------------------------------------------------------------------------- labelled text
_READERS = {
    ".csv": lambda p: _pd().read_csv(p),
    ".tsv": lambda p: _pd().read_csv(p, sep="\t"),
    ".tab": lambda p: _pd().read_csv(p, sep="\t"),
    ".jsonl": lambda p: _pd().read_json(p, lines=True),
    ".json": lambda p: _pd().read_json(p, lines=True),
}


def _pd():
    import pandas

    return pandas


def load_text_classification(
    name: str = "fake_news",
    path: str | None = None,
    text_column: str = "text",
    label_column: str = "label",
    split_column: str | None = "split",
    segment: str = "auto",
    word_index: str | None = None,
    num_words: int | None = 20000,
    maxlen: int = 100,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    train_size: int | None = None,
    test_size: int | None = None,
    **_: Any,
) -> Dataset:
    """A labelled text file (CSV, TSV or JSON Lines) as padded token-id sequences.

    Text is segmented into words (jieba for raw Chinese), the vocabulary is built from the
    training split only (or loaded from ``word_index``), and sequences are padded/truncated to
    ``maxlen`` the way Keras's ``pad_sequences`` does. The split comes from ``split_column``
    (``train``/``test``) when the file has it, else from a seeded stratified split.
    """
    from runner.text import Vocabulary
    from runner.text import segment as cut

    if not path:
        raise RunnerError(
            f"dataset={name} needs dataset.path=/path/to/file.csv (or .tsv/.jsonl) with '{text_column}' and '{label_column}' columns"
        )
    p = Path(path).expanduser()
    if not p.is_file():
        raise RunnerError(f"dataset.path={p} does not exist")
    reader = _READERS.get(p.suffix.lower())
    if reader is None:
        raise RunnerError(
            f"dataset.path={p}: unknown file type {p.suffix!r}; use one of {sorted(_READERS)}"
        )
    try:
        df = reader(p)
    except Exception as e:  # noqa: BLE001
        raise RunnerError(f"could not read {p}: {e}") from None
    missing = [c for c in (text_column, label_column) if c not in df.columns]
    if missing:
        raise RunnerError(
            f"{p} has no column(s) {missing}; its columns are {list(df.columns)} (set dataset.text_column / dataset.label_column)"
        )
    df = df.dropna(subset=[text_column, label_column])
    texts = cut(df[text_column].astype(str).tolist(), segment)
    classes = sorted(df[label_column].unique().tolist())
    y = np.searchsorted(np.asarray(classes), df[label_column].to_numpy()).astype(np.int64)
    if split_column and split_column in df.columns:
        kind = df[split_column].astype(str).str.lower().to_numpy()
        tr_idx, te_idx = np.flatnonzero(kind == "train"), np.flatnonzero(kind == "test")
        if not len(tr_idx) or not len(te_idx):
            raise RunnerError(f"{p}: column '{split_column}' must mark rows 'train' and 'test'")
    else:
        tr_idx, te_idx = stratified_split(y, test_fraction, split_seed)
    vocab = (
        Vocabulary.load(word_index, num_words)
        if word_index
        else Vocabulary.fit((texts[i] for i in tr_idx), num_words)
    )
    x = vocab.encode(texts, maxlen)
    log.info(
        "%s: %d words in the vocabulary (capped at %s), sequences of %d",
        name,
        vocab.size - 1,
        num_words,
        maxlen,
    )
    return Dataset(
        name=name,
        train=subset(Split(x[tr_idx], y[tr_idx]), train_size, split_seed),
        test=subset(Split(x[te_idx], y[te_idx]), test_size, split_seed),
        num_classes=len(classes),
        class_names=tuple(str(c) for c in classes),
        model_kwargs={"vocab_size": vocab.size},
        files={"word_index.json": vocab.to_json()},
    )
