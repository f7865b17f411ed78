"""One row of a table, read for the verdict: is it a shippable file, is its latency trusted,
its numbers, and how it is named and described in the "ship:" lines. No TensorFlow here."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

# A latency whose p90 is more than this times its p50 is too noisy to decide on.
MAX_TRUSTED_SPREAD = 1.5


def latency_trusted(r: Mapping[str, Any]) -> bool:
    """Was the row's latency measured with a narrow spread (p90/p50) on a quiet machine?"""
    spread = num(r.get("latency_spread"))
    return spread is not None and spread <= MAX_TRUSTED_SPREAD and not r.get("latency_note")


# A row of a recipe the search did not run (it could not win, or the search stopped first).
SKIPPED = "skipped"


def failed(r: Mapping[str, Any]) -> bool:
    """A row that failed: neither ``ok`` nor a recipe the search skipped."""
    return r.get("status") not in ("ok", SKIPPED)


def shippable(r: Mapping[str, Any]) -> bool:
    return (
        r.get("status") == "ok"
        and r.get("format") == "tflite"
        and num(r.get("size_bytes")) is not None
        and num(r.get("accuracy")) is not None
    )


def num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def row_name(r: Mapping[str, Any]) -> str:
    job = r.get("job")
    return f"{r.get('artifact') or r.get('recipe')}" + (
        f" (job {job})" if job not in (None, "") else ""
    )


def describe_row(r: Mapping[str, Any]) -> str:
    parts = [row_name(r)]
    if num(r.get("size_mb")) is not None:
        parts.append(f"{num(r.get('size_mb')):.3f} MB")
    if num(r.get("compression")) is not None:
        parts.append(f"{num(r.get('compression')):.2f}x")
    if num(r.get("accuracy_delta")) is not None:
        parts.append(f"accuracy {num(r.get('accuracy')):.4f} ({num(r.get('accuracy_delta')):+.4f})")
    if num(r.get("agreement")) is not None:
        parts.append(f"agreement {num(r.get('agreement')):.4f}")
    lat = num(r.get("latency_p50_ms")) or num(r.get("latency_ms"))
    if lat is not None:
        parts.append(f"latency {lat:.3f} ms" + ("" if latency_trusted(r) else " (not trusted)"))
    if r.get("target"):
        parts.append(_on_target(r))
    if r.get("path"):
        parts.append(str(r["path"]))
    return ", ".join(parts)


def brief_row(r: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if r is None:
        return None
    keys = (
        "job",
        "recipe",
        "artifact",
        "path",
        "size_bytes",
        "size_mb",
        "compression",
        "accuracy",
        "accuracy_delta",
        "agreement",
        "latency_ms",
        "latency_p50_ms",
        "latency_spread",
        "status",
        "target",
        "target_status",
        "ram_bytes",
        "flash_bytes",
        "target_latency_ms",
        "target_accuracy",
        "target_path",
    )
    return {k: r.get(k) for k in keys if k in r}


def _on_target(r: Mapping[str, Any]) -> str:
    """ "on tflm: RAM 9.7 KiB, flash 91.2 KiB, NPU 33/33 ops, 0.18 ms (estimated)"."""
    bits = []
    for key, label in (("ram_bytes", "RAM"), ("flash_bytes", "flash")):
        if num(r.get(key)) is not None:
            bits.append(f"{label} {num(r.get(key)) / 1024:.1f} KiB")
    if r.get("npu_ops") is not None:
        total = (r.get("npu_ops") or 0) + (r.get("cpu_ops") or 0)
        bits.append(f"NPU {r.get('npu_ops')}/{total} ops")
    if num(r.get("target_latency_ms")) is not None:
        bits.append(f"{num(r.get('target_latency_ms')):.3f} ms (estimated)")
    if num(r.get("target_accuracy")) is not None:
        bits.append(f"accuracy there {num(r.get('target_accuracy')):.4f}")
    return f"on {r.get('target')}: " + ", ".join(bits)


def targets_of(r: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The device target(s) whose verdict a row belongs to: its own; a row with none (a Keras
    file, a failed row) its job's, else every target's; "" where nothing ran on a target."""
    if r.get("target"):
        return [str(r["target"])]
    same_job = {str(o["target"]) for o in rows if o.get("target") and o.get("job") == r.get("job")}
    everywhere = {str(o["target"]) for o in rows if o.get("target")}
    return sorted(same_job or everywhere) or [""]


def nothing_fits(rows, target: str) -> str:
    """Nothing runs within the board's limits: which files were refused and why, and what the
    closest one would need."""
    refused = sorted({str(r.get("recipe")) for r in rows if r.get("target_status") == "refused"})
    big = [r for r in rows if str(r.get("target_status", "")).startswith("over_")]
    text = f"no file runs on {target} within its limits"
    if refused:
        text += f"; refused there: {', '.join(refused)} (see each row's reason)"
    if big:
        smallest = min(big, key=lambda r: num(r.get("ram_bytes")) or math.inf)
        text += f"; the smallest that runs, {row_name(smallest)}, {smallest.get('target_reason')}"
    return text + "; an integer recipe (full_integer, int16x8, mixed_a16w8) runs on most boards"


def target_rejection(r: Mapping[str, Any], max_drop: float) -> str:
    """Why a row cannot ship on its device target (one phrase), or "": refused there, over the
    board's limits, or less accurate there than the budget allows."""
    on_board = r.get("target_status")
    if on_board not in (None, "", "runs"):
        what = {"refused": "refused", "over_ram": "too big", "over_flash": "too big"}
        return f"{what.get(str(on_board), on_board)} on {r.get('target')}: {r.get('target_reason')}"
    there = num(r.get("target_accuracy"))
    if there is not None and num(r.get("accuracy")) is not None:  # what the board computes
        float_accuracy = num(r.get("accuracy")) - float(r.get("accuracy_delta") or 0.0)
        if float_accuracy - there > max_drop + 1e-12:
            return (
                f"on {r.get('target')} its accuracy is {there:.4f} (drop "
                f"{float_accuracy - there:.4f} > {max_drop:g}; LiteRT: "
                f"{num(r.get('accuracy')):.4f}): {r.get('target_reason') or 'other labels there'}"
            )
    return ""
