"""Chains the stages for one run: data -> baseline -> recipe -> evaluation -> report.

:func:`run` takes a composed config and an output folder, so tests and the benchmark call it
without Hydra's command line. The pieces it chains: :class:`Scorer` scores every artifact on
the test split against the float model (and memoizes the shared ones with the baseline);
:class:`ResultsTable` owns the rows and rewrites the table after every one, so a later failure
never loses a finished row. Recipes are called through :class:`runner.recipes.base.Recipe` only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import platform
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner import cache, report
from runner.config import plugin, validate
from runner.data import Dataset, Scaling
from runner.errors import summarize_error
from runner.evaluate import EvalConfig, Metrics, evaluate_keras, evaluate_tflite
from runner.files import atomic_copy, atomic_write_json, atomic_write_text, sha256_file
from runner.recipes.base import Artifact, Recipe, RecipeContext
from runner.recipes.debugger import REPORT_COLUMNS, summary, write_rows
from runner.schema import call

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
# Dataset keys that do not change the trained model, left out of the baseline cache key.
NOT_IN_CACHE_KEY = ("test_size",)
# Model keys that only change how the trained model is converted, likewise.
MODEL_NOT_IN_CACHE_KEY = ("recurrent", "convert_batch_size")
# The evaluation keys that change a score (the memo key of the shared float rows).
SCORING_KEYS = {"batch_size", "num_threads", "latency_warmup", "latency_samples"}
# Part of every baseline cache key: bumped when a loader yields other data for the same config
# (2: the runner's own stratified split replaced scikit-learn's), so stale entries are not reused.
DATA_VERSION = 2


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
    out = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def scaling_from(model_cfg: Any, data: Dataset | None = None) -> Scaling:
    """The model's input scaling; ``auto`` is what the data needs (raw pixels: ``unit``; token
    ids and model-ready float arrays: ``none``)."""
    kind = str(model_cfg.get("input_scaling", "unit"))
    if kind == "auto":
        kind = data.default_scaling if data is not None else "unit"
    return Scaling(
        kind=kind,
        mean=tuple(model_cfg.get("input_mean") or (0.0,)),
        std=tuple(model_cfg.get("input_std") or (1.0,)),
    )


def build_recipe(node: DictConfig | Mapping[str, Any]) -> Recipe:
    """The recipe a ``conf/recipe`` node describes: its ``_target_`` called with the runner's
    keys (``meta``) and its own options."""
    p = plugin("recipe", node)
    return call(p.target, p.options, meta=p.meta)


def build_model(node: DictConfig | Mapping[str, Any]) -> Callable[..., Any]:
    """The model builder of a ``conf/model`` node; called with what the data offers
    (``input_shape``, ``num_classes``, ``vocab_size``, ``sample``), it takes what it names."""
    p = plugin("model", node)
    return functools.partial(call, p.target, p.options)


def load_dataset(cfg: DictConfig) -> Dataset:
    """The data set of ``cfg.dataset``. With ``model=pretrained``, a loader's unset
    ``image_size`` / ``color_mode`` are taken from the model's input shape."""
    node = cfg.dataset
    if not cfg.model.get("needs_training", True) and (
        node.get("image_size", 0) is None or node.get("color_mode", "") is None
    ):
        from runner.models.loading import model_input_shape

        shape = model_input_shape(cfg.model.path)
        node = node.copy()
        if shape is not None and len(shape) == 3:  # (height, width, channels)
            if node.get("image_size", 0) is None and None not in shape[:2]:
                node.image_size = [int(shape[0]), int(shape[1])]
            if node.get("color_mode", "") is None:
                node.color_mode = "grayscale" if shape[2] == 1 else "rgb"
    p = plugin("dataset", node)
    return call(p.target, p.options, name=p.meta.name)


def baseline_spec(cfg: DictConfig, data: Dataset | None = None) -> dict[str, Any]:
    """What a trained baseline depends on: the configs, the seed, and (for a user's folder or
    file) the data's own content key, so changed files are never served an old model."""
    spec: dict[str, Any] = {"data_source": data.source_key} if data and data.source_key else {}
    dataset = {
        k: v
        for k, v in OmegaConf.to_container(cfg.dataset, resolve=True).items()
        if k not in NOT_IN_CACHE_KEY
    }
    return spec | {
        "dataset": dataset,
        "model": {
            k: v
            for k, v in OmegaConf.to_container(cfg.model, resolve=True).items()
            if k not in MODEL_NOT_IN_CACHE_KEY
        },
        "train": OmegaConf.to_container(cfg.train, resolve=True),
        "seed": cfg.seed,
        "data_version": DATA_VERSION,
    }


