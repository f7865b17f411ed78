"""Decoding image files into rows of a uint8 array file, in this process or in a pool of worker
processes (``concurrent.futures`` with the spawn context: fresh interpreters, never forked from
one running TensorFlow). :mod:`runner.data.images` decides when and caches the result."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

COLOR_MODES = {"rgb": ("RGB", 3), "grayscale": ("L", 1)}  # ColorMode -> PIL mode, channels


def decode_in_workers(
    paths: list[str],
    starts: list[int],
    raw: Path,
    size: tuple[int, int],
    mode: str,
    n_workers: int,
    bar: Any,
    chunk: int,
) -> tuple[set[int], dict[int, str]]:
    """Chunks ``starts`` (of ``chunk`` files each) decoded by a pool of ``n_workers`` processes:
    (chunks done, bad files). The pool spawns fresh interpreters (never forked from a process
    running TensorFlow); a chunk whose worker failed is not in the done set, so the caller
    decodes it in-process, and a process that may not start children (a daemonic worker) gets
    no pool at all."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    done: set[int] = set()
    bad: dict[int, str] = {}
    try:
        pool = ProcessPoolExecutor(n_workers, mp_context=multiprocessing.get_context("spawn"))
    except (OSError, ValueError, AssertionError) as e:  # AssertionError: a daemonic process
        log.warning("no decode workers (%s): decoding in-process", e)
        return done, bad
    with pool:
        futures = {
            pool.submit(decode_chunk, str(raw), s, paths[s : s + chunk], size, mode): s
            for s in starts
        }
        for future in as_completed(futures):
            start = futures[future]
            try:
                bad |= future.result()
            except (BrokenProcessPool, OSError, RuntimeError) as e:
                log.warning("decode worker failed on chunk %d: %s", start, e)
                continue
            done.add(start)
            bar.update(len(paths[start : start + chunk]))
    return done, bad


def decode_chunk(
    raw: str, start: int, paths: list[str], size: tuple[int, int], mode: str
) -> dict[int, str]:
    """Decode ``paths`` into rows ``start…`` of the array file; {index: why} of the bad ones."""
    from PIL import Image

    h, w = size
    pil_mode = COLOR_MODES[mode][0]
    arr = np.load(raw, mmap_mode="r+")
    bad = {}
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as im:
                im.draft(pil_mode, (w, h))  # JPEG: decode at a reduced scale when it can
                img = im.convert(pil_mode)
                if img.size != (w, h):
                    img = img.resize((w, h), Image.Resampling.BILINEAR)
                px = np.asarray(img, np.uint8)
            arr[start + i] = px.reshape(h, w, -1)
        except Exception as e:  # noqa: BLE001 - any file Pillow cannot decode is a bad file
            bad[start + i] = " ".join(f"{type(e).__name__}: {e}".split())[:160].replace("\t", " ")
    arr.flush()
    del arr
    return bad
