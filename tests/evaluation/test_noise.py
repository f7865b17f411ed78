"""The sign test auto_int8 and QAT's epoch judge use to tell a real gain from held-out noise."""

from __future__ import annotations

import math

import numpy as np
import pytest

from runner.evaluation.noise import SIGN_TEST_ALPHA, paired_gain


def _pair(n: int, won: int, lost: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample correctness of a base and another candidate: ``won`` samples only the other
    gets right, ``lost`` only the base, the rest right for both."""
    base, other = np.ones(n, bool), np.ones(n, bool)
    base[:won] = False
    other[won : won + lost] = False
    return base, other


@pytest.mark.parametrize(
    ("won", "lost", "real"),
    [
        (6, 0, True),  # 6 of 6 flips one way: p = 1/64 < 0.025
        (5, 0, False),  # p = 1/32 > 0.025
        (9, 3, False),  # +6 samples, but 12 changed: p = 0.073
        (20, 5, True),  # p = 0.002
        (30, 24, False),  # +6 of 297 with 54 flips: the QAT epochs the old rule kept
    ],
)
def test_a_gain_is_real_only_when_chance_would_rarely_give_it(won, lost, real):
    base, other = _pair(297, won, lost)
    gain, bound = paired_gain(base, other)
    assert gain == pytest.approx((won - lost) / 297)
    assert (gain >= bound) is real
    # the bound is the exact binomial tail: the least win count whose one-sided p is < alpha
    changed = won + lost
    p = sum(math.comb(changed, w) for w in range(won, changed + 1)) / 2**changed
    assert (p < SIGN_TEST_ALPHA) is real


def test_no_change_is_no_gain_and_the_bound_is_one_sample():
    base = np.ones(200, bool)
    gain, bound = paired_gain(base, base.copy())
    assert gain == 0.0 and bound == pytest.approx(1 / 200)
