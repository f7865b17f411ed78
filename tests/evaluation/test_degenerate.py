"""Data no table can be made from is refused; nothing non-finite is scored, cached or written
as bare NaN (issue #23, case 6)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from runner.data import Dataset, Scaling, Split, check_dataset
from runner.errors import RunnerError
from runner.evaluation.metrics import score
from runner.files import atomic_write_json


def _data(y_train, x_dtype=np.uint8, num_classes=None, x_train=None):
    y = np.asarray(y_train, np.int64)
    x = np.zeros((len(y), 4, 4, 1), x_dtype) if x_train is None else x_train
    test = Split(np.zeros((2, 4, 4, 1), x_dtype), np.asarray([0, 1]))
    return Dataset("d", Split(x, y), test, num_classes or int(y.max(initial=0)) + 1)


@pytest.mark.parametrize(
    "y, message",
    [
        ([], "training split of d is empty"),
        ([0, 0, 0, 0], "single class"),
        ([0, 1, 2], "every class of d has fewer than 2 training samples"),
    ],
)
def test_data_that_cannot_make_a_table_is_refused(y, message):
    with pytest.raises(RunnerError, match=message):
        check_dataset(_data(y))


def test_non_finite_inputs_are_refused_with_how_many():
    x = np.zeros((6, 4, 4, 1), np.float32)
    x[1, 0, 0, 0], x[4, 2, 1, 0] = np.nan, np.inf
    with pytest.raises(RunnerError, match=r"2 training sample\(s\) of d hold NaN or infinite"):
        check_dataset(_data([0, 0, 0, 1, 1, 1], np.float32, x_train=x))


def test_empty_classes_are_a_warning_naming_one_based_labels():
    (warning,) = check_dataset(_data([1, 1, 2, 2, 3, 3]))  # labels 1..3: 4 outputs
    assert "1 of 4 classes of d have no training samples (0)" in warning and "1-based" in warning
    (stray,) = check_dataset(_data([0, 0, 1, 1, 1000, 1000], num_classes=1001))
    assert "998 of 1001 classes" in stray
    assert check_dataset(_data([0, 0, 1, 1])) == []
    (single,) = check_dataset(_data([0, 0, 0, 1]))  # a small subset: told, not refused
    assert "1 class(es) of d have a single training sample (1)" in single


def test_nan_outputs_are_an_error_never_label_0():
    out = np.asarray([[0.2, 0.8], [np.nan, np.nan], [0.9, 0.1]], np.float32)
    with pytest.raises(RunnerError, match="NaN or infinite outputs on 1 of 3 test samples"):
        score(out, np.asarray([1, 0, 0]), None, 2)


def test_results_json_is_strict_json(tmp_path):
    path = atomic_write_json(
        tmp_path / "r.json", {"sqnr": float("nan"), "a": [np.float32(np.inf), 1.5]}
    )
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"sqnr": None, "a": [None, 1.5]}


def test_a_diverged_training_is_never_cached(tmp_path):
    from runner.cache import get_or_train
    from runner.models.builders import mlp
    from runner.train import TrainConfig, train

    x = np.random.default_rng(0).integers(0, 255, (40, 4, 4, 1)).astype(np.uint8)
    data = Dataset("d", Split(x, np.arange(40) % 2), Split(x[:4], np.arange(4) % 2), 2)

    def diverging():
        model = mlp((4, 4, 1), 2, units=[4])
        w = model.get_weights()
        w[0][0, 0] = math.nan
        model.set_weights(w)
        return train(model, data, TrainConfig(epochs=1, validation_split=0.0), Scaling("unit"))

    with pytest.raises(RunnerError, match="diverged: its weights hold NaN"):
        get_or_train(tmp_path, {"k": 1}, diverging)
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]  # no entry, no temp folder
