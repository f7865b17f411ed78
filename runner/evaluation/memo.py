"""The evaluation memo: the float model's and the float32 reference's scores, kept in the
baseline's (or the model file's) cache entry so a sweep's jobs score them once."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runner.cache import cache_key

log = logging.getLogger(__name__)


def fingerprint(*arrays: Any) -> str:
    """SHA-256 of arrays' dtypes, shapes and bytes (a test split, a label vector)."""
    import numpy as np

    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.reshape(-1).view(np.uint8))  # the bytes in place: no copy of a mapped split
    return h.hexdigest()


def memo_metrics(folder: Path | None, spec: dict[str, Any], compute: Callable[[], Any]):
    """Metrics for ``spec`` kept in ``folder`` (a baseline's cache entry), or computed now.

    Every job of a sweep scores the same float model and float32 reference file on the same test
    split; with this memo only the first does. ``spec`` must name everything the metrics depend
    on (file hash, test-set fingerprint, scaling, evaluation settings, reference labels).

    Returns:
        (metrics, "hit" | "miss" | "off").
    """
    import numpy as np

    from runner.artifacts import Metrics
    from runner.files import atomic_write_with

    if folder is None:
        return compute(), "off"
    path = Path(folder) / f"metrics-{cache_key(spec)}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                fields = json.loads(str(z["fields"]))
                outputs = z["outputs"] if "outputs" in z.files else None
                return Metrics(labels=z["labels"], outputs=outputs, **fields), "hit"
        except Exception as e:  # noqa: BLE001 - a damaged memo is recomputed
            log.warning("evaluation memo %s is unreadable (%s); measuring again", path, e)
    m = compute()
    fields = {k: v for k, v in m.__dict__.items() if k not in ("labels", "outputs")}
    arrays = {"labels": m.labels} | ({"outputs": m.outputs} if m.outputs is not None else {})

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, fields=np.array(json.dumps(fields)), **arrays)

    with contextlib.suppress(OSError):  # a read-only cache only costs the speed-up
        atomic_write_with(path, write)
    return m, "miss"
