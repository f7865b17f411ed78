"""runner.api.compare: the runner from a notebook, a table and a verdict back."""

from __future__ import annotations

import numpy as np
import pytest

from runner.errors import RunnerError

pytestmark = pytest.mark.slow


def test_compare_returns_the_table_and_the_verdict_for_a_users_model(tmp_path):
    # setup: a user's trained model and arrays
    from runner.api import compare
    from runner.data.digits import load_digits
    from runner.models.builders import small_cnn

    d = load_digits(train_size=300, test_size=120)
    model = small_cnn((8, 8, 1), 10, filters=[8], dense_units=16)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(d.train.x / 16.0, d.train.y, epochs=3, verbose=0)
    model.save(tmp_path / "cnn.h5")
    arrays = {"x_train": d.train.x, "y_train": d.train.y, "x_test": d.test.x, "y_test": d.test.y}
    # execute
    table, verdicts = compare(
        tmp_path / "cnn.h5",
        ["float16", "dynamic_range"],
        arrays,
        {"max_accuracy_drop": 0.05, "min_agreement": 0.9},
        output_dir=tmp_path / "runs",
        overrides=["evaluation.latency_samples=3", "evaluation.progress=false"],
    )
    # assert: the float rows once, one row per recipe artifact, and the smallest within budget
    assert list(table["artifact"]) == [
        "cnn.h5",
        "none.tflite",
        "float16.tflite",
        "dynamic_range.tflite",
    ]
    assert (table["status"] == "ok").all()
    (v,) = verdicts
    ok = table[(table["format"] == "tflite") & (table["accuracy_delta"] >= -0.05)]
    ok = ok[ok["agreement"] >= 0.9]
    assert v.chosen["artifact"] == ok.sort_values("size_bytes").iloc[0]["artifact"]
    with pytest.raises(RunnerError, match="budget.max_size: unknown key; did you mean"):
        compare(tmp_path / "cnn.h5", ["none"], arrays, {"max_size": 1})
    with pytest.raises(RunnerError, match="expected an .npz file"):
        compare(tmp_path / "cnn.h5", ["none"], tmp_path / "cnn.h5")
    assert np.isfinite(table["size_bytes"]).all()
