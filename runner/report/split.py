"""Can the test split decide? The noise bound of a comparison against what the verdict needs of
it, and how many test samples would be enough (the same share of them changing label)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from runner.evaluation.noise import paired_gain, samples_needed
from runner.report.rows import row_name


def _more(n: int, needed: int | None) -> str:
    if needed is None:
        return "no test split would (no prediction differs)"
    return f"about {needed:,} would ({needed / max(n, 1):.1f}x this split)"


def tie_note(a_right: np.ndarray, b_right: np.ndarray, gain: float) -> str:
    """Why two files the verdict calls tied could not be told apart, and the split that would
    (a split too small to separate the shipped file from the runner-up)."""
    n = len(a_right)
    changed = float(np.mean(a_right != b_right)) if n else 0.0
    if changed == 0 or gain == 0:
        return f"they are equally accurate on these {n:,} test samples"
    return (
        f"the test split ({n:,} samples) is too small to separate them: "
        f"{_more(n, samples_needed(changed, abs(gain)))}"
    )


def budget_note(
    float_row: Mapping[str, Any],
    chosen: Mapping[str, Any],
    float_right: np.ndarray,
    chosen_right: np.ndarray,
    budget: float,
) -> str | None:
    """A note when the split's noise bound on the shipped file's accuracy against the float
    model is larger than the accuracy budget (a drop within the budget is then not measurable),
    else None."""
    if len(float_right) != len(chosen_right) or not len(float_right):
        return None
    _, bound = paired_gain(chosen_right, float_right)
    if bound <= budget:
        return None
    n = len(float_right)
    changed = float(np.mean(float_right != chosen_right))
    share = changed if changed else 1 / n  # no flip here: assume one per split
    return (
        f"the test split ({n:,} samples) cannot check select.max_accuracy_drop={budget:g}: the "
        f"noise bound of {row_name(chosen)} against {row_name(float_row)} is {bound:.4f}; "
        f"{_more(n, samples_needed(share, budget))} (a larger test split: dataset.test_size, "
        "dataset.test_fraction, or more test images)"
    )


def right(row: Mapping[str, Any], predictions: Any, truth: Any) -> np.ndarray | None:
    """Per test sample: does ``row``'s file label it right? (None: predictions not kept)"""
    if predictions is None or truth is None:
        return None
    p, y = predictions(row), truth(row)
    return None if p is None or y is None or len(p) != len(y) else np.asarray(p == y)


def split_too_small(
    rows: Any, chosen: Mapping[str, Any], max_drop: float, predictions: Any, truth: Any
) -> list[str]:
    """:func:`budget_note` for the shipped file against its float model's row (when kept)."""
    float_row = next((r for r in rows if r.get("role") == "float"), None)
    if float_row is None:
        return []
    a, b = right(float_row, predictions, truth), right(chosen, predictions, truth)
    if a is None or b is None:
        return []
    note = budget_note(float_row, chosen, a, b, max_drop)
    return [note] if note else []
