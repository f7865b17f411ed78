"""Is a difference between two candidates on the same held-out samples real, or noise?

Both auto_int8 (keep a float layer?) and QAT's epoch judge (keep a later epoch?) compare two
files on the same samples; with a few hundred samples, a handful of flips is chance.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import binom

# A sign test on the samples two candidates label differently: a gain is beyond the holdout's
# noise when so many more flips go one way that a fair coin would do it less than 2.5% of the time.
SIGN_TEST_ALPHA = 0.025


def paired_gain(base: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """``other``'s gain over ``base`` (the share of samples it gets right that base does not,
    minus the reverse) and the noise bound: the least gain a one-sided exact sign test at
    :data:`SIGN_TEST_ALPHA` would call real, given how many samples changed."""
    won, lost = int(np.sum(other & ~base)), int(np.sum(base & ~other))
    changed, n = won + lost, max(1, len(base))
    return (won - lost) / n, noise_bound(changed, n)


def noise_bound(changed: int, n: int) -> float:
    """The least accuracy gain a sign test calls real on ``n`` samples of which ``changed``
    are labelled right by one candidate and wrong by the other."""
    need = fewest_wins(changed)
    return (2 * need - changed) / n if need <= changed else (changed + 1) / n


# Beyond this, "how many samples would separate them" has no useful answer.
MOST_SAMPLES = 10**9


def samples_needed(changed_share: float, margin: float) -> int | None:
    """The fewest test samples whose noise bound is at most ``margin`` (an accuracy gain, or a
    budget), when the same share of them changes label as here; None when no split would (no
    sample changes, or a zero margin).

    The bound falls like ``sqrt(changed_share / n)``: doubling finds an ``n`` that is enough,
    then a bisection the least one.
    """
    if changed_share <= 0 or margin <= 0:
        return None

    def enough(n: int) -> bool:
        return noise_bound(round(changed_share * n), n) <= margin

    hi = 1
    while not enough(hi):
        hi *= 2
        if hi > MOST_SAMPLES:
            return None
    lo = hi // 2 + 1 if hi > 1 else 1
    while lo < hi:
        mid = (lo + hi) // 2
        if enough(mid):
            hi = mid
        else:
            lo = mid + 1
    return hi


def fewest_wins(changed: int, alpha: float = SIGN_TEST_ALPHA) -> int:
    """The fewest wins out of ``changed`` fair-coin flips whose one-sided tail probability
    P(X >= w) is below ``alpha`` (``changed + 1`` when no count is that rare).

    scipy's binomial survival function is exact at any size (a sum of ``comb(n, w) / 2**n``
    overflows a float once a thousand samples change); the tail falls as ``w`` grows, so a
    bisection over ``[0, changed + 1]`` finds the count in ~log2(n) evaluations.
    """
    lo, hi = 0, changed + 1  # tail(hi) < alpha by convention; find the least such w
    while lo < hi:
        mid = (lo + hi) // 2
        if binom.sf(mid - 1, changed, 0.5) < alpha:  # P(X >= mid)
            hi = mid
        else:
            lo = mid + 1
    return lo


def beats(base: tuple, other: tuple) -> bool:
    """Whether ``other`` (per-sample right, agrees-with-float) beats ``base`` beyond the noise:
    in accuracy, or in agreement at an accuracy not lower beyond the noise."""
    acc, acc_bound = paired_gain(base[0], other[0])
    if acc > 0 and acc >= acc_bound:
        return True
    agr, agr_bound = paired_gain(base[1], other[1])
    return -acc < acc_bound and agr > 0 and agr >= agr_bound
