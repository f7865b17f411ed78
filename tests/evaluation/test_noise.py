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


@pytest.mark.parametrize("n", [100, 10_000, 1_000_000])
def test_the_bound_holds_at_any_size_against_scipys_exact_test(n):
    # setup: a third of the samples flip, slightly more of them towards the other candidate
    from scipy.stats import binomtest

    changed = n // 3
    won = changed // 2 + max(1, changed // 50)
    base, other = _pair(n, won, changed - won)
    # execute
    gain, bound = paired_gain(base, other)
    # assert: the bound is the least win count whose one-sided exact p is below alpha
    need = round((bound * n + changed) / 2)
    assert binomtest(need, changed, alternative="greater").pvalue < SIGN_TEST_ALPHA
    assert binomtest(need - 1, changed, alternative="greater").pvalue >= SIGN_TEST_ALPHA
    p = binomtest(won, changed, alternative="greater").pvalue
    assert (gain >= bound) == (p < SIGN_TEST_ALPHA)


def test_two_5000_sample_vectors_that_differ_everywhere_get_scipys_bound():
    from scipy.stats import binom

    # setup: every sample changes, 2,600 towards the other candidate
    n = 5000
    base = np.zeros(n, bool)
    base[2600:] = True
    other = ~base
    # execute
    gain, bound = paired_gain(base, other)
    # assert: scipy's critical count (the least w with P(X >= w) < alpha), as a share of n
    need = int(binom.isf(SIGN_TEST_ALPHA, n, 0.5)) + 1
    while binom.sf(need - 2, n, 0.5) < SIGN_TEST_ALPHA:
        need -= 1
    assert gain == pytest.approx(200 / n, abs=1e-12)
    assert bound == pytest.approx((2 * need - n) / n, abs=1e-9)
    assert gain >= bound  # 2,600 of 5,000: p ~ 0.002
