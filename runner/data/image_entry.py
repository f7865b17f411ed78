"""Decode once: an image folder's pixels and labels as a cache entry keyed by the files (their
names, sizes and times), the decode settings and the decoder's version; checked by hash when
read back, rebuilt when damaged, and written whole or not at all."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runner.data import image_decode
from runner.data.image_cache import check_room
from runner.data.image_decode import COLOR_MODES
from runner.data.image_files import DECODE_VERSION, Listing
from runner.errors import RunnerError
from runner.files import temp_dir

log = logging.getLogger(__name__)

ARRAY_FILE, LABELS_FILE, META_FILE = "images.npy", "labels.npy", "meta.json"
# Workers are started when decoding the rest in-process would take longer than this (a worker
# costs ~0.3 s to start; small PNGs decode at ~20,000/s in one process).
POOL_WORTH_SECONDS = 1.0
SHOW_BAD = 5  # bad files named in a message
CHUNK = 256  # images per task of a decode worker


@dataclass(frozen=True)
class DecodeJob:
    """What to decode (``listing``), how (size, colour mode, workers), and where it is cached."""

    listing: Listing
    key: str
    entry: Path  # the cache entry folder
    size: tuple[int, int]
    mode: str
    workers: int | None
    on_bad_file: str
    read_only: bool = False  # a read-only shared cache holding this entry: read, never locked


def decoded(job: DecodeJob) -> tuple[np.ndarray, np.ndarray, int, list[tuple[str, str]]]:
    """(images memory-mapped read-only, labels, train count, skipped files) of the cache entry,
    decoding the folder into it first when it is missing or corrupt."""
    from filelock import FileLock

    if job.read_only:
        got = _read_entry(job.entry, job.key, remove=False)
        if got is None:
            raise RunnerError(f"the read-only image cache entry {job.entry} is damaged")
        x, y, meta = got
        return x, y, int(meta["n_train"]), [tuple(b) for b in meta["bad"]]  # type: ignore[return-value]
    job.entry.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(job.entry.parent / f"{job.key}.lock")):  # sweep jobs wait for the first
        got = _read_entry(job.entry, job.key)
        if got is None:
            got = _build_entry(job)
        else:
            log.info("image cache hit: %s", job.entry)
    x, y, meta = got
    bad = [tuple(b) for b in meta["bad"]]
    if bad and job.on_bad_file == "error":
        raise _unreadable(job.listing, bad)  # type: ignore[arg-type]
    return x, y, int(meta["n_train"]), bad  # type: ignore[return-value]


def _read_entry(
    entry: Path, key: str, remove: bool = True
) -> tuple[np.ndarray, np.ndarray, dict] | None:
    """The entry's arrays when it is whole and its hash matches; None (rebuild) otherwise."""
    if not (entry / META_FILE).is_file():
        return None
    try:
        meta = json.loads((entry / META_FILE).read_text())
        if meta.get("key") != key or meta.get("version") != DECODE_VERSION:
            raise ValueError("written for other files")
        from runner.files import sha256_file

        if sha256_file(entry / ARRAY_FILE) != meta["sha256"]:
            raise ValueError("images.npy does not match its recorded SHA-256")
        if sha256_file(entry / LABELS_FILE) != meta.get("labels_sha256"):
            raise ValueError("labels.npy does not match its recorded SHA-256")
        x, y = _open(entry)
        if len(x) != len(y) or list(x.shape[1:]) != meta["shape"][1:]:
            raise ValueError("images and labels disagree")
        return x, y, meta
    except Exception as e:  # noqa: BLE001 - any unreadable entry is rebuilt
        log.warning("image cache entry %s is corrupt (%s); decoding again", entry, e)
        if remove:
            shutil.rmtree(entry, ignore_errors=True)
        return None


def _open(entry: Path) -> tuple[np.ndarray, np.ndarray]:
    return np.load(entry / ARRAY_FILE, mmap_mode="r"), np.load(entry / LABELS_FILE)


