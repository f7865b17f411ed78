"""Chains the stages for one run: data -> baseline -> recipe -> evaluation -> report.

:func:`run` takes a composed config and an output folder, so tests and the benchmark call it
without Hydra's command line. Its stages live by concern: :mod:`runner.baseline` (the data set
and the float model), :mod:`runner.evaluation.scoring` (every artifact against the float model, the shared
ones memoized), :mod:`runner.report.results` (the rows and the files that report them, rewritten after
every row). Recipes are called through :class:`runner.recipes.base.Recipe` only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from runner import cache
from runner.artifacts import Artifact
from runner.baseline import Baseline, get_baseline, load_dataset, scaling_from
from runner.config import plugin, seeds, validate
from runner.console import check_interrupt
from runner.data import Dataset
from runner.errors import summarize_error
from runner.evaluation.metrics import EvalConfig
from runner.evaluation.scoring import Scorer
from runner.files import atomic_copy, atomic_write_text, atomic_write_with
from runner.recipes.base import Recipe, RecipeContext
from runner.report.results import ResultsTable, RunResult, write_job_failure
from runner.schema import call
from runner.targets.base import Target, on_target

__all__ = ["build_recipe", "load_dataset", "run", "scaling_from", "write_job_failure"]

log = logging.getLogger(__name__)


def build_target(node: DictConfig | Mapping[str, Any]) -> Target:
    """The device target a ``conf/target`` node describes (``host``: no check)."""
    p = plugin("target", node)
    return call(p.target, p.options, meta=p.meta)


def build_recipe(node: DictConfig | Mapping[str, Any]) -> Recipe:
    """The recipe a ``conf/recipe`` node describes: its ``_target_`` called with the runner's
    keys (``meta``) and its own options."""
    p = plugin("recipe", node)
    return call(p.target, p.options, meta=p.meta)


def recipe_by_name(name: str) -> Recipe:
    """A recipe of ``conf/recipe`` by its file name (for recipes that export through another)."""
    from runner.config import compose

    return build_recipe(compose([f"recipe={name}"]).recipe)


def run(
    cfg: DictConfig, output_dir: str | Path, timings: dict[str, float] | None = None
) -> RunResult:
    """Run one experiment; writes ``models/``, ``comparison.{csv,md}`` and ``results.json``.

    ``timings``: stage timings measured before the run (the command line's TensorFlow start),
    recorded with the run's own in ``results.json``.

    Raises:
        RunnerError: a bad config value (before anything is loaded or written), missing data,
            an unusable model file.
    """
    validate(cfg)
    t0 = time.perf_counter()
    out, timings = Path(output_dir), dict(timings or {})
    with _timed(timings, "data_seconds", str(cfg.dataset.get("name", ""))):
        data = load_dataset(cfg)
    scaling = scaling_from(cfg.model, data)
    log.info(
        "data: %s, %d train / %d test, input %s, %d classes",
        *(data.name, len(data.train), len(data.test), data.input_shape, data.num_classes),
    )
    with _timed(timings, "baseline_seconds"):
        base = get_baseline(cfg, data, scaling)
    table = open_table(cfg, out, data, scaling, base, timings)
    # 1. the float Keras model: the reference for accuracy_delta, agreement and output fidelity
    entry = base.entry  # its cache entry (the trained model's, or the user's file's)
    scorer = Scorer(data, scaling, EvalConfig.from_mapping(cfg.evaluation), memo_dir=entry)
    score_float_model(base, out, scorer, table)
    # 2. the reference recipe (every size is compared with it), then 3. the run's recipe
    ctx = recipe_context(cfg, base, data, scaling, out, entry)
    target = build_target(cfg.target)
    produce_and_score(cfg.reference, ctx, scorer, table, target, is_reference=True)
    check_interrupt()  # a Ctrl-C that a converter swallowed into a failed row
    if cfg.recipe != cfg.reference:
        layer_report = cfg.evaluation.layer_report
        produce_and_score(cfg.recipe, ctx, scorer, table, target, layer_report=layer_report)
    check_interrupt()
    # the job's wall time (with the framework start a command line paid before the run)
    table.timings["job_seconds"] = time.perf_counter() - t0 + timings.get("framework_seconds", 0)
    return table.finish()


def recipe_context(
    cfg: DictConfig, base: Baseline, data: Dataset, scaling: Any, out: Path, entry: Path | None
) -> RecipeContext:
    """What the run's recipes receive: the baseline, the data, where to write, the cache."""
    return RecipeContext(
        model=base.model,
        dataset=data,
        scaling=scaling,
        models_dir=out / "models",
        train_cfg=cfg.train,
        convert_batch_size=cfg.model.get("convert_batch_size"),
        # deterministic conversions are kept in the baseline's cache entry
        store=cache.ConversionCache(entry) if entry is not None else None,
        recurrent=str(cfg.model.get("recurrent", "auto")),
        output_dir=out,
        pretrained=base.cache == "pretrained",
        recipes=recipe_by_name,
    )


def open_table(
    cfg: DictConfig,
    out: Path,
    data: Dataset,
    scaling: Any,
    base: Baseline,
    timings: dict[str, float],
) -> ResultsTable:
    """The run's table, with the data's warnings, and the files every model needs beside it
    (``labels.json``, a text set's ``word_index.json``) written."""
    table = ResultsTable(
        out,
        cfg,
        scaling,
        timings,
        data={"class_names": list(data.class_names), **data.info},
        truth=data.test.y,
        seeds=seeds(cfg),
        common={
            "dataset": data.name,
            "model": str(cfg.model.get("name", "model")),
            "baseline_cache": base.cache,
            "baseline_key": base.key,  # a sweep keeps each baseline's float rows once, by this key
        },
    )
    for w in data.warnings:
        table.warn(w)
    files = dict(data.files)
    if data.class_names:  # what each output index means, beside the models
        files.setdefault("labels.json", json.dumps(list(data.class_names), ensure_ascii=False))
    for name, text in files.items():
        atomic_write_text(out / "models" / name, text)
    return table


def score_float_model(base: Baseline, out: Path, scorer: Scorer, table: ResultsTable) -> None:
    """The float model's row (``float.h5``, or the user's own file)."""
    if base.cache == "pretrained":
        keras_path = base.path
    elif base.path is None:  # trained but not cached: saved here directly
        keras_path = atomic_write_with(
            out / "models" / "float.h5", lambda tmp: base.model.save(tmp, include_optimizer=False)
        )
    else:
        keras_path = atomic_copy(base.path, out / "models" / "float.h5")
    with _timed(table.timings, "evaluate_seconds", keras_path.name):
        m = scorer.score_float_model(base.reference, keras_path)
    art = Artifact(
        keras_path.name,
        "float",
        keras_path,
        "keras",
        False,
        train_seconds=base.train_seconds,
        note=base.note or None,
    )
    use = "the trained float model: the reference for accuracy and agreement"
    table.add(art, m, use, scorer.memo_status, role="float")


def produce_and_score(
    rcfg: DictConfig,
    ctx: RecipeContext,
    scorer: Scorer,
    table: ResultsTable,
    target: Target | None = None,
    is_reference: bool = False,
    layer_report: bool = False,
) -> None:
    """Build the recipe, make its artifacts and score each (on the device ``target`` too); a
    failure is a failed row.

    ``is_reference``: the float32 reference, whose score is shared by a sweep's jobs.
    """
    name, use_case = str(rcfg.get("name", "?")), str(rcfg.get("use_case", ""))
    role = "reference" if is_reference else "recipe"
    try:
        with _timed(table.timings, "convert_seconds", name):
            recipe = build_recipe(rcfg)
            artifacts = recipe.produce(ctx)
    except Exception as e:  # noqa: BLE001 - a failing recipe is a failed row, never a lost table
        log.error("recipe %s failed: %s", name, summarize_error(e))
        log.debug("recipe %s traceback", name, exc_info=True)
        table.fail(name, f"{name}.tflite", summarize_error(e), use_case, role)
        return
    if is_reference and artifacts:
        ctx.reference_path = artifacts[0].path  # what a .tflite backend (AEQ) starts from
    if not is_reference:
        artifacts = _with_layer_report(recipe, ctx, artifacts, table, layer_report)
    for art in artifacts:
        try:
            with _timed(table.timings, "evaluate_seconds", art.path.name):
                m = scorer.score(art, memoize=is_reference)
        except Exception as e:  # noqa: BLE001
            log.error("evaluating %s failed: %s", art.path, summarize_error(e))
            table.fail(
                name, art.path.name, f"evaluation failed: {summarize_error(e)}", use_case, role
            )
            continue
        on_board = (
            on_target(target, art, m, ctx.dataset.test, ctx.scaling, scorer.memo_dir)
            if target
            else {}
        )
        table.add(art, m, use_case, scorer.memo_status, role, on_board)


def _with_layer_report(
    recipe: Recipe,
    ctx: RecipeContext,
    artifacts: list[Artifact],
    table: ResultsTable,
    requested: bool,
) -> list[Artifact]:
    """The recipe's per-layer int8 error, worst first, and its worst layer on every row; each
    layer's weight sparsity and unique values per channel read from the written file beside it.

    ``selective`` and ``auto_int8`` make the report while producing (it is on their artifact);
    any other quantized recipe gets one when ``requested`` (``evaluation.layer_report=true``). A
    report that cannot be made is a warning (the artifact's row still counts), and a requested
    report then holds the weight columns alone (a pruned or clustered file's, for example).
    """
    rows = next((a.layer_rows for a in artifacts if a.layer_rows), None)
    try:
        rows = rows or recipe.layer_report(ctx, requested)
    except Exception as e:  # noqa: BLE001
        table.warn(f"no layer report for recipe {recipe.name}: {summarize_error(e)}")
        rows = None
    if not rows and not requested:
        return artifacts
    weights = _layer_weights(artifacts)
    if not rows:
        if weights:
            table.layer_report(list(weights.values()), ranked=False)
        return artifacts
    table.layer_report([r | _weight_columns(weights.get(r["layer"])) for r in rows])
    return [
        dataclasses.replace(a, worst_layer=a.worst_layer or rows[0]["layer"]) for a in artifacts
    ]


def _layer_weights(artifacts: list[Artifact]) -> dict[str, dict[str, Any]]:
    """{Keras layer: its weight columns} of the first written .tflite (empty when none)."""
    from runner import tflite
    from runner.tflite.weights import op_weight_stats

    path = next((a.path for a in artifacts if a.path.suffix == ".tflite"), None)
    if path is None or not path.is_file():
        return {}
    out: dict[str, dict[str, Any]] = {}
    for r in op_weight_stats(path.read_bytes()):  # a layer's first weighted op speaks for it
        layer = tflite.layer_name(r["tensor_name"])
        out.setdefault(layer, {"layer": layer, **r})
    return out


def _weight_columns(stats: dict[str, Any] | None) -> dict[str, Any]:
    keys = ("weight_sparsity", "unique_per_channel")
    return {k: (stats or {}).get(k) for k in keys}


@contextlib.contextmanager
def _timed(timings: dict[str, float], key: str, what: str = "") -> Iterator[None]:
    """Add the block's wall time to ``timings[key]`` (also when it raises), and say in the log
    what the process holds after it (resident memory now, and its peak so far)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        seconds = time.perf_counter() - t0
        timings[key] = timings.get(key, 0.0) + seconds
        now, peak = memory_mb()
        stage = key.removesuffix("_seconds") + (f" {what}" if what else "")
        log.info("%s: %.1f s; memory %.0f MB resident, peak %.0f MB", stage, seconds, now, peak)


def memory_mb() -> tuple[float, float]:
    """(resident, peak resident) MB of this process (0 where the platform does not say)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (
        1 << 20 if sys.platform == "darwin" else 1 << 10
    )
    try:
        with open("/proc/self/statm") as f:
            now = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)
    except (OSError, ValueError, IndexError):
        now = 0.0
    return now, peak
