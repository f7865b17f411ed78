"""What a search decides between jobs: the candidates in cost order, a file's size known before
it is made (its weight count and bit width, from the float32 reference), and what a finished job
says (its best file, whether it meets the budget). Plain functions over configs and job folders."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner.recipes.base import COSTS
from runner.report.rows import num, shippable
from runner.report.select import SelectOptions, rejection
from runner.report.sweep import job_rows

# recipes every job makes anyway (the float32 reference), or another's alias
NOT_CANDIDATES = ("none", "ptq")
# A recipe that declares no weight bits is ordered as float32 within its cost.
BITS_FLOAT = 32


@dataclass(frozen=True)
class Candidate:
    recipe: str
    cost: str
    weight_bits: int | None
    space: tuple[str, ...] = ()  # the search.space keys this recipe has

    @property
    def order(self) -> tuple:
        """Cheapest first; within a cost, the fewest bits first (the smallest file, found early,
        lets the search skip the rest)."""
        return (COSTS.index(self.cost), self.weight_bits or BITS_FLOAT, self.recipe)


def candidates(
    names: Sequence[str],
    compose: Callable[[str], DictConfig],
    space: Mapping[str, str],
    bits_of: Callable[[str], int | None] | None = None,
) -> list[Candidate]:
    """Each recipe's cost, bit width and searched keys, read from its composed job config;
    ``bits_of(name)``: another recipe's weight bits (a pruned file's export), from its YAML."""
    out = []
    for name in dict.fromkeys(names):
        if name in NOT_CANDIDATES:
            continue
        cfg = compose(name)
        keys = tuple(k for k in space if OmegaConf.select(cfg, k, default=None) is not None)
        bits = cfg.recipe.get("weight_bits")
        export = cfg.recipe.get("export")  # prune, cluster: the file is the export recipe's
        if isinstance(export, str) and export and bits_of is not None:
            exported = bits_of(export)
            bits = min(b for b in (bits, exported) if b is not None) if exported else bits
        out.append(Candidate(name, str(cfg.recipe.get("cost", "conversion")), bits, keys))
    return sorted(out, key=lambda c: c.order)


@dataclass(frozen=True)
class Reference:
    """The float32 reference file: its size and weight count (every estimate starts here)."""

    size_bytes: int
    weights: int

    def estimate(self, bits: int | None) -> int | None:
        """The least size of a file whose weights take ``bits`` each (the rest of the file as
        in float32): a lower bound, since scales and zero points only add."""
        if bits is None:
            return None
        rest = max(0, self.size_bytes - self.weights * 4)
        return rest + (self.weights * bits + 7) // 8


def reference_of(rows: Sequence[Mapping[str, Any]]) -> Reference | None:
    """The reference of a job's rows, read from its written file (None when it is not there)."""
    from runner.tflite.weights import weight_stats

    row = next((r for r in rows if r.get("role") == "reference" and shippable(r)), None)
    path = Path(str(row.get("path"))) if row else None
    if path is None or not path.is_file():
        return None
    return Reference(int(row["size_bytes"]), weight_stats(path.read_bytes()).weights)


@dataclass
class Outcome:
    """What one job of the search gave: its best file and whether it meets the budget."""

    rows: list[dict[str, Any]]
    best: dict[str, Any] | None  # the recipe's file that ranks first (meeting the budget first)
    meets: bool
    reason: str  # why it does not meet the budget, or why the job failed
    seconds: float | None
    values: tuple[float, float] | None = None  # (objective, accuracy) for the study
    constraints: list[float] = field(default_factory=list)  # <= 0: within the budget


def objective_value(row: Mapping[str, Any], objective: str) -> float:
    """The number the objective minimizes (accuracy: its negative)."""
    if objective == "gzip_size":
        return float(num(row.get("size_gzip_bytes")) or num(row.get("size_bytes")) or 0)
    if objective == "latency":
        return float(num(row.get("latency_p50_ms")) or num(row.get("latency_ms")) or 0)
    if objective == "accuracy":
        return -float(num(row.get("accuracy")) or 0)
    return float(num(row.get("size_bytes")) or 0)


def outcome(job: Path, budget: SelectOptions) -> Outcome:
    """Read a finished job's folder: its recipe files ranked by the budget, then the objective."""
    rows = job_rows(job)
    mine = [r for r in rows if r.get("role") not in ("float", "reference")]
    files = [r for r in mine if shippable(r)]
    seconds = _job_seconds(job)
    if not files:
        why = next((str(r.get("error")) for r in mine if r.get("status") != "ok"), "no file")
        return Outcome(rows, None, False, why, seconds)
    ranked = sorted(
        files, key=lambda r: (bool(rejection(r, budget)), objective_value(r, budget.objective))
    )
    best = ranked[0]
    why = rejection(best, budget)
    drop = -float(num(best.get("accuracy_delta")) or 0)
    agreement = float(num(best.get("agreement")) or 0)
    return Outcome(
        rows,
        best,
        not why,
        why,
        seconds,
        (objective_value(best, budget.objective), float(num(best.get("accuracy")) or 0)),
        [drop - budget.max_accuracy_drop, budget.min_agreement - agreement],
    )


def _job_seconds(job: Path) -> float | None:
    import json

    try:
        t = json.loads((job / "results.json").read_text()).get("timings", {})
    except (OSError, ValueError):
        return None
    return float(t["job_seconds"]) if isinstance(t.get("job_seconds"), (int, float)) else None


def cannot_win(
    cand: Candidate, best: Mapping[str, Any] | None, ref: Reference | None, objective: str
) -> str | None:
    """Why ``cand`` cannot beat the best file found so far, or None when it might.

    Only the raw size is known before a file is made: under ``select.objective=size`` a recipe
    whose least possible size is no smaller than the best file's is skipped; under the other
    objectives (download size, latency, accuracy) no recipe is skipped by estimate.
    """
    if best is None or ref is None or objective != "size":
        return None
    least = ref.estimate(cand.weight_bits)
    size = num(best.get("size_bytes"))
    if least is None or size is None or least < size:
        return None
    return (
        f"its {cand.weight_bits}-bit weights make at least ~{least:,} bytes, no smaller than "
        f"{best.get('artifact')} ({int(size):,} bytes), which meets the budget"
    )
