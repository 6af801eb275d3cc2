"""The paper's claim across model sizes, and how firm the sweep's exponents are (numpy only).

- `vocab_vs_nnv`: at each budget, how the optimal V (and N_v = V·d) moves with N_nv across the swept sizes; pooled
  over the budgets with one intercept per budget (the exponent "at fixed C"). The paper's claim: at a fixed budget,
  more non-vocabulary parameters want a larger vocabulary; along the compute-optimal frontier N_v ∝ N_nv^0.83
  (0.42 / 0.5). Beside it, the paper's own approach 3 (published constants) at the same (N_nv, C); and the optimal
  V against N_nv and the tokens trained together (`vocab_vs_nnv_and_data`): at a fixed C a larger model trains on
  fewer tokens, so the two effects meet there.
- `bootstrap`: the spread of any statistics of the runs, resampling the runs of every (budget, preset) cell with
  replacement (each replicate keeps at least 3 distinct V per cell, so every cell still has a parabola).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np

from mlxsuite.vocab import scaling

REPLICATES = 100
MIN_DISTINCT = 3
INTERVAL = (5.0, 95.0)  # percentiles reported as the spread


def _pooled_slope(groups: list[tuple[list[float], list[float]]]) -> float | None:
    """Slope of ln y on ln x with one intercept per group (groups with < 2 points drop out)."""
    sxx = sxy = 0.0
    for x, y in groups:
        if len(x) < 2:
            continue
        lx, ly = np.log(x), np.log(y)
        dx, dy = lx - lx.mean(), ly - ly.mean()
        sxx += float(dx @ dx)
        sxy += float(dx @ dy)
    return sxy / sxx if sxx > 0 else None


def vocab_vs_nnv(per_model: list[dict]) -> dict:
    """Per budget: optimal V and N_v against N_nv across sizes (exponents of V ∝ N_nv^x, N_v ∝ N_nv^γ); pooled over
    budgets; the same slopes of the paper's approach 3 (published constants) at the sweep's (N_nv, C)."""
    budgets = sorted({m["budget"] for m in per_model})
    per_budget, groups_v, groups_nv, groups_paper = [], [], [], []
    for c in budgets:
        cell = sorted((m for m in per_model if m["budget"] == c), key=lambda m: m["nnv"])
        nnv = [float(m["nnv"]) for m in cell]
        vocab = [float(m["vocab"]) for m in cell]
        nv = [v * m["d"] for v, m in zip(vocab, cell)]
        paper = [float(scaling.PAPER_PARAMETRIC.optimal_nv(n, c)) for n in nnv]
        entry = {"budget": c, "presets": [m["preset"] for m in cell], "nnv": nnv, "vocab": vocab, "nv": nv}
        entry["flags"] = [m["flag"] for m in cell]
        if len(set(nnv)) >= 2:
            entry["vocab_exponent"] = scaling.fit_power_law(nnv, vocab).exponent
            entry["nv_exponent"] = scaling.fit_power_law(nnv, nv).exponent
            entry["paper_nv_exponent"] = scaling.fit_power_law(nnv, paper).exponent
            entry["grows"] = bool(all(b > a for a, b in zip(vocab, vocab[1:])))
        per_budget.append(entry)
        groups_v.append((nnv, vocab))
        groups_nv.append((nnv, nv))
        groups_paper.append((nnv, paper))
    return {
        "per_budget": per_budget,
        "vocab_exponent": _pooled_slope(groups_v),
        "nv_exponent": _pooled_slope(groups_nv),
        "paper_nv_exponent_at_fixed_c": _pooled_slope(groups_paper),
        "paper_gamma_compute_optimal": scaling.PAPER_ISOFLOPS.nv.exponent / scaling.PAPER_ISOFLOPS.nnv.exponent,
        "sizes": len({m["nnv"] for m in per_model}),
        "with_data": vocab_vs_nnv_and_data(per_model),
    }


def vocab_vs_nnv_and_data(per_model: list[dict]) -> dict | None:
    """ln V_opt = a + x·ln N_nv + y·ln D over the interior (size, budget) optima, D the tokens a run at V_opt trains
    (C / (6(N_nv + V·d))): x is how the optimal V moves with N_nv at equal data, y with data at equal size; at a
    fixed budget D ∝ 1/N_nv roughly, so V ∝ N_nv^(x − y) there. None without 2 sizes and 4 interior optima."""
    cells = [m for m in per_model if m["flag"] == "interior"]
    if len({m["nnv"] for m in cells}) < 2 or len(cells) < 4:
        return None
    tokens = [m["budget"] / (6 * (m["nnv"] + m["vocab"] * m["d"])) for m in cells]
    A = np.array([[1.0, math.log(m["nnv"]), math.log(t)] for m, t in zip(cells, tokens)])
    coef = np.linalg.lstsq(A, np.log([m["vocab"] for m in cells]), rcond=None)[0]
    return {"nnv_exponent": float(coef[1]), "data_exponent": float(coef[2]), "points": len(cells)}


def _resample(rows: list[dict], rng: np.random.Generator) -> list[dict]:
    cells: dict[tuple, list[dict]] = {}
    for r in rows:
        cells.setdefault((r["budget"], r["preset"]), []).append(r)
    out = []
    for cell in cells.values():
        need = min(MIN_DISTINCT, len({r["vocab"] for r in cell}))
        for _ in range(100):
            pick = [cell[i] for i in rng.integers(0, len(cell), len(cell))]
            if len({r["vocab"] for r in pick}) >= need:
                break
        out += pick
    return out


def bootstrap(
    rows: list[dict], statistics: Callable[[list[dict]], dict], replicates: int = REPLICATES, seed: int = 0
) -> dict:
    """name → {median, low, high (the INTERVAL percentiles), std, replicates} of every finite statistic over
    `replicates` resamplings of the runs (fixed seed: the same spread every time for the same runs)."""
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {}
    for _ in range(replicates):
        with warnings.catch_warnings():  # a resampled cell with 3 distinct V is an exact (ill-conditioned) parabola
            warnings.simplefilter("ignore")
            stats = statistics(_resample(rows, rng))
        for k, v in stats.items():
            if v is not None and math.isfinite(v):
                samples.setdefault(k, []).append(float(v))
    out = {}
    for k, vals in samples.items():
        a = np.asarray(vals)
        low, high = np.percentile(a, INTERVAL)
        out[k] = {
            "median": float(np.median(a)),
            "low": float(low),
            "high": float(high),
            "std": float(a.std()),
            "replicates": len(a),
        }
    return out
