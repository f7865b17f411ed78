"""The run's rows and every file that reports them (``comparison.{csv,md}``, ``results.json``),
rewritten atomically after each row so a later failure never loses a finished one."""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner.artifacts import Artifact, Metrics
from runner.cache import package_versions
from runner.data import Scaling
from runner.evaluation.scoring import fidelity_warnings
from runner.files import MB, atomic_write_json, atomic_write_with, sha256_file
from runner.report import table as report

log = logging.getLogger(__name__)

VERSIONED = [
    "tensorflow",
    "tf-keras",
    "tensorflow-model-optimization",
    "ai-edge-litert",
    "hydra-core",
    "omegaconf",
    "numpy",
]


@dataclass
class RunResult:
    output_dir: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    worst_layers: list[str] = field(default_factory=list)  # int8 layer report, worst first

    @property
    def ok(self) -> bool:
        return all(r["status"] == "ok" for r in self.rows)

    def row(self, artifact: str) -> dict[str, Any]:
        return next(r for r in self.rows if r["artifact"] == artifact)


def versions() -> dict[str, str]:
    return {"python": platform.python_version(), **package_versions(VERSIONED)}


class ResultsTable:
    """The run's rows, and every file that reports them.

    It back-fills compression once the float32 reference's size is known, collects the fidelity
    warnings, and rewrites ``comparison.{csv,md}`` and ``results.json`` atomically after every
    row, so a later failure never loses a finished one.
    """

    def __init__(
        self,
        output_dir: Path,
        cfg: DictConfig,
        scaling: Scaling,
        timings: dict[str, float],
        common: dict[str, Any],
        data: dict[str, Any] | None = None,
        truth: Any = None,
        seeds: dict[str, Any] | None = None,
    ) -> None:
        """``truth``: the test split's labels; with them every artifact's predicted labels are
        kept in ``predictions.npz`` (the verdict compares rows sample by sample). ``seeds``:
        every seed of the run (:func:`runner.config.seeds`), recorded in ``results.json``."""
        self.output_dir, self.cfg, self.scaling = output_dir, cfg, scaling
        self.seeds = dict(seeds or {"seed": cfg.get("seed")})
        self.data = data or {}  # the data set's class names and what its loader found
        self.timings, self.common = timings, common
        self.rows: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        self.worst_layers: list[str] = []  # from the layer report, worst first
        self._reference_size: int | None = None
        self._reference_gzip: int | None = None
        self._reference_accuracy: float | None = None  # the float model's: the first row
        self._hashes: dict[str, str] = {}
        self._eval_cache: dict[str, str] = {}  # artifact -> hit | miss | off
        self._conversions: dict[str, Any] = {}  # artifact -> recurrent route, why, trials
        self._truth = truth
        self._labels: dict[str, Any] = {}  # artifact -> predicted labels on the test split
        self.finished = False

    @property
    def ok(self) -> bool:
        return all(r["status"] == "ok" for r in self.rows)

    def _set_reference(self, size: int, gzip_bytes: int | None) -> None:
        """What compression is measured against; rows added before it get theirs now."""
        self._reference_size, self._reference_gzip = size, gzip_bytes
        for r in self.rows:
            if r["size_bytes"]:
                r["compression"] = size / r["size_bytes"]
            if r["size_gzip_bytes"] and gzip_bytes:
                r["compression_gzip"] = gzip_bytes / r["size_gzip_bytes"]

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def _write_predictions(self) -> None:
        import numpy as np

        from runner.report.recommend import PREDICTIONS, TRUTH

        arrays = {TRUTH: _small_ints(self._truth)}
        arrays |= {k: _small_ints(v) for k, v in self._labels.items()}
        atomic_write_with(
            self.output_dir / PREDICTIONS, lambda tmp: np.savez_compressed(tmp, **arrays)
        )

    def layer_report(self, rows: list[dict[str, Any]], ranked: bool = True) -> None:
        """Write ``layer_report.csv`` (per-layer int8 error, worst first, and each layer's weight
        sparsity and unique values) and name the worst; ``ranked=False``: weight columns only,
        in graph order, no worst layer."""
        from runner.recipes.layer_report import REPORT_COLUMNS, summary, write_rows

        write_rows(self.output_dir / "layer_report.csv", rows, REPORT_COLUMNS)
        if not ranked:
            log.info("layer report: each layer's weight sparsity and unique values (no int8 error)")
            return
        log.info("layer report: worst int8 layers: %s", summary(rows))
        self.worst_layers = [r["layer"] for r in rows[:3]]

    def add(
        self,
        art: Artifact,
        m: Metrics,
        use_case: str,
        memo: str = "off",
        role: str = "recipe",
        on_target: dict[str, Any] | None = None,
    ) -> None:
        """A scored row; ``role``: float (the Keras model), reference (``recipe@reference``,
        what compression is measured against) or recipe; ``on_target``: the device target's
        columns (:mod:`runner.targets`)."""
        size = _size(art.path)
        stored = _stored(art)
        if m.labels is not None:
            self._labels[art.name] = m.labels
        if role == "reference" and self._reference_size is None:
            self._set_reference(size, stored["size_gzip_bytes"])
        if self._reference_accuracy is None:
            self._reference_accuracy = m.accuracy
        sha = sha256_file(art.path) if art.path.is_file() else None
        self._hashes[art.name] = sha or ""
        self._eval_cache[art.name] = memo
        if art.conversion:
            self._conversions[art.name] = art.conversion
        self.rows.append(self._scored_row(art, m, use_case, role, size, stored, sha, on_target))
        for w in (*art.warnings, *fidelity_warnings(art, m, self.cfg.evaluation)):
            self.warn(w)
        self.write()

    def _scored_row(
        self,
        art: Artifact,
        m: Metrics,
        use_case: str,
        role: str,
        size: int,
        stored: dict[str, Any],
        sha: str | None,
        on_target: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """The row of a scored artifact (every column of :class:`runner.report.table.Row`)."""
        return report.empty_row(
            **self.common,
            recipe=art.recipe,
            role=role,
            artifact=art.name,
            format=art.format,
            size_bytes=size,
            size_mb=size / MB,
            compression=(self._reference_size / size) if self._reference_size and size else None,
            **stored,
            compression_gzip=(self._reference_gzip / stored["size_gzip_bytes"])
            if self._reference_gzip and stored["size_gzip_bytes"]
            else None,
            accuracy=m.accuracy,
            accuracy_delta=m.accuracy - self._reference_accuracy,
            agreement=m.agreement if m.agreement is not None else 1.0,
            output_sqnr_db=m.output_sqnr_db,
            output_max_abs_error=m.output_max_abs_error,
            top5=m.top5,
            latency_ms=m.latency_ms,
            latency_p50_ms=m.latency_p50_ms,
            latency_p90_ms=m.latency_p90_ms,
            latency_spread=m.latency_spread,
            latency_note=m.latency_note,
            train_seconds=art.train_seconds,
            convert_seconds=art.convert_seconds,
            eval_seconds=m.eval_seconds,
            status="ok",
            error="",
            use_case=use_case,
            path=str(art.path),
            sha256=sha,
            worst_layer=art.worst_layer,
            float_layers=art.float_layers,
            route=art.route,
            note=art.note,
            **(on_target or {}),
        )

    def fail(
        self, recipe: str, artifact: str, error: str, use_case: str, role: str = "recipe"
    ) -> None:
        self.rows.append(
            report.empty_row(
                **self.common,
                recipe=recipe,
                role=role,
                artifact=artifact,
                format="tflite",
                status="failed",
                error=error,
                use_case=use_case,
            )
        )
        self.write()

    def write(self) -> None:
        out, cfg = self.output_dir, self.cfg
        report.write_tables(self.rows, out)
        if self._truth is not None and self._labels:
            self._write_predictions()
        atomic_write_json(
            out / "results.json",
            {
                # "running" until finish(): a killed job never looks complete
                "status": ("ok" if self.ok else "failed") if self.finished else "running",
                "rows": self.rows,
                "warnings": self.warnings,
                "config": OmegaConf.to_container(cfg, resolve=True),
                "seeds": self.seeds,
                "input_scaling": self.scaling.as_dict(),
                "data": self.data,
                "num_threads": int(cfg.evaluation.num_threads),
                "versions": versions(),
                "sha256": self._hashes,
                # "hit": metrics measured by an earlier job on this baseline, read from the cache
                "evaluation_cache": self._eval_cache,
                "worst_layers": self.worst_layers,
                # recurrent models: which conversion route each artifact took, why, and each
                # route's measured fidelity
                "conversion_routes": self._conversions,
                "timings": self.timings,
            },
        )

    def finish(self) -> RunResult:
        self.finished = True
        for w in self.warnings:
            log.warning("%s", w)
        self.write()
        return RunResult(self.output_dir, self.rows, self.warnings, self.worst_layers)


def _small_ints(a: Any) -> Any:
    import numpy as np

    a = np.asarray(a)
    return a.astype(np.int16) if a.size and a.max() < 2**15 and a.min() >= -(2**15) else a


def _stored(art: Artifact) -> dict[str, Any]:
    """What the file costs to download (gzip) and what pruning / clustering left in it."""
    from runner.tflite.weights import gzip_size, weight_stats

    data = art.path.read_bytes() if art.path.is_file() else b""
    out = {"size_gzip_bytes": gzip_size(data) if data else None}
    stats = weight_stats(data) if data and art.format == "tflite" else None
    out["sparsity"] = stats.sparsity if stats else None
    out["max_unique_per_channel"] = stats.max_unique_per_channel if stats else None
    return out


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def write_job_failure(cfg: DictConfig, output_dir: str | Path, error: str) -> list[dict[str, Any]]:
    """The row (and results.json) of a job that failed before it had any artifact."""
    rows = [
        report.empty_row(
            dataset=str(cfg.dataset.get("name", "?")),
            model=str(cfg.model.get("name", "?")),
            recipe=str(cfg.recipe.get("name", "?")),
            artifact="",
            status="failed",
            error=error,
            use_case=str(cfg.recipe.get("use_case", "")),
        )
    ]
    out = Path(output_dir)
    report.write_tables(rows, out)
    atomic_write_json(
        out / "results.json", {"status": "failed", "rows": rows, "versions": versions()}
    )
    return rows
