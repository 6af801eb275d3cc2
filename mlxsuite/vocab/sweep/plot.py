"""The sweep's figure: L_u against V per budget, and the optimal V against compute by every approach."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlxsuite.platform.plots import check_path, pyplot, save
from mlxsuite.vocab import scaling


def _plot_lu_against_v(ax1, runs: list[dict], analysis: dict, budgets: list, presets: list, colors) -> None:
    """The left panel: L_u against V per budget (colour) and preset (marker), the parabolas and their minima."""
    markers = "osD^v<>p*h"
    for ci, c in enumerate(budgets):
        for pi, p in enumerate(presets):
            group = sorted((r for r in runs if r["budget"] == c and r["preset"] == p), key=lambda r: r["vocab"])
            if not group:
                continue
            v = [r["vocab"] for r in group]
            ax1.plot(v, [r["lu"] for r in group], markers[pi % len(markers)], color=colors[ci], label=f"C={c:.2g}, {p}")
            m = next(m for m in analysis["per_model"] if m["budget"] == c and m["preset"] == p)
            if m["coef"]:
                xs = np.linspace(*np.log(m["window"]), 100)
                ax1.plot(np.exp(xs), np.polyval(m["coef"], xs), "-" if pi == 0 else "--", color=colors[ci], lw=1)
            ax1.plot([m["vocab"]], [m["lu"]], "*", color=colors[ci], ms=14, mec="k")
    ax1.set_xscale("log", base=2)
    ax1.set_xlabel("vocabulary size V")
    ax1.set_ylabel("L_u (nats per token, unigram-normalized)")
    ax1.set_title("L_u against V per budget (parabola around the best; ★ its minimum)")
    ax1.legend(fontsize=7)


def plot_sweep(doc: dict, path: str | Path) -> Path:
    """Left: L_u against V for every budget (colour) and preset (marker), the fitted parabolas and their optima.
    Right: the optimal V against compute: measured (lowest point per budget), approaches 1-3 fitted on the runs,
    and the paper's published approach 3 at the swept presets' size (dotted)."""
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
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.5))
    _plot_lu_against_v(ax1, runs, analysis, budgets, presets, colors)

    def line(points, style, label, **kw):
        if points:
            ax2.plot([p["budget"] for p in points], [p["vocab"] for p in points], style, label=label, **kw)

    line(analysis["measured"]["vocab"], "k*-", "measured: lowest L_u per budget", ms=13)
    fits = analysis["fits"]
    names = {
        "isoflops": "approach 1 (IsoFLOPs laws)",
        "derivative": "approach 2 (derivative, anchored)",
        "parametric": "approach 3 (parametric loss)",
    }
    for (key, label), style in zip(names.items(), ("bo--", "gs--", "r^--")):
        exponent = fits[key].get("exponent")
        line(fits[key].get("vocab"), style, label + (f", V ∝ C^{exponent:.2f}" if exponent is not None else ""))
    cs = np.geomspace(budgets[0], budgets[-1], 30)
    for p in presets:
        m = next(m for m in analysis["per_model"] if m["preset"] == p)
        paper = [scaling.PAPER_PARAMETRIC.optimal_nv(m["nnv"], c) / m["d"] for c in cs]
        ax2.plot(cs, paper, ":", color="0.4", label=f"paper's approach 3 (published constants), {p}")
    by_bpc = [{"budget": o["budget"], "vocab": o["by_bpc"]["vocab"]} for o in analysis["optimal_vocab"] if o["by_bpc"]]
    line(by_bpc, "x--", "lowest bits/char per budget (for comparison)", color="0.6")
    vocabs = sorted({r["vocab"] for r in runs})
    ax2.set_xscale("log")
    ax2.set_yscale("log", base=2)
    ax2.set_ylim(vocabs[0] / 1.5, vocabs[-1] * 1.5)
    ax2.axhspan(vocabs[0], vocabs[-1], color="0.93", zorder=0)  # the trained grid
    ax2.set_xlabel("compute C (FLOPs)")
    ax2.set_ylabel("optimal V")
    ax2.set_title("Optimal vocabulary against compute (shaded: trained V range)")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    save(fig, path)
    return path
