"""Maximum-likelihood fits of measured durations, chosen by AIC (for `calibrate`).

Each sample is fitted (scipy.stats) as exponential, shifted exponential, lognormal and gamma; the
fit with the smallest AIC (2k - 2 log L, Akaike 1974) wins. A sample whose spread is under 1 % of
its mean is a constant. If even the best fit is rejected by a Kolmogorov-Smirnov test (p < 0.01,
with at least 50 samples), the measured values themselves are used (``empirical``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..scenario.distributions import Constant, Distribution, Empirical, Exponential, Gamma, LogNormal, ShiftedExponential

__all__ = ["fit_distribution", "parametric_fits", "CONSTANT_CV", "KS_REJECT_P", "EMPIRICAL_MAX_VALUES"]

CONSTANT_CV = 0.01  # below this coefficient of variation a duration is taken as constant
KS_REJECT_P = 0.01
EMPIRICAL_MAX_VALUES = 2000  # an empirical fit keeps at most this many measured values


def _clean(samples: np.ndarray) -> np.ndarray:
    x = np.asarray(samples, np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        raise ValueError("no samples to fit")
    return np.maximum(x, 1e-9)


def parametric_fits(samples: np.ndarray) -> dict[str, dict[str, Any]]:
    """Every family's maximum-likelihood fit: ``dist``, ``loglik`` (of the samples in seconds),
    ``k`` (parameters), ``aic`` and ``frozen`` (the scipy distribution, in units of ``scale``)."""
    from scipy import stats

    x = _clean(samples)
    scale = float(np.exp(np.mean(np.log(x))))  # fit in units of the sample: better conditioned
    y = x / scale
    fits: dict[str, tuple[Distribution, float, int, Any]] = {}
    with np.errstate(all="ignore"):
        _, lam = stats.expon.fit(y, floc=0)
        fits["exponential"] = (Exponential(lam * scale), float(stats.expon.logpdf(y, 0, lam).sum()), 1, stats.expon(0, lam))
        shift = float(y.min()) * (1 - 1e-9)
        tail = float(y.mean() - shift)
        if tail > 0:
            fits["shifted_exponential"] = (ShiftedExponential(shift * scale, tail * scale), float(stats.expon.logpdf(y, shift, tail).sum()), 2,
                                           stats.expon(shift, tail))
        if y.size > 1 and float(np.std(np.log(y))) > 0:
            s, _, sc = stats.lognorm.fit(y, floc=0)
            fits["lognormal"] = (LogNormal(float(sc * math.exp(s * s / 2)) * scale, float(math.sqrt(math.expm1(s * s)))),
                                 float(stats.lognorm.logpdf(y, s, 0, sc).sum()), 2, stats.lognorm(s, 0, sc))
            try:
                a, _, sc = stats.gamma.fit(y, floc=0)
            except (ValueError, RuntimeError):
                # scipy's shape equation has no root for samples equal up to float round-off
                # (a constant compute time measured as end - start): no gamma fits them.
                pass
            else:
                fits["gamma"] = (Gamma(float(a * sc) * scale, float(1 / math.sqrt(a))), float(stats.gamma.logpdf(y, a, 0, sc).sum()), 2,
                                 stats.gamma(a, 0, sc))
    out = {}
    for name, (dist, loglik, k, frozen) in fits.items():
        # The log-likelihood of x (seconds) is that of y = x/scale minus n log(scale): the same for all.
        loglik_x = loglik - x.size * math.log(scale)
        aic = 2 * k - 2 * loglik_x if math.isfinite(loglik_x) else math.inf
        out[name] = {"dist": dist, "loglik": loglik_x, "k": k, "aic": aic, "frozen": frozen, "scale": scale}
    return out


def fit_distribution(samples: np.ndarray) -> tuple[Distribution, dict[str, Any]]:
    """The maximum-likelihood fit with the best AIC, and the table of candidates."""
    from scipy import stats

    x = _clean(samples)
    mean, std = float(x.mean()), float(x.std())
    info: dict[str, Any] = {"n": int(x.size), "mean": mean, "cv": std / mean if mean > 0 else 0.0, "candidates": {}}
    if x.size < 3 or std <= CONSTANT_CV * mean:
        info["chosen"] = "constant"
        return Constant(mean), info
    fits = parametric_fits(x)
    best, best_aic = "", math.inf
    for name, fit in fits.items():
        info["candidates"][name] = {"aic": fit["aic"], "loglik": fit["loglik"], **fit["dist"].to_dict()}
        if fit["aic"] < best_aic:
            best, best_aic = name, fit["aic"]
    if not best:
        info["chosen"] = "empirical"
        return Empirical(tuple(_thin(x))), info
    p_value = float(stats.kstest(x / fits[best]["scale"], fits[best]["frozen"].cdf).pvalue)
    info["ks_p"] = p_value
    if p_value < KS_REJECT_P and x.size >= 50:
        info["chosen"] = "empirical"
        info["rejected"] = best
        return Empirical(tuple(_thin(x))), info
    info["chosen"] = best
    return fits[best]["dist"], info


def _thin(x: np.ndarray) -> list[float]:
    """At most EMPIRICAL_MAX_VALUES values, keeping the distribution (evenly spaced quantiles)."""
    if x.size <= EMPIRICAL_MAX_VALUES:
        return [float(v) for v in x]
    return [float(v) for v in np.quantile(x, np.linspace(0, 1, EMPIRICAL_MAX_VALUES))]
