"""Section search: the budgeted search against the full sweep, on the bundled digits.

1. ``+experiment=all_recipes`` against ``hydra/sweeper=search`` (every recipe a candidate), each
   from its own empty cache (both train the baseline): wall time, jobs run, and the file each
   ships under the default budget.
2. Pruning sparsity under a 1-point accuracy budget (``select.min_agreement=0``, objective the
   download size): a grid of 14 sparsities (0.30 ... 0.95) against a search of 7 trials of
   ``recipe.sparsity=interval(0.3,0.95)``; the highest sparsity each finds within the budget.

Run with ``--only search`` (about 12 minutes here).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from benchmarks.common import load_rows, sh

BASE = ["evaluation.progress=false"]
GRID = [round(0.30 + 0.05 * i, 2) for i in range(14)]
PRUNE_BUDGET = [
    "select.objective=gzip_size",
    "select.min_agreement=0",
    "select.max_accuracy_drop=0.01",
]


def _ship(folder: Path) -> dict:
    data = json.loads((folder / "recommendation.json").read_text())
    chosen = (data[0] if isinstance(data, list) else data["verdicts"][0])["chosen"] or {}
    return {"artifact": chosen.get("artifact"), "size_bytes": chosen.get("size_bytes")}


def _jobs(folder: Path) -> int:
    return sum(1 for d in folder.iterdir() if d.name.isdigit())


def recipes_case(tmp: Path) -> dict:
    out = {}
    for name, args in (
        ("all_recipes", ["+experiment=all_recipes"]),
        ("search", ["hydra/sweeper=search"]),
    ):
        folder = tmp / f"search-{name}"
        seconds, _ = sh(
            ["-m", *args, *BASE, f"cache_dir={tmp / f'cache-{name}'}", f"hydra.sweep.dir={folder}"],
            timeout=7200,
        )
        out[name] = {"seconds": seconds, "jobs": _jobs(folder), "ship": _ship(folder)}
    a, s = out["all_recipes"], out["search"]
    out["time_ratio"] = s["seconds"] / a["seconds"]
    out["same_or_as_small"] = s["ship"]["artifact"] == a["ship"]["artifact"] or (
        (s["ship"]["size_bytes"] or 1e18) <= (a["ship"]["size_bytes"] or 0)
    )
    return out


def _highest_within(rows: list[dict]) -> float | None:
    ok = [
        r
        for r in rows
        if r.get("recipe") == "prune"
        and r.get("status") == "ok"
        and -(r.get("accuracy_delta") or 0) <= 0.01 + 1e-12
    ]
    values = [
        float(o.split("=")[1])
        for r in ok
        for o in str(r.get("overrides")).split()
        if o.startswith("recipe.sparsity=")
    ]
    return max(values) if values else None


def sparsity_case(tmp: Path) -> dict:
    cache = f"cache_dir={tmp / 'cache-prune'}"
    grid = tmp / "prune-grid"
    g_seconds, _ = sh(
        ["-m", "recipe=prune", f"recipe.sparsity={','.join(map(str, GRID))}", *PRUNE_BUDGET]
        + [*BASE, cache, f"hydra.sweep.dir={grid}"],
        timeout=7200,
    )
    search = tmp / "prune-search"
    s_seconds, _ = sh(
        ["-m", "hydra/sweeper=search", "recipe=prune", "recipe.sparsity=interval(0.3,0.95)"]
        + [f"search.trials={len(GRID) // 2}", *PRUNE_BUDGET, *BASE, cache]
        + [f"hydra.sweep.dir={search}"],
        timeout=7200,
    )
    g, s = _highest_within(load_rows(grid)), _highest_within(load_rows(search))
    return {
        "grid": {"trials": len(GRID), "seconds": g_seconds, "highest_sparsity": g},
        "search": {"trials": _jobs(search), "seconds": s_seconds, "highest_sparsity": s},
        "gap": abs(g - s) if g is not None and s is not None else None,
    }


def measure(tmp: Path, quick: bool) -> dict:
    return {"search": {"recipes": recipes_case(tmp), "sparsity": sparsity_case(tmp)}}


def render(result: dict) -> None:
    r = result.get("search")
    if not r:
        return
    print("\n## Search: the budgeted search against the full sweep (digits)", file=sys.stderr)
    a, s = r["recipes"]["all_recipes"], r["recipes"]["search"]
    print(f"all_recipes: {a['jobs']} jobs, {a['seconds']:.0f} s, ships {a['ship']}")
    print(f"search:      {s['jobs']} jobs, {s['seconds']:.0f} s, ships {s['ship']}")
    print(
        f"time search / all_recipes: {r['recipes']['time_ratio']:.2f} (goal <= 0.40); "
        f"same file or as small: {r['recipes']['same_or_as_small']}"
    )
    p = r["sparsity"]
    print(
        f"pruning sparsity within 1 pt: grid {p['grid']['highest_sparsity']} in "
        f"{p['grid']['trials']} trials ({p['grid']['seconds']:.0f} s); search "
        f"{p['search']['highest_sparsity']} in {p['search']['trials']} trials "
        f"({p['search']['seconds']:.0f} s); gap {p['gap']} (goal <= 0.1)"
    )
