"""Time to first token: the measurement behind `mlxsuite bench ttft`. Never prints; progress goes to a callback.

TTFT is the wall time from the prompt's token ids being ready to the first sampled token being materialized
(`mx.eval`): the prefill, the last-token logits and the sampling, as mlx-lm's `prompt_time`. Tokenization is timed
apart. Warm-up runs are not counted, each trial starts with a fresh KV cache and `mx.reset_peak_memory()`, and
the modes of one configuration are interleaved (ABBA order) so load on a shared machine hits them alike.

A mode is one way to produce the first token: a function from token ids (B, T) to the first token ids (B,),
plus the FLOPs it spends. `base` is our prefill, `mlx-lm` is mlx-lm's `generate_step` on the same weights; with
a KV Prediction pair (`Setup.extras["kvp"]`, whose base is `Setup.model`) `aux` is the auxiliary alone (prefilled
exactly as the base: chunked, fused CPU path) and `kvp` is KV Prediction's prompt step (aux on N−1 tokens in the
same chunks, predictor per chunk, base on the last token). With `base` measured too, every row carries its TTFT
reduction (base median / mode median) next to its FLOPs reduction (base FLOPs / mode FLOPs).
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import mlx.core as mx
import numpy as np

from . import flops, platform
from .errors import UserError
from .generate import prefill, sample
from .models import kernels
from .models.lm import Model, ModelArgs
from .plots import pyplot, require_matplotlib

# The KV Prediction paper's on-device regimes (§4.5): TriviaQA's 59-token prompts at batch 64 (Table 5) and
# batch 8 at 128-1024 tokens (Fig. 5b).
PAPER_REGIME: list[tuple[int, int]] = [(59, 64), (128, 8), (256, 8), (512, 8), (1024, 8)]

Progress = Callable[[int, int, str], None]  # (done, total, what)


@dataclass
class Setup:
    """What a mode builder gets: the model under test and the settings shared by all modes."""

    model: Model
    prefill_step: int
    extras: dict = field(default_factory=dict)  # options for modes that need more (e.g. an auxiliary model)


@dataclass
class Mode:
    name: str
    first_token: Callable[[mx.array], mx.array]  # token ids (B, T) -> first token ids (B,), lazy is fine
    flops: Callable[[int, int], int]  # (prompt_tokens, batch) -> FLOPs spent before the first token
    max_batch: Optional[int] = None  # None: any batch size


ModeBuilder = Callable[[Setup], Mode]
MODES: dict[str, ModeBuilder] = {}
KVP_MODES = ("aux", "kvp")  # need a KV Prediction pair: Setup.extras["kvp"]


def register_mode(name: str, builder: ModeBuilder) -> None:
    MODES[name] = builder


def check_mode_names(names: list[str], kvp: bool = False) -> None:
    """Unknown mode names are errors, and so are aux/kvp without a KV Prediction pair (`kvp`)."""
    if not names:
        raise UserError("no modes to measure")
    for name in names:
        if name not in MODES:
            raise UserError(f"unknown mode {name!r}: choose from {', '.join(MODES)}")
        if name in KVP_MODES and not kvp:
            raise UserError(
                f"mode {name!r} needs a KV Prediction pair: add --kvp DIR (a folder from `mlxsuite kvp train`)"
            )


def build_modes(names: list[str], setup: Setup) -> list[Mode]:
    """Mode objects for `names`, in order, without duplicates."""
    check_mode_names(names, kvp="kvp" in setup.extras)
    return [MODES[name](setup) for name in dict.fromkeys(names)]


# ---- modes --------------------------------------------------------------------------------------------------


def _base_mode(setup: Setup) -> Mode:
    model, step = setup.model, setup.prefill_step

    def first_token(tokens: mx.array) -> mx.array:
        return sample(prefill(model, tokens, model.make_cache(), step))

    return Mode("base", first_token, lambda T, B: flops.prefill(model.args, T, B))


def mlx_lm_model(model: Model):
    """mlx-lm's own model class holding the same weights (shared arrays, no copy)."""
    import mlx.nn as nn
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama, qwen3

    args = model.args
    arch = qwen3 if args.qk_norm else llama
    config = args.to_dict()
    if args.qk_norm:
        config["model_type"] = "qwen3"
    ref = arch.Model(arch.ModelArgs.from_dict(config))
    weights = dict(tree_flatten(model.parameters()))
    quantized = [m for _, m in model.named_modules() if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))]
    if quantized:
        q = quantized[0]
        nn.quantize(ref, group_size=q.group_size, bits=q.bits, class_predicate=lambda p, m: f"{p}.scales" in weights)
    try:
        ref.load_weights(list(ref.sanitize(weights).items()), strict=True)
    except ValueError as e:
        raise UserError(
            f"the weights do not load into mlx-lm's {arch.__name__.rsplit('.', 1)[-1]} model: {e}"
        ) from None
    ref.eval()
    return ref


