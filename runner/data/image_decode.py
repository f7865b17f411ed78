"""Decoding image files into rows of a uint8 array file, in this process or in worker
processes (``python -m runner.data.image_decode``: fresh interpreters, never forked from one
running TensorFlow). :mod:`runner.data.images` decides when and caches the result."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
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
    """Chunks ``starts`` (of ``chunk`` files each) decoded by ``n_workers`` processes:
    (chunks done, bad files)."""
    job = raw.with_name("decode-job.json")
    job.write_text(
        json.dumps(
            {"raw": str(raw), "size": list(size), "mode": mode, "paths": paths, "chunk": chunk}
        )
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "runner.data.image_decode", str(job)]
            + [str(s) for s in starts[k::n_workers]],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for k in range(n_workers)
    ]
    done: set[int] = set()
    bad: dict[int, str] = {}
    lock = threading.Lock()

    def read(proc: subprocess.Popen) -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            kind, _, rest = line.rstrip("\n").partition("\t")
            with lock:
                if kind == "done":
                    start = int(rest)
                    done.add(start)
                    bar.update(len(paths[start : start + chunk]))
                elif kind == "bad":
                    i, _, why = rest.partition("\t")
                    bad[int(i)] = why

    readers = [threading.Thread(target=read, args=(p,), daemon=True) for p in procs]
    for t in readers:
        t.start()
    for p, t in zip(procs, readers, strict=True):
        t.join()
        err = p.stderr.read() if p.stderr else ""  # type: ignore[union-attr]
        if p.wait() != 0:
            log.warning("decode worker exited with %d: %s", p.returncode, err.strip()[-300:])
    job.unlink(missing_ok=True)
    return done, bad


def _worker_main(argv: list[str]) -> None:
    """``python -m runner.data.image_decode JOB START...``: decode those chunks, report each."""
    job = json.loads(Path(argv[0]).read_text())
    paths, size, chunk = job["paths"], tuple(job["size"]), int(job["chunk"])
    for start in map(int, argv[1:]):
        part = paths[start : start + chunk]
        for i, why in decode_chunk(job["raw"], start, part, size, job["mode"]).items():
            print(f"bad\t{i}\t{why}", flush=True)
        print(f"done\t{start}", flush=True)


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


if __name__ == "__main__":
    _worker_main(sys.argv[1:])
