"""Chains the stages for one run: data -> baseline -> recipe -> evaluation -> report.

:func:`run` takes a composed config and an output folder, so tests and the benchmark call it
without Hydra's command line. The table is rewritten after every artifact, so a later failure
never loses a finished row.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import platform
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner import cache, report
from runner.data import Dataset, Scaling
from runner.errors import RunnerError
from runner.evaluate import EvalConfig, Metrics, evaluate_keras, evaluate_tflite
from runner.files import atomic_copy, atomic_write_json, atomic_write_text, sha256_file
from runner.quantize import Artifact, RecipeContext, summarize_error

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


def scaling_from(model_cfg: Any) -> Scaling:
    return Scaling(
        kind=str(model_cfg.get("input_scaling", "unit")),
        mean=tuple(model_cfg.get("input_mean") or (0.0,)),
        std=tuple(model_cfg.get("input_std") or (1.0,)),
    )


def build(node: DictConfig) -> Any:
    """``hydra.utils.instantiate`` that lets our own RunnerError through unwrapped."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node, _convert_="all")
    except InstantiationException as e:
        cause = e.__cause__
        while cause is not None and not isinstance(cause, RunnerError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise


def load_dataset(cfg: DictConfig) -> Dataset:
    return build(cfg.dataset)


def baseline_spec(cfg: DictConfig) -> dict[str, Any]:
    data = {
        k: v
        for k, v in OmegaConf.to_container(cfg.dataset, resolve=True).items()
        if k not in NOT_IN_CACHE_KEY
    }
    return {
        "dataset": data,
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
    model: Any
    path: Path
    cache: str  # hit, miss or pretrained
    train_seconds: float
    key: str  # the cache key (or the pretrained file): rows of one baseline share it


def get_baseline(cfg: DictConfig, data: Dataset, scaling: Scaling) -> Baseline:
    """The trained float model: loaded from ``model.path``, from the cache, or trained now."""
    import tf_keras as keras
    from hydra.utils import instantiate

    from runner.train import TrainConfig, train

    keras.backend.clear_session()  # a reused worker process (joblib) starts clean
    builder = instantiate(cfg.model, _convert_="all")
    if not cfg.model.get("needs_training", True):
        model = builder(
            input_shape=data.input_shape, num_classes=data.num_classes, **data.model_kwargs
        )
        return Baseline(
            model, Path(cfg.model.path), "pretrained", 0.0, str(Path(cfg.model.path).resolve())
        )

    def _train():
        model = builder(
            input_shape=data.input_shape, num_classes=data.num_classes, **data.model_kwargs
        )
        return train(model, data, TrainConfig.from_mapping(cfg.train), scaling)

    spec = baseline_spec(cfg)
    got = cache.get_or_train(Path(cfg.cache_dir), spec, _train)
    return Baseline(got.model, got.path, got.status, got.train_seconds, cache.cache_key(spec))


def run(cfg: DictConfig, output_dir: str | Path) -> RunResult:
    """Run one experiment; writes ``models/``, ``comparison.{csv,md}`` and ``results.json``."""

    out = Path(output_dir)
    models_dir = out / "models"
    result = RunResult(out)
    timings: dict[str, float] = {}
    ecfg = EvalConfig.from_mapping(cfg.evaluation)

    t = time.perf_counter()
    data = load_dataset(cfg)
    timings["data_seconds"] = time.perf_counter() - t
    scaling = scaling_from(cfg.model)
    log.info(
        "data: %s, %d train / %d test, input %s, %d classes",
        data.name,
        len(data.train),
        len(data.test),
        data.input_shape,
        data.num_classes,
    )

    t = time.perf_counter()
    base = get_baseline(cfg, data, scaling)
    timings["baseline_seconds"] = time.perf_counter() - t

    common = {
        "dataset": data.name,
        "model": str(cfg.model.get("name", "model")),
        "baseline_cache": base.cache,
        "baseline_key": base.key,  # a sweep keeps each baseline's float rows once, by this key
    }
    state = _State(cfg, result, common, timings, scaling)

    for name, text in data.files.items():  # e.g. word_index.json: every model needs it to be used
        atomic_write_text(models_dir / name, text)

    # 1. the float Keras model: the reference for accuracy_delta and agreement
    keras_path = (
        base.path if base.cache == "pretrained" else atomic_copy(base.path, models_dir / "float.h5")
    )
    # The float model and the float32 reference are scored once per baseline, test split and
    # evaluation settings; the other jobs of a sweep read those metrics from the cache entry.
    memo_dir = None if base.cache == "pretrained" else base.path.parent
    state.memo_dir = memo_dir
    state.eval_spec = {
        "test": cache.fingerprint(data.test.x, data.test.y),
        "scaling": scaling.as_dict(),
        "num_classes": data.num_classes,
        "evaluation": {k: v for k, v in dataclasses.asdict(ecfg).items() if k != "progress"},
        "memo_version": 2,  # 2: the float model's outputs are kept (output fidelity)
    }
    t = time.perf_counter()
    m, state.eval_cache[Path(keras_path).name] = cache.memo_metrics(
        memo_dir,
        {"keras": sha256_file(base.path), **state.eval_spec},
        lambda: evaluate_keras(
            base.model, data.test.x, data.test.y, scaling, None, data.num_classes, ecfg
        ),
    )
    timings["evaluate_seconds"] = time.perf_counter() - t
    state.reference = m
    state.add(
        Artifact(
            Path(keras_path).name,
            "float",
            Path(keras_path),
            "keras",
            False,
            train_seconds=base.train_seconds,
        ),
        m,
        use_case="the trained float model: the reference for accuracy and agreement",
    )

    # 2. the float32 TFLite reference (every size is compared with it), then 3. the recipe's artifacts
    ctx = RecipeContext(
        model=base.model,
        dataset=data,
        scaling=scaling,
        models_dir=models_dir,
        train_cfg=cfg.train,
        convert_batch_size=cfg.model.get("convert_batch_size"),
        # deterministic conversions are kept with the cached baseline (never for a user's file)
        artifact_cache=None if base.cache == "pretrained" else base.path.parent,
        recurrent=str(cfg.model.get("recurrent", "auto")),
    )
    recipe_cfgs = [cfg.reference] + ([cfg.recipe] if cfg.recipe != cfg.reference else [])
    for i, rcfg in enumerate(recipe_cfgs):
        state.produce_and_score(rcfg, ctx, data, ecfg, is_reference=i == 0)
    state.finish()
    return result


@dataclass
class _State:
    cfg: DictConfig
    result: RunResult
    common: dict[str, Any]
    timings: dict[str, float]
    scaling: Scaling
    reference: Metrics | None = None
    reference_size: int | None = None
    hashes: dict[str, str] = field(default_factory=dict)
    memo_dir: Path | None = None
    eval_spec: dict[str, Any] = field(default_factory=dict)
    eval_cache: dict[str, str] = field(default_factory=dict)  # artifact -> hit | miss | off
    worst_layers: list[str] = field(default_factory=list)  # from the layer report, worst first
    conversions: dict[str, Any] = field(default_factory=dict)  # artifact -> recurrent route

    def produce_and_score(
        self,
        rcfg: DictConfig,
        ctx: RecipeContext,
        data: Dataset,
        ecfg: EvalConfig,
        is_reference: bool = False,
    ) -> None:
        """Make the recipe's artifacts and score each; ``is_reference``: the float32 reference."""
        name = str(rcfg.get("name", "?"))
        use_case = str(rcfg.get("use_case", ""))
        t = time.perf_counter()
        try:
            recipe = build(rcfg)
            artifacts = recipe.produce(ctx)
        except Exception as e:  # noqa: BLE001 - a failing recipe is a failed row, never a lost table
            log.error("recipe %s failed: %s", name, summarize_error(e))
            log.debug("recipe %s traceback", name, exc_info=True)
            self.fail(name, f"{name}.tflite", summarize_error(e), use_case)
            return
        finally:
            self.timings["convert_seconds"] = (
                self.timings.get("convert_seconds", 0.0) + time.perf_counter() - t
            )
        if not is_reference:
            artifacts = self.layer_report(recipe, ctx, artifacts)
        for art in artifacts:
            t = time.perf_counter()
            try:
                # a .tflite file runs in LiteRT; a Keras artifact is scored as the model it holds
                evaluate, target = (
                    (evaluate_tflite, art.path)
                    if art.format == "tflite"
                    else (evaluate_keras, art.model)
                )
                args = (
                    target,
                    data.test.x,
                    data.test.y,
                    self.scaling,
                    self.reference.outputs,
                    data.num_classes,
                    ecfg,
                )
                # the sweep's shared reference is read from the baseline's cache entry if an
                # earlier job scored it; a recipe's own artifact is always measured
                spec = (
                    {
                        "artifact": sha256_file(art.path),
                        "reference": cache.fingerprint(self.reference.outputs),
                        **self.eval_spec,
                    }
                    if is_reference and art.path.is_file()
                    else {}
                )
                m, self.eval_cache[art.name] = cache.memo_metrics(
                    self.memo_dir if spec else None, spec, functools.partial(evaluate, *args)
                )
            except Exception as e:  # noqa: BLE001
                log.error("evaluating %s failed: %s", art.path, summarize_error(e))
                self.fail(name, art.path.name, f"evaluation failed: {summarize_error(e)}", use_case)
                continue
            finally:
                self.timings["evaluate_seconds"] += time.perf_counter() - t
            self.add(art, m, use_case)

    def layer_report(
        self, recipe: Any, ctx: RecipeContext, artifacts: list[Artifact]
    ) -> list[Artifact]:
        """The recipe's per-layer int8 error, worst first, and its worst layer on every row.

        ``selective`` and ``auto_int8`` make the report while producing; any other quantized
        recipe gets one with ``evaluation.layer_report=true``. A report that cannot be made is a
        warning: the artifact's row still counts.
        """
        from runner.diagnose import REPORT_COLUMNS, summary, write_rows

        rows = getattr(recipe, "report_rows", None)
        if not rows:
            if not self.cfg.evaluation.get("layer_report"):
                return artifacts
            try:
                if not hasattr(recipe, "layer_report"):
                    raise RunnerError("only post-training int8 recipes have one")
                rows = recipe.layer_report(ctx)
            except Exception as e:  # noqa: BLE001
                self.result.warnings.append(
                    f"no layer report for recipe {recipe.name}: {summarize_error(e)}"
                )
                return artifacts
            write_rows(self.result.output_dir / "layer_report.csv", rows, REPORT_COLUMNS)
            log.info("layer report: worst int8 layers: %s", summary(rows))
        if not rows:
            return artifacts
        self.worst_layers = [r["layer"] for r in rows[:3]]
        return [
            dataclasses.replace(a, worst_layer=a.worst_layer or rows[0]["layer"]) for a in artifacts
        ]

    def add(self, art: Artifact, m: Metrics, use_case: str) -> None:
        size = _size(art.path)
        if art.recipe == "none":
            self.reference_size = size
            for r in self.result.rows:  # rows added before the reference existed
                if r["size_bytes"]:
                    r["compression"] = size / r["size_bytes"]
        ref_acc = self.reference.accuracy if self.reference else m.accuracy
        sha = sha256_file(art.path) if art.path.is_file() else None
        self.hashes[art.name] = sha or ""
        self.result.rows.append(
            report.empty_row(
                **self.common,
                recipe=art.recipe,
                artifact=art.name,
                format=art.format,
                size_bytes=size,
                size_mb=size / report.MB,
                compression=(self.reference_size / size) if self.reference_size and size else None,
                accuracy=m.accuracy,
                accuracy_delta=m.accuracy - ref_acc,
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
        if art.conversion:
            self.conversions[art.name] = art.conversion
        self._check_agreement(art, self.result.rows[-1]["agreement"])
        self._check_fidelity(art, m.output_sqnr_db)
        self.write()

    def _check_agreement(self, art: Artifact, agreement: float) -> None:
        ecfg = self.cfg.evaluation
        floor = float(ecfg.min_agreement_quantized if art.quantized else ecfg.min_agreement)
        if agreement < floor:
            what = (
                "the conversion, not the quantization, changed the model"
                if not art.quantized
                else "quantization changed many predictions"
            )
            self.result.warnings.append(
                f"{art.name}: agreement with the float Keras model is {agreement:.4f} < {floor} ({what})"
            )

    def _check_fidelity(self, art: Artifact, sqnr: float | None) -> None:
        floor = self.cfg.evaluation.get("min_output_sqnr_db")
        if sqnr is None or art.quantized or floor is None or sqnr >= float(floor):
            return
        self.result.warnings.append(
            f"{art.name}: output SQNR against the float Keras model is {sqnr:.1f} dB < {floor} dB "
            "(the conversion, not the quantization, changed the outputs)"
        )

    def fail(self, recipe: str, artifact: str, error: str, use_case: str) -> None:
        self.result.rows.append(
            report.empty_row(
                **self.common,
                recipe=recipe,
                artifact=artifact,
                format="tflite",
                status="failed",
                error=error,
                use_case=use_case,
            )
        )
        self.write()

    def write(self) -> None:
        out = self.result.output_dir
        report.write_tables(self.result.rows, out)
        atomic_write_json(
            out / "results.json",
            {
                "status": "ok" if self.result.ok else "failed",
                "rows": self.result.rows,
                "warnings": self.result.warnings,
                "config": OmegaConf.to_container(self.cfg, resolve=True),
                "seeds": {
                    "seed": self.cfg.seed,
                    "train": self.cfg.train.get("seed"),
                    "split": self.cfg.dataset.get(
                        "split_seed", self.cfg.dataset.get("subset_seed")
                    ),
                    "calibration": self.cfg.recipe.get("calibration_seed"),
                },
                "input_scaling": self.scaling.as_dict(),
                "num_threads": int(self.cfg.evaluation.num_threads),
                "versions": versions(),
                "sha256": self.hashes,
                # "hit": metrics measured by an earlier job on this baseline, read from the cache
                "evaluation_cache": self.eval_cache,
                "worst_layers": self.worst_layers,
                # recurrent models: which conversion route each artifact took, why, and each
                # route's measured fidelity
                "conversion_routes": self.conversions,
                "timings": self.timings,
            },
        )

    def finish(self) -> None:
        self.result.worst_layers = self.worst_layers
        for w in self.result.warnings:
            log.warning("%s", w)
        self.write()


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
