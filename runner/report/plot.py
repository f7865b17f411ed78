"""The sweep's size-vs-accuracy chart (``comparison.png``), its Pareto front marked."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from runner.files import MB


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (size, accuracy) points no other point beats on both (smaller and better)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def plot(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path | None:
    """Size vs accuracy, one labelled point per artifact, the Pareto front drawn."""
    ok = [
        r
        for r in rows
        if r.get("status") == "ok" and r.get("size_bytes") and r.get("accuracy") is not None
    ]
    if not ok:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [(float(r["size_bytes"]) / MB, float(r["accuracy"])) for r in ok]
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    several = len({q.get("dataset") for q in ok}) > 1
    crowd: dict[tuple[float, float], int] = {}
    for (x, y), r in zip(pts, ok, strict=True):
        ax.scatter(x, y, s=36, marker="s" if r.get("format") == "keras" else "o", zorder=3)
        # points on (nearly) the same spot get their labels stacked, not overprinted
        spot = (round(math.log10(x) * 4), round(y, 3))  # quarter-decade buckets
        k = crowd[spot] = crowd.get(spot, -1) + 1
        label = r["artifact"] + (f" [{r.get('dataset')}]" if several else "")
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 4 + 10 * k), fontsize=7)
    front = [pts[i] for i in pareto_front(pts)]
    ax.step(
        [p[0] for p in front], [p[1] for p in front], where="post", color="tab:red", lw=1, zorder=2
    )
    ax.scatter(
        [p[0] for p in front],
        [p[1] for p in front],
        s=140,
        facecolors="none",
        edgecolors="tab:red",
        label="Pareto front (smallest for its accuracy)",
        zorder=4,
    )
    ax.margins(x=0.15, y=0.2)
    ax.set_xscale("log")
    ax.set_xlabel("size on disk (MB, log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_title("size vs accuracy per artifact")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    from runner.files import atomic_write_with

    out = atomic_write_with(
        path, lambda tmp: fig.savefig(tmp, format="png", metadata={"Software": None})
    )
    plt.close(fig)
    return out
