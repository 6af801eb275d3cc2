"""The MoMa comparison: every variant trained at one FLOPs budget on the same batches, the speed-up factor η per
modality against dense (§4.2), throughput, router accuracy, and the loss-vs-FLOPs plot."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Optional

import numpy as np

from mlxsuite import store
from mlxsuite.models import flops
from mlxsuite.moma.data import build_data, load_assets, load_sources, prepare_assets
from mlxsuite.moma.spec import MomaRunSpec, model_args, paper_schedule, parse_variant
from mlxsuite.moma.train import train_moma, train_routers
from mlxsuite.platform.errors import UserError
from mlxsuite.platform.plots import check_path, pyplot, save
from mlxsuite.train import trainer

SMOOTH_WIDTH = 0.3  # half-width of the smoothing window, as a fraction of a run's log-FLOPs range


def eta(dense_final: float, flops: list[float], losses: list[float], dense_total: float) -> Optional[float]:
    """Speed-up factor η = F_dense / t*, t* = FLOPs at which the loss curve first reaches dense's final loss
    (linear interpolation in log FLOPs between points). None when the curve never reaches it (η < 1 here)."""
    prev = None
    for f, loss in zip(flops, losses):
        if loss <= dense_final:
            if prev is None:
                t = f
            else:
                f0, l0 = prev
                t = f0 * (f / f0) ** ((l0 - dense_final) / (l0 - loss)) if l0 != loss else f
            return dense_total / t if t > 0 else None
        prev = (f, loss)
    return None


def smooth(flops: list[float], values: list[float], width: float = SMOOTH_WIDTH) -> list[float]:
    """Centred local quadratic regression in log FLOPs (tricube weights, half-width `width` × the log-FLOPs range
    of the run): no lag, so the smoothed end point is not held up by earlier, higher losses, and a power-law curve
    keeps its shape (a trailing mean over a tenth of the run read a true η of 3.7 as 3.24). Near the ends the
    window is one-sided and the quadratic extrapolates the local trend."""
    x, y = np.log(np.asarray(flops, np.float64)), np.asarray(values, np.float64)
    if len(x) < 4:
        return y.tolist()
    half = max(width * (x[-1] - x[0]), 1e-12)
    out = np.empty_like(y)
    lo = np.searchsorted(x, x - half, "left")
    hi = np.searchsorted(x, x + half, "right")
    for i in range(len(x)):
        d = x[lo[i] : hi[i]] - x[i]
        w = (1 - np.abs(d / half) ** 3) ** 3
        if (w > 0).sum() < 3:  # too few points for a quadratic: take them as they are
            out[i] = y[i]
            continue
        X = np.stack([np.ones_like(d), d, d * d], 1) * np.sqrt(w)[:, None]
        out[i] = np.linalg.lstsq(X, y[lo[i] : hi[i]] * np.sqrt(w), rcond=None)[0][0]
    return out.tolist()


def curves(folder: Path) -> dict:
    """Loss curves against training FLOPs from a run's metrics log: the training loss per modality (logged every
    step by `compare`, smoothed by `smooth`) and the validation losses (expert-choice routing) at the evaluation
    points."""
    config = store.read_config(folder)
    m = config["mlxsuite"]
    per_step = m["flops_per_token"] * m["tokens_per_step"]
    records = trainer.read_metrics(folder / "run")
    evals = [r for r in records if r.get("event") == "eval"]
    trains = [r for r in records if r.get("event") == "train"]
    tps = [r["tokens_per_s"] for r in trains[2:]] or [r["tokens_per_s"] for r in trains]
    flops = [r["step"] * per_step for r in trains]
    out = {
        "flops": flops,
        "val_flops": [r["step"] * per_step for r in evals],
        "tokens_per_s": float(np.median(tps)) if tps else 0.0,
        "total_flops": (trains[-1]["step"] if trains else 0) * per_step,
    }
    for k in ("loss", "loss_text", "loss_image"):
        out[f"raw_{k}"] = [r[k] for r in trains]
        out[k] = smooth(flops, out[f"raw_{k}"])
        out[f"val_{k}"] = [r[k] for r in evals]
    return out


KEYS = ("loss", "loss_text", "loss_image")
ETA_KEYS = (("overall", "loss"), ("text", "loss_text"), ("image", "loss_image"))


def etas(dense: dict, run: dict, validation: bool = False) -> dict:
    """η overall, text and image of a run's curves (`curves`) against dense's: on the smoothed training losses, or
    on the validation losses at the evaluation points."""
    p = "val_" if validation else ""
    return {name: eta(dense[p + k][-1], run[p + "flops"], run[p + k], dense["total_flops"]) for name, k in ETA_KEYS}


def _row(variant: str, run: dict, dense_c: dict) -> dict:
    """A variant's line of the comparison: final losses, η against dense, throughput, router accuracy."""
    c = run["curves"]
    m = run["config"]["mlxsuite"]
    routers = m.get("routers", {})
    return {
        "variant": variant,
        "params": m["params"],
        "flops_per_token": m["flops_per_token"],
        "total_flops": c["total_flops"],
        "final_train": {k: c[k][-1] for k in KEYS},
        "final": {k: c[f"val_{k}"][-1] for k in KEYS},
        "final_causal": routers.get("val_causal"),
        "eta": etas(dense_c, c),
        "eta_val": etas(dense_c, c, validation=True),
        "tokens_per_s": c["tokens_per_s"],
        "throughput_ratio": c["tokens_per_s"] / dense_c["tokens_per_s"] if dense_c["tokens_per_s"] else None,
        "router_acc": routers.get("router_acc"),
    }


