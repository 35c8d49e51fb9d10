"""Feature drift between the training window and recent bars: PSI and two-sample KS.

Pure numpy/math (the daemon imports it for the drift trigger; no scipy there).

* PSI (population stability index) measures *how much* a feature's distribution moved:
  sum over bins of (c - r) * ln(c / r), bins at the reference's quantiles. Rules of thumb:
  < 0.1 stable, 0.1-0.25 moderate, > 0.25 a real shift.
* KS measures *whether* it moved beyond sampling noise: the largest gap between the two
  empirical CDFs, with the asymptotic Kolmogorov p-value.

A feature counts as drifted only when both agree (PSI >= threshold AND KS p < ks_p): with
thousands of bars KS alone flags every harmless wiggle of a non-stationary market, and
PSI alone is noisy on a small current window.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

PSI_EPS = 1e-4  # share given to an empty bin, so ln(c / r) stays finite


def _finite(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).ravel()
    return x[np.isfinite(x)]


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """Population stability index of `current` against `reference` (NaNs ignored).

    Bin edges are the reference's inner quantiles, de-duplicated so a discrete or constant
    feature gets fewer, non-empty bins rather than zero-width ones. NaN when either side
    has no finite value.
    """
    ref, cur = _finite(reference), _finite(current)
    if len(ref) == 0 or len(cur) == 0:
        return math.nan
    edges = np.unique(np.quantile(ref, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    k = len(edges) + 1
    r = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=k) / len(ref)
    c = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=k) / len(cur)
    r = np.maximum(r, PSI_EPS)
    c = np.maximum(c, PSI_EPS)
    return float(np.sum((c - r) * np.log(c / r)))


def kolmogorov_sf(lam: float) -> float:
    """P(K > lam) for the Kolmogorov distribution (limit of sqrt(n) * D_n).

    Two series of the same function: the alternating one converges fast for lam >= 1, the
    Jacobi-theta form for small lam, so a few terms give double precision everywhere.
    """
    if lam <= 0.0:
        return 1.0
    if lam < 1.0:
        c = -(math.pi**2) / (8.0 * lam * lam)
        s = sum(math.exp(c * (2 * k - 1) ** 2) for k in range(1, 8))
        return float(min(1.0, max(0.0, 1.0 - math.sqrt(2.0 * math.pi) / lam * s)))
    s = sum((-1) ** (k - 1) * math.exp(-2.0 * k * k * lam * lam) for k in range(1, 21))
    return float(min(1.0, max(0.0, 2.0 * s)))


def ks_2samp(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """Two-sided two-sample KS test: (D, p). NaNs are ignored; (nan, nan) when a side is empty.

    p is the asymptotic Kolmogorov tail at lam = (sqrt(en) + 0.12 + 0.11/sqrt(en)) * D,
    en = n*m/(n+m) (Stephens' small-sample correction), close to scipy's 'asymp' method.
    """
    a, b = np.sort(_finite(reference)), np.sort(_finite(current))
    n, m = len(a), len(b)
    if n == 0 or m == 0:
        return math.nan, math.nan
    allv = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, allv, side="right") / n
    cdf_b = np.searchsorted(b, allv, side="right") / m
    d = float(np.max(np.abs(cdf_a - cdf_b)))
    en = math.sqrt(n * m / (n + m))
    return d, kolmogorov_sf((en + 0.12 + 0.11 / en) * d)


def feature_drift(reference: np.ndarray, current: np.ndarray, names: Sequence[str],
                  psi_threshold: float = 0.25, ks_p: float = 0.001,
                  bins: int = 10) -> list[dict[str, Any]]:
    """Per feature: {feature, psi, ks, p, drifted} for reference (n, F) vs current (m, F).

    `drifted` needs PSI >= psi_threshold and KS p < ks_p (see the module docstring). NaN
    statistics (an all-NaN column) become None and never count as drift.
    """
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    if ref.ndim != 2 or cur.ndim != 2 or ref.shape[1] != cur.shape[1]:
        raise ValueError(f"need 2-D arrays with the same columns, got {ref.shape} and "
                         f"{cur.shape}")
    if len(names) != ref.shape[1]:
        raise ValueError(f"{len(names)} names for {ref.shape[1]} features")
    out: list[dict[str, Any]] = []
    for j, name in enumerate(names):
        value = psi(ref[:, j], cur[:, j], bins)
        d, p = ks_2samp(ref[:, j], cur[:, j])
        ok = math.isfinite(value) and math.isfinite(p)
        out.append({
            "feature": name,
            "psi": value if math.isfinite(value) else None,
            "ks": d if math.isfinite(d) else None,
            "p": p if math.isfinite(p) else None,
            "drifted": bool(ok and value >= psi_threshold and p < ks_p),
        })
    return out


def n_drifted(report: Sequence[dict[str, Any]]) -> int:
    """How many features of a `feature_drift` report drifted (the trigger's count)."""
    return sum(1 for r in report if r["drifted"])