@dataclass
class Baseline:
    model: Any  # what recipes convert (tf_keras model, Keras 3 twin, or a SavedModel source)
    path: Path
    cache: str  # hit, miss or pretrained
    train_seconds: float
    key: str  # the cache key (or the pretrained file): rows of one baseline share it
    reference: Any = None  # what the float row is scored with (the model that made the file)
    note: str = ""


def get_baseline(cfg: DictConfig, data: Dataset, scaling: Scaling) -> Baseline:
    """The trained float model: loaded from ``model.path``, from the cache, or trained now."""
    import tf_keras as keras

    from runner.data import calibration_sample
    from runner.train import TrainConfig, train

    keras.backend.clear_session()  # a reused worker process (joblib) starts clean
    builder = build_model(cfg.model)
    if not cfg.model.get("needs_training", True):
        # a user's file: a Keras 3 model's tf_keras twin is checked on real training inputs
        sample = scaling(calibration_sample(data.train, 64, 0))
        loaded = builder(
            input_shape=data.input_shape,
            num_classes=data.num_classes,
            sample=sample,
            **data.model_kwargs,
        )
        path = Path(cfg.model.path)
        return Baseline(
            loaded.model, path, "pretrained", 0.0, str(path.resolve()), loaded.original, loaded.note
        )

    def _train():
        model = builder(
            input_shape=data.input_shape, num_classes=data.num_classes, **data.model_kwargs
        )
        return train(model, data, TrainConfig.from_mapping(cfg.train), scaling)

    spec = baseline_spec(cfg, data)
    got = cache.get_or_train(Path(cfg.cache_dir), spec, _train)
    return Baseline(
        got.model, got.path, got.status, got.train_seconds, cache.cache_key(spec), got.model
    )


