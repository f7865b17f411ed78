"""Atomic file writes: a reader never sees a half-written file, a crash never leaves one."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

MB = 1 << 20  # sizes in MB are MiB, as `ls -lh` shows them


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to a temp file in the target folder, then rename it over ``path``."""
    return atomic_write_with(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """``rows`` as CSV with ``columns`` (missing cells and NaN empty, floats to 6 places)."""
    buf = io.StringIO()
    writer = csv.DictWriter(
        buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n"
    )
    writer.writeheader()
    for r in rows:
        writer.writerow({c: _csv_cell(r.get(c)) for c in columns})
    return buf.getvalue()


def _csv_cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(round(v, 6))
    return v


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Strict JSON: a NaN or infinite number is written as null (bare NaN is not JSON)."""
    text = json.dumps(_finite(obj), indent=2, ensure_ascii=False, default=str, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "shape", None) == ():  # a NumPy scalar
        return _finite(obj.item())
    return obj


def atomic_write_with(path: str | os.PathLike, writer: Callable[[str], object]) -> Path:
    """Call ``writer(tmp_path)`` to produce the file, then move it into place atomically.

    The temp name keeps the target's suffix, so writers that pick a format from it (Keras
    ``save``) behave as they would on the real name. On any error the temp file is removed and
    the previous content of ``path``, if any, is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent
    )
    os.close(fd)
    try:
        writer(tmp)
        follow_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    return path


def existing_ancestor(path: str | os.PathLike) -> Path:
    """``path`` itself or its nearest folder that exists (where a write would land)."""
    p = Path(path).expanduser()
    found = next((q for q in (p, *p.parents) if q.exists()), Path("."))
    return found if found.is_dir() else found.parent


def free_mb(path: str | os.PathLike) -> float:
    """Free space, in MB, where ``path`` is (or would be created)."""
    return shutil.disk_usage(existing_ancestor(path)).free / MB


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def follow_umask(path: str | os.PathLike) -> None:
    """The mode a plain ``open``/``mkdir`` would give (mkstemp/mkdtemp give 0600/0700): results
    and a shared cache follow the user's umask, so a group can share them."""
    full = 0o777 if Path(path).is_dir() else 0o666
    os.chmod(path, full & ~umask())


def temp_dir(prefix: str, dir: str | os.PathLike) -> Path:
    """A new folder to build in before it is renamed into place (mode per the umask)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=dir))
    follow_umask(tmp)
    return tmp


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    return atomic_write_with(dst, lambda tmp: shutil.copyfile(src, tmp))


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_tree(path: str | os.PathLike) -> str:
    """SHA-256 of a file, or of a folder's files (their relative paths and bytes, sorted): what a
    SavedModel folder holds. What names a model file's content (a cache key, a memo key): a file
    is hashed once per process while its stamp (inode, size, mtime) holds; cache entries check
    their own files with :func:`sha256_file`, which always reads them."""
    p = Path(path)
    if not p.is_dir():
        st = p.stat()
        stamp = (str(p.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp not in _TREE_HASHES:
            _TREE_HASHES[stamp] = sha256_file(p)
        return _TREE_HASHES[stamp]
    h = hashlib.sha256()
    for f in sorted(q for q in p.rglob("*") if q.is_file()):
        h.update(f.relative_to(p).as_posix().encode() + b"\0" + sha256_file(f).encode())
    return h.hexdigest()


_TREE_HASHES: dict[tuple, str] = {}


def _remove(path: str) -> None:
    p = Path(path)
    if p.is_dir():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)
