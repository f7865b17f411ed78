"""runner.train: the batch feed wraps around, the validation split is seeded and disjoint."""

from __future__ import annotations

import numpy as np

from runner.data import Scaling, Split
from runner.train import TrainConfig, batch_sequence, split_validation


def _split(n: int) -> Split:
    x = np.arange(n * 4, dtype=np.uint8).reshape(n, 2, 2, 1)
    return Split(x, np.arange(n) % 3)


def test_more_steps_than_one_pass_wrap_around_and_batches_are_scaled():
    seq = batch_sequence(_split(10), 4, Scaling("unit"), shuffle=False, seed=0, steps=7)
    assert len(seq) == 7  # 7 batches asked of a 3-batch pass: the fit never runs dry
    x, y = seq[6]
    assert x.shape == (4, 2, 2, 1) and x.dtype == np.float32 and x.max() <= 1.0
    np.testing.assert_array_equal(seq[3][0], seq[0][0])  # step 3 starts the second pass
    sizes = [len(seq[i][1]) for i in range(7)]
    assert sizes == [4, 4, 2, 4, 4, 2, 4]  # every sample served twice, four of them thrice


def test_the_validation_split_is_seeded_disjoint_and_sized():
    fit, val = split_validation(_split(50), 0.2, seed=3)
    fit2, val2 = split_validation(_split(50), 0.2, seed=3)
    assert len(val) == 10 and len(fit) == 40
    np.testing.assert_array_equal(val.y, val2.y)
    fit_rows = {bytes(fit.x[i]) for i in range(len(fit))}
    assert not fit_rows & {bytes(val.x[i]) for i in range(len(val))}
    assert split_validation(_split(5), 0.0, 0)[1] is None


def test_the_optimizer_name_is_case_free_and_defaults_come_from_the_schema():
    cfg = TrainConfig.from_mapping({"optimizer": "Adam", "unknown": 1})
    assert cfg.optimizer == "adam" and cfg.epochs == 40 and cfg.early_stopping_patience == 8
