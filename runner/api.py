"""The runner from Python: quantize a Keras model, compare recipes, predict a sentence's label.

    from runner.api import compare, quantize_model, prediction_label
    quantize_model("model.h5", "model_fp16.tflite")             # float16 by default
    table, verdicts = compare("cnn.keras", ["float16", "full_integer"], "data.npz")
    prediction_label("这 是 一条 新闻", "model_fp16.tflite")        # -> 0 or 1

Both use the same code as the runner: recipes come from ``conf/recipe/*.yaml``, conversion from
:func:`runner.recipes.conversion.convert`, inference from the LiteRT interpreter.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

import runner  # noqa: F401 - TF_USE_LEGACY_KERAS before TensorFlow
from runner.arguments import checked_arguments, checked_flag, checked_inputs
from runner.artifacts import Artifact
from runner.data import Dataset, Scaling
from runner.errors import RunnerError
from runner.files import atomic_write_bytes
from runner.predict import predict_labels, prediction_label
from runner.recipes.base import Recipe, RecipeContext

__all__ = ["compare", "predict_labels", "prediction_label", "quantize_model"]

log = logging.getLogger(__name__)


def quantize_model(
    model_path: str | os.PathLike,
    quantized_model_path: str | os.PathLike,
    recipe: str = "float16",
    *,
    calibration: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    safe_mode: bool = True,
    recurrent: str = "auto",
    check: bool = True,
    **options: Any,
) -> Path:
    """Quantize a Keras model file with any recipe of ``conf/recipe/``, check it, write it.

    The recipe runs through the same :class:`~runner.recipes.base.Recipe` protocol as in
    ``python -m runner``: ``qat`` fine-tunes, ``selective``/``auto_int8`` keep their float ops,
    the ai-edge-quantizer recipes start from a float32 conversion made first. For a deterministic
    recipe the file is byte for byte the one the runner writes for the same model and data.
    The result is run in LiteRT and compared with the Keras model on ``calibration`` when given,
    else on inputs drawn from the model's input domain (token ids below the embedding's row
    count, zero-padded at the front like ``pad_sequences``; images uniform in [0, 1)).

    Args:
        model_path: ``.h5``, ``.keras`` or SavedModel folder.
        quantized_model_path: where the ``.tflite`` goes.
        recipe: a file name in ``conf/recipe/`` (``float16``, ``full_integer``, ``qat`` ...).
        calibration: model-ready training inputs (scaled images or token-id sequences). Recipes
            that calibrate (``full_integer``, ``int16x8``), fine-tune (``qat``) or check a budget
            (``auto_int8``, ``selective``) need them; the error says which.
        labels: the labels of ``calibration`` (QAT fits them, auto_int8's accuracy budget scores
            them); without them the float model's own predictions stand in.
        safe_mode: refuse ``Lambda`` layers (arbitrary code) in the model file.
        recurrent: ``auto`` | ``fused`` | ``unrolled``: how LSTM/GRU layers are converted.
        check: refuse to write a float (unquantized) file that is not faithful to the Keras
            model (:mod:`runner.evaluation.fidelity`: output SQNR below 30 dB, or a label
            changed on a sample that was no near tie); quantized recipes are only reported.
        **options: the recipe's options, e.g. ``calibration_samples=100`` (checked like
            ``recipe.<key>=`` on the command line: a typo names the closest key).

    Returns:
        The path written.

    Raises:
        RunnerError: missing/unreadable model, unknown recipe or option, missing data the
            recipe needs, a conversion the recipe cannot do (with the reason), or, with
            ``check``, a float conversion that no route makes faithful.
    """
    from runner.models.loading import load_model

    calibration, labels = checked_arguments(
        model_path, quantized_model_path, recipe, calibration, labels
    )
    check = checked_flag("check", check)
    cfg = _compose(recipe)  # once: the recipe's node and the train settings QAT reads
    rec = _recipe(cfg.recipe, options)
    model = load_model(model_path, safe_mode=safe_mode)
    calibration = checked_inputs(model, calibration)
    needed = rec.data_needed()
    if needed and calibration is None:
        raise RunnerError(
            f"recipe {recipe!r} {needed}: pass calibration=<model-ready training inputs> "
            "(and labels=<their labels>)"
        )
    data = _api_dataset(model, calibration, labels)
    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=_parent(quantized_model_path)) as tmp:
        ctx = RecipeContext(
            model=model,
            dataset=data,
            scaling=Scaling("none"),
            models_dir=Path(tmp) / "models",
            train_cfg=cfg.train,
            recurrent=recurrent,
            output_dir=Path(tmp),
            pretrained=True,
            recipes=lambda name: _recipe(_compose(name).recipe, {}),
        )
        art = _produce(rec, ctx, recipe, model_path)
        flatbuffer = art.path.read_bytes()
    _check_fidelity(
        model, flatbuffer, data, rec, recipe, model_path, check, calibration is not None
    )
    out = atomic_write_bytes(quantized_model_path, flatbuffer)
    log.info("wrote %s (%d bytes)", out, len(flatbuffer))
    return out


def compare(
    model_path: str | os.PathLike,
    recipes: Iterable[str],
    data: str | os.PathLike | dict[str, np.ndarray],
    budget: dict[str, Any] | None = None,
    *,
    output_dir: str | os.PathLike | None = None,
    overrides: Iterable[str] = (),
) -> tuple[Any, list[Any]]:
    """Run ``recipes`` on a trained model and say which file to ship, for notebooks.

    Args:
        model_path: a ``.keras``/``.h5`` file or SavedModel folder (``model=pretrained``).
        recipes: names of ``conf/recipe/`` files (``float16``, ``full_integer``, ``qat`` ...).
        data: an ``.npz`` file (``dataset=arrays``: ``x_train``/``y_train``/``x_test``/``y_test``),
            a folder of class folders (``dataset=image_folder``), or those four arrays in a dict.
        budget: ``select`` keys (``{"max_size_mb": 1.0, "objective": "accuracy"}``).
        output_dir: where the runs' folders go (default: a new folder under the system temp).
        overrides: any other ``key=value`` of the command line (``evaluation.latency_samples=0``).

    Returns:
        (the table as a pandas DataFrame, one row per artifact, the float rows once; the verdicts:
        one :class:`runner.report.select.Verdict` per data set and model).

    Raises:
        RunnerError: a bad model, data, recipe name or budget key, in one line.
    """
    import pandas as pd

    from runner.config import compose, validate
    from runner.pipeline import run
    from runner.report import COLUMNS, recommend
    from runner.report.select import SelectOptions
    from runner.schema import parse

    out = Path(output_dir or tempfile.mkdtemp(prefix="tfq-compare-"))
    select = parse(budget or {}, SelectOptions, "budget", strict=True)
    data_args = _data_overrides(data, out)
    rows: list[dict[str, Any]] = []
    for recipe in recipes:
        cfg = compose(
            ["model=pretrained", f"model.path={Path(model_path).expanduser()}", *data_args]
            + [f"recipe={recipe}", f"cache_dir={out / 'cache'}", *overrides]
        )
        validate(cfg)
        result = run(cfg, out / recipe)
        first = not rows  # the float model's and the reference's rows once
        rows += [r for r in result.rows if first or r.get("role") == "recipe"]
    table = pd.DataFrame(rows, columns=COLUMNS)
    return table, recommend.verdicts(rows, select)  # type: ignore[arg-type]


def _data_overrides(data: Any, out: Path) -> list[str]:
    """The ``dataset=...`` overrides for a file, a folder, or arrays (saved to ``out``)."""
    if isinstance(data, dict):
        path = out / "data.npz"
        out.mkdir(parents=True, exist_ok=True)
        np.savez(path, **{k: np.asarray(v) for k, v in data.items()})
        return ["dataset=arrays", f"dataset.path={path}"]
    path = Path(data).expanduser()
    if path.is_dir():
        return ["dataset=image_folder", f"dataset.path={path}"]
    if path.suffix == ".npz":
        return ["dataset=arrays", f"dataset.path={path}"]
    raise RunnerError(
        f"data={data}: expected an .npz file, a folder of class folders, or a dict of arrays "
        "(x_train, y_train, x_test, y_test)"
    )


def _compose(recipe: str) -> Any:
    from runner.config import compose
    from runner.errors import summarize_error

    try:
        return compose([f"recipe={recipe}"])
    except Exception as e:  # noqa: BLE001 - Hydra's own error names the valid choices
        raise RunnerError(f"bad recipe {recipe!r}: {summarize_error(e)}") from None


def _recipe(recipe_node: Any, options: dict[str, Any]) -> Recipe:
    """The recipe of a composed ``recipe`` node with ``options`` over it, checked by its schema."""
    from runner.config import schema_of
    from runner.pipeline import build_recipe
    from runner.schema import problems

    node = OmegaConf.to_container(recipe_node, resolve=True)
    node = OmegaConf.to_container(OmegaConf.merge(node, options), resolve=True)
    bad = problems(node, schema_of("recipe", node), "recipe")
    if bad:
        raise RunnerError("bad recipe option: " + "\nbad recipe option: ".join(bad))
    return build_recipe(node)


def _api_dataset(model, calibration: np.ndarray | None, labels: np.ndarray | None) -> Dataset:
    """The data a recipe sees: the caller's inputs (else domain inputs, for the fidelity probe
    of data-free recipes) with their labels (else the float model's predicted labels)."""
    from runner.data import Split
    from runner.evaluation.metrics import labels_from_outputs

    token_ids = takes_token_ids(model)
    x = np.asarray(calibration) if calibration is not None else domain_inputs(model, 256, token_ids)
    if token_ids and not np.issubdtype(x.dtype, np.integer):
        x = x.astype(np.int64)  # token ids given as floats: indices all the same
    classes = int(model.output_shape[-1])
    if labels is None:
        labels = labels_from_outputs(np.asarray(model.predict(x, batch_size=64, verbose=0)))
    y = np.asarray(labels).astype(np.int64).reshape(-1)
    if len(y) != len(x):
        raise RunnerError(f"labels has {len(y)} entries but calibration has {len(x)} inputs")
    split = Split(x, y)
    return Dataset("calibration", split, split, max(classes, 2))


def _produce(rec: Recipe, ctx: RecipeContext, recipe: str, model_path: Any) -> Artifact:
    """The recipe's ``.tflite`` artifact (its float32 reference made first when it needs one)."""
    from runner.errors import summarize_error

    try:
        if rec.needs_reference:
            (ref,) = _recipe(_compose("none").recipe, {}).produce(ctx)
            ctx.reference_path = ref.path
        artifacts = rec.produce(ctx)
    except RunnerError:
        raise
    except Exception as e:  # noqa: BLE001 - the converter's own reason, in one line
        raise RunnerError(
            f"recipe {recipe!r} cannot convert {model_path}: {summarize_error(e)}"
        ) from None
    art = next((a for a in artifacts if a.format == "tflite"), None)
    if art is None:
        raise RunnerError(f"recipe {recipe!r} made no .tflite file")
    return art


def _check_fidelity(model, flatbuffer, data, rec, recipe, model_path, check, real) -> None:
    """Refuse (``check``) or warn about a float file that is not faithful to the Keras model
    (:mod:`runner.evaluation.fidelity`: SQNR, and changed labels only on near ties); quantized files are
    reported, never refused."""
    from runner.data import Scaling
    from runner.evaluation.fidelity import compare
    from runner.evaluation.interpreter import TFLiteModel
    from runner.recipes.recurrent import has_recurrent

    probe = data.train.x[:256]
    ref = np.asarray(model.predict(probe, batch_size=64, verbose=0))
    out = TFLiteModel(content=flatbuffer).predict(probe, Scaling("none"), batch_size=len(probe))
    f = compare(ref, out)
    where = "the calibration inputs" if real else "inputs drawn from its input domain"
    what = f"{recipe} TFLite vs the Keras model on {where}: {f.describe()}"
    if rec.quantized or f.faithful:
        log.info("%s", what)
        return
    hint = (
        "recurrent='unrolled' converts the LSTM/GRU without the fused kernel"
        if has_recurrent(model)
        else "recipe='none' shows whether the float32 conversion itself drifts"
    )
    if check:
        raise RunnerError(
            f"the converted file is not faithful to {model_path}: {what}. Nothing was written; "
            f"{hint}, or pass check=False to write it anyway"
        )
    log.warning("%s: not faithful (%s)", what, hint)


def _parent(path: str | os.PathLike) -> Path:
    parent = Path(path).expanduser().resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    return parent


def domain_inputs(model, n: int, token_ids: bool, seed: int = 0) -> np.ndarray:
    """``n`` inputs a model can take when no real ones are given: token-id sequences (ids below
    the embedding's rows, random lengths, zero-padded at the front) or values in [0, 1)."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(d) if d else 1 for d in model.input_shape[1:])
    dtype = np.dtype(model.inputs[0].dtype.as_numpy_dtype)
    if not token_ids:
        return rng.random((n, *shape)).astype(dtype)
    embedding = next((la for la in model.layers if type(la).__name__ == "Embedding"), None)
    rows = embedding.input_dim if embedding is not None else 2  # unknown vocabulary: ids 0-1
    length = shape[0]
    x = rng.integers(1, max(2, rows), size=(n, length))
    keep = rng.integers(1, length + 1, size=n)
    x[np.arange(length)[None, :] < (length - keep)[:, None]] = 0
    return x.astype(dtype)


def takes_token_ids(model) -> bool:
    """Does the model start with an Embedding, or take integers (so its input holds token ids)?"""
    if not model.layers:  # a SavedModel: judged by its input type
        return bool(model.inputs[0].dtype.is_integer)
    for layer in model.layers:
        name = type(layer).__name__
        if name == "InputLayer":
            continue
        return name == "Embedding"
    return False
