"""TTFT of our prefill against mlx-lm's generate_step on the same weights, interleaved in one process.

    python benchmarks/ttft_vs_mlx_lm.py                   # presets small and base, float32, 128/512/1024 tokens
    python benchmarks/ttft_vs_mlx_lm.py --presets vocab-33m --reps 7

Modes, each timed from token ids to the first sampled token with a fresh cache:
  base          our prefill (the fast CPU kernels where they apply), chunks of DEFAULT_PREFILL_STEP
  base-unfused  our prefill with the plain MLX ops (kernels.disabled()), same chunks (what the kernels buy)
  mlx-lm        mlx_lm.generate.generate_step(prompt, model, max_tokens=1, prefill_step_size=S), same S
  mlx-lm-2048   the same at mlx-lm's default prefill_step_size=2048 (what a user gets out of the box)
Prints medians, ratios (mlx-lm median / ours; > 1: ours is faster), effective GFLOP/s and the fraction of the
float32 GEMM rate measured in the same run. Targets, recorded and not asserted: ratio >= 1.0 at every length;
>= 60% of the GEMM rate at 512 tokens on the CPU.
"""

from __future__ import annotations

import argparse
import os
import platform as _platform

import mlxsuite  # noqa: F401  (must come before mlx.core: loads the optimized BLAS)

# isort: split
import mlx.core as mx

from mlxsuite import platform
from mlxsuite.bench import ttft
from mlxsuite.generate import default_prefill_step, prefill, sample
from mlxsuite.models import flops, kernels, lm


def _unfused(setup: ttft.Setup) -> ttft.Mode:
    model, step = setup.model, setup.prefill_step

    def run(tokens, cache, decode):
        with kernels.disabled():
            token = sample(prefill(model, tokens, model.make_cache() if cache is None else cache, step))
            mx.eval(token)
        yield token

    return ttft.Mode("base-unfused", run, lambda T, B, P: B * flops.forward(model.args, T - P, P))


def _mlx_lm_default(setup: ttft.Setup) -> ttft.Mode:
    mode = ttft.MODES["mlx-lm"](ttft.Setup(setup.model, 2048))
    mode.name = "mlx-lm-2048"
    return mode


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="small,base")
    p.add_argument("--lengths", default="128,512,1024")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--prefill-step", type=int, default=None)
    p.add_argument("--device", default=None, choices=["cpu", "gpu"])
    p.add_argument("--modes", default="base,base-unfused,mlx-lm,mlx-lm-2048")
    a = p.parse_args()
    device = platform.set_device(a.device)
    ttft.register_mode("base-unfused", _unfused)
    ttft.register_mode("mlx-lm-2048", _mlx_lm_default)
    step = a.prefill_step or default_prefill_step()
    modes = a.modes.split(",")
    lengths = [int(x) for x in a.lengths.split(",")]
    print(
        f"# ours vs mlx-lm: {device}, {platform.cpu_name()}, {os.cpu_count()} cores, {_platform.system()} "
        f"{_platform.machine()}; mlx {platform.mlx_version()}; BLAS {platform.blas_info().library}; float32; "
        f"prefill step {step}; {a.warmup} warm-up + {a.reps} reps; load average {os.getloadavg()[0]:.2f}"
    )
    for preset in a.presets.split(","):
        model = lm.build(lm.preset_args(preset, a.vocab_size), seed=0)
        model.eval()
        report = ttft.run(ttft.Setup(model, step), modes, [(T, 1) for T in lengths], a.reps, a.warmup)
        load = report["load_average"]
        print(
            f"\n## {preset}: {model.args.n_nonvocab_params / 1e6:.1f}M non-vocab params, d={model.args.hidden_size}, "
            f"{model.args.num_hidden_layers} layers, V={a.vocab_size}; GEMM {report['gemm_gflops']:.1f} GFLOP/s "
            f"(median between trials; best {report['gemm_gflops_best']:.1f}); load {load['start']:.2f} → "
            f"{load['end']:.2f}"
        )
        medians = {(r["mode"], r["prompt_tokens"]): r["ttft_s"]["median"] for r in report["results"]}
        refs = [m for m in ("mlx-lm", "mlx-lm-2048") if m in modes]
        print(
            "| mode | tokens | TTFT median ms | p10–p90 ms | "
            + "".join(f"{m} / this | " for m in refs)
            + "paired vs mlx-lm | GFLOP/s | roofline |"
        )
        print("|---|---:|---:|---:|" + "---:|" * len(refs) + "---:|---:|---:|")
        for r in report["results"]:
            t, T = r["ttft_s"], r["prompt_tokens"]
            ratios = "".join(f"{medians[(m, T)] / t['median']:.2f} | " for m in refs)
            paired = f"{r['speedup_vs_mlx_lm_paired']:.2f}" if "speedup_vs_mlx_lm_paired" in r else ""
            print(
                f"| {r['mode']} | {T} | {t['median'] * 1e3:.1f} | {t['p10'] * 1e3:.1f}–{t['p90'] * 1e3:.1f} | "
                f"{ratios}{paired} | {r['gflops_per_s']:.1f} | {100 * r['roofline_fraction']:.0f}% |",
                flush=True,
            )


if __name__ == "__main__":
    main()
