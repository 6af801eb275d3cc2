"""Fitting the vocabulary laws to measurements: f(V) on your own tokenizers, approach 1's power laws on the lower
envelope of IsoFLOPs points, approach 2's γ, approach 3's parametric loss. numpy, plus scipy's NNLS for the
non-negative parametric fit.

The reference code minimizes Huber losses (δ = 1e-3 on log values) with L-BFGS-B from hundreds of starting points and
keeps the start with the lowest relative MSE. The Huber loss of a straight line is convex, so here the same minimum is
found directly (bisection on a gradient, golden-section search on a convex profile): no starting points, one answer.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from mlxsuite.platform.errors import UserError
from mlxsuite.vocab.scaling.laws import (
    BILLION,
    MILLION,
    PAPER_COMPRESSION,
    PAPER_DERIVATIVE,
    ROOT_NNV,
    Compression,
    DerivativeLaw,
    IsoFlopsLaws,
    ParametricLoss,
    PowerLaw,
    _bisect,
    derivative_root,
    embedding_dim,
)

HUBER_DELTA = 1e-3  # the reference's δ for every fit on log values


def relative_mse(actual, predicted) -> float:
    """Mean squared error over the squared mean of `actual` (the paper's relative MSE)."""
    actual = np.asarray(actual, dtype=float)
    return float(np.mean((actual - predicted) ** 2) / np.mean(actual) ** 2)


def r_squared(actual, predicted) -> float | None:
    """1 - SS_res / SS_tot; None when `actual` does not vary (R² is undefined)."""
    actual = np.asarray(actual, dtype=float)
    total = np.sum((actual - actual.mean()) ** 2)
    if total <= 1e-300:
        return None
    return float(1 - np.sum((actual - predicted) ** 2) / total)


def fit_compression(vocab, tokens_per_char, clamp: float = 200_000) -> Compression:
    """Least-squares f(V) = a·ln²V + b·lnV + c through measured tokens per character (needs 3+ sizes).

    The clamp is lowered to the quadratic's turning point exp(-b/2a) when that comes first, so f never rises.
    """
    v = np.minimum(np.asarray(vocab, dtype=float), clamp)
    if len(np.unique(v)) < 3:
        raise UserError("fitting f(V) = a·ln²V + b·lnV + c needs at least 3 different vocabulary sizes")
    lnv = np.log(v)
    a, b, c = np.linalg.lstsq(np.stack([lnv**2, lnv, np.ones_like(lnv)], 1), np.asarray(tokens_per_char), rcond=None)[0]
    if a > 0 and -b / (2 * a) < math.log(clamp):  # the turning point, in ln V (an almost straight f has none)
        clamp = math.exp(-b / (2 * a))
    return Compression(float(a), float(b), float(c), float(clamp))


# ---- straight lines, least squares or Huber ---------------------------------------------------------------------


def huber(residuals, delta: float) -> float:
    """Σ of the Huber loss (scipy.special.huber): r²/2 within ±δ, δ·(|r| - δ/2) beyond."""
    r = np.abs(np.asarray(residuals, dtype=float))
    return float(np.sum(np.where(r <= delta, 0.5 * r**2, delta * (r - 0.5 * delta))))


def huber_location(r, delta: float) -> float:
    """The a minimizing Σ huber(a − r_i): the root of g(a) = Σ clip(a − r_i, −δ, δ), which is non-decreasing and
    linear between the breakpoints r_i ± δ, so it is found exactly (g at every breakpoint, then the straight piece
    that crosses zero). The lowest root where g is zero on a whole interval."""
    r = np.asarray(r, dtype=float)
    knots = np.unique(np.concatenate([r - delta, r + delta]))
    g = np.clip(knots[:, None] - r[None, :], -delta, delta).sum(axis=1)
    i = int(np.searchsorted(g, 0.0))  # first knot with g >= 0 (g(knots[0]) = -nδ < 0, g(knots[-1]) = nδ > 0)
    if g[i] == 0:
        return float(knots[i])
    return float(knots[i - 1] + (knots[i] - knots[i - 1]) * (-g[i - 1]) / (g[i] - g[i - 1]))


def _increasing_root(grad, lo: float, hi: float) -> float:
    """Root of a non-decreasing function, widening [lo, hi] until it brackets one."""
    for _ in range(200):
        if grad(lo) <= 0 <= grad(hi):
            return _bisect(grad, lo, hi)
        lo, hi = lo - 2 * (hi - lo) - 1, hi + 2 * (hi - lo) + 1
    raise UserError("no finite minimum for this fit")


def fit_line(x, y, slope: float | None = None, intercept: float | None = None, delta: float | None = None):
    """(intercept, slope) of y ≈ intercept + slope·x with either, both or neither given.

    `delta` None: least squares; else the Huber loss with that δ. One free parameter: the root of the loss's
    gradient, which only grows with the parameter. Both free: golden-section search over the slope of the convex
    profile loss (for each slope the best intercept), inside the range of the slopes between pairs of points.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if slope is not None and intercept is not None:
        return float(intercept), float(slope)
    if len(x) == 0:
        raise UserError("fitting a line needs at least one point")
    if slope is None and (len(x) < 2 or np.ptp(x) == 0) and intercept is None:
        raise UserError("fitting a slope needs points at two or more different x")

    def best_intercept(b: float) -> float:
        r = y - b * x
        if delta is None:
            return float(r.mean())
        return huber_location(r, delta)

    if slope is not None:
        return best_intercept(slope), float(slope)
    if intercept is not None:
        r = y - intercept
        if not np.any(x):
            raise UserError("fitting a slope needs a point with x != 0")
        if delta is None:
            return float(intercept), float(np.sum(x * r) / np.sum(x * x))
        b = _increasing_root(lambda b: float(np.sum(x * np.clip(b * x - r, -delta, delta))), -1.0, 1.0)
        return float(intercept), b
    if delta is None:
        b, a = np.polyfit(x, y, 1)
        return float(a), float(b)

    i, j = np.triu_indices(len(x), 1)
    keep = x[i] != x[j]
    pair_slopes = (y[j] - y[i])[keep] / (x[j] - x[i])[keep]
    lo, hi = pair_slopes.min() - 1e-9, pair_slopes.max() + 1e-9

    def profile(b: float) -> float:
        return huber(best_intercept(b) + b * x - y, delta)

    golden = (math.sqrt(5) - 1) / 2
    m1, m2 = hi - golden * (hi - lo), lo + golden * (hi - lo)
    f1, f2 = profile(m1), profile(m2)
    for _ in range(200):
        if hi - lo <= 1e-12 * max(1.0, abs(lo), abs(hi)):
            break
        if f1 <= f2:
            hi, m2, f2 = m2, m1, f1
            m1 = hi - golden * (hi - lo)
            f1 = profile(m1)
        else:
            lo, m1, f1 = m1, m2, f2
            m2 = lo + golden * (hi - lo)
            f2 = profile(m2)
    b = 0.5 * (lo + hi)
    return best_intercept(b), float(b)


def fit_power_law(x, y, exponent: float | None = None, delta: float | None = None) -> PowerLaw:
    """y = coef·x^exponent fitted on ln y = ln coef + exponent·ln x: least squares, or Huber with `delta`; the
    exponent free or fixed (approach 1 fixes 0.5 for N_nv and H)."""
    log_coef, exponent = fit_line(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), exponent, None, delta)
    return PowerLaw(float(math.exp(log_coef)), float(exponent))


# ---- approach 1: IsoFLOPs -----------------------------------------------------------------------------------------


def lower_envelope(flops, loss) -> np.ndarray:
    """Indices of the points no cheaper-or-equal point beats: walk up in FLOPs and keep a point whenever it is below
    every point kept so far (the reference's selection); of points with equal FLOPs only the lowest can be kept."""
    flops, loss = np.asarray(flops, dtype=float), np.asarray(loss, dtype=float)
    order = np.lexsort((loss, flops))
    keep, best, last = [], math.inf, None
    for i in order:
        if flops[i] == last:
            continue  # a point at the same FLOPs with lower loss came first
        last = flops[i]
        if loss[i] < best:
            keep.append(int(i))
            best = loss[i]
    return np.array(keep, dtype=int)


@dataclass(frozen=True)
class IsoFlopsFit:
    """Approach 1 fitted on measurements: the laws, the points they were fitted on, and per-law fit quality on log
    values (R², None where the quantity does not vary; the reference's relative MSE)."""

    laws: IsoFlopsLaws
    selected: tuple[int, ...]
    r2: dict
    relative_mse: dict
    free_exponents: bool

    def to_dict(self) -> dict:
        return {**asdict(self), "selected": list(self.selected)}


def fit_isoflops(
    flops, nnv, nv, characters, loss, free_exponents: bool = False, delta: float = HUBER_DELTA
) -> IsoFlopsFit:
    """Approach 1 as the reference `approach1_isoflops.py`: keep the lower envelope of L_u against FLOPs, then fit
    ln N_nv = K1 + 0.5·ln C, ln N_v = K2 + α·ln C and ln H = K3 + 0.5·ln C on it with the Huber loss (δ = 1e-3).
    `free_exponents` also frees the N_nv and H exponents (the reference fixes them: model size and data scaled
    equally)."""
    flops, loss = np.asarray(flops, dtype=float), np.asarray(loss, dtype=float)
    values = {k: np.asarray(v, dtype=float) for k, v in (("nnv", nnv), ("nv", nv), ("characters", characters))}
    idx = lower_envelope(flops, loss)
    if len(np.unique(flops[idx])) < 2:
        raise UserError("the lower envelope must span at least 2 budgets")
    laws, r2, rmse = {}, {}, {}
    for key, y in values.items():
        exponent = None if free_exponents or key == "nv" else 0.5
        law = fit_power_law(flops[idx], y[idx], exponent, delta)
        actual, predicted = np.log(y[idx]), np.log(law(flops[idx]))
        laws[key], r2[key], rmse[key] = law, r_squared(actual, predicted), relative_mse(actual, predicted)
    return IsoFlopsFit(IsoFlopsLaws(**laws), tuple(int(i) for i in idx), r2, rmse, free_exponents)


# ---- approach 2: γ ----------------------------------------------------------------------------------------------


def fit_gamma(nnv, nv, delta: float = HUBER_DELTA) -> float:
    """γ in N_v/N_v[0] = (N_nv/N_nv[0])^γ, minimizing the Huber loss (δ = `delta`) of the log residuals, as the
    reference (`approach2_derivative.py`) does."""
    x = np.log(np.asarray(nnv[1:], dtype=float) / nnv[0])
    y = np.log(np.asarray(nv[1:], dtype=float) / nv[0])
    return fit_line(x, y, intercept=0.0, delta=delta)[1]


def derivative_law(
    compression: Compression, anchor_nnv: float = 33e6, anchor_nv: float = 6144 * 512, shapes=None
) -> DerivativeLaw:
    """γ refitted on the raw roots of ∂C/∂V = 0 under a compression f(V), at `shapes` ((N_nv, d) pairs; default the
    paper's seven families with d from Table 5); the anchor is the paper's unless given."""
    shapes = shapes or [(n, embedding_dim(n)) for n in ROOT_NNV]
    nnv = [n for n, _ in shapes]
    roots = [derivative_root(n, d, compression) * d for n, d in shapes]
    return DerivativeLaw(anchor_nnv, anchor_nv, fit_gamma(nnv, roots))


def derivative_law_for(compression: Compression) -> DerivativeLaw:
    """The paper's law, or γ refitted on the roots when f(V) is not the paper's."""
    return PAPER_DERIVATIVE if compression == PAPER_COMPRESSION else derivative_law(compression)


# ---- approach 3: parametric loss ----------------------------------------------------------------------------------


def _parametric_design(n, x, t, alpha2: float, beta: float) -> np.ndarray:
    return np.stack([-np.ones_like(n), n**-beta, x**-alpha2, t**-beta], 1)


def _linear_part(design: np.ndarray, y: np.ndarray, nonnegative: bool) -> np.ndarray:
    """(E, A1, A2, B) for fixed exponents: least squares, or with A1, A2, B >= 0 (E free, as E⁺ − E⁻ for NNLS)."""
    if not nonnegative:
        return np.linalg.lstsq(design, y, rcond=None)[0]
    from scipy.optimize import nnls

    split = np.concatenate([design[:, :1], -design[:, :1], design[:, 1:]], axis=1)
    scale = np.abs(split).max(axis=0)
    coefs = nnls(split / scale, y)[0] / scale
    return np.concatenate([[coefs[0] - coefs[1]], coefs[2:]])


def fit_parametric_loss(
    nnv, nv, tokens, loss, bounds=(0.02, 2.0), grid: int = 24, rounds: int = 40, nonnegative: bool = False
) -> ParametricLoss:
    """Least-squares fit of `ParametricLoss` (alpha1 = beta) to measured L_u at N_nv, N_v (parameters), D (tokens).

    Given the exponents (alpha2, beta) the loss is linear in (E, A1, A2, B), so we solve that part exactly and search
    the two exponents on a grid that zooms in on the best cell each round (variable projection). The paper fits
    with a Huber loss (δ = 1e-3) and L-BFGS-B from 486 starts; this is the plain least-squares fit of the same form.
    `nonnegative` keeps A1, A2, B >= 0: on a few noisy small runs the free fit readily turns a term negative, and a
    negative A2 or B has no optimal V. Pass D = H·f(V) (`tokens_from_characters`) to fit the loss in true tokens.
    """
    n, x, t = (np.asarray(a, dtype=float) / u for a, u in ((nnv, MILLION), (nv, MILLION), (tokens, BILLION)))
    y = np.asarray(loss, dtype=float)
    if len(y) < 6:
        raise UserError("fitting the parametric loss needs at least 6 points")

    def solve(alpha2: float, beta: float):
        design = _parametric_design(n, x, t, alpha2, beta)
        coefs = _linear_part(design, y, nonnegative)
        return float(np.sum((design @ coefs - y) ** 2)), coefs

    (lo_a, hi_a), (lo_b, hi_b) = (bounds, bounds)
    best = (math.inf, None, None)
    for _ in range(rounds):
        for a2 in np.linspace(lo_a, hi_a, grid):
            for b in np.linspace(lo_b, hi_b, grid):
                rss, _ = solve(a2, b)
                if rss < best[0]:
                    best = (rss, a2, b)
        _, a2, b = best
        step_a, step_b = 2 * (hi_a - lo_a) / (grid - 1), 2 * (hi_b - lo_b) / (grid - 1)
        lo_a, hi_a = max(bounds[0], a2 - step_a), min(bounds[1], a2 + step_a)
        lo_b, hi_b = max(bounds[0], b - step_b), min(bounds[1], b + step_b)
        if hi_a - lo_a < 1e-12 and hi_b - lo_b < 1e-12:
            break
    _, a2, b = best
    _, (e, a1, a2_coef, b_coef) = solve(a2, b)
    return ParametricLoss(float(a1), float(a2_coef), float(b_coef), float(e), float(b), float(a2), float(b))