def _build_entry(job: DecodeJob) -> tuple[np.ndarray, np.ndarray, dict]:
    """Decode every file into a temp folder beside the entry, drop unreadable ones, rename;
    the entry's arrays (its hash was just computed: it is not read back and hashed again)."""
    from runner.files import sha256_file

    listing, (h, w) = job.listing, job.size
    n = len(listing.files)
    channels = COLOR_MODES[job.mode][1]
    # only the lock holder builds this entry: a temp folder of it is a killed decode's
    for stale in job.entry.parent.glob(f".{job.key}-*"):
        log.info("removing %s, left by a decode that was killed", stale)
        shutil.rmtree(stale, ignore_errors=True)
    check_room(job.entry.parent, n * h * w * channels)
    tmp = temp_dir(f".{job.key}-", job.entry.parent)
    try:
        raw = tmp / "decoding.npy"
        arr = np.lib.format.open_memmap(raw, mode="w+", dtype=np.uint8, shape=(n, h, w, channels))
        del arr  # workers open the file themselves
        bad_idx = _decode_all(job, raw)
        bad = [(listing.files[i], why) for i, why in sorted(bad_idx.items())]
        if bad and job.on_bad_file == "error":
            raise _unreadable(listing, bad)
        keep = np.setdiff1d(np.arange(n), np.fromiter(bad_idx, np.int64, len(bad_idx)))
        if bad:
            _compact(raw, tmp / ARRAY_FILE, keep)
            raw.unlink()
        else:
            os.replace(raw, tmp / ARRAY_FILE)
        np.save(tmp / LABELS_FILE, listing.labels[keep])
        meta = {
            "key": job.key,
            "version": DECODE_VERSION,
            "root": str(listing.root),
            "shape": [len(keep), h, w, channels],
            "n_train": int(np.sum(keep < listing.n_train)),
            "class_names": list(listing.class_names),
            "bad": bad,
            "sha256": sha256_file(tmp / ARRAY_FILE),
            "labels_sha256": sha256_file(tmp / LABELS_FILE),
        }
        (tmp / META_FILE).write_text(json.dumps(meta))
        if job.entry.exists():
            shutil.rmtree(job.entry)
        os.replace(tmp, job.entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("decoded %d images into %s", len(keep), job.entry)
    return (*_open(job.entry), meta)  # type: ignore[return-value]


def _compact(src: Path, dst: Path, keep: np.ndarray, rows: int = 4096) -> None:
    """Copy rows ``keep`` of the array file ``src`` into ``dst``, a few thousand at a time."""
    a = np.load(src, mmap_mode="r")
    out = np.lib.format.open_memmap(dst, mode="w+", dtype=a.dtype, shape=(len(keep), *a.shape[1:]))
    for s in range(0, len(keep), rows):
        out[s : s + rows] = a[keep[s : s + rows]]
    out.flush()
    del out, a


def _decode_all(job: DecodeJob, raw: Path) -> dict[int, str]:
    """Decode every file into rows of the array file ``raw``; {index: why} of unreadable ones.

    The first chunk is decoded here and timed; when the rest would take longer than
    :data:`POOL_WORTH_SECONDS`, it is shared among worker processes
    (:func:`runner.data.image_decode.decode_in_workers`: spawned, never forked from one running
    TensorFlow).
    """
    from tqdm import tqdm

    size, mode = job.size, job.mode
    paths = [str(job.listing.root / f) for f in job.listing.files]
    n = len(paths)
    starts = list(range(0, n, CHUNK))
    n_workers = min(job.workers or os.cpu_count() or 1, len(starts))
    bad: dict[int, str] = {}
    with tqdm(total=n, unit="img", desc="decoding images", disable=None, leave=False) as bar:
        t0 = time.perf_counter()
        bad |= image_decode.decode_chunk(str(raw), 0, paths[:CHUNK], size, mode)
        bar.update(min(CHUNK, n))
        rest = starts[1:]
        per_chunk = time.perf_counter() - t0
        if rest and n_workers > 1 and per_chunk * len(rest) > POOL_WORTH_SECONDS:
            done, more_bad = image_decode.decode_in_workers(
                paths, rest, raw, size, mode, n_workers, bar, CHUNK
            )
            bad |= more_bad
            rest = [s for s in rest if s not in done]
            if rest:
                log.warning("decoding %d chunk(s) in-process: a decode worker failed", len(rest))
        for start in rest:
            bad |= image_decode.decode_chunk(
                str(raw), start, paths[start : start + CHUNK], size, mode
            )
            bar.update(len(paths[start : start + CHUNK]))
    return bad


def _unreadable(listing: Listing, bad: list[tuple[str, str]]) -> RunnerError:
    return RunnerError(
        f"{len(bad)} image(s) under {listing.root} cannot be read: {examples(bad)}; fix or "
        "remove them, or set dataset.on_bad_file=skip to leave them out"
    )


def examples(bad: list[tuple[str, str]]) -> str:
    shown = "; ".join(f"{p} ({why})" for p, why in bad[:SHOW_BAD])
    return shown + (f"; and {len(bad) - SHOW_BAD} more" if len(bad) > SHOW_BAD else "")
