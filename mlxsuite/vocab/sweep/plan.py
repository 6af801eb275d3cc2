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
# hour in one process on 2 cores (`estimate_seconds`). Measured here (BENCHMARKS.md, issue 24): at 3.5e10-1e11 FLOPs
# mini and midi train a few dozen steps and 8 of 12 (size, budget) optima sit on the grid's low edge (V = 128, the
# smallest tokenizer); at 1e11-5.6e11 micro's optimum moves 263 → 504, mini's 170 → 486, and 9 of 12 are interior
# (midi's still at the edge below 5.6e11). The vocabularies (128·1.6^k) reach ~1.7x the largest optimum measured.
# Even so every size is far larger than compute-optimal for these budgets (0.04-7 tokens per parameter).
DEFAULT_BUDGETS = (1e11, 1.8e11, 3.2e11, 5.6e11)
DEFAULT_PRESETS = ("micro", "mini", "midi")
DEFAULT_VOCAB_SIZES = (128, 205, 328, 524, 839)
QUICK_BUDGETS = (4e10, 8e10)  # --quick: 3 sizes × 2 budgets × 4 vocabularies = 24 runs
QUICK_VOCAB_SIZES = (128, 205, 328, 524)
TIME_BUDGET_S = 60 * 60  # what the default sweep must stay within in one process on 2 cores

# Time model per process, fitted to two 60-run sweeps under `mlx.launch -n 2` on the 2-core machine of BENCHMARKS.md
# (load 1-6: 3.8e12 FLOPs in 7.7 min, 1.7e13 in 20.5 min): training at ~9e9 "6ND" FLOPs/s, every run ~7 s besides
# (corpus, token streams, model build, compile, checkpoints, final evaluation), every tokenizer ~20 s (training, then
# encoding the whole training split once). Rounded down to 8e9 for machines busier than that one.
ASSUMED_FLOPS_PER_S = 8e9
RUN_OVERHEAD_S = 7.0
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
    """Wall time of the runs in one process by the measured time model above; `new_tokenizers` defaults to one per
    vocabulary size in the plans."""
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
