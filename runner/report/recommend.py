"""The verdict on disk and on the terminal: ``recommendation.{json,md}`` beside a sweep's table,
the "ship:" block it ends with, and the one line a single run ends with.

Predictions are read back from each run's ``predictions.npz`` (the test labels and every
artifact's predicted labels, written by :class:`runner.report.results.ResultsTable`), so two
rows are compared sample by sample. No TensorFlow here.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runner.errors import RunnerError
from runner.files import atomic_write_text
from runner.report.select import SelectOptions, Verdict, choose, rejection
from runner.report.sweep import SWEEP_DISPLAY, write_sweep_report
from runner.report.table import to_markdown
from runner.schema import parse
from runner.targets.firmware import write_firmware

PREDICTIONS = "predictions.npz"
TRUTH = "__truth__"  # the key of the true test labels in predictions.npz


class Predictions:
    """Predicted and true labels of a row, read from its run's ``predictions.npz`` (cached)."""

    def __init__(self) -> None:
        self._files: dict[Path, Mapping[str, np.ndarray] | None] = {}

    def _file(self, row: Mapping[str, Any]) -> Mapping[str, np.ndarray] | None:
        path = row.get("path")
        if not path:
            return None
        run = Path(str(path)).parent.parent  # <run>/models/<artifact>
        if run not in self._files:
            try:
                with np.load(run / PREDICTIONS, allow_pickle=False) as z:
                    self._files[run] = {k: z[k] for k in z.files}
            except (OSError, ValueError):
                self._files[run] = None
        return self._files[run]

    def labels(self, row: Mapping[str, Any]) -> np.ndarray | None:
        f = self._file(row)
        return None if f is None else f.get(str(row.get("artifact")))

    def truth(self, row: Mapping[str, Any]) -> np.ndarray | None:
        f = self._file(row)
        return None if f is None else f.get(TRUTH)


def budget_of(config: Any) -> SelectOptions:
    """The ``select`` node of a composed config (or of a run's results.json), else defaults."""
    node = config.get("select") if hasattr(config, "get") else None
    if node is None:
        return SelectOptions()
    return parse(dict(node.items()), SelectOptions, "select")  # type: ignore[return-value]


def verdicts(rows: Sequence[Mapping[str, Any]], budget: SelectOptions) -> list[Verdict]:
    p = Predictions()
    return choose(rows, budget, predictions=p.labels, truth=p.truth)


def write(rows: Sequence[Mapping[str, Any]], out: Path, budget: SelectOptions) -> list[Verdict]:
    """``recommendation.json`` and ``recommendation.md`` in ``out``; returns the verdicts."""
    found = verdicts(rows, budget)
    atomic_write_text(
        out / "recommendation.json",
        json.dumps(
            {"budget": budget.model_dump(), "verdicts": [v.as_dict() for v in found]},
            indent=2,
            ensure_ascii=False,
            default=str,
        )
        + "\n",
    )
    md = ["# Which file to ship", "", f"Budget: `{budget.model_dump()}`", ""]
    for v in found:
        md += ["```", *v.lines(), "```", ""]
        firmware = write_firmware(v.chosen, out) if v.chosen and v.target else None
        if firmware is not None:  # what to paste into the board's firmware
            md += [f"Firmware for {v.target}: `{firmware}/model_data.cc`, `model_data.h`", ""]
    atomic_write_text(out / "recommendation.md", "\n".join(md))
    from runner.report.plot import plot

    chosen = [i for i, r in enumerate(rows) for v in found if v.chosen and _same(r, v.chosen)]
    size = "size_gzip_bytes" if budget.objective == "gzip_size" else "size_bytes"
    plot(rows, out / "comparison.png", chosen, size)  # the chart, the chosen files starred
    return found


def _same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return all(a.get(k) == b.get(k) for k in ("job", "artifact", "path"))


def sweep(paths: Sequence[str | Path], out_dir: str | Path, budget: SelectOptions | None):
    """The sweep table (``comparison.*``) and its verdict (``recommendation.*``).

    ``budget`` None: the ``select`` node of the first run's results.json, else the defaults.
    """
    rows = write_sweep_report(paths, out_dir, chart=False)
    if budget is None:
        budget = budget_of(_first_config(rows))
    return rows, write(rows, Path(out_dir), budget) if rows else []


def run_line(rows: Sequence[Mapping[str, Any]], budget: SelectOptions) -> str | None:
    """One line for a single run: does its recipe's file meet the budget?"""
    mine = [r for r in rows if r.get("role") == "recipe" and r.get("format") == "tflite"]
    if not mine:
        return None
    r = mine[0]
    why = rejection(r, budget)
    name = r.get("artifact") or r.get("recipe")
    if why:
        return f"ship check: {name} does not meet the budget: {why} (select.* sets the budget)"
    return (
        f"ship check: {name} meets the budget (accuracy drop <= {budget.max_accuracy_drop:g}, "
        f"agreement >= {budget.min_agreement:g}"
        + (f", size <= {budget.max_size_mb:g} MB" if budget.max_size_mb else "")
        + (f", latency <= {budget.max_latency_ms:g} ms" if budget.max_latency_ms else "")
        + ")"
    )


def _first_config(rows: Sequence[Mapping[str, Any]]) -> Any:
    for r in rows:
        path = r.get("path")
        if not path:
            continue
        results = Path(str(path)).parent.parent / "results.json"
        try:
            return json.loads(results.read_text()).get("config")
        except (OSError, ValueError):
            continue
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m runner.report PATH... [--out DIR]``: rebuild the comparison and the verdict
    from run/sweep folders."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m runner.report", description=main.__doc__)
    parser.add_argument(
        "paths", nargs="+", help="run folders or sweep folders (their job subfolders are read)"
    )
    parser.add_argument(
        "--out",
        help="where to write comparison.* and recommendation.* (default: the only PATH)",
    )
    args = parser.parse_args(argv)
    missing = [p for p in args.paths if not Path(p).is_dir()]
    if missing:
        parser.error(f"not a folder: {', '.join(missing)}")
    if args.out is None and len(args.paths) > 1:
        parser.error("several folders: say where the combined table goes with --out DIR")
    try:
        rows, found = sweep(args.paths, args.out or args.paths[0], None)
    except RunnerError as e:  # a hand-edited results.json with a bad select node
        parser.error(str(e))
    except OSError as e:  # a read-only or full --out folder
        where = e.filename or args.out or args.paths[0]
        parser.error(f"cannot write the table in {where}: {e.strerror}; give a writable --out DIR")
    except Exception as e:  # noqa: BLE001 - one line, never a traceback; the table may be written
        from runner.errors import summarize_error

        print(
            f"error: the table or verdict could not be made: {summarize_error(e)} "
            "(what was written is in the --out folder; please report this with the folder)",
            file=sys.stderr,
        )
        return 1
    if not rows:
        parser.error("no run results found under " + ", ".join(args.paths))
    print(to_markdown(rows, SWEEP_DISPLAY))
    for v in found:
        print("\n".join(v.lines()), file=sys.stderr)
    return 0 if all(r.get("status") == "ok" for r in rows) else 1
