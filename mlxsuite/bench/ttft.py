"""Time to first token: the measurement behind `mlxsuite bench ttft`. Never prints; progress goes to a callback.
`plan` checks the request and lays the trials out, `measure` runs them, `report` (`bench/results.py`) turns the
samples into the report; `run` is the three. Report formats (flat records, markdown, CSV, JSONL, the plot) are in
`bench/report.py`.

TTFT is the wall time from the prompt's token ids being ready to the first sampled token being materialized
(`mx.eval`): the prefill, the last-token logits and the sampling, as mlx-lm's `prompt_time`. Tokenization is timed
apart. Each trial starts with a fresh KV cache (or a copy of a prompt cache holding the prompt's first
`cached_tokens`, made once beforehand as `mlx_lm.cache_prompt` makes it) and `mx.reset_peak_memory()`. With
`decode` > 0 the trial then decodes that many more tokens through the one decode loop (`generate_tokens`
continuing the cache), timed apart: llama-bench's `tg`, mlx-lm's generation tokens/s.

The modes (base, mlx-lm, aux, kvp: ways to produce the first token) are in `bench/modes.py`.

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
from dataclasses import dataclass, replace
from typing import Literal, NamedTuple, Optional

import mlx.core as mx

from mlxsuite import platform
from mlxsuite.bench import llama_cpp, results  # noqa: F401  (llama_cpp registers its mode)
from mlxsuite.bench.modes import (  # noqa: F401  (the modes' API, used through this module)
    KVP_MODES,
    MODES,
    PRESET_VOCAB,
    Mode,
    Setup,
    build_modes,
    check_mode_names,
    mlx_lm_model,
    open_setup,
    prefill_mode,
    register_mode,
    weights_summary,
)
from mlxsuite.bench.results import Unit, dtype_name, model_dtype, summarize  # noqa: F401  (summarize: API)
from mlxsuite.generate import copy_cache
from mlxsuite.models import kernels
from mlxsuite.models.lm import ModelArgs
from mlxsuite.models.mlx_lm_class import MlxLmClass
from mlxsuite.platform import ProgressCallback
from mlxsuite.platform.errors import UserError

# The KV Prediction paper's on-device regimes (§4.5): TriviaQA's 59-token prompts at batch 64 (Table 5) and
# batch 8 at 128-1024 tokens (Fig. 5b).
PAPER_REGIME: list[tuple[int, int]] = [(59, 64), (128, 8), (256, 8), (512, 8), (1024, 8)]


# ---- the schedule -------------------------------------------------------------------------------------------

WARMUP_POLICY = (
    "process-level warm-up: {warmup} untimed pass{es} over every configuration and mode before the first timed trial"
)
ORDER_POLICY = (
    "{reps} round{s}, each visiting every configuration once: configurations rotated by one position "
    "per round (reversed in alternate blocks of rounds), modes alternating (ABBA)"
)
GEMM_POLICY = "GEMM probe between rounds, each followed by one untimed trial"
KVP_FLOPS = (
    "; kvp: aux on N-1 tokens (its last layer's K/V projections only, no head), predictor on N-1, base on the last "
    "token"
)


def unit_order(n_units: int, round_index: int) -> list[int]:
    """The units' order in a round: rotated by one position per round (each unit takes each position once in
    `n_units` rounds), reversed in every other block of `n_units` rounds (so neighbours change too)."""
    if not n_units:
        return []
    shift = round_index % n_units
    order = list(range(shift, n_units)) + list(range(shift))
    return order[::-1] if (round_index // n_units) % 2 else order


class Warm(NamedTuple):
    """An untimed trial of `mode` on unit `unit`."""

    kind: Literal["warm"]
    unit: int
    mode: str


class Timed(NamedTuple):
    """A timed trial of `mode` on unit `unit` in round `round`."""

    kind: Literal["time"]
    unit: int
    mode: str
    round: int


class Probe(NamedTuple):
    """A GEMM probe sample (the roofline's rate, under the trials' load)."""

    kind: Literal["gemm"] = "gemm"


Step = Warm | Timed | Probe


def schedule(units: list[list[str]], warmup: int, reps: int) -> list[Step]:
    """The trials in order: `Warm`, `Timed` and `Probe` steps (tuples with names: ("warm", unit, mode), ("time",
    unit, mode, round), ("gemm",)). `units[u]` lists the modes measured in unit u (a model × configuration)."""
    steps: list[Step] = []
    for w in range(warmup):
        for u in unit_order(len(units), w):
            steps += [Warm("warm", u, m) for m in (units[u] if w % 2 == 0 else units[u][::-1])]
    for r in range(reps):
        order = unit_order(len(units), r)
        if r > 0:  # the probe, then an untimed trial on the caches it evicted
            steps += [Probe(), Warm("warm", order[0], units[order[0]][0 if r % 2 == 0 else -1])]
        for u in order:
            steps += [Timed("time", u, m, r) for m in (units[u] if r % 2 == 0 else units[u][::-1])]
    steps.append(Probe())
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
            raise UserError(f"`prefix_cache` {cached} must be shorter than every prompt length (got {T} tokens)")
    if reps < 1:
        raise UserError(f"`reps` must be at least 1, got {reps}")
    if warmup < 0:
        raise UserError(f"`warmup` must be 0 or more, got {warmup}")
    if cached < 0 or decode < 0:
        raise UserError("`prefix_cache` and `generation_tokens` must be 0 or more")
    if decode and not any(B == 1 for _, B in configs):
        raise UserError(
            "`generation_tokens` decodes at batch 1 only (the decode loop is single-sequence): add batch size 1"
        )


def _trial(mode: Mode, unit: Unit) -> tuple[float, Optional[float], int]:
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


@dataclass
class Plan:
    """What a run measures, checked: the models, the units (model × configuration) with their modes, the trials in
    order, the run's settings and notes on what does not apply."""

    setups: list[Setup]
    units: list[Unit]
    steps: list[Step]
    reps: int
    warmup: int
    seed: int
    decode: int
    cached: int
    notes: list[str]