def run(cfg: DictConfig, output_dir: str | Path) -> RunResult:
    """Run one experiment; writes ``models/``, ``comparison.{csv,md}`` and ``results.json``.

    Raises:
        RunnerError: a bad config value (before anything is loaded or written), missing data,
            an unusable model file.
    """
    validate(cfg)
    out = Path(output_dir)
    timings: dict[str, float] = {}
    ecfg = EvalConfig.from_mapping(cfg.evaluation)

    with _timed(timings, "data_seconds"):
        data = load_dataset(cfg)
    scaling = scaling_from(cfg.model, data)
    log.info(
        "data: %s, %d train / %d test, input %s, %d classes",
        data.name,
        len(data.train),
        len(data.test),
        data.input_shape,
        data.num_classes,
    )
    with _timed(timings, "baseline_seconds"):
        base = get_baseline(cfg, data, scaling)

    table = ResultsTable(
        out,
        cfg,
        scaling,
        timings,
        data={"class_names": list(data.class_names), **data.info},
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
    for name, text in files.items():  # e.g. word_index.json: every model needs it to be used
        atomic_write_text(out / "models" / name, text)

    # 1. the float Keras model: the reference for accuracy_delta, agreement and output fidelity
    entry = None if base.cache == "pretrained" else base.path.parent  # the baseline's cache entry
    scorer = Scorer(data, scaling, ecfg, memo_dir=entry)
    keras_path = (
        base.path
        if base.cache == "pretrained"
        else atomic_copy(base.path, out / "models" / "float.h5")
    )
    with _timed(timings, "evaluate_seconds"):
        m = scorer.score_float_model(base.reference, base.path)
    table.add(
        Artifact(
            keras_path.name,
            "float",
            keras_path,
            "keras",
            False,
            train_seconds=base.train_seconds,
            note=base.note or None,
        ),
        m,
        "the trained float model: the reference for accuracy and agreement",
        scorer.memo_status,
        role="float",
    )

    # 2. the float32 TFLite reference (every size is compared with it), then 3. the recipe's
    ctx = RecipeContext(
        model=base.model,
        dataset=data,
        scaling=scaling,
        models_dir=out / "models",
        train_cfg=cfg.train,
        convert_batch_size=cfg.model.get("convert_batch_size"),
        # deterministic conversions are kept with the cached baseline (never for a user's file)
        store=cache.ConversionCache(entry) if entry is not None else None,
        recurrent=str(cfg.model.get("recurrent", "auto")),
        output_dir=out,
        pretrained=base.cache == "pretrained",
    )
    produce_and_score(cfg.reference, ctx, scorer, table, is_reference=True)
    if cfg.recipe != cfg.reference:
        produce_and_score(cfg.recipe, ctx, scorer, table, layer_report=cfg.evaluation.layer_report)
    return table.finish()


def produce_and_score(
    rcfg: DictConfig,
    ctx: RecipeContext,
    scorer: Scorer,
    table: ResultsTable,
    is_reference: bool = False,
    layer_report: bool = False,
) -> None:
    """Build the recipe, make its artifacts and score each; a failure is a failed row.

    ``is_reference``: the float32 reference, whose score is shared by a sweep's jobs.
    """
    name, use_case = str(rcfg.get("name", "?")), str(rcfg.get("use_case", ""))
    role = "reference" if is_reference else "recipe"
    try:
        with _timed(table.timings, "convert_seconds"):
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
            with _timed(table.timings, "evaluate_seconds"):
                m = scorer.score(art, memoize=is_reference)
        except Exception as e:  # noqa: BLE001
            log.error("evaluating %s failed: %s", art.path, summarize_error(e))
            table.fail(
                name, art.path.name, f"evaluation failed: {summarize_error(e)}", use_case, role
            )
            continue
        table.add(art, m, use_case, scorer.memo_status, role)


def _with_layer_report(
    recipe: Recipe,
    ctx: RecipeContext,
    artifacts: list[Artifact],
    table: ResultsTable,
    requested: bool,
) -> list[Artifact]:
    """The recipe's per-layer int8 error, worst first, and its worst layer on every row.

    ``selective`` and ``auto_int8`` make the report while producing; any other quantized recipe
    gets one when ``requested`` (``evaluation.layer_report=true``). A report that cannot be made
    is a warning: the artifact's row still counts.
    """
    try:
        rows = recipe.layer_report(ctx, requested)
    except Exception as e:  # noqa: BLE001
        table.warn(f"no layer report for recipe {recipe.name}: {summarize_error(e)}")
        return artifacts
    if not rows:
        return artifacts
    write_rows(table.output_dir / "layer_report.csv", rows, REPORT_COLUMNS)
    log.info("layer report: worst int8 layers: %s", summary(rows))
    table.worst_layers = [r["layer"] for r in rows[:3]]
    return [
        dataclasses.replace(a, worst_layer=a.worst_layer or rows[0]["layer"]) for a in artifacts
    ]


@contextlib.contextmanager
def _timed(timings: dict[str, float], key: str) -> Iterator[None]:
    """Add the block's wall time to ``timings[key]`` (also when it raises)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - t0


class Scorer:
    """Scores artifacts on the test split against the float model's outputs.

    The float model and the float32 reference are the same for every job of a sweep on one
    baseline: their metrics are memoized in the baseline's cache entry (``memo_dir``) under a key
    naming the file hash, the test split's fingerprint, the scaling and the evaluation settings.
    A recipe's own artifact is always measured afresh.
    """

    def __init__(
        self, data: Dataset, scaling: Scaling, ecfg: EvalConfig, memo_dir: Path | None
    ) -> None:
        self.data, self.scaling, self.ecfg, self.memo_dir = data, scaling, ecfg, memo_dir
        self.reference: Metrics | None = None  # the float Keras model's metrics and outputs
        self.memo_status = "off"  # of the last score: hit | miss | off
        self._spec = {
            "test": cache.fingerprint(data.test.x, data.test.y),
            "scaling": scaling.as_dict(),
            "num_classes": data.num_classes,
            "evaluation": ecfg.model_dump(include=SCORING_KEYS),
            "memo_version": 2,  # 2: the float model's outputs are kept (output fidelity)
        }

    def score_float_model(self, model: Any, path: Path) -> Metrics:
        """The float Keras model's own metrics: the reference every artifact is compared with."""
        test = self.data.test
        m, self.memo_status = cache.memo_metrics(
            self.memo_dir,
            {"keras": sha256_file(path), **self._spec} if self.memo_dir is not None else {},
            lambda: evaluate_keras(
                model, test.x, test.y, self.scaling, None, self.data.num_classes, self.ecfg
            ),
        )
        self.reference = m
        return m

    def score(self, art: Artifact, memoize: bool = False) -> Metrics:
        """Run the artifact (a .tflite in LiteRT, a Keras model as itself) on the test split."""
        assert self.reference is not None, "score_float_model comes first"
        evaluate, target = (
            (evaluate_tflite, art.path) if art.format == "tflite" else (evaluate_keras, art.model)
        )
        test = self.data.test

        def measure() -> Metrics:
            return evaluate(
                target,
                test.x,
                test.y,
                self.scaling,
                self.reference.outputs,
                self.data.num_classes,
                self.ecfg,
            )

        memo = memoize and art.path.is_file() and self.memo_dir is not None
        spec = (
            {
                "artifact": sha256_file(art.path),
                "reference": cache.fingerprint(self.reference.outputs),
                **self._spec,
            }
            if memo
            else {}
        )
        m, self.memo_status = cache.memo_metrics(self.memo_dir if memo else None, spec, measure)
        return m


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
    ) -> None:
        self.output_dir, self.cfg, self.scaling = output_dir, cfg, scaling
        self.data = data or {}  # the data set's class names and what its loader found
        self.timings, self.common = timings, common
        self.rows: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        self.worst_layers: list[str] = []  # from the layer report, worst first
        self._reference_size: int | None = None
        self._reference_accuracy: float | None = None  # the float model's: the first row
        self._hashes: dict[str, str] = {}
        self._eval_cache: dict[str, str] = {}  # artifact -> hit | miss | off
        self._conversions: dict[str, Any] = {}  # artifact -> recurrent route, why, trials

    @property
    def ok(self) -> bool:
        return all(r["status"] == "ok" for r in self.rows)

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def add(
        self, art: Artifact, m: Metrics, use_case: str, memo: str = "off", role: str = "recipe"
    ) -> None:
        """A scored row; ``role``: float (the Keras model), reference (``recipe@reference``,
        what compression is measured against) or recipe."""
        size = _size(art.path)
        if role == "reference" and self._reference_size is None:
            self._reference_size = size
            for r in self.rows:  # rows added before the reference existed
                if r["size_bytes"]:
                    r["compression"] = size / r["size_bytes"]
        if self._reference_accuracy is None:
            self._reference_accuracy = m.accuracy
        sha = sha256_file(art.path) if art.path.is_file() else None
        self._hashes[art.name] = sha or ""
        self._eval_cache[art.name] = memo
        if art.conversion:
            self._conversions[art.name] = art.conversion
        self.rows.append(
            report.empty_row(
                **self.common,
                recipe=art.recipe,
                role=role,
                artifact=art.name,
                format=art.format,
                size_bytes=size,
                size_mb=size / report.MB,
                compression=(self._reference_size / size)
                if self._reference_size and size
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
            )
        )
        for w in (*art.warnings, *fidelity_warnings(art, m, self.cfg.evaluation)):
            self.warn(w)
        self.write()

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
        atomic_write_json(
            out / "results.json",
            {
                "status": "ok" if self.ok else "failed",
                "rows": self.rows,
                "warnings": self.warnings,
                "config": OmegaConf.to_container(cfg, resolve=True),
                "seeds": {
                    "seed": cfg.seed,
                    "train": cfg.train.get("seed"),
                    "split": cfg.dataset.get("split_seed", cfg.dataset.get("subset_seed")),
                    "calibration": cfg.recipe.get("calibration_seed"),
                },
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
        for w in self.warnings:
            log.warning("%s", w)
        self.write()
        return RunResult(self.output_dir, self.rows, self.warnings, self.worst_layers)


def fidelity_warnings(art: Artifact, m: Metrics, ecfg: Any) -> list[str]:
    """Agreement and output-SQNR floors (``evaluation.min_*``), named by artifact."""
    out = []
    floor = float(ecfg.min_agreement_quantized if art.quantized else ecfg.min_agreement)
    agreement = m.agreement if m.agreement is not None else 1.0
    if agreement < floor:
        what = (
            "quantization changed many predictions"
            if art.quantized
            else "the conversion, not the quantization, changed the model"
        )
        out.append(
            f"{art.name}: agreement with the float Keras model is {agreement:.4f} < {floor} ({what})"
        )
    sqnr_floor = ecfg.min_output_sqnr_db
    if (
        not art.quantized
        and m.output_sqnr_db is not None
        and sqnr_floor is not None
        and m.output_sqnr_db < float(sqnr_floor)
    ):
        out.append(
            f"{art.name}: output SQNR against the float Keras model is {m.output_sqnr_db:.1f} dB "
            f"< {sqnr_floor} dB (the conversion, not the quantization, changed the outputs)"
        )
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
