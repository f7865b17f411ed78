"""The report stage: the comparison tables and the chart, for a run and across a sweep.

- :mod:`runner.report.table`: a run's rows to CSV/Markdown; no TensorFlow.
- :mod:`runner.report.sweep`: the sweep table rebuilt from the jobs' folders, the seed summary
  (``python -m runner.report``); no TensorFlow.
- :mod:`runner.report.plot`: the size-vs-accuracy chart with the Pareto front.
- :mod:`runner.report.results`: one run's :class:`ResultsTable` (rows, ``comparison.*``,
  ``results.json``, rewritten after every row).

The table functions are re-exported here, so ``from runner import report; report.to_markdown``
and ``python -m runner.report`` keep working.
"""

from runner.report.recommend import main
from runner.report.sweep import (
    BASELINE_ROLES,
    SUMMARY_COLUMNS,
    SWEEP_COLUMNS,
    SWEEP_DISPLAY,
    aggregate,
    is_baseline_row,
    job_dirs,
    job_rows,
    seed_summary,
    write_sweep_report,
)
from runner.report.table import (
    COLUMNS,
    DISPLAY,
    METRIC_COLUMNS,
    empty_row,
    to_csv,
    to_markdown,
    write_tables,
)

__all__ = [
    "BASELINE_ROLES",
    "COLUMNS",
    "DISPLAY",
    "METRIC_COLUMNS",
    "SUMMARY_COLUMNS",
    "SWEEP_COLUMNS",
    "SWEEP_DISPLAY",
    "aggregate",
    "empty_row",
    "is_baseline_row",
    "job_dirs",
    "job_rows",
    "main",
    "seed_summary",
    "to_csv",
    "to_markdown",
    "write_sweep_report",
    "write_tables",
]