def compare(
    variants: list[str],
    flops_budget: float,
    prefix: str = "moma-compare",
    base: Optional[dict] = None,
    callback: Optional[Callable] = None,
    plot: Optional[str] = None,
) -> dict:
    """Train each variant on the same data at the same FLOPs budget (resumable), train their auxiliary routers, and
    report final losses, η overall/text/image against dense, throughput and router accuracy.

    η (§4.2): dense's final training loss L* (the smoothed curve's end point, see `smooth`); the FLOPs t* at which
    a variant's smoothed training-loss curve first reaches L*; η = dense FLOPs / t*. Every variant sees the same
    batches step by step. `eta_val` is the same on the validation curves (expert-choice routing)."""
    if plot:
        check_path(plot)
    callback = callback or (lambda event, info: None)
    for v in variants:
        parse_variant(v)
    if not variants:
        raise UserError("no variants to compare")
    if "dense" not in [v.strip().lower() for v in variants]:
        variants = ["dense"] + variants
    base = dict(base or {})
    train_cfg = base.pop("train", {})
    assets_folder = store.output_path(f"{prefix}-data")
    probe = MomaRunSpec(out=f"{prefix}-data", **base, train=paper_schedule(**train_cfg))
    probe.validate()
    imageset, corpus = load_sources(probe)
    prepare_assets(probe, assets_folder, imageset, corpus)
    tok, imtok = load_assets(assets_folder)
    layout, train_data, _ = build_data(probe, tok, imtok, imageset, corpus)
    frac = train_data.image_fraction
    tokens_per_step = probe.batch_size * probe.seq_len
    runs = {}
    for v in variants:
        name = f"{prefix}-{v.replace('+', '-')}"
        spec = MomaRunSpec(out=name, variant=v, assets=str(assets_folder), **base, train=paper_schedule(**train_cfg))
        args = model_args(spec, layout)
        fpt = flops.moma_train_per_token(args, spec.seq_len, frac)["total"]
        spec.train.steps = max(2, int(round(flops_budget / (fpt * tokens_per_step))))
        spec.train.eval_every = max(1, spec.train.steps // 12)
        spec.train.save_every = max(spec.train.eval_every, spec.train.steps // 4)
        spec.train.log_every = 1  # per-step training losses per modality: the curves behind η
        folder = store.output_path(name)
        done = (
            (folder / store.WEIGHTS_FILE).exists()
            and (folder / "config.json").exists()
            and store.read_config(folder).get("mlxsuite", {}).get("final", {}).get("step") == spec.train.steps
        )
        callback("variant", {"variant": v, "steps": spec.train.steps, "flops_per_token": fpt, "done": done})
        if not done:  # a run interrupted after it started resumes; anything else left there starts over
            resume = (folder / "run" / "spec.json").exists()
            train_moma(spec, resume=resume, force=not resume, callback=callback)
        if not store.read_config(folder)["mlxsuite"].get("routers"):
            resume = (folder / "routers" / "run" / "spec.json").exists()
            train_routers(name, callback=callback, resume=resume, force=not resume)
        runs[v] = {"folder": folder, "config": store.read_config(folder), "curves": curves(folder)}

    rows = [_row(v, run, runs["dense"]["curves"]) for v, run in runs.items()]
    result = {
        "budget_flops": flops_budget,
        "image_fraction": frac,
        "variants": rows,
        "curves": {v: r["curves"] for v, r in runs.items()},
    }
    if plot:
        plot_curves(result["curves"], plot)
        result["plot"] = plot
    return result


def plot_curves(curve_map: dict, path: str) -> None:
    """Loss against training FLOPs (log scale) per modality: raw per-step training losses faint, smoothed training
    losses (what η reads) solid, validation losses dashed; the y-range leaves out the first tenth of the run."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, key, title in zip(axes, ("loss", "loss_text", "loss_image"), ("overall", "text", "image")):
        late, left = [], []
        for i, (v, c) in enumerate(curve_map.items()):
            color = f"C{i}"
            ax.plot(c["flops"], c[f"raw_{key}"], color=color, alpha=0.15, linewidth=0.5)
            ax.plot(c["flops"], c[key], color=color, label=f"{v} (train, smoothed)")
            ax.plot(c["val_flops"], c[f"val_{key}"], color=color, linestyle="--", marker=".", label=f"{v} (val)")
            start = len(c[key]) // 10
            late += c[key][start:] + [x for f, x in zip(c["val_flops"], c[f"val_{key}"]) if f >= c["flops"][start]]
            left.append(c["flops"][start])
        if late:
            lo, hi = min(late), max(late)
            ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
            ax.set_xlim(left=min(left))
        ax.set_xscale("log")
        ax.set_title(f"{title} loss")
        ax.set_xlabel("training FLOPs")
        ax.set_ylabel("loss")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    save(fig, path, dpi=110)
