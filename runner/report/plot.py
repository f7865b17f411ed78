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


def plot(
    rows: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    chosen: Sequence[int] = (),
    size_key: str = "size_bytes",
) -> Path | None:
    """Size vs accuracy, one labelled point per artifact; each (data set, model) pair's Pareto
    front drawn (the rows' ``pareto`` flags, else computed here); ``chosen``: indices into
    ``rows`` of the verdict's files, starred. ``size_key``: ``size_gzip_bytes`` puts the
    download size on the axis (``select.objective=gzip_size``), its front computed on it."""
    ok = [
        i
        for i, r in enumerate(rows)
        if r.get("status") == "ok" and r.get(size_key) and r.get("accuracy") is not None
    ]
    if not ok:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = {i: (float(rows[i][size_key]) / MB, float(rows[i]["accuracy"])) for i in ok}
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    groups: dict[tuple, list[int]] = {}
    for i in ok:
        groups.setdefault((rows[i].get("dataset"), rows[i].get("model")), []).append(i)
    _points(ax, rows, pts, several=len(groups) > 1)
    _fronts(ax, rows, pts, groups, flags=size_key == "size_bytes")
    star = [i for i in chosen if i in pts]
    if star:
        ax.scatter(
            [pts[i][0] for i in star],
            [pts[i][1] for i in star],
            s=260,
            marker="*",
            color="tab:green",
            label="ship: the file the budget chose",
            zorder=5,
        )
    ax.margins(x=0.15, y=0.25)
    ax.set_xscale("log")
    gz = size_key == "size_gzip_bytes"
    ax.set_xlabel(("download size, gzip -9" if gz else "size on disk") + " (MB, log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_title("size vs accuracy per artifact", pad=12)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    from runner.files import atomic_write_with

    out = atomic_write_with(
        path, lambda tmp: fig.savefig(tmp, format="png", metadata={"Software": None})
    )
    plt.close(fig)
    return out


def _points(ax, rows, pts, several: bool) -> None:
    """One labelled point per artifact; labels of points on (nearly) one spot are stacked."""
    crowd: dict[tuple[float, float], int] = {}
    for i, (x, y) in pts.items():
        r = rows[i]
        ax.scatter(x, y, s=36, marker="s" if r.get("format") == "keras" else "o", zorder=3)
        spot = (round(math.log10(x) * 4), round(y, 3))  # quarter-decade buckets
        k = crowd[spot] = crowd.get(spot, -1) + 1
        label = r["artifact"] + (f" [{r.get('dataset')}, {r.get('model')}]" if several else "")
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 4 + 9 * k), fontsize=7)


def _fronts(ax, rows, pts, groups: dict[tuple, list[int]], flags: bool = True) -> None:
    """Each (data set, model) pair's Pareto front, ringed and joined (``flags``: the rows'
    ``pareto`` flags, which are on the raw size, may be used)."""
    for n, members in enumerate(groups.values()):
        front = _front(rows, members, pts, flags)
        xs, ys = [pts[i][0] for i in front], [pts[i][1] for i in front]
        ax.step(xs, ys, where="post", color="tab:red", lw=1, zorder=2)
        ax.scatter(
            xs,
            ys,
            s=140,
            facecolors="none",
            edgecolors="tab:red",
            label="Pareto front: nothing smaller is as accurate" if n == 0 else None,
            zorder=4,
        )


def _front(rows, members: list[int], pts, flags: bool = True) -> list[int]:
    """A group's front, smallest first: the rows flagged ``pareto``, else computed."""
    flagged = [i for i in members if flags and rows[i].get("pareto") is True]
    if not flagged:
        flagged = [members[j] for j in pareto_front([pts[i] for i in members])]
    return sorted(flagged, key=lambda i: pts[i][0])
