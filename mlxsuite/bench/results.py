"""The samples of `bench ttft` and what the report says of them: one row per unit and mode (TTFT statistics,
throughput, FLOPs and roofline, memory, decode speed), ratios against mlx-lm, the base and the uncached prompt,
and the models' shapes.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any, Optional

import mlx.core as mx
import numpy as np

from mlxsuite.bench.modes import REFERENCE_MODES, Mode, Setup, weights_summary
from mlxsuite.generate import default_prefill_step
from mlxsuite.kvp.recipe import flops_reduction
from mlxsuite.models.lm import Model


def model_dtype(model: Model):
    return model.dtype


def dtype_name(dtype) -> str:
    return str(dtype).replace("mlx.core.", "")


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


@dataclass
class Unit:
    """One model × configuration (× prefix cache): its prompt, the modes that apply, and the samples taken."""

    setup: Setup
    modes: list[Mode]
    tokens: mx.array
    prompt_tokens: int
    batch: int
    cached: int  # prompt tokens already in the prompt cache
    decode: int
    texts: Optional[list[str]] = None
    prefix: dict = field(default_factory=dict)  # mode name -> its prompt cache of the first `cached` tokens
    ttft: dict = field(default_factory=dict)  # mode name -> seconds per timed trial
    decode_s: dict = field(default_factory=dict)
    peak: dict = field(default_factory=dict)
    tokenize: list = field(default_factory=list)
    text_tokens: Optional[int] = None


def row(u: Unit, m: Mode, gemm_rate: float) -> dict:
    T, B, P = u.prompt_tokens, u.batch, u.cached
    ttft = summarize(u.ttft[m.name])
    count = m.flops(T, B, P)
    row: dict[str, Any] = {
        "model": u.setup.name,
        "mode": m.name,
        "prompt_tokens": T,
        "cached_tokens": P,
        "batch": B,
        "ttft_s": ttft,
        "prompt_tps": B * (T - P) / ttft["median"],
        "flops": count,
        "gflops_per_s": count / ttft["median"] / 1e9,
        "roofline_fraction": count / ttft["median"] / 1e9 / gemm_rate,
        "peak_memory_bytes": u.peak[m.name],
        "decode_tokens": u.decode,
        "prefill_step": u.setup.prefill_step or default_prefill_step(T - P),
    }
    if u.decode:
        row["decode_tps"] = summarize([u.decode / s for s in u.decode_s[m.name]])
    if u.texts is not None:
        row["tokenize_s"] = summarize(u.tokenize)
        row["tokenize_tokens"] = u.text_tokens  # what the text re-encodes to, summed over the batch
    return row


def model_info(s: Setup) -> dict:
    args = s.model.args
    info = {
        "name": s.name,
        "params": args.n_params,
        "nonvocab_params": args.n_nonvocab_params,
        "layers": args.num_hidden_layers,
        "hidden_size": args.hidden_size,
        "vocab_size": args.vocab_size,
        "dtype": dtype_name(model_dtype(s.model)),
        **weights_summary(s.model),
    }
    if s.kvp is not None:
        info["kvp"] = kvp_info(s.kvp)
    return info


def kvp_info(pair) -> dict:
    """The pair's shape for the report: layer counts, parameters, the paper's FLOPs reduction (parameter ratio)."""
    return {
        "base_layers": pair.base.args.num_hidden_layers,
        "aux_layers": pair.auxiliary.args.num_hidden_layers,
        "layer_map": list(pair.predictor.args.layer_map),
        "params": {
            "base": pair.base.args.n_params,
            "aux": pair.auxiliary.args.n_params,
            "predictor": pair.predictor.n_params(),
        },
        "param_ratio": flops_reduction(pair),
    }


def _paired(ref: list[float], mine: list[float]) -> float:
    return statistics.median(r / m for r, m in zip(ref, mine))


def add_ratios(rows: list[dict], times: dict[str, list[float]], decode_s: dict[str, list[float]]) -> None:
    """For each other runtime measured (mlx-lm, llama.cpp): speedup_vs_X = X's median TTFT / this mode's (> 1:
    faster), and the median of the per-round ratios (each pair back to back, less sensitive to drifting load);
    with decoding, decode_vs_X = this mode's decode tokens/s / X's (median of per-round ratios)."""
    for ref_mode, suffix in [(m, s) for m, s in REFERENCE_MODES.items() if m in times]:
        ref = times[ref_mode]
        for row in [r for r in rows if r["mode"] != ref_mode]:
            mine = times[row["mode"]]
            row[f"speedup_vs_{suffix}"] = statistics.median(ref) / statistics.median(mine)
            row[f"speedup_vs_{suffix}_paired"] = _paired(ref, mine)
            if row["decode_tokens"]:
                row[f"decode_vs_{suffix}"] = _paired(decode_s[ref_mode], decode_s[row["mode"]])


def add_reductions(rows: list[dict], times: dict[str, list[float]], decode_s: dict[str, list[float]]) -> None:
    """With `base` measured: ttft_reduction_vs_base = base median / this mode's (> 1: faster than the base), its
    paired version, flops_reduction_vs_base = base FLOPs / this mode's, ttft_over_flops_reduction = their ratio
    (1: the time saving matches the FLOPs saving); with -g, decode_vs_base = this mode's decode tokens/s / the
    base's (median of per-round ratios: KV Prediction decodes with the base, so ≈ 1)."""
    base = next((r for r in rows if r["mode"] == "base"), None)
    if base is None:
        return
    for row in rows:
        mine = times[row["mode"]]
        row["ttft_reduction_vs_base"] = statistics.median(times["base"]) / statistics.median(mine)
        row["ttft_reduction_vs_base_paired"] = _paired(times["base"], mine)
        row["flops_reduction_vs_base"] = base["flops"] / row["flops"]
        row["ttft_over_flops_reduction"] = row["ttft_reduction_vs_base"] / row["flops_reduction_vs_base"]
        if row["decode_tokens"]:
            row["decode_vs_base"] = _paired(decode_s["base"], decode_s[row["mode"]])


def add_cache_reductions(rows: list[dict]) -> None:
    """ttft_reduction_vs_uncached on rows with a prefix cache: the same prompt's uncached median TTFT / this one."""
    uncached = {(r["model"], r["mode"], r["prompt_tokens"], r["batch"]): r for r in rows if not r["cached_tokens"]}
    for r in rows:
        if r["cached_tokens"]:
            ref = uncached[(r["model"], r["mode"], r["prompt_tokens"], r["batch"])]
            r["ttft_reduction_vs_uncached"] = ref["ttft_s"]["median"] / r["ttft_s"]["median"]


def prefill_steps(rows: list[dict]) -> str:
    """The prefill's chunk size of each row (`row`), as one step or each step with the prompt lengths it ran."""
    lengths: dict[int, set] = {}
    for r in rows:
        lengths.setdefault(r["prefill_step"], set()).add(r["prompt_tokens"] - r["cached_tokens"])
    if len(lengths) == 1:
        return str(next(iter(lengths)))
    by_step = sorted(lengths.items(), reverse=True)
    return ", ".join(f"{s} at {'/'.join(map(str, sorted(ts)))} tokens" for s, ts in by_step)
