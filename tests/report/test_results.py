"""runner.report.results: seeds by their keys, a failed job's row and results.json."""

from __future__ import annotations

import json

from helpers import compose_config

from runner.config import seeds
from runner.report.results import write_job_failure


def test_every_seed_is_named_by_its_key_from_the_schemas():
    cfg = compose_config("seed=3", "dataset=cifar100", "recipe=qat")
    got = seeds(cfg)
    assert got == {
        "seed": 3,
        "dataset.subset_seed": 0,
        "train.seed": 3,
        "recipe.calibration_seed": 3,
    }


def test_a_job_that_failed_before_any_artifact_is_one_failed_row_on_disk(tmp_path):
    rows = write_job_failure(compose_config("recipe=float16"), tmp_path, "no data: see above")
    assert [(r["recipe"], r["status"], r["error"]) for r in rows] == [
        ("float16", "failed", "no data: see above")
    ]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["status"] == "failed" and saved["rows"][0]["error"] == "no data: see above"
    assert "| failed |" in (tmp_path / "comparison.md").read_text()