@dataclass
class Measured:
    """The GEMM probes (by dtype name) and the machine load around the trials; the samples are in the units."""

    probes: dict[str, GemmProbe]
    load_start: Optional[float]
    load_end: Optional[float]


def plan(
    setups: Setup | list[Setup],
    mode_names: list[str],
    configs: list[tuple[int, int]],
    reps: int = 5,
    warmup: int = 1,
    seed: int = 0,
    decode: int = 0,
    cached: int = 0,
) -> Plan:
    """Check the request and lay the trials out (see the module's docstring for the schedule)."""
    setups = [setups] if isinstance(setups, Setup) else list(setups)
    names = [s.name for s in setups]
    if len(set(names)) != len(names):
        raise UserError(f"models measured together need distinct names, got {', '.join(names)}")
    for s in setups:
        check_configs(s.model.args, configs, reps, warmup, cached, decode)
    built = [build_modes(mode_names, replace(s, context=max(T for T, _ in configs) + decode)) for s in setups]
    if cached:
        for m in (m for modes in built for m in modes if m.prefix_cache is None):
            raise UserError(
                f"`prefix_cache` does not apply to mode {m.name!r} (its prompt fill starts "
                "from empty caches): measure it without, or choose other `modes`"
            )
    units, notes = _units(setups, built, configs, seed, decode, cached)
    steps = schedule([[m.name for m in u.modes] for u in units], warmup, reps)
    return Plan(setups, units, steps, reps, warmup, seed, decode, cached, notes)


def _load_average() -> Optional[float]:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def measure(plan: Plan, progress: Optional[ProgressCallback] = None) -> Measured:
    """Run the trials in the plan's order, recording each unit's samples; `progress(done, total, what)`."""
    total = sum(1 for step in plan.steps if not isinstance(step, Probe))
    progress = progress or (lambda done, total, what: None)
    load_start = _load_average()
    probes = {dtype_name(model_dtype(s.model)): GemmProbe(dtype=model_dtype(s.model)) for s in plan.setups}
    done, tokenized = 0, set()
    for step in plan.steps:
        if isinstance(step, Probe):
            for probe in probes.values():
                probe.sample()
            continue
        u = plan.units[step.unit]
        mode = next(m for m in u.modes if m.name == step.mode)
        timed = isinstance(step, Timed)
        label = f"{u.setup.name} " if len(plan.setups) > 1 else ""
        label += f"{mode.name} {u.prompt_tokens} tokens" + (f" ({u.cached} cached)" if u.cached else "")
        progress(done, total, f"{label} × {u.batch}" + ("" if timed else " (warm-up)"))
        if timed and u.texts is not None and (step.unit, step.round) not in tokenized:
            tokenized.add((step.unit, step.round))
            _time_tokenization(u)
        dt, dec, peak = _trial(mode, u)
        done += 1
        if timed:
            u.ttft[mode.name].append(dt)
            if dec is not None:
                u.decode_s[mode.name].append(dec)
            u.peak[mode.name] = max(u.peak[mode.name], peak) if mode.mlx_memory else None
    progress(total, total, "done")
    return Measured(probes, load_start, _load_average())


def _time_tokenization(u: Unit) -> None:
    t0 = time.perf_counter()
    encoded = [u.setup.tokenizer.encode(t) for t in u.texts]
    u.tokenize.append(time.perf_counter() - t0)
    u.text_tokens = sum(len(e) for e in encoded)


