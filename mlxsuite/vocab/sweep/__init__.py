"""The IsoFLOPs experiment of the vocabulary scaling-law paper (Tao et al. 2024) at small scale: for every FLOPs
budget C, every model size (preset → N_nv, d) and every vocabulary size V, train one model for exactly
C = 6·(N_nv + V·d)·D FLOPs (D = C / (6(N_nv + V·d)) tokens, rounded to whole steps), measure the unigram-normalized
loss L_u, then fit the paper's three approaches and report the optimal V per budget by each (`analysis`).

The sweep folder (`store.output_path(out)`) holds `sweep.json` (settings, grid, tokenizers, runs, analysis), one
tokenizer per vocabulary size (`tokenizers/v{V}.model`, trained once without byte fallback and shared by every run
with that V) and one model folder per run (`runs/{preset}-v{V}-c{C}`). Finished runs are not redone; a run with a
checkpoint resumes from it exactly. The library never prints: progress goes through `callback(event, info)`.

Under `mlx.launch -n N` every rank trains its share of the runs and rank 0 fits (`ranks`).

Modules: `plan` (settings, grid, runs, edge extensions, time estimate), `tokenizers` (the shared tokenizers; also
f(V) fitting), `run` (running and resuming), `ranks` (the share of each process), `analysis` (the fits), `spread`
(optimal V against N_nv, bootstrap spreads), `plot` (the figure).
"""

from mlxsuite.vocab.sweep.analysis import analyze, parabola_optimum
from mlxsuite.vocab.sweep.plan import (
    ASSUMED_FLOPS_PER_S,
    DEFAULT_BUDGETS,
    DEFAULT_PRESETS,
    DEFAULT_VOCAB_SIZES,
    QUICK_BUDGETS,
    QUICK_VOCAB_SIZES,
    TIME_BUDGET_S,
    RunPlan,
    SweepGrid,
    SweepSettings,
    closest_preset,
    edge_extensions,
    estimate_seconds,
    plan_one,
    plan_runs,
)
from mlxsuite.vocab.sweep.plot import plot_sweep
from mlxsuite.vocab.sweep.run import SWEEP_FILE, finished_metrics, run_sweep
from mlxsuite.vocab.sweep.tokenizers import measure_compression, tokens_per_char, train_tokenizers
