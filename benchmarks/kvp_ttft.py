"""TTFT of KV Prediction against the base and the auxiliary alone, interleaved in one process (issue 5 item 1).

    python benchmarks/kvp_ttft.py                          # presets small and base, LP-0.50 and LP-0.25, random weights
    python benchmarks/kvp_ttft.py --presets base --keeps 0.5 --reps 7
    python benchmarks/kvp_ttft.py --kvp models/quickstart-kvp --base models/quickstart-lm   # a trained pair
    python benchmarks/kvp_ttft.py --presets small --keeps 0.5 -g 64   # + decode tokens/s after the first token

Random weights are fine for speed: the work does not depend on the weights. For each preset and LP fraction the
pair is (base, layer-pruned copy, default-init predictor); the modes are timed by `mlxsuite.bench.ttft` exactly as
`mlxsuite bench ttft BASE --kvp DIR` does (fresh caches, warm-up, ABBA interleaving, medians):
  base  the base's prefill (chunked, fused CPU path)
  aux   the auxiliary alone, prefilled the same way
  kvp   aux on N−1 tokens in the same chunks (its last layer's K/V only), predictor per chunk, base on the last token
Prints, per length, the medians, TTFT reduction vs base (base median / mode median), FLOPs reduction vs base (base
FLOPs / mode FLOPs, counting what runs) and their ratio. Target (issue 5), recorded and not asserted: KVP's TTFT
reduction >= 0.8 x its FLOPs reduction at 1024 tokens (the paper: 0.63-0.75x on an M2 Pro CPU, Table 5).
With -g N each run then decodes N more tokens (`generate_tokens` continuing the prompt cache, timed apart): KV
Prediction decodes with the base alone, so its decode tokens/s should equal the base's (decode_vs_base ≈ 1, the
median of per-round ratios), while the auxiliary decodes faster.
"""

from __future__ import annotations

import argparse
import json
import os
import platform as _platform

import mlxsuite  # noqa: F401  (must come before mlx.core: loads the optimized BLAS)

# isort: split
import mlx.core as mx

from mlxsuite import platform
from mlxsuite.bench import ttft
from mlxsuite.convert.hf import pruned_layers
from mlxsuite.generate import default_prefill_step
from mlxsuite.models import kv_prediction as kvm
from mlxsuite.models import lm


def random_pair(preset: str, keep: float, vocab: int, seed: int = 0) -> kvm.KVPredictionModel:
    base = lm.build(lm.preset_args(preset, vocab), seed=seed)
    n = base.args.num_hidden_layers
    retained = pruned_layers(n, keep)
    aux = kvm.layer_pruned(base, retained)
    pred = kvm.KVPredictor(kvm.PredictorArgs.for_models(base, aux, kvm.lp_layer_map(keep, retained, n)))
    pair = kvm.KVPredictionModel(base, aux, pred)
    pair.eval()
    mx.eval(pair.parameters())
    return pair


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="small,base")
    p.add_argument("--keeps", default="0.5,0.25")
    p.add_argument("--lengths", default="128,512,1024")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--prefill-step", type=int, default=None)
    p.add_argument("--kvp", default=None, help="a trained KVP folder instead of random pairs")
    p.add_argument("-g", "--decode", type=int, default=0, help="decode tokens after the first (tokens/s)")
    p.add_argument("--json", default=None, help="also write every report to this file")
    a = p.parse_args()
    device = platform.set_device(None)
    step = a.prefill_step or default_prefill_step()
    lengths = [int(x) for x in a.lengths.split(",")]
    if a.kvp:
        from mlxsuite.kvp.recipe import load_pair

        pair, _, folder, meta = load_pair(a.kvp)
        runs = [(f"{folder.name}", pair)]
    else:
        runs = [
            (f"{preset} LP-{float(k):.2f}", random_pair(preset, float(k), a.vocab_size))
            for preset in a.presets.split(",")
            for k in a.keeps.split(",")
        ]
    print(
        f"# {device}, {_platform.processor() or _platform.machine()}, {os.cpu_count()} cores, prefill step {step}, "
        f"{a.warmup} warm-up pass(es) + {a.reps} rounds, load average {os.getloadavg()[0]:.2f}"
    )
    decode_head = " base / aux / kvp decode tok/s | kvp decode / base |" if a.decode else ""
    print(
        "| pair | tokens | base ms | aux ms | kvp ms | aux TTFT red. / FLOPs red. | kvp TTFT red. / FLOPs red. "
        "| kvp TTFT/FLOPs |" + decode_head
    )
    print("|---|---|---|---|---|---|---|---|" + "---|---|" * bool(a.decode))
    reports = []
    for name, pair in runs:
        setup = ttft.Setup(pair.base, step, kvp=pair)
        rep = ttft.run(setup, ["base", "aux", "kvp"], [(T, 1) for T in lengths], a.reps, a.warmup, decode=a.decode)
        rep["pair"] = name
        reports.append(rep)
        rows = {(r["mode"], r["prompt_tokens"]): r for r in rep["results"]}
        for T in lengths:
            b, x, k = rows[("base", T)], rows[("aux", T)], rows[("kvp", T)]
            ms = lambda r: f"{r['ttft_s']['median'] * 1e3:.1f}"  # noqa: E731
            print(
                f"| {name} | {T} | {ms(b)} | {ms(x)} | {ms(k)} "
                f"| {x['ttft_reduction_vs_base']:.2f}× / {x['flops_reduction_vs_base']:.2f}× "
                f"| {k['ttft_reduction_vs_base']:.2f}× / {k['flops_reduction_vs_base']:.2f}× "
                f"| {k['ttft_over_flops_reduction']:.2f} |"
                + (
                    f" {b['decode_tps']['median']:.0f} / {x['decode_tps']['median']:.0f} / "
                    f"{k['decode_tps']['median']:.0f} | {k['decode_vs_base']:.3f} |"
                    if a.decode
                    else ""
                ),
                flush=True,
            )
        print(
            f"<!-- {name}: parameter ratio {rep['kvp']['param_ratio']:.2f}×, GEMM {rep['gemm_gflops']:.1f} GFLOP/s, "
            f"load {rep['load_average']['start']:.2f} → {rep['load_average']['end']:.2f} -->",
            flush=True,
        )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(reports, f, indent=2)


if __name__ == "__main__":
    main()
