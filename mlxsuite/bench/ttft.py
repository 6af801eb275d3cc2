"""Time to first token: the measurement behind `mlxsuite bench ttft`. Never prints; progress goes to a callback.
Report formats (records, markdown, CSV, JSONL, the plot) are in `report.py`, the modes (base, mlx-lm, aux, kvp,
llama.cpp: ways to produce the first token) in `modes.py`.

TTFT is the wall time from the prompt's token ids being ready to the first sampled token being materialized
(`mx.eval`): the prefill, the last-token logits and the sampling, as mlx-lm's `prompt_time`. Tokenization is timed
apart. Each trial starts with a fresh KV cache (or a copy of a prompt cache holding the prompt's first
`cached_tokens`, made once beforehand as `mlx_lm.cache_prompt` makes it) and `mx.reset_peak_memory()`. With
`decode` > 0 the trial then decodes that many more tokens through the one decode loop (`generate_tokens`
continuing the cache), timed apart: llama-bench's `tg`, mlx-lm's generation tokens/s.

The schedule (issue 16: the first configuration measured read 7–12 % slow): every (model, configuration) is a
unit; `warmup` passes over every unit and mode come before any timed trial (process-level warm-up: allocator,
thread pools, compiled kernels); then `reps` rounds, each visiting every unit once, the units rotated by one
position per round and reversed in alternate blocks of rounds (so each leads equally often and follows different
neighbours), the modes of a unit in order on even rounds and reversed on odd ones (ABBA). The GEMM probe for the
roofline runs between rounds, and an untimed trial follows it so that no timed trial runs on caches it evicted.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Optional

import mlx.core as mx
import numpy as np

from mlxsuite import platform
from mlxsuite.bench.modes import (  # noqa: F401  (the modes' API, used through this module)
    KVP_MODES,
    MODES,
    REFERENCE_MODES,
    Mode,
    Setup,
    build_modes,
    check_mode_names,
    copy_cache,
    mlx_lm_model,
    prefill_mode,
    register_mode,
    weights_summary,
)
from mlxsuite.models import kernels
from mlxsuite.models.lm import Model, ModelArgs
from mlxsuite.platform.errors import UserError

# The KV Prediction paper's on-device regimes (§4.5): TriviaQA's 59-token prompts at batch 64 (Table 5) and
# batch 8 at 128-1024 tokens (Fig. 5b).
PAPER_REGIME: list[tuple[int, int]] = [(59, 64), (128, 8), (256, 8), (512, 8), (1024, 8)]

Progress = Callable[[int, int, str], None]  # (done, total, what)


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


# ---- the schedule -------------------------------------------------------------------------------------------

WARMUP_POLICY = (
    "process-level warm-up: {warmup} untimed pass{es} over every configuration and mode before the first timed trial"
)
ORDER_POLICY = (
    "{reps} round{s}, each visiting every configuration once: configurations rotated by one position "
    "per round (reversed in alternate blocks of rounds), modes alternating (ABBA)"
)
GEMM_POLICY = "GEMM probe between rounds, each followed by one untimed trial"


def unit_order(n_units: int, round_index: int) -> list[int]:
    """The units' order in a round: rotated by one position per round (each unit takes each position once in
    `n_units` rounds), reversed in every other block of `n_units` rounds (so neighbours change too)."""
    if not n_units:
        return []
    shift = round_index % n_units
    order = list(range(shift, n_units)) + list(range(shift))
    return order[::-1] if (round_index // n_units) % 2 else order


def schedule(units: list[list[str]], warmup: int, reps: int) -> list[tuple]:
    """The trials in order, as tuples: ("warm", unit, mode), ("time", unit, mode, round), ("gemm",) for a GEMM
    probe sample. `units[u]` lists the modes measured in unit u (a model × configuration)."""
    steps: list[tuple] = []
    for w in range(warmup):
        for u in unit_order(len(units), w):
            steps += [("warm", u, m) for m in (units[u] if w % 2 == 0 else units[u][::-1])]
    for r in range(reps):
        order = unit_order(len(units), r)
        if r > 0:  # the probe, then an untimed trial on the caches it evicted
            steps += [("gemm",), ("warm", order[0], units[order[0]][0 if r % 2 == 0 else -1])]
        for u in order:
            steps += [("time", u, m, r) for m in (units[u] if r % 2 == 0 else units[u][::-1])]
    steps.append(("gemm",))
    return steps


# ---- the measurement ----------------------------------------------------------------------------------------


def check_configs(
    args: ModelArgs, configs: list[tuple[int, int]], reps: int, warmup: int, cached: int = 0, decode: int = 0
) -> None:
    if not configs:
        raise UserError("no prompt lengths or batch sizes to measure")
    for T, B in configs:
        if T < 1 or B < 1:
            raise UserError(f"prompt lengths and batch sizes must be positive, got {T} tokens × batch {B}")
        if T + decode > args.max_position_embeddings:
            raise UserError(
                f"a {T}-token prompt{f' and {decode} decoded tokens' if decode else ''} is longer than the model's "
                f"context ({args.max_position_embeddings} tokens)"
            )
        if cached and cached >= T:
            raise UserError(f"--prefix-cache {cached} must be shorter than every prompt length (got {T} tokens)")
    if reps < 1:
        raise UserError(f"--reps must be at least 1, got {reps}")
    if warmup < 0:
        raise UserError(f"--warmup must be 0 or more, got {warmup}")
    if cached < 0 or decode < 0:
        raise UserError("--prefix-cache and -g must be 0 or more")
    if decode and not any(B == 1 for _, B in configs):
        raise UserError("-g decodes at batch 1 only (the decode loop is single-sequence): add batch size 1")


@dataclass
class _Unit:
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


def _trial(mode: Mode, unit: _Unit) -> tuple[float, Optional[float], int]:
    """One TTFT sample (seconds), the decode time of `unit.decode` more tokens (None without), peak memory."""
    cache = copy_cache(unit.prefix[mode.name]) if unit.cached else None
    tokens = unit.tokens[:, unit.cached :]
    mx.synchronize()
    mx.reset_peak_memory()
    t0 = time.perf_counter()
    steps = mode.run(tokens, cache, unit.decode)
    mx.eval(next(steps))
    t1 = time.perf_counter()
    n = sum(1 for _ in steps)  # every decoded token is materialized before it is yielded
    t2 = time.perf_counter()
    peak = mx.get_peak_memory()
    mx.synchronize()  # mlx-lm schedules its next decode step before returning a token: let it drain
    if n != unit.decode:
        raise RuntimeError(f"mode {mode.name} decoded {n} tokens, not {unit.decode}")
    return t1 - t0, (t2 - t1 if unit.decode else None), peak


GEMM_N = 1024  # the roofline's matrix size


class GemmProbe:
    """The device's GEMM rate (n×n×n) in the models' dtype, sampled between rounds of trials so that it sees the
    same machine load as they do."""

    def __init__(self, n: Optional[int] = None, dtype=mx.float32):
        self.n, self.dtype = n or GEMM_N, dtype
        self.a = mx.random.normal((self.n, self.n)).astype(dtype)
        self.b = mx.random.normal((self.n, self.n)).astype(dtype)
        mx.eval(self.a @ self.b)  # warm-up
        self.samples: list[float] = []

    def sample(self) -> None:
        mx.synchronize()
        t0 = time.perf_counter()
        mx.eval(self.a @ self.b)
        self.samples.append(2 * self.n**3 / (time.perf_counter() - t0) / 1e9)


def _dtype(model: Model):
    return model.model.norm.weight.dtype


def _dtype_name(dtype) -> str:
    return str(dtype).replace("mlx.core.", "")


def run(
    setups: Setup | list[Setup],
    mode_names: list[str],
    configs: list[tuple[int, int]],
    reps: int = 5,
    warmup: int = 1,
    seed: int = 0,
    progress: Optional[Progress] = None,
    decode: int = 0,
    cached: int = 0,
) -> dict:
    """Measure TTFT for every model in `setups`, (prompt_tokens, batch) in `configs` and mode, all interleaved
    (see the module's docstring for the schedule); with `cached` > 0 each configuration is measured with its first
    `cached` tokens in a prompt cache and without; `decode` > 0 adds decode tokens/s. Returns the report."""
    setups = [setups] if isinstance(setups, Setup) else list(setups)
    names = [s.name for s in setups]
    if len(set(names)) != len(names):
        raise UserError(f"models measured together need distinct names, got {', '.join(names)}")
    for s in setups:
        check_configs(s.model.args, configs, reps, warmup, cached, decode)
    built = [build_modes(mode_names, replace(s, context=max(T for T, _ in configs) + decode)) for s in setups]
    if cached:
        for modes in built:
            for m in modes:
                if m.prefix_cache is None:
                    raise UserError(
                        f"--prefix-cache does not apply to mode {m.name!r} (it starts every prompt from an "
                        "empty cache): measure it without, or choose other --modes"
                    )
    units, notes = _units(setups, built, configs, seed, decode, cached)

    plan = schedule([[m.name for m in u.modes] for u in units], warmup, reps)
    total = sum(1 for step in plan if step[0] != "gemm")
    progress = progress or (lambda done, total, what: None)
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    probes = {_dtype_name(_dtype(s.model)): GemmProbe(dtype=_dtype(s.model)) for s in setups}
    done, tokenized = 0, set()
    for step in plan:
        if step[0] == "gemm":
            for probe in probes.values():
                probe.sample()
            continue
        u = units[step[1]]
        mode = next(m for m in u.modes if m.name == step[2])
        timed = step[0] == "time"
        label = f"{u.setup.name} " if len(setups) > 1 else ""
        label += f"{mode.name} {u.prompt_tokens} tokens" + (f" ({u.cached} cached)" if u.cached else "")
        progress(done, total, f"{label} × {u.batch}" + ("" if timed else " (warm-up)"))
        if timed and u.texts is not None and (step[1], step[3]) not in tokenized:
            tokenized.add((step[1], step[3]))
            t0 = time.perf_counter()
            encoded = [u.setup.tokenizer.encode(t) for t in u.texts]
            u.tokenize.append(time.perf_counter() - t0)
            u.text_tokens = sum(len(e) for e in encoded)
        dt, dec, peak = _trial(mode, u)
        done += 1
        if timed:
            u.ttft[mode.name].append(dt)
            if dec is not None:
                u.decode_s[mode.name].append(dec)
            u.peak[mode.name] = max(u.peak[mode.name], peak) if mode.mlx_memory else None
    progress(total, total, "done")

    rates = {dt: statistics.median(p.samples) for dt, p in probes.items()}
    results = []
    for u in units:
        rows = [_row(u, m, rates[_dtype_name(_dtype(u.setup.model))]) for m in u.modes]
        _add_ratios(rows, u.ttft, u.decode_s)
        _add_reductions(rows, u.ttft, u.decode_s)
        results += rows
    _add_cache_reductions(results)
    first = setups[0]
    dtype = _dtype_name(_dtype(first.model))
    return {
        **platform.machine_info(),
        "cpu": platform.cpu_name(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "blas_detail": platform.blas_info().__dict__,
        "gemm_gflops": rates[dtype],  # median of the samples taken between rounds
        "gemm_gflops_best": max(probes[dtype].samples),
        "gemm_n": probes[dtype].n,
        "gemm_dtype": dtype,
        "dtype": dtype,
        "params": {"total": first.model.args.n_params, "nonvocab": first.model.args.n_nonvocab_params},
        "models": [_model_info(s) for s in setups],
        "mode_info": {s.name: {m.name: m.info for m in modes if m.info} for s, modes in zip(setups, built)},
        "prefill_step": first.prefill_step,
        "fused_prefill": kernels.available(first.model.layers, _dtype(first.model)),
        "reps": reps,
        "warmup": warmup,
        "decode_tokens": decode,
        "cached_tokens": cached,
        "seed": seed,
        "schedule": {
            "warmup": WARMUP_POLICY.format(warmup=warmup, es="" if warmup == 1 else "es"),
            "order": ORDER_POLICY.format(reps=reps, s="" if reps == 1 else "s"),
            "gemm": GEMM_POLICY,
        },
        "load_average": {"start": load_start, "end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None},
        "flops_counted": "matmuls: linear layers on all new prompt tokens, causal attention (over cached tokens "
        "too), LM head on the last token"
        + (
            "; kvp: aux on N-1 tokens (its last layer's K/V projections only, no "
            "head), predictor on N-1, base on the last token"
            if any("kvp" in s.extras for s in setups)
            else ""
        ),
        **({"kvp": kvp_info(first.extras["kvp"])} if "kvp" in first.extras else {}),
        "notes": list(dict.fromkeys(notes)),
        "results": results,
    }


def _units(
    setups: list[Setup], built: list[list[Mode]], configs: list[tuple[int, int]], seed: int, decode: int, cached: int
) -> tuple[list[_Unit], list[str]]:
    """One unit per model × configuration (× uncached and cached with `cached`): its random prompt (the same for
    every model of a vocabulary size and every mode), the modes that apply, its prefix caches; and notes on what
    does not apply."""
    notes: list[str] = []
    units: list[_Unit] = []
    for s, modes in zip(setups, built):
        for T, B in configs:
            ms = [m for m in modes if m.max_batch is None or m.max_batch >= B]
            notes += [f"{m.name} measures batch {m.max_batch} only: skipped at batch {B}" for m in modes if m not in ms]
            mx.random.seed(seed)
            tokens = mx.random.randint(0, s.model.args.vocab_size, (B, T))
            mx.eval(tokens)
            texts = [s.tokenizer.decode(row) for row in tokens.tolist()] if s.tokenizer is not None else None
            if decode and B > 1:
                notes.append(f"decode speed (-g) is measured at batch 1 only: not at batch {B}")
            for P in [0, cached] if cached else [0]:
                units.append(_Unit(s, ms, tokens, T, B, P, decode if B == 1 else 0, texts))
    for u in units:
        if u.cached:
            u.prefix = {m.name: m.prefix_cache(u.tokens[:, : u.cached]) for m in u.modes}
        for m in u.modes:
            u.ttft[m.name], u.decode_s[m.name], u.peak[m.name] = [], [], 0
    return units, notes


def _row(u: _Unit, m: Mode, gemm_rate: float) -> dict:
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
    }
    if u.decode:
        row["decode_tps"] = summarize([u.decode / s for s in u.decode_s[m.name]])
    if u.texts is not None:
        row["tokenize_s"] = summarize(u.tokenize)
        row["tokenize_tokens"] = u.text_tokens  # what the text re-encodes to, summed over the batch
    return row


def _model_info(s: Setup) -> dict:
    args = s.model.args
    info = {
        "name": s.name,
        "params": args.n_params,
        "nonvocab_params": args.n_nonvocab_params,
        "layers": args.num_hidden_layers,
        "hidden_size": args.hidden_size,
        "vocab_size": args.vocab_size,
        "dtype": _dtype_name(_dtype(s.model)),
        **weights_summary(s.model),
    }
    if "kvp" in s.extras:
        info["kvp"] = kvp_info(s.extras["kvp"])
    return info


def kvp_info(pair) -> dict:
    """The pair's shape for the report: layer counts, parameters, the paper's FLOPs reduction (parameter ratio)."""
    from mlxsuite.kvp.recipe import flops_reduction

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


def _add_ratios(rows: list[dict], times: dict[str, list[float]], decode_s: dict[str, list[float]]) -> None:
    """For each other runtime measured (mlx-lm, llama.cpp): speedup_vs_X = X's median TTFT / this mode's (> 1:
    faster), and the median of the per-round ratios (each pair back to back, less sensitive to drifting load);
    with -g, decode_vs_X = this mode's decode tokens/s / X's (median of per-round ratios)."""
    for ref_mode, suffix in [(m, s) for m, s in REFERENCE_MODES.items() if m in times]:
        ref = times[ref_mode]
        for row in [r for r in rows if r["mode"] != ref_mode]:
            mine = times[row["mode"]]
            row[f"speedup_vs_{suffix}"] = statistics.median(ref) / statistics.median(mine)
            row[f"speedup_vs_{suffix}_paired"] = _paired(ref, mine)
            if row["decode_tokens"]:
                row[f"decode_vs_{suffix}"] = _paired(decode_s[ref_mode], decode_s[row["mode"]])


def _add_reductions(rows: list[dict], times: dict[str, list[float]], decode_s: dict[str, list[float]]) -> None:
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


def _add_cache_reductions(rows: list[dict]) -> None:
    """ttft_reduction_vs_uncached on rows with a prefix cache: the same prompt's uncached median TTFT / this one."""
    uncached = {(r["model"], r["mode"], r["prompt_tokens"], r["batch"]): r for r in rows if not r["cached_tokens"]}
    for r in rows:
        if r["cached_tokens"]:
            ref = uncached[(r["model"], r["mode"], r["prompt_tokens"], r["batch"])]
            r["ttft_reduction_vs_uncached"] = ref["ttft_s"]["median"] / r["ttft_s"]["median"]