def run(
    setups: Setup | list[Setup],
    mode_names: list[str],
    configs: list[tuple[int, int]],
    reps: int = 5,
    warmup: int = 1,
    seed: int = 0,
    progress: Optional[ProgressCallback] = None,
    decode: int = 0,
    cached: int = 0,
) -> dict:
    """Measure TTFT for every model in `setups`, (prompt_tokens, batch) in `configs` and mode, all interleaved
    (see the module's docstring for the schedule); with `cached` > 0 each configuration is measured with its first
    `cached` tokens in a prompt cache and without; `decode` > 0 adds decode tokens/s. Returns the report: plan,
    measure, report."""
    planned = plan(setups, mode_names, configs, reps, warmup, seed, decode, cached)
    return report(planned, measure(planned, progress))


def report(plan: Plan, measured: Measured) -> dict:
    """The run's report: the machine, the settings and schedule, one row per unit and mode (`bench/results.py`)."""
    rates = {dt: statistics.median(p.samples) for dt, p in measured.probes.items()}
    rows = []
    for u in plan.units:
        unit_rows = [results.row(u, m, rates[dtype_name(model_dtype(u.setup.model))]) for m in u.modes]
        results.add_ratios(unit_rows, u.ttft, u.decode_s)
        results.add_reductions(unit_rows, u.ttft, u.decode_s)
        rows += unit_rows
    results.add_cache_reductions(rows)
    first = plan.setups[0]
    dtype = dtype_name(model_dtype(first.model))
    return {
        **platform.machine_info(),
        "cpu": platform.cpu_name(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "blas_detail": platform.blas_info().__dict__,
        "gemm_gflops": rates[dtype],  # median of the samples taken between rounds
        "gemm_gflops_best": max(measured.probes[dtype].samples),
        "gemm_n": measured.probes[dtype].n,
        "gemm_dtype": dtype,
        "dtype": dtype,
        "params": {"total": first.model.args.n_params, "nonvocab": first.model.args.n_nonvocab_params},
        "models": [results.model_info(s) for s in plan.setups],
        "mode_info": {u.setup.name: {m.name: m.info for m in u.modes if m.info} for u in plan.units},
        "prefill_step": first.prefill_step,  # None: by prompt length (each result's `prefill_step`)
        "prefill_steps": results.prefill_steps(rows),
        "fused_prefill": not isinstance(first.model, MlxLmClass)
        and kernels.available(first.model.layers, model_dtype(first.model)),
        "reps": plan.reps,
        "warmup": plan.warmup,
        "decode_tokens": plan.decode,
        "cached_tokens": plan.cached,
        "seed": plan.seed,
        "schedule": {
            "warmup": WARMUP_POLICY.format(warmup=plan.warmup, es="" if plan.warmup == 1 else "es"),
            "order": ORDER_POLICY.format(reps=plan.reps, s="" if plan.reps == 1 else "s"),
            "gemm": GEMM_POLICY,
        },
        "load_average": {"start": measured.load_start, "end": measured.load_end},
        "flops_counted": "matmuls: linear layers on all new prompt tokens, causal attention (over cached tokens "
        "too), LM head on the last token" + (KVP_FLOPS if any(s.kvp is not None for s in plan.setups) else ""),
        **({"kvp": results.kvp_info(first.kvp)} if first.kvp is not None else {}),
        "notes": list(dict.fromkeys(plan.notes)),
        "results": rows,
    }


def _units(
    setups: list[Setup], built: list[list[Mode]], configs: list[tuple[int, int]], seed: int, decode: int, cached: int
) -> tuple[list[Unit], list[str]]:
    """One unit per model × configuration (× uncached and cached with `cached`): its random prompt (the same for
    every model of a vocabulary size and every mode), the modes that apply, its prefix caches; and notes on what
    does not apply."""
    notes: list[str] = []
    units: list[Unit] = []
    for s, modes in zip(setups, built):
        notes += [f"{s.name}: {note}" for note in getattr(s.model, "bench_notes", ())]  # mlx-lm's own class
        for T, B in configs:
            ms = [m for m in modes if m.max_batch is None or m.max_batch >= B]
            notes += [f"{m.name} measures batch {m.max_batch} only: skipped at batch {B}" for m in modes if m not in ms]
            mx.random.seed(seed)
            tokens = mx.random.randint(0, s.model.args.vocab_size, (B, T))
            mx.eval(tokens)
            texts = [s.tokenizer.decode(row) for row in tokens.tolist()] if s.tokenizer is not None else None
            if decode and B > 1:
                notes.append(f"decode speed is measured at batch 1 only: not at batch {B}")
            for P in [0, cached] if cached else [0]:
                units.append(Unit(s, ms, tokens, T, B, P, decode if B == 1 else 0, texts))
    for u in units:
        if u.cached:
            u.prefix = {m.name: m.prefix_cache(u.tokens[:, : u.cached]) for m in u.modes}
        for m in u.modes:
            u.ttft[m.name], u.decode_s[m.name], u.peak[m.name] = [], [], 0
    return units, notes
