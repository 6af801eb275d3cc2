"""KV Prediction's work per prefill chunk beyond the auxiliary's forward: the predictor and the predicted-KV writes,
layer by layer (each layer's maps, then the base's forward with `kv`: k-norm, RoPE, cache write per layer) against
the predictor batched across layers (`KVPredictor.batched`, what `kvp.prompt_fill` runs), interleaved, medians.

    scripts/get-smollm2.sh && nice -n 5 python benchmarks/kvp_fill.py [MODEL] [--chunk 256] [--reps 20]

The auxiliary is the base's even layers (LP-0.50) and the predictor has its default (random) init: only shapes
matter for time. The chunk's tapped auxiliary K/V are computed once beforehand; each trial starts from empty caches.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import mlxsuite  # noqa: F401  (must come before mlx.core: loads the optimized BLAS)

# isort: split
import mlx.core as mx

from mlxsuite import store
from mlxsuite.models import kv_prediction as kvm

SMOLLM2 = Path.home() / ".cache" / "mlxsuite" / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default=str(SMOLLM2))
    p.add_argument("--chunk", type=int, default=256)
    p.add_argument("--reps", type=int, default=20)
    a = p.parse_args()
    base = store.load(a.model, "lm", dtype=mx.float32, dequantize=True).model
    n_base = base.args.num_hidden_layers
    aux = kvm.layer_pruned(base, list(range(0, n_base, 2)))
    pred = kvm.KVPredictor(kvm.PredictorArgs.for_models(base, aux, kvm.contiguous_layer_map(n_base, len(aux.layers))))
    mx.eval(pred.parameters())
    chunk = mx.random.randint(0, base.args.vocab_size, (1, a.chunk))
    tap: list = []
    aux(chunk, aux.make_cache(), tap=tap)
    aux_keys, aux_values = [k for k, _ in tap], [v for _, v in tap]
    stacked = pred.stacked()
    mx.eval(aux_keys, aux_values, stacked)

    def per_layer():
        cache = base.make_cache()
        keys, values = pred(aux_keys, aux_values)
        base(chunk, cache, kv=list(zip(keys, values)))
        return [c.state for c in cache]

    def batched():
        cache = base.make_cache()
        keys, values = pred.batched(aux_keys, aux_values, stacked)
        base(chunk, cache, kv=list(zip(keys, values)))
        return [c.state for c in cache]

    trials = {
        "predictor, per layer": lambda: pred(aux_keys, aux_values),
        "predictor, batched": lambda: pred.batched(aux_keys, aux_values, stacked),
        "predictor + writes, per layer": per_layer,
        "predictor + writes, batched": batched,
    }
    times: dict[str, list[float]] = {k: [] for k in trials}
    load0 = os.getloadavg()[0]
    for r in range(a.reps + 1):  # round 0 warms up
        for name, fn in trials.items() if r % 2 else reversed(trials.items()):
            mx.synchronize()
            t0 = time.perf_counter()
            mx.eval(fn())
            if r:
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"| per {a.chunk}-token chunk, {n_base} base layers ← {len(aux.layers)} aux layers | median ms |")
    print("|:---|---:|")
    for name, t in med.items():
        print(f"| {name} | {1e3 * t:,.1f} |")
    ratio = statistics.median(
        x / y for x, y in zip(times["predictor + writes, per layer"], times["predictor + writes, batched"])
    )
    print(f"\nper layer / batched (paired): {ratio:.2f}×; load average {load0:.2f} → {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
