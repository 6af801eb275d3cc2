"""The sweep's figure: L_u against V per budget; the optimal V against N_nv at each budget; the optimal V against
compute per size, by approach 1 and beside the paper's exponents (its Fig. 5 and the claim across sizes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlxsuite.platform.plots import check_path, pyplot, save
from mlxsuite.vocab import scaling


def _lu_panel(ax, analysis: dict, runs: list[dict], budgets: list[float], presets: list[str], colors) -> None:
    markers = "osD^v<>p*h"
    for ci, c in enumerate(budgets):
        for pi, p in enumerate(presets):
            group = sorted((r for r in runs if r["budget"] == c and r["preset"] == p), key=lambda r: r["vocab"])
            if not group:
                continue
            v = [r["vocab"] for r in group]
            ax.plot(v, [r["lu"] for r in group], markers[pi % len(markers)], color=colors[ci], label=f"C={c:.2g}, {p}")
            m = next(m for m in analysis["per_model"] if m["budget"] == c and m["preset"] == p)
            if m["coef"]:
                xs = np.linspace(*np.log(m["window"]), 100)
                ax.plot(np.exp(xs), np.polyval(m["coef"], xs), "-" if pi == 0 else "--", color=colors[ci], lw=1)
            ax.plot([m["vocab"]], [m["lu"]], "*", color=colors[ci], ms=12, mec="k")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("vocabulary size V")
    ax.set_ylabel("L_u (nats per token, unigram-normalized)")
    ax.set_title("L_u against V (parabola around the best; ★ its minimum)")
    ax.legend(fontsize=6, ncol=2)


def _nnv_panel(ax, analysis: dict, budgets: list[float], colors) -> None:
    across = analysis["vocab_vs_nnv"]
    x = across.get("vocab_exponent")
    widths = {m["preset"]: m["d"] for m in analysis["per_model"]}
    for ci, e in enumerate(across["per_budget"]):
        nnv, vocab = np.array(e["nnv"]), np.array(e["vocab"])
        ax.plot(nnv, vocab, "o", color=colors[ci], label=f"C={e['budget']:.2g}")
        if x is not None and len(nnv) >= 2:  # the pooled fit: one slope, this budget's intercept
            k = np.mean(np.log(vocab) - x * np.log(nnv))
            ax.plot(nnv, np.exp(k + x * np.log(nnv)), "-", color=colors[ci], lw=1)
            d = np.array([widths[p] for p in e["presets"]])
            paper = [scaling.PAPER_PARAMETRIC.optimal_nv(n, e["budget"]) for n in nnv]
            ax.plot(nnv, np.array(paper) / d, ":", color=colors[ci], lw=1)
    spread = analysis.get("spread", {}).get("vocab_vs_nnv_exponent")
    title = "optimal V against N_nv at each budget"
    if x is not None:
        title += f"\nfit V ∝ N_nv^{x:.2f}" + (f" [{spread['low']:.2f}, {spread['high']:.2f}]" if spread else "")
        title += f"; paper: N_v ∝ N_nv^{across['paper_gamma_compute_optimal']:.2f} (compute-optimal)"
    ax.set_xscale("log")
    ax.set_yscale("log", base=2)
    ax.set_xlabel("non-vocabulary parameters N_nv")
    ax.set_ylabel("optimal V")
    ax.set_title(title + "\n(dotted: the paper's approach 3 at the same N_nv and C)", fontsize=9)
    ax.legend(fontsize=7)


def _compute_panel(ax, analysis: dict, budgets: list[float], presets: list[str]) -> None:
    markers = "osD^v<>p*h"
    for pi, p in enumerate(presets):
        pts = sorted((m["budget"], m["vocab"]) for m in analysis["per_model"] if m["preset"] == p)
        trend = analysis["fits"]["vocab_vs_compute_by_preset"].get(p, {})
        label = p + (f": V ∝ C^{trend['exponent']:.2f}" if "exponent" in trend else "")
        ax.plot(*zip(*pts), markers[pi % len(markers)] + "-", label=label, ms=6, lw=1)
    a1 = analysis["fits"]["isoflops"]
    if a1.get("vocab"):
        line = [(x["budget"], x["vocab"]) for x in a1["vocab"]]
        ax.plot(*zip(*line), "k--", lw=1.5, label=f"approach 1 (envelope): N_v ∝ C^{a1['exponent']:.2f}")
        c0, v0 = line[0]
        cs = np.geomspace(budgets[0], budgets[-1], 20)
        paper = scaling.PAPER_ISOFLOPS.nv.exponent
        ax.plot(cs, v0 * (cs / c0) ** paper, color="0.5", lw=1, label=f"paper: N_v ∝ C^{paper:.2f} (slope only)")
    ax.set_xscale("log")
    ax.set_yscale("log", base=2)
    ax.set_xlabel("compute C (FLOPs)")
    ax.set_ylabel("optimal V")
    ax.set_title("optimal V against compute per size", fontsize=9)
    ax.legend(fontsize=7)


def plot_sweep(doc: dict, path: str | Path) -> Path:
    """Left: L_u against V for every budget (colour) and preset (marker), the fitted parabolas and their optima.
    Middle: the optimal V against N_nv at each budget with the pooled fit and the paper's approach 3 at the same
    points. Right: the optimal V against compute per size, approach 1's line and the paper's exponent."""
    check_path(path)
    plt = pyplot()
    path = Path(path)
    analysis = doc["analysis"]
    runs = list(doc["runs"].values()) if isinstance(doc["runs"], dict) else doc["runs"]
    names = {p["name"] for p in doc["plan"]}
    runs = [r for r in runs if r["name"] in names and r.get("lu") is not None]
    budgets = sorted({r["budget"] for r in runs})
    presets = list(dict.fromkeys(m["preset"] for m in analysis["per_model"]))
    colors = plt.cm.viridis(np.linspace(0, 0.9, max(1, len(budgets))))
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(18, 5.8))
    _lu_panel(ax1, analysis, runs, budgets, presets, colors)
    _nnv_panel(ax2, analysis, budgets, colors)
    _compute_panel(ax3, analysis, budgets, presets)
    fig.tight_layout()
    save(fig, path)
    return path
