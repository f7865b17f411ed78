"""Which file should I ship? The verdict under the user's budget, with ties and the Pareto front.

Candidates are the ``.tflite`` rows of a run or sweep (the Keras rows are not shippable files).
A candidate meets the budget (``conf/select``) when it is ``ok``, loses at most
``max_accuracy_drop`` against its float model, keeps at least ``min_agreement`` of its labels,
and fits ``max_size_mb`` / ``max_latency_ms`` when they are set (latency only where it was
measured with a narrow spread). Among those, the ``objective`` decides; two rows whose accuracy
differs by less than the test split's noise (the sign test on their paired predictions, as
:mod:`runner.evaluation.noise`) are *tied* on accuracy, and a tie goes to the smaller file. Each
(data set, model) pair gets its own verdict and its own Pareto front (size vs accuracy). No
TensorFlow here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import Field

from runner.evaluation.noise import paired_gain
from runner.report.rows import (
    SKIPPED,
    brief_row,
    describe_row,
    latency_trusted,
    nothing_fits,
    num,
    row_name,
    shippable,
    target_rejection,
    targets_of,
)
from runner.report.split import right, split_too_small, tie_note
from runner.schema import Options

Objective = Literal["size", "gzip_size", "latency", "accuracy"]
# The error of the row a job that stopped mid-recipe leaves (runner.report.sweep.job_rows).
INCOMPLETE = "incomplete:"


class SelectOptions(Options):
    """``conf/select``: the budget a file must meet to be shipped, and what decides among those."""

    max_accuracy_drop: float = Field(
        0.01, ge=0, le=1, description="accuracy it may lose against the float model (0.01: a point)"
    )
    min_agreement: float = Field(
        0.99, ge=0, le=1, description="share of test samples that keep the float model's label"
    )
    max_size_mb: float | None = Field(None, gt=0, description="largest file (MiB); null: any")
    max_latency_ms: float | None = Field(
        None, gt=0, description="slowest single-sample latency (p50, ms); null: any"
    )
    objective: Objective = Field(
        "size",
        description="among files within budget: smallest (size, gzip_size), fastest (latency) "
        "or most accurate (accuracy); accuracy ties within the noise go to the smaller file",
    )


Predictions = Callable[[Mapping[str, Any]], "np.ndarray | None"]


@dataclass
class Verdict:
    """The answer for one (data set, model) pair."""

    dataset: str
    model: str
    chosen: dict[str, Any] | None
    runner_up: dict[str, Any] | None
    rejected: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    why: str = ""  # how the chosen file won (or, with none, what to try next)
    flags: list[str] = field(default_factory=list)  # rows that defeat their own purpose
    target: str | None = None  # the device target the files were checked on (None: the host)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "model": self.model,
            "target": self.target,
            "chosen": brief_row(self.chosen),
            "runner_up": brief_row(self.runner_up),
            "why": self.why,
            "rejected": [{**brief_row(r), "reason": why} for r, why in self.rejected],
            "flags": self.flags,
        }

    def lines(self) -> list[str]:
        """The "ship:" block a person reads at the end of a sweep."""
        on = f", on {self.target}" if self.target else ""
        head = f"ship ({self.dataset}, {self.model}{on}): "
        if self.chosen is None:
            out = [head + f"no artifact meets the budget; {self.why}"]
        else:
            out = [head + describe_row(self.chosen), f"  why: {self.why}"]
            if self.runner_up is not None:
                out.append(f"  runner-up: {describe_row(self.runner_up)}")
        out += [f"  rejected {row_name(r)}: {why}" for r, why in self.rejected]
        out += [f"  note: {f}" for f in self.flags]
        return out


def choose(
    rows: Sequence[Mapping[str, Any]],
    budget: SelectOptions | None = None,
    predictions: Predictions | None = None,
    truth: Predictions | None = None,
) -> list[Verdict]:
    """One verdict per (data set, model, device target) in ``rows``.

    ``predictions(row)``: the row's predicted labels on the test split, and ``truth(row)`` the
    true ones, when they are kept: two rows are then compared sample by sample (ties within the
    noise); without them, by their accuracies alone.
    """
    budget = budget or SelectOptions()
    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        if r.get("dataset") is None and r.get("model") is None:
            continue  # a job that left nothing to say what it ran: a failed row of the table only
        for target in targets_of(r, rows):
            groups.setdefault((str(r.get("dataset")), str(r.get("model")), target), []).append(r)
    return [
        _verdict(ds, model, group, budget, predictions, truth, target or None)
        for (ds, model, target), group in groups.items()
    ]


def pareto(rows: Sequence[Mapping[str, Any]]) -> list[bool]:
    """Per row: is it on its (data set, model) pair's size-vs-accuracy front? (ok ``.tflite``
    rows only: no other is at most as large and at least as accurate, one of them strictly)."""
    on = [False] * len(rows)
    for i, r in enumerate(rows):
        if not shippable(r):
            continue
        on[i] = not any(
            shippable(o)
            and (o.get("dataset"), o.get("model")) == (r.get("dataset"), r.get("model"))
            and o["size_bytes"] <= r["size_bytes"]
            and o["accuracy"] >= r["accuracy"]
            and (o["size_bytes"] < r["size_bytes"] or o["accuracy"] > r["accuracy"])
            for o in rows
        )
    return on


# --------------------------------------------------------------------------- one verdict
def _verdict(ds, model, rows, budget, predictions, truth, target=None) -> Verdict:
    candidates, rejected = [], []
    # a job that stopped before its recipe finished is a failed job: none of its files ships
    unfinished = {r.get("job") for r in rows if str(r.get("error") or "").startswith(INCOMPLETE)}
    for r in rows:
        if r.get("format") != "tflite" and r.get("status") == "ok":
            continue  # a Keras file is not what ships to the device
        why = rejection(r, budget)
        if not why and r.get("job") in unfinished and r.get("role") not in ("float", "reference"):
            why = f"its job {r.get('job')} did not finish (the table marks it failed)"
        (rejected.append((dict(r), why)) if why else candidates.append(dict(r)))
    flags = _flags(rows, predictions, truth)
    verdict = Verdict(ds, model, None, None, rejected, flags=flags, target=target)
    if not candidates:
        verdict.why = _next_steps(rows, rejected, budget, target)
        return verdict
    ranked = sorted(candidates, key=lambda r: _key(r, budget.objective))
    chosen = ranked[0]
    if budget.objective == "accuracy":
        chosen = _smallest_of_the_tied(ranked, predictions, truth)
    runner_up = next((r for r in ranked if r is not chosen), None)
    verdict.chosen, verdict.runner_up = chosen, runner_up
    verdict.why = _why(chosen, runner_up, budget, predictions, truth)
    verdict.flags += split_too_small(rows, chosen, budget.max_accuracy_drop, predictions, truth)
    return verdict


def rejection(r: Mapping[str, Any], b: SelectOptions) -> str:
    """Why ``r`` does not meet the budget ``b`` (one phrase), or "" when it does."""
    if r.get("status") == SKIPPED:
        return str(r.get("error") or SKIPPED)
    if r.get("status") != "ok":
        return f"failed ({str(r.get('error') or '?')[:120]})"
    on_board = target_rejection(r, b.max_accuracy_drop)
    if on_board:
        return on_board
    drop = -float(r.get("accuracy_delta") or 0.0)
    if drop > b.max_accuracy_drop + 1e-12:
        return f"accuracy drop {drop:.4f} > {b.max_accuracy_drop:g}"
    agreement = num(r.get("agreement"))
    if agreement is not None and agreement < b.min_agreement:
        return f"agreement {agreement:.4f} < {b.min_agreement:g}"
    size = num(r.get("size_mb"))
    if b.max_size_mb is not None and size is not None and size > b.max_size_mb:
        return f"size {size:.3f} MB > {b.max_size_mb:g} MB"
    latency = num(r.get("latency_p50_ms")) or num(r.get("latency_ms"))
    over = b.max_latency_ms is not None and latency is not None and latency > b.max_latency_ms
    if over and latency_trusted(r):  # an untrusted latency neither rejects nor qualifies
        return f"latency {latency:.3f} ms > {b.max_latency_ms:g} ms"
    return ""


def _key(r: Mapping[str, Any], objective: str) -> tuple:
    size = num(r.get("size_bytes")) or math.inf
    if objective == "gzip_size":
        return (num(r.get("size_gzip_bytes")) or size, size)
    if objective == "latency":
        lat = num(r.get("latency_p50_ms")) or num(r.get("latency_ms")) or math.inf
        return (lat if latency_trusted(r) else math.inf, size)
    if objective == "accuracy":
        return (-(num(r.get("accuracy")) or 0.0), size)
    return (size,)


def _tie(a, b, predictions, truth) -> tuple[bool, float, float, str] | None:
    """(tied?, accuracy gain of b over a, noise bound, what a tie says of the test split) on
    paired predictions, when kept."""
    ra, rb = right(a, predictions, truth), right(b, predictions, truth)
    if ra is None or rb is None or len(ra) != len(rb):
        return None
    gain, bound = paired_gain(ra, rb)
    tied = abs(gain) < max(bound, 1e-12)
    return tied, gain, bound, tie_note(ra, rb, gain) if tied else ""


def _tied(a, b, predictions, truth) -> bool:
    t = _tie(a, b, predictions, truth)
    return t is not None and t[0]


def _smallest_of_the_tied(ranked, predictions, truth) -> dict[str, Any]:
    best = ranked[0]
    tied = [best] + [r for r in ranked[1:] if _tied(best, r, predictions, truth)]
    return min(tied, key=lambda r: num(r.get("size_bytes")) or math.inf)


_OBJECTIVE_TEXT = {
    "size": "the smallest file",
    "gzip_size": "the smallest download (gzip)",
    "latency": "the fastest file (trusted latency)",
    "accuracy": "the most accurate file (ties within the noise go to the smaller)",
}


def _why(chosen, runner_up, b: SelectOptions, predictions, truth) -> str:
    if b.objective == "latency" and not latency_trusted(chosen):
        what = "the smallest file (no file's latency was trusted, so size decided, not latency)"
    else:
        what = _OBJECTIVE_TEXT[b.objective]
    text = f"{what} within the budget (accuracy drop <= {b.max_accuracy_drop:g}, agreement >= {b.min_agreement:g}"

    text += f", size <= {b.max_size_mb:g} MB" if b.max_size_mb else ""
    if b.max_latency_ms and latency_trusted(chosen):
        text += f", latency <= {b.max_latency_ms:g} ms"
    text += ")"
    if b.max_latency_ms and not latency_trusted(chosen):
        text += (
            f"; select.max_latency_ms={b.max_latency_ms:g} was NOT checked: its latency was not "
            "trusted (a wide spread or a busy machine); measure again on a quiet machine"
        )
    if runner_up is None:
        return text + "; the only one"
    t = _tie(chosen, runner_up, predictions, truth)
    if t is None:
        delta = (num(runner_up.get("accuracy")) or 0) - (num(chosen.get("accuracy")) or 0)
        return text + f"; the runner-up's accuracy differs by {delta:+.4f} (no paired predictions)"
    tied, gain, bound, note = t
    if tied:
        return text + (
            f"; a tie on accuracy with {row_name(runner_up)} ({gain:+.4f}, within the noise "
            f"bound {bound:.4f} of the test split): {note}"
        )
    better = "more" if gain > 0 else "less"
    return text + (
        f"; {row_name(runner_up)} is {better} accurate by {gain:+.4f}, beyond the noise bound "
        f"{bound:.4f}"
    )


def _next_steps(rows, rejected, b: SelectOptions, target: str | None = None) -> str:
    ok = [r for r, why in rejected if r.get("status") == "ok"]
    if not ok:
        return "no artifact was made (see the failed rows)"
    if target and not any(r.get("target_status") == "runs" for r in ok):
        return nothing_fits(ok, target)
    closest = max(ok, key=lambda r: (num(r.get("accuracy")) or 0, -(num(r.get("size_bytes")) or 0)))
    recipes = {str(r.get("recipe")) for r in rows}
    tries = [
        t
        for t in ("full_integer_mean_ranges", "auto_int8", "qat", "adaround", "int16x8")
        if t not in recipes
    ]
    return (
        f"the closest is {describe_row(closest)}; try "
        + ", ".join(f"recipe={t}" for t in tries[:3])
        + (", " if tries else "")
        + "more recipe.calibration_samples, or a looser budget (select.max_accuracy_drop, "
        "select.min_agreement, select.max_size_mb)"
    )


def _flags(rows, predictions, truth) -> list[str]:
    """Rows that defeat their purpose: a fallback or QAT file below plain full int8, an
    auto_int8 no smaller than the float32 reference."""
    by_recipe = {str(r.get("recipe")): r for r in rows if shippable(r)}
    full = by_recipe.get("full_integer")
    out = []
    for name in (
        "qat",
        "qat_mixed",
        "adaround",
        "selective",
        "auto_int8",
        "full_integer_mean_ranges",
        "mixed_a16w8",
    ):
        r = by_recipe.get(name)
        if r is None or full is None:
            continue
        t = _tie(full, r, predictions, truth)
        gain = t[1] if t else (num(r.get("accuracy")) or 0) - (num(full.get("accuracy")) or 0)
        beyond = t is None or not t[0]
        if gain < 0 and beyond:
            out.append(
                f"{row_name(r)} is less accurate than full_integer.tflite ({gain:+.4f}): its extra "
                "work bought nothing here"
            )
    auto, ref = (
        by_recipe.get("auto_int8"),
        next((r for r in rows if r.get("role") == "reference" and shippable(r)), None),
    )
    if auto and ref and (num(auto.get("size_bytes")) or 0) >= (num(ref.get("size_bytes")) or 1):
        out.append(
            "auto_int8.tflite is no smaller than the float32 file: it kept every layer float"
        )
    return out
