"""Statistics over seeds: t-intervals, paired differences over shared seeds, and the winner test.

Points of a sweep share their random numbers per seed (docs/DESIGN.md "Randomness"): seed k draws
the same compute times and mini-batches at every point. Two series are therefore compared seed by
seed: the paired difference removes what the seeds have in common, and its 95 % t-interval is
much narrower than two independent intervals side by side.

A run's *score* on a criterion is a number where lower is better (higher-is-better figures are
negated), exact, or *censored*: only known to be at least some bound. A run that never reached
the target has a time to target of at least its own length (a diverged run's is infinite: it
counts as at least the longest run compared); a diverged run's final loss is infinite (at least
the largest loss seen, and its own loss at update 0). `paired_test` compares a leader with its
runner-up conservatively: the leader's censored scores are +infinity (it is not shown better
where it did not finish) and the runner-up's are their bounds, so a difference whose interval
lies below zero holds whatever the censored values really are.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["mean_ci", "t_half_width", "Score", "Paired", "paired_difference", "paired_test"]


def t_half_width(std: Any, n: Any) -> Any:
    """Half-width of the 95 % t-interval of a mean of ``n`` values with standard deviation ``std``."""
    from scipy.stats import t

    n = np.asarray(n, float)
    return t.ppf(0.975, np.maximum(n - 1, 1)) * np.asarray(std, float) / np.sqrt(np.maximum(n, 1))


def mean_ci(values: Iterable[Any]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % t-interval (NaN half-width for fewer than 2 values)."""
    x = np.asarray([v for v in values if v is not None], dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return math.nan, math.nan
    if x.size == 1:
        return float(x[0]), math.nan
    return float(x.mean()), float(t_half_width(x.std(ddof=1), x.size))


@dataclass(frozen=True)
class Score:
    """One run's score (lower is better): exact, or censored (the true score is >= ``value``)."""

    seed: int
    value: float
    censored: bool = False


@dataclass(frozen=True)
class Paired:
    """A paired difference over shared seeds: mean, 95 % half-width and the number of pairs."""

    mean: float
    half: float
    n: int
    seeds: int  # seeds the two series share (pairs left out: a censored score on either side)

    @property
    def excludes_zero(self) -> bool:
        return math.isfinite(self.half) and (self.mean + self.half < 0 or self.mean - self.half > 0)


def _by_seed(scores: Iterable[Score]) -> dict[int, Score]:
    return {s.seed: s for s in scores}


def paired_difference(a: Iterable[Score], b: Iterable[Score]) -> Paired:
    """``a - b`` over the seeds where both scores are exact (what a table shows)."""
    mine, theirs = _by_seed(a), _by_seed(b)
    shared = sorted(set(mine) & set(theirs))
    diffs = [mine[k].value - theirs[k].value for k in shared if not mine[k].censored and not theirs[k].censored]
    mean, half = mean_ci(diffs)
    return Paired(mean, half, len(diffs), len(shared))


def paired_test(leader: Iterable[Score], runner_up: Iterable[Score]) -> Paired:
    """The conservative paired difference leader - runner-up (see the module docstring).

    Pairs where both are censored say nothing and are left out; a leader censored where the
    runner-up is not makes the difference +infinity (no interval). The leader wins when the
    interval lies below zero (`Paired.excludes_zero` with a negative mean).
    """
    mine, theirs = _by_seed(leader), _by_seed(runner_up)
    shared = sorted(set(mine) & set(theirs))
    diffs = []
    for k in shared:
        lead, other = mine[k], theirs[k]
        if lead.censored and other.censored:
            continue
        diffs.append(math.inf if lead.censored else lead.value - other.value)
    if any(d == math.inf for d in diffs):
        return Paired(math.inf, math.nan, len(diffs), len(shared))
    mean, half = mean_ci(diffs)
    return Paired(mean, half, len(diffs), len(shared))
