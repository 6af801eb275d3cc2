"""Planning: the sweep's settings and grid, one run per (budget, preset, V) with its step count, the time estimate,
and the closest trainable preset for a single budget (`mlxsuite vocab plan`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from mlxsuite.data.tokenizer import min_vocab_size
from mlxsuite.models.lm import PRESETS, preset_args
from mlxsuite.platform.errors import UserError
from mlxsuite.vocab import scaling

# The default grid: three model sizes spanning 15x in N_nv (micro, mini, midi: d = 32 per layer, heads of 32, MLP 8d/3
# rounded up to 16, the rule micro and tiny follow) × 4 budgets × 5 vocabularies = 60 runs, planned to stay within an
# hour on 2 busy cores (`estimate_seconds`). Measured on micro (BENCHMARKS.md), the optimum of L_u sits at the low edge
# V = 128 at 3e10 FLOPs and moves to ~170 at 4e10 and ~250 at 1e11, so the budgets start above 3e10; the vocabularies
# (128·1.6^k) reach ~3x micro's largest optimum, room for the larger sizes' (the paper: larger at fixed C). At these
# budgets mini and midi are far larger than compute-optimal (few hundred and few dozen steps): the sweep measures the
# optimal V of over-sized models at a fixed budget, and the envelope (approach 1) is mostly micro.
DEFAULT_BUDGETS = (3.5e10, 5e10, 7e10, 1e11)
DEFAULT_PRESETS = ("micro", "mini", "midi")
DEFAULT_VOCAB_SIZES = (128, 205, 328, 524, 839)
QUICK_BUDGETS = (4e10, 8e10)  # --quick: 3 sizes × 2 budgets × 4 vocabularies = 24 runs
QUICK_VOCAB_SIZES = (128, 205, 328, 524)
TIME_BUDGET_S = 60 * 60  # what the default sweep must stay within on 2 shared cores

# Time model, measured on 2 CPU cores shared with other jobs (median load average 6): training at ~2e9 "6ND"
# FLOPs/s for micro; every run ~20 s besides (corpus, token streams, model build, compile, checkpoints, final
# evaluation); every tokenizer ~20 s (training, then encoding the whole training split once). A quiet machine is
# several times faster (the micro-only sweep: 3.7 min quiet against 45 min at load 3.3).
ASSUMED_FLOPS_PER_S = 2e9
RUN_OVERHEAD_S = 20.0
TOKENIZER_S = 20.0
MIN_STEPS = 5


@dataclass
class SweepSettings:
    """Everything that makes two runs of the same (preset, V, C) the same run. Fixed for a sweep folder."""

    corpus: Optional[str] = None  # None: the embedded stdlib corpus; else an absolute path
    seq_len: int = 64
    batch_size: int = 8
    lr: float = 3e-3
    seed: int = 0
    eval_chars: int = 32_000  # every run is evaluated on the same first ~32K characters of the validation split

    def eval_windows(self, tokens_per_char: float) -> int:
        """Validation windows of seq_len tokens that hold `eval_chars` characters at this tokenizer's compression."""
        return max(1, round(self.eval_chars * tokens_per_char / self.seq_len))

    @property
    def tokens_per_step(self) -> int:
        return self.seq_len * self.batch_size


@dataclass
class SweepGrid:
    budgets: list[float] = field(default_factory=lambda: list(DEFAULT_BUDGETS))
    presets: list[str] = field(default_factory=lambda: list(DEFAULT_PRESETS))
    vocab_sizes: list[int] = field(default_factory=lambda: list(DEFAULT_VOCAB_SIZES))


@dataclass
class RunPlan:
    name: str
    preset: str
    vocab: int
    budget: float
    d: int
    nnv: int
    nv: int
    steps: int
    tokens: int  # steps · batch · seq_len: what is actually trained
    flops: float  # 6·(N_nv + N_v)·tokens: the budget actually spent (rounding to whole steps)


def budget_tag(c: float) -> str:
    return f"{c:.3g}".replace("+", "").replace(".", "p")


def plan_runs(grid: SweepGrid, settings: SweepSettings) -> list[RunPlan]:
    """Every (budget, preset, V) run with its step count: D = C / (6(N_nv + V·d)) tokens, steps = D / (batch·seq)."""
    if not grid.budgets or not grid.presets or not grid.vocab_sizes:
        raise UserError("a sweep needs at least one budget, one preset and one vocabulary size")
    for p in grid.presets:
        if p not in PRESETS:
            raise UserError(f"unknown preset {p!r}: choose from {', '.join(PRESETS)}")
    smallest = min_vocab_size(byte_fallback=False)
    for v in grid.vocab_sizes:
        if v < smallest:
            raise UserError(f"vocabulary size {v} is too small: the sweep's tokenizers need >= {smallest}")
    for c in grid.budgets:
        if not (math.isfinite(c) and c > 0):
            raise UserError(f"budgets must be positive numbers of FLOPs, got {c}")
    return [
        plan_one(c, p, v, settings)
        for c in sorted(set(grid.budgets))
        for p in grid.presets
        for v in sorted(set(grid.vocab_sizes))
    ]


