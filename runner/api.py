"""The seed task as two function calls: quantize a Keras model, predict a sentence's label.

    from runner.api import quantize_model, prediction_label
    quantize_model("model.h5", "model_fp16.tflite")             # float16, < 4 MB for the seed model
    prediction_label("这 是 一条 新闻", "model_fp16.tflite")        # -> 0 or 1

Both use the same code as the runner: recipes come from ``conf/recipe/*.yaml``, conversion from
:func:`runner.recipes.conversion.convert`, inference from the LiteRT interpreter.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

import runner  # noqa: F401 - TF_USE_LEGACY_KERAS before TensorFlow
from runner.errors import RunnerError

log = logging.getLogger(__name__)

WORD_INDEX = "word_index.json"


def quantize_model(
    model_path: str | os.PathLike,
    quantized_model_path: str | os.PathLike,
    recipe: str = "float16",
    *,
    calibration: np.ndarray | None = None,
    safe_mode: bool = True,
    recurrent: str = "auto",
    check: bool = True,
    **options: Any,
) -> Path:
    """Convert a Keras model file with a named recipe, check the result, write it atomically.

    The converted file is run in LiteRT and compared with the Keras model on ``calibration`` when
    given, else on inputs drawn from the model's input domain (token ids below the embedding's
    row count, zero-padded at the front like ``pad_sequences``; images uniform in [0, 1)). For a
    recurrent model the faithful conversion route is chosen this way (see ``recurrent``).

    Args:
        model_path: ``.h5``, ``.keras`` or SavedModel folder.
        quantized_model_path: where the ``.tflite`` goes.
        recipe: a file name in ``conf/recipe/`` (``float16``, ``dynamic_range``, ``full_integer`` ...).
        calibration: model-ready sample inputs (scaled images or token-id sequences), needed by
            recipes that calibrate activations (``full_integer``, ``int16x8``).
        safe_mode: refuse ``Lambda`` layers (arbitrary code) in the model file.
        recurrent: ``auto`` | ``fused`` | ``unrolled``: how LSTM/GRU layers are converted.
        check: refuse to write a float (unquantized) file whose outputs drift from the Keras
            model's (output SQNR below 30 dB or a changed label); quantized recipes only warn.
        **options: recipe keys to override, e.g. ``calibration_samples=100``.

    Returns:
        The path written.

    Raises:
        RunnerError: missing/unreadable model, unknown recipe, missing calibration data, a
            conversion the recipe cannot do (with the converter's reason), or, with ``check``,
            a float conversion that no route makes faithful.
    """
    from runner.config import compose
    from runner.errors import summarize_error
    from runner.files import atomic_write_bytes
    from runner.models.loading import load_model
    from runner.pipeline import build
    from runner.recipes.conversion import (
        FLOAT_FIDELITY_DB,
        convert_checked,
        has_recurrent,
        measure_fidelity,
    )

    model = load_model(model_path, safe_mode=safe_mode)
    try:
        cfg = compose(
            [f"recipe={recipe}", *(f"recipe.{k}={_hydra_value(v)}" for k, v in options.items())]
        )
    except Exception as e:  # noqa: BLE001 - Hydra's own error names the valid choices
        raise RunnerError(f"bad recipe {recipe!r} or option: {summarize_error(e)}") from None
    rec = build(cfg.recipe)
    calib = None
    if rec.options.representative_dataset:
        if calibration is None:
            raise RunnerError(
                f"recipe {recipe!r} calibrates activations: pass calibration=<array of model-ready sample inputs>"
            )
        calib = np.asarray(calibration)[: rec.calibration_samples or None]
    token_ids = takes_token_ids(model)
    probe = (
        np.asarray(calibration)[:256]
        if calibration is not None
        else domain_inputs(model, 256, token_ids)
    )
    try:
        done = convert_checked(
            model,
            rec.options,
            calib,
            token_ids=token_ids,
            recurrent=recurrent,
            probe=probe if has_recurrent(model) else None,
            quantized=rec.quantized,
        )
        trial = next((t for t in done.trials if t.route == done.route), None)
        if trial is None or trial.output_sqnr_db is None:
            trial = measure_fidelity(model, done.flatbuffer, probe)
    except RunnerError:
        raise
    except Exception as e:  # noqa: BLE001
        raise RunnerError(
            f"recipe {recipe!r} cannot convert {model_path}: {summarize_error(e)}"
        ) from None
    where = "the calibration inputs" if calibration is not None else "inputs from its input domain"
    what = (
        f"{recipe} TFLite vs the Keras model on {len(probe)} {where}: output SQNR "
        f"{trial.output_sqnr_db:.1f} dB, label agreement {trial.agreement:.4f}"
        + (f", route {done.route}" if done.route else "")
    )
    faithful = trial.output_sqnr_db >= FLOAT_FIDELITY_DB and trial.agreement >= 0.995
    if not faithful and not rec.quantized and check:
        raise RunnerError(
            f"the converted file is not faithful to {model_path}: {what}. Nothing was written; "
            "try recurrent='unrolled', or pass check=False to write it anyway"
        )
    if not faithful:
        log.warning("%s (below %.0f dB or 0.995)", what, FLOAT_FIDELITY_DB)
    else:
        log.info("%s", what)
    out = atomic_write_bytes(quantized_model_path, done.flatbuffer)
    log.info("wrote %s (%d bytes)", out, len(done.flatbuffer))
    return out


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


def prediction_label(
    test_sentence: str,
    model_path: str | os.PathLike,
    word_index_path: str | os.PathLike | None = None,
) -> int:
    """Predict the label (0/1 for a sigmoid head, the argmax otherwise) of one sentence.

    The vocabulary is ``word_index_path``, else the ``word_index.json`` beside the model, else
    the one in the working directory. Raw Chinese is segmented with jieba; space-segmented text
    is used as it is. The sentence is padded to the model's input length.
    """
    return predict_labels([test_sentence], model_path, word_index_path)[0]


def predict_labels(
    sentences: Iterable[str],
    model_path: str | os.PathLike,
    word_index_path: str | os.PathLike | None = None,
) -> list[int]:
    """:func:`prediction_label` for many sentences: one vocabulary load, one batched inference."""
    from runner.data import Scaling
    from runner.data.vocabulary import Vocabulary, segment
    from runner.evaluate import labels_from_outputs

    sentences = list(sentences)
    if not sentences or any(not isinstance(s, str) or not s.strip() for s in sentences):
        raise RunnerError("the sentence is empty: pass the text to classify")
    model_path = Path(model_path)
    if not model_path.is_file():
        raise RunnerError(
            f"model file {model_path} does not exist (expected a .tflite written by quantize_model)"
        )
    vocab = Vocabulary.load(_find_word_index(model_path, word_index_path))
    model = _tflite_cache(model_path)
    rows = embedding_rows(model)
    if rows is not None and vocab.size > rows:
        raise RunnerError(
            f"the vocabulary has ids up to {vocab.size - 1}, but the model's embedding has {rows} rows: "
            f"this word_index.json does not belong to {model_path.name} (if the model was trained with "
            f"num_words={rows}, keep only the words with an id below {rows})"
        )
    maxlen = int(model.input["shape"][1])
    # Segment each sentence on its own: "auto" decides per text whether it is already cut.
    ids = vocab.encode([segment([s], "auto")[0] for s in sentences], maxlen)
    return [int(v) for v in labels_from_outputs(model.predict(ids, Scaling("none"), batch_size=64))]


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


def embedding_rows(model) -> int | None:
    """Rows of the first embedding table (GATHER's params) in a TFLite model, if it has one."""
    interp = model._interp
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    for op in interp._get_ops_details():
        if op["op_name"] == "GATHER":
            return int(tensors[int(op["inputs"][0])]["shape"][0])
    return None


_MODELS: dict[tuple[str, float], Any] = {}


def _tflite_cache(path: Path):
    """One interpreter per model file (reloaded when the file changes)."""
    from runner.evaluate import TFLiteModel

    key = (str(path.resolve()), path.stat().st_mtime)
    if key not in _MODELS:
        _MODELS[key] = TFLiteModel(path)
    return _MODELS[key]


def _find_word_index(model_path: Path, given: str | os.PathLike | None) -> Path:
    if given is not None:
        return Path(given)
    candidates = [model_path.parent / WORD_INDEX, Path.cwd() / WORD_INDEX]
    for c in candidates:
        if c.is_file():
            return c
    raise RunnerError(
        f"no {WORD_INDEX} found beside the model or in the working directory (looked at {', '.join(map(str, candidates))}); pass word_index_path="
    )


def _hydra_value(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if v is None:
        return "null"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_hydra_value(x) for x in v) + "]"
    return str(v)
