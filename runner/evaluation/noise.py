"""Is a difference between two candidates on the same held-out samples real, or noise?

Both auto_int8 (keep a float layer?) and QAT's epoch judge (keep a later epoch?) compare two
files on the same samples; with a few hundred samples, a handful of flips is chance.
"""

from __future__ import annotations

import math

import numpy as np

# A sign test on the samples two candidates label differently: a gain is beyond the holdout's
# noise when so many more flips go one way that a fair coin would do it less than 2.5% of the time.
SIGN_TEST_ALPHA = 0.025


def paired_gain(base: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """``other``'s gain over ``base`` (the share of samples it gets right that base does not,
    minus the reverse) and the noise bound: the least gain a one-sided exact sign test at
    :data:`SIGN_TEST_ALPHA` would call real, given how many samples changed."""
    won, lost = int(np.sum(other & ~base)), int(np.sum(base & ~other))
    changed, n = won + lost, max(1, len(base))
    # the fewest wins out of `changed` a fair coin reaches with probability < alpha
    tail, need = 0.0, changed + 1
    for w in range(changed, -1, -1):
        tail += math.comb(changed, w) / 2.0**changed
        if tail >= SIGN_TEST_ALPHA:
            break
        need = w
    bound = (2 * need - changed) / n if need <= changed else (changed + 1) / n
    return (won - lost) / n, bound


def beats(base: tuple, other: tuple) -> bool:
    """Whether ``other`` (per-sample right, agrees-with-float) beats ``base`` beyond the noise:
    in accuracy, or in agreement at an accuracy not lower beyond the noise."""
    acc, acc_bound = paired_gain(base[0], other[0])
    if acc > 0 and acc >= acc_bound:
        return True
    agr, agr_bound = paired_gain(base[1], other[1])
    return -acc < acc_bound and agr > 0 and agr >= agr_bound
