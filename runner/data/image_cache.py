"""Where an image folder's decode is cached: a writable folder (else the system temp folder, or
a read-only cache that already holds it), with room for the decode checked first."""

from __future__ import annotations

import logging
from pathlib import Path

from runner.errors import RunnerError

log = logging.getLogger(__name__)


def writable_root(root: Path, key: str | None, entry: str) -> tuple[Path, bool, tuple[str, ...]]:
    """(where the cache is, whether it is only read, warnings): ``root`` when it can be written
    or already holds this decode (a read-only shared cache serves its entries); else a folder
    under the system temp folder, and the warning that says so. A read-only cache costs the
    speed-up, never the run."""
    import errno
    import tempfile

    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            return root, False, ()
    except OSError as e:
        if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        why = e.strerror
    if (root / entry / "meta.json").is_file():
        return root, True, ()
    fallback = Path(tempfile.gettempdir()) / "tfq-runner-image-cache"
    name = f"{key}={root}" if key else f"the image folder's cache {root}"
    said = f"{name} cannot be written ({why}): the images are decoded into {fallback} instead" + (
        "" if key else "; set dataset.cache_dir to a writable folder to keep them"
    )
    log.warning(said)
    return fallback, False, (said,)


def check_room(folder: Path, array_bytes: int) -> None:
    """Refuse to start a decode the disk cannot hold: a memory-mapped array on a full disk ends
    the process with SIGBUS, no message and no results. Room for the array twice (a decode with
    unreadable files compacts it into a second file) and a margin."""
    from runner.files import free_mb

    need = 2 * array_bytes / (1 << 20) + 64
    free = free_mb(folder)
    if free < need:
        raise RunnerError(
            f"the image cache needs {need:.0f} MB in {folder} and {free:.0f} MB are free; free "
            "some space, or point dataset.cache_dir (or cache_dir) at a disk with room"
        )
