"""SmolLM2-135M-Instruct (Q4_1 GGUF) through `convert from-gguf`: quality on held-out stdlib code, conversion memory.

1. Converts the GGUF twice, each in a fresh subprocess with its peak RSS: kept quantized, and `--dtype float32`;
   plus the imports alone for the baseline.
2. Cross-entropy (nats/token) of both folders, loaded by mlx-lm, on the first `--tokens` tokens of each of the first
   `--files` files of this project's stdlib validation split (held out by path hash, `mlxsuite.data`), and on the
   first 512 tokens of json/__init__.py (the number in the notes). Windows are scored independently, no BOS.
3. Forward time of the float32 folder: this project's loader vs mlx-lm's on the same weights, interleaved, medians.

    scripts/get-smollm2.sh && python benchmarks/smollm2_gguf.py [--files 8] [--tokens 512]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import mlxsuite  # noqa: F401  (the fast BLAS before mlx.core)

# isort: split
import mlx.core as mx
import mlx.nn as nn
from convert_memory import child_peak_mb

DEFAULT = Path.home() / ".cache" / "mlxsuite" / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def validation_files(n: int) -> list[Path]:
    from mlxsuite.data import corpus as data

    root, files = data.stdlib_files()
    return [p for p in files if data._is_val(str(p.relative_to(root)))][:n]


def mean_ce(model, windows: list[list[int]]) -> float:
    total = count = 0
    for ids in windows:
        x = mx.array([ids])
        loss = nn.losses.cross_entropy(model(x[:, :-1]).astype(mx.float32), x[:, 1:], reduction="sum").item()
        total, count = total + loss, count + len(ids) - 1
    return total / count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", type=Path, default=DEFAULT)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    if not a.gguf.is_file():
        sys.exit(f"{a.gguf} not found: run scripts/get-smollm2.sh")
    from mlx_lm import load

    from mlxsuite import store

    with tempfile.TemporaryDirectory(prefix="smollm2-") as tmp:
        kept, f32 = Path(tmp) / "kept", Path(tmp) / "f32"
        baseline = child_peak_mb("import mlxsuite, mlx.core, mlxsuite.convert.from_gguf")
        run = "import mlxsuite\nfrom mlxsuite.convert.from_gguf import from_gguf\nfrom_gguf({!r}, {!r}, dtype={!r})"
        rows = []
        for folder, dtype in ((kept, None), (f32, "float32")):
            t0 = time.perf_counter()
            peak = child_peak_mb(run.format(str(a.gguf), str(folder), dtype))
            seconds = time.perf_counter() - t0
            written = sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 2**20
            rows.append((dtype or "kept quantized", written, peak - baseline, seconds))
        print(f"GGUF {a.gguf.stat().st_size / 2**20:.0f} MiB; baseline RSS {baseline:.0f} MiB")
        print("| output | written MiB | peak − baseline MiB | s |\n|---|---:|---:|---:|")
        for what, written, extra, seconds in rows:
            print(f"| {what} | {written:.0f} | {extra:.0f} | {seconds:.1f} |")

        model_f32, tokenizer = load(str(f32))
        model_q, _ = load(str(kept))
        files = validation_files(a.files)
        windows = [tokenizer.encode(p.read_text())[: a.tokens] for p in files]
        from mlxsuite.data.corpus import stdlib_files

        root, _ = stdlib_files()
        json_window = [tokenizer.encode((root / "json" / "__init__.py").read_text())[:512]]
        print("\nvalidation files:", ", ".join(str(p.relative_to(root)) for p in files))
        print(f"tokens scored: {sum(len(w) - 1 for w in windows)} ({a.tokens} per file)")
        print("| text | float32 (dequantized) | kept quantized (Q4_1/Q8_0 as MLX affine) |\n|---|---:|---:|")
        for what, w in ((f"{len(files)} validation files", windows), ("json/__init__.py, 512 tokens", json_window)):
            print(f"| {what} | {mean_ce(model_f32, w):.3f} | {mean_ce(model_q, w):.3f} |")

        ours, _, _ = store.load_model(str(f32))
        x = mx.array([windows[0]])
        times = {"ours": [], "mlx-lm": []}
        for _ in range(a.repeats):  # interleaved
            for name, m in (("ours", ours), ("mlx-lm", model_f32)):
                t0 = time.perf_counter()
                mx.eval(m(x))
                times[name].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(
            f"\nforward of {x.shape[1]} tokens, float32, medians of {a.repeats}: ours {med['ours'] * 1e3:.0f} ms, "
            f"mlx-lm {med['mlx-lm'] * 1e3:.0f} ms, ratio {med['ours'] / med['mlx-lm']:.2f}"
        )


if __name__ == "__main__":
    main()
