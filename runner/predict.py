"""Predict with a shipped file: a sentence's label from a text model's ``.tflite`` (the seed
task's ``prediction_label``), through the LiteRT interpreter and the model's vocabulary."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from runner.errors import RunnerError

WORD_INDEX = "word_index.json"


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
    from runner.evaluation.metrics import labels_from_outputs

    if isinstance(sentences, (str, bytes)) or not isinstance(sentences, Iterable):
        raise RunnerError(f"sentences must be a list of str, got {type(sentences).__name__}")
    sentences = list(sentences)
    wrong = [s for s in sentences if not isinstance(s, str)]
    if wrong:
        raise RunnerError(
            f"the sentence must be text (str), got {wrong[0]!r} ({type(wrong[0]).__name__})"
        )
    if not sentences or any(not s.strip() for s in sentences):
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
    from runner.evaluation.interpreter import TFLiteModel

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
