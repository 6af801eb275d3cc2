"""Peak memory of `mlxsuite convert from-hf` against the checkpoint's largest shard and total size.

Builds a synthetic multi-shard Llama checkpoint (float32, a few hundred MB, HF layout with an index) in a temporary
folder, then runs, each in a fresh subprocess: (1) the imports alone, for the baseline, and (2) the conversion. Peak
RSS comes from `resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`, read by a small launcher process that starts each
child (so the child does not inherit this process's high-water mark). Prints one markdown table row.

    python benchmarks/convert_memory.py [--dtype bfloat16] [--quantize 4] [--layers 6] [--shard-mb 80]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def build_checkpoint(folder: Path, d: int, ffn: int, layers: int, vocab: int, shard_mb: float) -> tuple[int, int, int]:
    """Write an HF-format llama checkpoint; returns (total bytes, number of shards, largest shard bytes)."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)

    def w(*shape):
        return rng.standard_normal(shape, dtype=np.float32) * 0.02

    names: list[tuple[str, tuple]] = [("model.embed_tokens.weight", (vocab, d))]
    for i in range(layers):
        p = f"model.layers.{i}."
        names += [(p + f"self_attn.{n}_proj.weight", (d, d)) for n in "qkvo"]
        names += [(p + "mlp.gate_proj.weight", (ffn, d)), (p + "mlp.up_proj.weight", (ffn, d))]
        names += [(p + "mlp.down_proj.weight", (d, ffn))]
        names += [(p + "input_layernorm.weight", (d,)), (p + "post_attention_layernorm.weight", (d,))]
    names += [("model.norm.weight", (d,)), ("lm_head.weight", (vocab, d))]

    # group into shards of at most shard_mb (a tensor larger than that gets its own), as HF's save_pretrained does
    limit = shard_mb * 2**20
    groups: list[list[tuple[str, tuple]]] = [[]]
    size = 0
    for name, shape in names:
        nbytes = 4 * int(np.prod(shape))
        if groups[-1] and size + nbytes > limit:
            groups.append([])
            size = 0
        groups[-1].append((name, shape))
        size += nbytes
    n = len(groups)
    weight_map, sizes = {}, []
    for i, group in enumerate(groups):
        fname = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        tensors = {name: w(*shape) for name, shape in group}
        save_file(tensors, str(folder / fname), metadata={"format": "pt"})
        sizes.append(sum(t.nbytes for t in tensors.values()))
        weight_map.update({name: fname for name in tensors})
        del tensors
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map})
    )
    config = dict(
        model_type="llama", hidden_size=d, intermediate_size=ffn, num_hidden_layers=layers, num_attention_heads=d // 64,
        num_key_value_heads=d // 64, vocab_size=vocab, rms_norm_eps=1e-6, rope_theta=10000.0, hidden_act="silu",
        tie_word_embeddings=False, torch_dtype="float32", max_position_embeddings=2048,
    )  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    return sum(sizes), n, max(sizes)


def child_peak_mb(code: str) -> float:
    """Peak RSS of `python -c code`, from RUSAGE_CHILDREN of a small launcher process.

    The launcher is needed because Linux charges a child with its parent's RSS high-water mark at fork/exec
    (`ru_maxrss` is inherited across exec), and this process holds the numpy checkpoint while building it."""
    launcher = (
        "import resource, subprocess, sys\n"
        "subprocess.run([sys.executable, '-c', sys.argv[1]], check=True)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    done = subprocess.run([sys.executable, "-c", launcher, code], check=True, capture_output=True, text=True)
    return int(done.stdout.split()[-1]) / 1024  # Linux: KiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--ffn", type=int, default=2816)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--vocab", type=int, default=16000)
    ap.add_argument("--shard-mb", type=float, default=80)
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--quantize", type=int, default=None)
    ap.add_argument("--header", action="store_true", help="Print the table header too.")
    a = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="convert-memory-") as tmp:
        src, out = Path(tmp) / "hf", Path(tmp) / "out"
        src.mkdir()
        total, shards, largest = build_checkpoint(src, a.d, a.ffn, a.layers, a.vocab, a.shard_mb)
        baseline = child_peak_mb("import mlxsuite, mlx.core, mlxsuite.convert.hf")
        t0 = time.perf_counter()
        peak = child_peak_mb(
            "import mlxsuite\nfrom mlxsuite.convert.hf import from_hf\n"
            "from mlxsuite.convert.quantization import quant_spec\n"
            f"quant = quant_spec({a.quantize!r}) if {a.quantize!r} else None\n"
            f"from_hf({str(src)!r}, {str(out)!r}, dtype={a.dtype!r}, quant=quant)"
        )
        seconds = time.perf_counter() - t0
        written = sum(p.stat().st_size for p in out.glob("*.safetensors"))

    mb = 2**20
    what = f"f32 → {a.dtype or 'float32'}" + (f", q{a.quantize}" if a.quantize else "")
    if a.header:
        print(
            "| conversion | checkpoint MB | shards | largest shard MB | written MB | baseline RSS MB | peak RSS MB "
            "| peak − baseline MB | (peak − baseline) / largest shard | (peak − baseline) / total | s |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
    extra = peak - baseline
    print(
        f"| {what} | {total / mb:.0f} | {shards} | {largest / mb:.0f} | {written / mb:.0f} | {baseline:.0f} "
        f"| {peak:.0f} | {extra:.0f} | {extra / (largest / mb):.2f} | {extra / (total / mb):.2f} | {seconds:.1f} |"
    )


if __name__ == "__main__":
    main()