def _mlx_lm_mode(setup: Setup) -> Mode:
    from mlx_lm.generate import generate_step
    from mlx_lm.models.cache import make_prompt_cache

    ref, step = mlx_lm_model(setup.model), setup.prefill_step
    # mlx-lm's own stream is bound to the device current at its import; the default stream also lets the harness's
    # mx.synchronize() drain the decode step generate_step schedules before returning the first token.
    stream = mx.default_stream(mx.default_device())

    def first_token(tokens: mx.array) -> mx.array:
        gen = generate_step(
            tokens[0], ref, stream=stream, max_tokens=1, prompt_cache=make_prompt_cache(ref), prefill_step_size=step
        )
        token, _ = next(gen)
        gen.close()
        return mx.array([token])

    return Mode("mlx-lm", first_token, lambda T, B: flops.prefill(setup.model.args, T, B), max_batch=1)


def _aux_mode(setup: Setup) -> Mode:
    """The auxiliary alone, prefilled exactly as the base is."""
    aux = setup.extras["kvp"].auxiliary
    return Mode("aux", lambda tokens: sample(prefill(aux, tokens, aux.make_cache(), setup.prefill_step)),
                lambda T, B: flops.prefill(aux.args, T, B))


def _kvp_mode(setup: Setup) -> Mode:
    from .kvp import prompt_step

    pair = setup.extras["kvp"]
    return Mode("kvp", lambda tokens: sample(prompt_step(pair, tokens, setup.prefill_step)[0]),
                lambda T, B: flops.kvp_prefill(pair, T, B))


register_mode("base", _base_mode)
register_mode("mlx-lm", _mlx_lm_mode)
register_mode("aux", _aux_mode)
register_mode("kvp", _kvp_mode)


# ---- statistics ---------------------------------------------------------------------------------------------


def summarize(samples: list[float]) -> dict:
    """median, p10, p90 (numpy's linear interpolation), mean, sample std (n-1; None for one sample), samples."""
    s = np.asarray(samples, dtype=np.float64)
    return {
        "median": float(np.median(s)),
        "p10": float(np.percentile(s, 10)),
        "p90": float(np.percentile(s, 90)),
        "mean": float(s.mean()),
        "std": float(s.std(ddof=1)) if len(s) > 1 else None,
        "samples": [float(x) for x in s],
    }


# ---- the measurement ----------------------------------------------------------------------------------------


def check_configs(args: ModelArgs, configs: list[tuple[int, int]], reps: int, warmup: int) -> None:
    if not configs:
        raise UserError("no prompt lengths or batch sizes to measure")
    for T, B in configs:
        if T < 1 or B < 1:
            raise UserError(f"prompt lengths and batch sizes must be positive, got {T} tokens × batch {B}")
        if T > args.max_position_embeddings:
            raise UserError(
                f"a {T}-token prompt is longer than the model's context ({args.max_position_embeddings} tokens)"
            )
    if reps < 1:
        raise UserError(f"--reps must be at least 1, got {reps}")
    if warmup < 0:
        raise UserError(f"--warmup must be 0 or more, got {warmup}")


def _trial(mode: Mode, tokens: mx.array) -> tuple[float, int]:
    """One TTFT sample (seconds) and the peak memory (bytes) during it."""
    mx.synchronize()
    mx.reset_peak_memory()
    t0 = time.perf_counter()
    mx.eval(mode.first_token(tokens))
    dt = time.perf_counter() - t0
    peak = mx.get_peak_memory()
    mx.synchronize()  # mlx-lm schedules its next decode step before returning the first token: let it drain
    return dt, peak


def _tokenize_text(tokenizer, ids: mx.array) -> list[str]:
    return [tokenizer.decode(row) for row in ids.tolist()]


GEMM_N = 1024  # the roofline's matrix size


