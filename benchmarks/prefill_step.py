"""Sweep the prefill chunk size: TTFT at each step, interleaved in one process, medians and ratios to the best.

    python benchmarks/prefill_step.py                      # small and base, 512/1024/2048 tokens, steps 64…2048
    python benchmarks/prefill_step.py --presets base --lengths 1024 --steps 128,256,512 --reps 7
    python benchmarks/prefill_step.py --unfused            # the model's own forward instead of the fused CPU path

Each (preset, prompt length) runs every step once per repetition, in alternating order, so machine load hits the
steps alike. The last table scores each step by the geometric mean over configurations of median / best median
(1.00 = best everywhere); DEFAULT_PREFILL_STEP in mlxsuite/generate.py takes the lowest score.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform as _platform

import mlxsuite  # noqa: F401  (must come before mlx.core: loads the optimized BLAS)

# isort: split
import mlx.core as mx

from mlxsuite import platform
from mlxsuite.bench import ttft
from mlxsuite.generate import prefill, sample
from mlxsuite.models import flops, kernels, lm


def step_mode(step: int, unfused: bool):
    def build(setup: ttft.Setup) -> ttft.Mode:
        model = setup.model

        def first_token(tokens):
            with kernels.disabled() if unfused else contextlib.nullcontext():
                token = sample(prefill(model, tokens, model.make_cache(), step))
                mx.eval(token)
            return token

        return ttft.Mode(f"step-{step}", first_token, lambda T, B: flops.prefill(model.args, T, B))

    return build


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="small,base")
    p.add_argument("--lengths", default="512,1024,2048")
    p.add_argument("--steps", default="64,128,256,512,1024,2048")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--device", default=None, choices=["cpu", "gpu"])
    p.add_argument("--unfused", action="store_true", help="time the plain MLX ops (no fast CPU kernels)")
    a = p.parse_args()
    device = platform.set_device(a.device)
    steps = [int(s) for s in a.steps.split(",")]
    lengths = [int(s) for s in a.lengths.split(",")]
    for s in steps:
        ttft.register_mode(f"step-{s}", step_mode(s, a.unfused))
    print(
        f"# prefill step sweep: {device}, {platform.cpu_name()}, {os.cpu_count()} cores, {_platform.system()}; "
        f"BLAS {platform.blas_info().library}; path {'model forward' if a.unfused else 'default (fused on CPU)'}; "
        f"load average {os.getloadavg()[0]:.2f}; {a.warmup} warm-up + {a.reps} reps, float32, V={a.vocab_size}"
    )
    ratios: dict[int, list[float]] = {s: [] for s in steps}
    for preset in a.presets.split(","):
        model = lm.build(lm.preset_args(preset, a.vocab_size, max_position_embeddings=max(2048, max(lengths))), seed=0)
        model.eval()
        for T in lengths:
            report = ttft.run(ttft.Setup(model, steps[0]), [f"step-{s}" for s in steps], [(T, 1)], a.reps, a.warmup)
            best = min(r["ttft_s"]["median"] for r in report["results"])
            print(
                f"\n## {preset} ({model.args.n_nonvocab_params / 1e6:.1f}M non-vocab params), {T} tokens, "
                f"GEMM {report['gemm_gflops']:.0f} GFLOP/s (best {report['gemm_gflops_best']:.0f}), "
                f"load {report['load_average']['start']:.2f} → {report['load_average']['end']:.2f}"
            )
            print("| step | TTFT median ms | p10–p90 ms | GFLOP/s | × best |")
            print("|---:|---:|---:|---:|---:|")
            for r in report["results"]:
                t, s = r["ttft_s"], int(r["mode"].split("-")[1])
                ratios[s].append(t["median"] / best)
                print(
                    f"| {s} | {t['median'] * 1e3:.1f} | {t['p10'] * 1e3:.1f}–{t['p90'] * 1e3:.1f} | "
                    f"{r['gflops_per_s']:.1f} | {t['median'] / best:.2f} |",
                    flush=True,
                )
    print("\n## score: geometric mean of median / best over all configurations (lower is better)")
    print("| step | score |")
    print("|---:|---:|")
    for s in steps:
        print(f"| {s} | {math.exp(sum(map(math.log, ratios[s])) / len(ratios[s])):.3f} |")


if __name__ == "__main__":
    main()
