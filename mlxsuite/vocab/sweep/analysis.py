"""The sweep's fits (numpy only): per (budget, preset) a parabola of L_u in ln V, then the paper's three approaches on
the runs, each giving an optimal V per budget.

- Approach 1 (IsoFLOPs), as the reference `approach1_isoflops.py`: candidate points are the runs, with each
  (budget, preset) group replaced by its parabola (fitted to the best V and two grid points on each side) sampled at
  20 log-spaced V across those points and at its minimum (the reference adds a quadratic interpolation through the
  points instead; a least-squares parabola is steadier on small noisy runs);
  the lower envelope of L_u against FLOPs keeps one point per budget, the lowest, if it beats every cheaper budget;
  then ln N_nv = K1 + 0.5·ln C, ln N_v = K2 + α·ln C, ln H = K3 + 0.5·ln C with the Huber loss (`free_exponents`
  frees the 0.5s). Its V per budget: N_v(C) / d of the preset the envelope chose at that budget.
- Approach 2 (derivative): f(V) fitted on the sweep's own tokenizers, γ fitted on the roots of ∂C/∂V = 0 over the
  model family's (N_nv, d), anchored (as the paper anchors on its 33M runs) on the smallest swept preset's measured
  optimum at the budget nearest its compute-optimal one by approach 1; then N_v = anchor·(N_nv(C)/N_nv,anchor)^γ with
  N_nv(C) from approach 1. It moves with C only through N_nv(C): it assumes compute-optimal training.
- Approach 3 (parametric loss): L_u = -E + A1/N_nv^α1 + A2/N_v^α2 + B/D^β (α1 = β; A1, A2, B >= 0) on all runs, and
  the V minimizing it at each budget for every preset.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from mlxsuite.platform.errors import UserError
from mlxsuite.vocab import scaling
from mlxsuite.vocab.sweep import spread

INTERPOLATED_VOCABS = 20  # log-spaced V per (budget, preset), as the reference samples 20 V per model


NEIGHBOURS = 2  # grid points on each side of the measured best that the parabola is fitted to


def parabola_optimum(vocab, lu, neighbours: int = NEIGHBOURS) -> dict:
    """Minimum of L_u ≈ a·ln²V + b·lnV + c fitted to the measured best V and up to `neighbours` grid points on each
    side (`window`): L_u rises faster above the optimum than below it, so a parabola through far points on one side
    would pull the vertex toward the other.

    flag: "interior" (a convex parabola's vertex inside the window), "low-edge" / "high-edge" (vertex outside: clamped
    to the window, the true optimum is beyond it), "not-convex" (a ≤ 0: the measured best is taken), "two-points" (too
    few vocabularies for a parabola: the measured best).
    """
    v = np.asarray(vocab, dtype=float)
    y = np.asarray(lu, dtype=float)
    order = np.argsort(v)
    v, y = v[order], y[order]
    best = int(np.argmin(y))
    measured = {"measured_best_vocab": int(v[best]), "measured_best_lu": float(y[best]), "points": int(len(v))}
    if len(np.unique(v)) < 3:
        return {
            "vocab": float(v[best]),
            "lu": float(y[best]),
            "flag": "two-points" if len(v) == 2 else "one-point",
            "coef": None,
            "window": [float(v[0]), float(v[-1])],
            **measured,
        }
    lo, hi = max(0, best - neighbours), min(len(v), best + neighbours + 1)
    if hi - lo < 3:  # a parabola needs 3 points: widen toward the side that has them
        lo, hi = (0, 3) if lo == 0 else (len(v) - 3, len(v))
    x, y_fit = np.log(v[lo:hi]), y[lo:hi]
    a, b, c = np.polyfit(x, y_fit, 2)
    if a <= 0:
        flag, x_opt = "not-convex", math.log(v[best])
        if best == 0 or best == len(v) - 1:
            flag = "not-convex-edge"
    else:
        x_opt = -b / (2 * a)
        flag = "interior"
        if x_opt <= x[0]:
            x_opt, flag = x[0], "low-edge"
        elif x_opt >= x[-1]:
            x_opt, flag = x[-1], "high-edge"
    lu_opt = float(a * x_opt**2 + b * x_opt + c) if flag in ("interior", "low-edge", "high-edge") else float(y[best])
    vocab_opt = math.exp(x_opt) if flag in ("interior", "low-edge", "high-edge") else v[best]
    return {
        "vocab": float(vocab_opt),
        "lu": lu_opt,
        "flag": flag,
        "coef": [float(a), float(b), float(c)],
        "window": [float(v[lo]), float(v[hi - 1])],
        **measured,
    }


def _tokens_per_char(tpc: dict[int, float], vocab) -> np.ndarray:
    """Measured tokens per character, interpolated linearly in ln V between the trained tokenizers."""
    ks = sorted(tpc)
    return np.interp(np.log(vocab), np.log(ks), [tpc[k] for k in ks])


def _trend(points: list[tuple[float, float]]) -> dict:
    """How V moves over the budgets: V at the largest over V at the smallest, and the exponent of V ∝ C^x."""
    points = sorted(points)
    out = {"vocab": [{"budget": c, "vocab": v} for c, v in points]}
    if len(points) >= 2:
        out["ratio"] = points[-1][1] / points[0][1]
        out["exponent"] = scaling.fit_power_law(*zip(*points)).exponent
    return out


def _per_model(rows: list[dict], budgets: list[float], presets: list[str]) -> list[dict]:
    per_model = []
    for c in budgets:
        for p in presets:
            group = [r for r in rows if r["budget"] == c and r["preset"] == p]
            if not group:
                continue
            opt = parabola_optimum([r["vocab"] for r in group], [r["lu"] for r in group])
            g0 = group[0]
            entry = {"budget": c, "preset": p, "nnv": g0["nnv"], "d": g0["d"], **opt}
            vocabs = [r["vocab"] for r in group]
            inside = min(vocabs) < opt["measured_best_vocab"] < max(vocabs)
            entry["bracketed"] = bool(inside and opt["flag"] == "interior")  # lowest L_u has a grid point each side
            if all(r.get("bpc") is not None for r in group):  # the same fit on bits per character, for comparison
                b = parabola_optimum([r["vocab"] for r in group], [r["bpc"] for r in group])
                entry["by_bpc"] = {"vocab": b["vocab"], "bpc": b["lu"], "flag": b["flag"]}
            per_model.append(entry)
    return per_model


def _candidates(rows: list[dict], per_model: list[dict], tpc: dict[int, float]) -> list[dict]:
    """Approach 1's points: each (budget, preset) as its parabola sampled across the grid, or its runs when there is
    no convex parabola. FLOPs are the budget (every run of a budget spends it, to whole steps)."""
    points = []
    for m in per_model:
        group = [r for r in rows if r["budget"] == m["budget"] and r["preset"] == m["preset"]]
        if m["coef"] is not None and m["coef"][0] > 0:
            vocab = np.unique(np.append(np.geomspace(*m["window"], INTERPOLATED_VOCABS), m["vocab"]))  # and the vertex
            lu = np.polyval(m["coef"], np.log(vocab))
            interpolated = True
        else:
            vocab = np.array([r["vocab"] for r in group], dtype=float)
            lu = np.array([r["lu"] for r in group], dtype=float)
            interpolated = False
        tokens = m["budget"] / (6 * (m["nnv"] + vocab * m["d"]))
        chars = tokens / _tokens_per_char(tpc, vocab)
        for v, y, _t, h in zip(vocab, lu, tokens, chars):
            points.append(
                {
                    "budget": m["budget"],
                    "preset": m["preset"],
                    "nnv": m["nnv"],
                    "d": m["d"],
                    "vocab": float(v),
                    "nv": float(v * m["d"]),
                    "characters": float(h),
                    "lu": float(y),
                    "interpolated": interpolated,
                }
            )
    return points


def _isoflops(points: list[dict], budgets: list[float], free_exponents: bool, notes: list[str]) -> dict:
    flops = [p["budget"] for p in points]
    try:
        fit = scaling.fit_isoflops(
            flops,
            [p["nnv"] for p in points],
            [p["nv"] for p in points],
            [p["characters"] for p in points],
            [p["lu"] for p in points],
            free_exponents,
        )
    except UserError as e:
        return {"skipped": str(e)}
    selected = [points[i] for i in fit.selected]
    dropped = [c for c in budgets if c not in {p["budget"] for p in selected}]
    if dropped:
        notes.append(
            f"approach 1: the best L_u at budget(s) {', '.join(f'{c:.3g}' for c in dropped)} does not beat a "
            "cheaper budget's, so the lower envelope leaves them out"
        )
    if len({p["nnv"] for p in selected}) == 1:
        notes.append(
            "approach 1: one model size on the envelope, so N_nv does not vary and its law (exponent "
            f"{'free' if free_exponents else 'fixed at 0.5'}) only sets K1"
        )
    laws = fit.laws
    vocab = [(p["budget"], float(laws.nv(p["budget"])) / p["d"]) for p in selected]
    return {**fit.to_dict(), "points": len(points), "selected_points": selected, **_trend(vocab)}


def _derivative(
    per_budget: list[dict], per_model: list[dict], tpc: dict[int, float], family, iso: dict, notes: list[str]
) -> dict:
    if len(tpc) < 3:
        return {"skipped": "fitting f(V) needs at least 3 vocabulary sizes"}
    if "laws" not in iso:
        return {"skipped": "it takes N_nv(C) from approach 1, which was skipped"}
    sizes = sorted(tpc)
    compression = scaling.fit_compression(sizes, [tpc[v] for v in sizes])
    family = sorted(family)
    if len({n for n, _ in family}) < 2:
        return {"skipped": "fitting γ needs at least 2 model shapes"}
    nnv_law = scaling.PowerLaw(**iso["laws"]["nnv"])
    anchor_nnv = min(m["nnv"] for m in per_model)
    anchor_budget = float(nnv_law.inverse(anchor_nnv))  # where approach 1 calls the anchor model compute-optimal
    runs = [m for m in per_model if m["nnv"] == anchor_nnv]
    anchor = min(runs, key=lambda m: abs(math.log(m["budget"] / anchor_budget)))
    law = scaling.derivative_law(compression, anchor_nnv, anchor["vocab"] * anchor["d"], shapes=family)
    roots = [{"nnv": n, "d": d, "vocab": scaling.derivative_root(n, d, compression)} for n, d in family]
    vocab = [(o["budget"], float(law(nnv_law(o["budget"]))) / o["d"]) for o in per_budget]
    notes.append(
        f"approach 2: anchored at {anchor['preset']}'s optimum at C = {anchor['budget']:.3g}; its V moves with "
        f"C only through approach 1's N_nv(C) ∝ C^{nnv_law.exponent:.2f} (it assumes compute-optimal "
        f"training): V ∝ C^{nnv_law.exponent * law.gamma:.2f}"
    )
    return {
        "gamma": law.gamma,
        "compression": compression.to_dict(),
        "roots": roots,
        "anchor": {
            "preset": anchor["preset"],
            "budget": anchor["budget"],
            "vocab": anchor["vocab"],
            "nnv": anchor_nnv,
            "compute_optimal_budget": anchor_budget,
        },
        **_trend(vocab),
    }


def _parametric(rows: list[dict], budgets: list[float], presets: list[str], notes: list[str]) -> dict:
    if len(rows) < 6:
        return {"points": len(rows), "skipped": "it needs at least 6 runs"}
    nnv, nv, tok, lu = (np.array([r[k] for r in rows], float) for k in ("nnv", "nv", "tokens", "lu"))
    bounds = (0.02, 2.0)
    loss = scaling.fit_parametric_loss(nnv, nv, tok, lu, bounds=bounds, grid=16, rounds=25, nonnegative=True)
    pred = loss(nnv, nv, tok)
    a3 = {
        "points": len(rows),
        **loss.to_dict(),
        "rmse": float(np.sqrt(np.mean((pred - lu) ** 2))),
        "r2": scaling.r_squared(lu, pred),
        "optimal": [],
    }
    at_bound = [k for k in ("alpha2", "beta") if any(math.isclose(getattr(loss, k), x) for x in bounds)]
    if at_bound:
        notes.append(
            f"approach 3: {' and '.join(at_bound)} at the edge of the exponent search {bounds}: the runs "
            "do not pin the form down"
        )
    if len(set(nnv)) == 1:
        notes.append(
            "approach 3: a single model size, so A1 and E are not separately identifiable (the optimal V "
            "does not depend on them)"
        )
    if min(loss.A2 * loss.alpha2, loss.B * loss.beta) <= 0:
        a3["degenerate"] = True
        notes.append(
            "approach 3: the fitted loss has no vocabulary or no data term (A2·α2 or B·β ≤ 0), "
            "so it has no optimal V: the runs are too few or too noisy for this form"
        )
        return a3
    vmin, vmax = min(r["vocab"] for r in rows), max(r["vocab"] for r in rows)
    best = []
    for c in budgets:
        entries = []
        for p in presets:
            m = next(r for r in rows if r["preset"] == p)
            nv_opt = loss.optimal_nv(m["nnv"], c)
            v_opt = nv_opt / m["d"]
            lu_opt = float(loss(m["nnv"], nv_opt, c / (6 * (m["nnv"] + nv_opt))))
            entries.append(
                {"budget": c, "preset": p, "vocab": v_opt, "lu": lu_opt, "in_grid": bool(vmin <= v_opt <= vmax)}
            )
        a3["optimal"] += entries
        best.append(min(entries, key=lambda e: e["lu"]))
    a3["best"] = best
    if not all(e["in_grid"] for e in a3["optimal"]):
        notes.append("approach 3: some predicted optimal V fall outside the trained grid (extrapolation)")
    return {**a3, **_trend([(b["budget"], b["vocab"]) for b in best])}


def _per_budget(points: list[dict], per_model: list[dict], budgets: list[float]) -> list[dict]:
    """Per budget, the lowest point over presets and (interpolated) V: the measured optimum."""
    per_budget = []
    for c in budgets:
        p = min((p for p in points if p["budget"] == c), key=lambda p: p["lu"])
        m = next(m for m in per_model if m["budget"] == c and m["preset"] == p["preset"])
        cands = [x for x in per_model if x["budget"] == c]
        by_bpc = None
        if all("by_bpc" in x for x in cands):
            b = min(cands, key=lambda x: x["by_bpc"]["bpc"])
            by_bpc = {"preset": b["preset"], **b["by_bpc"]}
        per_budget.append(
            {
                "budget": c,
                "preset": p["preset"],
                "nnv": p["nnv"],
                "d": p["d"],
                "vocab": p["vocab"],
                "nv": p["nv"],
                "lu": p["lu"],
                "flag": m["flag"],
                "characters": p["characters"],
                "by_bpc": by_bpc,
                "by_preset": {x["preset"]: {"vocab": x["vocab"], "lu": x["lu"], "flag": x["flag"]} for x in cands},
            }
        )
    return per_budget


def _edge_notes(per_budget: list[dict], per_model: list[dict]) -> list[str]:
    notes = []
    edges = [o for o in per_budget if o["flag"] != "interior"]
    if edges:
        notes.append(
            f"{len(edges)} of {len(per_budget)} per-budget optima are not interior minima of the grid "
            f"({', '.join(o['flag'] for o in edges)}): the optimal V there lies beyond the grid or is unclear"
        )

    unbracketed = [m for m in per_model if not m["bracketed"]]
    if unbracketed:
        cells = ", ".join(
            f"{m['preset']} at {m['budget']:.3g} ({m['flag']}, best V {m['measured_best_vocab']})" for m in unbracketed
        )
        notes.append(
            f"{len(unbracketed)} of {len(per_model)} (size, budget) optima are not bracketed by the grid (the lowest "
            f"L_u at the smallest or largest V, or the vertex outside): {cells}; add vocabularies beyond that edge"
        )
    return notes


def _statistics(rows: list[dict], tokens_per_char: dict[int, float]) -> dict:
    """The exponents the bootstrap spreads: approach 1 (fixed and free), V and N_v against N_nv at fixed C, and the
    optimal V against C per size."""
    budgets = sorted({r["budget"] for r in rows})
    presets = sorted({r["preset"] for r in rows})
    per_model = _per_model(rows, budgets, presets)
    points = _candidates(rows, per_model, tokens_per_char)
    out = {}
    for key, free in (("a1", False), ("a1_free", True)):
        fit = _isoflops(points, budgets, free, [])
        for law in ("nnv", "nv", "characters") if "laws" in fit else ():
            out[f"{key}_{law}_exponent"] = fit["laws"][law]["exponent"]
    across = spread.vocab_vs_nnv(per_model)
    out["vocab_vs_nnv_exponent"] = across["vocab_exponent"]
    out["nv_vs_nnv_exponent"] = across["nv_exponent"]
    if across["with_data"] is not None:
        out["vocab_vs_nnv_at_equal_data_exponent"] = across["with_data"]["nnv_exponent"]
        out["vocab_vs_data_exponent"] = across["with_data"]["data_exponent"]
    for p in presets:
        pts = [(m["budget"], m["vocab"]) for m in per_model if m["preset"] == p]
        if len(pts) >= 2:
            out[f"vocab_vs_c_{p}_exponent"] = scaling.fit_power_law(*zip(*pts)).exponent
    return out


def analyze(
    rows: list[dict],
    tokens_per_char: dict[int, float],
    family: Optional[list] = None,
    free_exponents: bool = False,
    replicates: int = spread.REPLICATES,
) -> dict:
    """Fits on finished runs (dicts with preset, vocab, budget, d, nnv, nv, tokens, lu; bpc optional).

    `family`: (N_nv, d) of the model family approach 2 fits γ on (default: the swept presets); `replicates`: of the
    bootstrap over runs that gives the exponents' spread (0: none)."""
    rows = [r for r in rows if r.get("lu") is not None and math.isfinite(r["lu"])]
    budgets = sorted({r["budget"] for r in rows})
    presets = sorted({r["preset"] for r in rows}, key=lambda p: next(r["nnv"] for r in rows if r["preset"] == p))
    family = family or sorted({(r["nnv"], r["d"]) for r in rows})
    notes: list[str] = []
    per_model = _per_model(rows, budgets, presets)

    points = _candidates(rows, per_model, tokens_per_char)
    per_budget = _per_budget(points, per_model, budgets)
    notes += _edge_notes(per_budget, per_model)
    fits = {
        "isoflops": _isoflops(points, budgets, free_exponents, notes),
        "isoflops_free": _isoflops(points, budgets, True, []),
        "parametric": _parametric(rows, budgets, presets, notes),
    }
    fits["derivative"] = _derivative(per_budget, per_model, tokens_per_char, family, fits["isoflops"], notes)
    trend = {}
    for p in presets:  # at a fixed model size: does its optimal V move with compute?
        pts = [(m["budget"], m["vocab"]) for m in per_model if m["preset"] == p]
        if len(pts) >= 2:
            trend[p] = _trend(pts)
    fits["vocab_vs_compute_by_preset"] = trend

    grows = None
    if len(per_budget) >= 2:
        vs = [o["vocab"] for o in per_budget]
        grows = bool(all(b >= a for a, b in zip(vs, vs[1:])) and vs[-1] > vs[0])
    if (
        len(per_budget) >= 2
        and all(o["by_bpc"] for o in per_budget)
        and any(not math.isclose(o["vocab"], o["by_bpc"]["vocab"], rel_tol=0.25) for o in per_budget)
    ):
        notes.append(
            "the optimal V by L_u and by bits per character differ by more than 25% at some budgets "
            "(see by_bpc): L_u is per token, and a token of a larger vocabulary carries more text"
        )
    across = spread.vocab_vs_nnv(per_model)
    if across["sizes"] < 2:
        notes.append("one model size: the optimal V against N_nv at a fixed budget is not measured")
    return {
        "per_model": per_model,
        "vocab_vs_nnv": across,
        "spread": spread.bootstrap(rows, lambda rs: _statistics(rs, tokens_per_char), replicates),
        "optimal_vocab": per_budget,
        "fits": fits,
        "free_exponents": free_exponents,
        "measured": _trend([(o["budget"], o["vocab"]) for o in per_budget]),
        "vocab_grows_with_compute": grows,
        "notes": notes,
    }