class GemmProbe:
    """The device's float32 GEMM rate (n×n×n), sampled between trials so that it sees the same machine load as
    they do (platform.measure_sgemm times a block of repetitions, and numpy too)."""

    def __init__(self, n: Optional[int] = None):
        self.n = n or GEMM_N
        self.a, self.b = mx.random.normal((self.n, self.n)), mx.random.normal((self.n, self.n))
        mx.eval(self.a @ self.b)  # warm-up
        self.samples: list[float] = []

    def sample(self) -> None:
        mx.synchronize()
        t0 = time.perf_counter()
        mx.eval(self.a @ self.b)
        self.samples.append(2 * self.n**3 / (time.perf_counter() - t0) / 1e9)


def run(
    setup: Setup,
    mode_names: list[str],
    configs: list[tuple[int, int]],
    reps: int = 5,
    warmup: int = 1,
    tokenizer=None,
    seed: int = 0,
    progress: Optional[Progress] = None,
) -> dict:
    """Measure TTFT for every (prompt_tokens, batch) in `configs` and every mode; returns the report (JSON-ready)."""
    args = setup.model.args
    check_configs(args, configs, reps, warmup)
    modes = build_modes(mode_names, setup)
    notes = []
    progress = progress or (lambda done, total, what: None)
    plan = [(T, B, [m for m in modes if m.max_batch is None or B <= m.max_batch]) for T, B in configs]
    for T, B, ms in plan:
        for m in modes:
            if m.max_batch is not None and B > m.max_batch:
                notes.append(f"{m.name} measures batch {m.max_batch} only: skipped at batch {B}")
    total = sum((warmup + reps) * len(ms) for _, _, ms in plan)
    done = 0

    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    gemm = GemmProbe()
    results = []
    for T, B, ms in plan:
        mx.random.seed(seed)
        tokens = mx.random.randint(0, args.vocab_size, (B, T))
        mx.eval(tokens)
        texts = _tokenize_text(tokenizer, tokens) if tokenizer is not None else None
        times: dict[str, list[float]] = {m.name: [] for m in ms}
        peaks: dict[str, int] = {m.name: 0 for m in ms}
        tokenize, n_text_tokens = [], None
        for r in range(warmup + reps):
            timed = r >= warmup
            if texts is not None and timed:
                t0 = time.perf_counter()
                encoded = [tokenizer.encode(t) for t in texts]
                tokenize.append(time.perf_counter() - t0)
                n_text_tokens = sum(len(e) for e in encoded)
            for m in ms if r % 2 == 0 else reversed(ms):
                progress(done, total, f"{m.name} {T} tokens × {B}" + ("" if timed else " (warm-up)"))
                dt, peak = _trial(m, tokens)
                done += 1
                if timed:
                    times[m.name].append(dt)
                    peaks[m.name] = max(peaks[m.name], peak)
            if timed:
                gemm.sample()
        for m in ms:
            ttft = summarize(times[m.name])
            flops = m.flops(T, B)
            row: dict[str, Any] = {
                "mode": m.name,
                "prompt_tokens": T,
                "batch": B,
                "ttft_s": ttft,
                "prompt_tps": B * T / ttft["median"],
                "flops": flops,
                "gflops_per_s": flops / ttft["median"] / 1e9,
                "peak_memory_bytes": peaks[m.name],
            }
            if texts is not None:
                row["tokenize_s"] = summarize(tokenize)
                row["tokenize_tokens"] = n_text_tokens  # what the text re-encodes to, summed over the batch
            results.append(row)
        _add_ratios(results[-len(ms) :], times)
        _add_reductions(results[-len(ms) :], times)
    rate = statistics.median(gemm.samples)
    for row in results:
        row["roofline_fraction"] = row["gflops_per_s"] / rate
    progress(total, total, "done")
    device = platform.set_device(None)
    return {
        "device": device,
        "cpu": platform.cpu_name(),
        "blas": asdict(platform.blas_info()),
        "gemm_gflops": rate,  # median of the samples taken between trials
        "gemm_gflops_best": max(gemm.samples),
        "gemm_n": gemm.n,
        "dtype": str(setup.model.model.norm.weight.dtype).replace("mlx.core.", ""),
        "params": {"total": args.n_params, "nonvocab": args.n_nonvocab_params},
        "prefill_step": setup.prefill_step,
        "fused_prefill": kernels.available(setup.model.layers, setup.model.model.norm.weight.dtype),
        "reps": reps,
        "warmup": warmup,
        "seed": seed,
        "load_average": {"start": load_start, "end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None},
        "flops_counted": "matmuls: linear layers on all prompt tokens, causal attention, LM head on the last token"
        + ("; kvp: aux on N-1 tokens (its last layer's K/V projections only, no head), predictor on N-1, base on "
           "the last token" if "kvp" in setup.extras else ""),
        **({"kvp": kvp_info(setup.extras["kvp"])} if "kvp" in setup.extras else {}),
        "notes": list(dict.fromkeys(notes)),
        "results": results,
    }


def kvp_info(pair) -> dict:
    """The pair's shape for the report: layer counts, parameters, the paper's FLOPs reduction (parameter ratio)."""
    from .kvp import flops_reduction

    return {
        "base_layers": pair.base.args.num_hidden_layers,
        "aux_layers": pair.auxiliary.args.num_hidden_layers,
        "layer_map": list(pair.predictor.args.layer_map),
        "params": {"base": pair.base.args.n_params, "aux": pair.auxiliary.args.n_params,
                   "predictor": pair.predictor.n_params()},
        "param_ratio": flops_reduction(pair),
    }


def _add_ratios(rows: list[dict], times: dict[str, list[float]]) -> None:
    """speedup_vs_mlx_lm = mlx-lm's median TTFT / this mode's (> 1: faster than mlx-lm), and the median of the
    per-repetition ratios (each pair measured back to back, so less sensitive to drifting load)."""
    if "mlx-lm" not in times:
        return
    ref = times["mlx-lm"]
    for row in rows:
        if row["mode"] == "mlx-lm":
            continue
        mine = times[row["mode"]]
        row["speedup_vs_mlx_lm"] = statistics.median(ref) / statistics.median(mine)
        row["speedup_vs_mlx_lm_paired"] = statistics.median(r / m for r, m in zip(ref, mine))


def _add_reductions(rows: list[dict], times: dict[str, list[float]]) -> None:
    """With `base` measured: ttft_reduction_vs_base = base median / this mode's (> 1: faster than the base), its
    paired version (median of per-repetition ratios), flops_reduction_vs_base = base FLOPs / this mode's, and
    ttft_over_flops_reduction = their ratio (1: the time saving matches the FLOPs saving)."""
    base = next((r for r in rows if r["mode"] == "base"), None)
    if base is None:
        return
    ref = times["base"]
    for row in rows:
        mine = times[row["mode"]]
        row["ttft_reduction_vs_base"] = statistics.median(ref) / statistics.median(mine)
        row["ttft_reduction_vs_base_paired"] = statistics.median(r / m for r, m in zip(ref, mine))
        row["flops_reduction_vs_base"] = base["flops"] / row["flops"]
        row["ttft_over_flops_reduction"] = row["ttft_reduction_vs_base"] / row["flops_reduction_vs_base"]


# ---- plot ---------------------------------------------------------------------------------------------------


def check_plot_path(path: Path) -> None:
    """Fail before measuring: matplotlib missing, not a .png, or a folder that does not exist."""
    require_matplotlib()
    if Path(path).suffix.lower() != ".png":
        raise UserError(f"--plot writes a PNG: give a file name ending in .png, got {path}")
    if not Path(path).parent.resolve().is_dir():
        raise UserError(f"--plot: folder {Path(path).parent} does not exist")


def plot(report: dict, path: Path) -> None:
    """TTFT (median, p10-p90 band) against prompt length, one line per mode and batch size; written atomically."""
    plt = pyplot()
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: dict[tuple[str, int], list[dict]] = {}
    for row in report["results"]:
        series.setdefault((row["mode"], row["batch"]), []).append(row)
    for (mode, batch), rows in series.items():
        rows = sorted(rows, key=lambda r: r["prompt_tokens"])
        x = [r["prompt_tokens"] for r in rows]
        y = [r["ttft_s"]["median"] for r in rows]
        (line,) = ax.plot(x, y, marker="o", label=f"{mode}, batch {batch}")
        ax.fill_between(
            x, [r["ttft_s"]["p10"] for r in rows], [r["ttft_s"]["p90"] for r in rows], color=line.get_color(), alpha=0.2
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sorted({r["prompt_tokens"] for r in report["results"]}))
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("prompt tokens")
    ax.set_ylabel("time to first token (s)")
    ax.set_title(f"TTFT on {report['device']} ({report['dtype']}), median and p10-p90")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.png")
    try:
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