def plan_one(c: float, preset: str, vocab: int, settings: SweepSettings) -> RunPlan:
    """The run of `preset` at vocabulary `vocab` that spends budget `c`: D = C / (6(N_nv + V·d)) tokens, in whole
    steps of batch·seq tokens."""
    args = preset_args(preset, vocab)
    n = args.n_nonvocab_params + args.n_vocab_params
    steps = round(c / (6 * n) / settings.tokens_per_step)
    if steps < MIN_STEPS:
        need = 6 * n * MIN_STEPS * settings.tokens_per_step
        raise UserError(
            f"budget {c:.3g} FLOPs buys only {steps} steps of {settings.tokens_per_step} tokens for "
            f"{preset} at V = {vocab} (N = {n:,}); use budgets >= {need:.2g} or fewer tokens per step"
        )
    tokens = steps * settings.tokens_per_step
    return RunPlan(
        f"{preset}-v{vocab}-c{budget_tag(c)}",
        preset,
        vocab,
        float(c),
        args.hidden_size,
        args.n_nonvocab_params,
        args.n_vocab_params,
        steps,
        tokens,
        6.0 * n * tokens,
    )


def edge_extensions(plans: list[RunPlan], lu: dict[str, float], settings: SweepSettings) -> list[RunPlan]:
    """One more vocabulary beyond the edge of every (budget, preset) cell whose lowest measured L_u sits at its
    smallest or largest V (the optimum is not bracketed): the next V by the ratio of the cell's two outermost on that
    side. Below the smallest a tokenizer can have, nothing is added (the analysis flags the edge). `lu`: run name →
    measured L_u (cells with a run missing are left alone)."""
    cells: dict[tuple, list[RunPlan]] = {}
    for p in plans:
        cells.setdefault((p.budget, p.preset), []).append(p)
    known = {p.name for p in plans}
    out = []
    for (c, preset), cell in cells.items():
        cell = sorted(cell, key=lambda p: p.vocab)
        if len(cell) < 2 or any(lu.get(p.name) is None for p in cell):
            continue
        best = min(cell, key=lambda p: lu[p.name])
        if best is cell[-1]:
            vocab = round(cell[-1].vocab * cell[-1].vocab / cell[-2].vocab)
        elif best is cell[0]:
            vocab = round(cell[0].vocab * cell[0].vocab / cell[1].vocab)
            if vocab < min_vocab_size(byte_fallback=False):
                continue
        else:
            continue
        plan = plan_one(c, preset, vocab, settings)
        if plan.name not in known:
            out.append(plan)
    return out


def run_seconds(plan: RunPlan) -> float:
    """One run's wall time by the time model above (the cost the ranks' shares are balanced on)."""
    return plan.flops / ASSUMED_FLOPS_PER_S + RUN_OVERHEAD_S


def estimate_seconds(plans: list[RunPlan], new_tokenizers: Optional[int] = None) -> float:
    """Wall time of the runs on 2 busy CPU cores by the measured time model above; `new_tokenizers` defaults to one
    per vocabulary size in the plans."""
    if new_tokenizers is None:
        new_tokenizers = len({p.vocab for p in plans})
    return (
        sum(p.flops for p in plans) / ASSUMED_FLOPS_PER_S + RUN_OVERHEAD_S * len(plans) + TOKENIZER_S * new_tokenizers
    )


def closest_preset(nnv: float, flops: float, compression: scaling.Compression = scaling.PAPER_COMPRESSION) -> dict:
    """The trainable preset nearest to N_nv (in ln N_nv), with the vocabulary approach 3 (published constants) gives
    it at this budget: only that approach handles a model that is not compute-optimal for the budget."""
    shapes = {name: preset_args(name, vocab_size=4096) for name in PRESETS}
    name = min(shapes, key=lambda k: abs(math.log(shapes[k].n_nonvocab_params / nnv)))
    p_nnv, p_d = shapes[name].n_nonvocab_params, shapes[name].hidden_size
    nv = scaling.PAPER_PARAMETRIC.optimal_nv(p_nnv, flops)
    return {"name": name, **scaling.allocate(p_nnv, p_d, nv, flops, compression)}
