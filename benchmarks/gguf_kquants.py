"""k-quant GGUFs of a real model (SmolLM2-135M-Instruct) through `convert from-gguf`; `convert to-gguf` into llama.cpp.

1. The shipped Q4_1 file is dequantized to an F32 GGUF with the `gguf` package (the "F32 original"), which
   llama.cpp's own quantizer (`llama_cpp.llama_model_quantize`, llama-cpp-python) turns into Q4_K_M, Q5_K_M, Q6_K.
2. Each file is converted kept quantized and `--dtype float32`, and also dequantized independently (the `gguf`
   package's numpy dequantization written as an F32 GGUF, then converted). Cross-entropy (nats/token) of each on
   held-out stdlib text (this project's validation split: `--files` files, `--windows` windows of 256 tokens each,
   no BOS), plus llama.cpp's own cross-entropy running the quantized file itself.
3. `convert to-gguf --outtype f32` of the F32 original: llama.cpp loads it and its next-token logits on a prompt are
   compared with ours.

Needs llama-cpp-python (not a dependency; see /work/shared/notes/llama-cpp.md for the build flags):
    scripts/get-smollm2.sh && python benchmarks/gguf_kquants.py [--out DIR] [--files 4] [--windows 4]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
from pathlib import Path

import mlxsuite  # noqa: F401  (first: it loads the optimized BLAS, which must precede mlx.core; 20x slower GEMM else)

# isort: split
import mlx.core as mx
import mlx.nn as nn
import numpy as np

DEFAULT = Path.home() / ".cache" / "mlxsuite" / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
FTYPES = {"Q4_K_M": 15, "Q5_K_M": 17, "Q6_K": 18}  # llama_ftype (llama.h)
WINDOW = 256


def dequantized_copy(src: Path, dst: Path) -> Path:
    """`src` with every tensor dequantized to F32 by the `gguf` package (metadata copied)."""
    import gguf

    if dst.is_file():
        return dst
    r = gguf.GGUFReader(src)
    field = r.fields["general.architecture"]
    w = gguf.GGUFWriter(str(dst) + ".part", bytes(field.parts[field.data[0]]).decode())
    for key, f in r.fields.items():
        if key in ("general.architecture", "general.file_type", "general.quantization_version") or key.startswith(
            "GGUF."
        ):
            continue
        vt = f.types[0]
        if vt == gguf.GGUFValueType.ARRAY:
            sub = f.types[-1]
            if sub == gguf.GGUFValueType.STRING:
                vals = [bytes(f.parts[i]).decode("utf-8", "surrogateescape") for i in f.data]
            else:
                vals = [f.parts[i].tolist()[0] for i in f.data]
            w.add_key_value(key, vals, vt, sub_type=sub)
        elif vt == gguf.GGUFValueType.STRING:
            w.add_key_value(key, bytes(f.parts[f.data[0]]).decode("utf-8", "surrogateescape"), vt)
        else:
            w.add_key_value(key, f.parts[f.data[0]].tolist()[0], vt)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    for t in r.tensors:
        w.add_tensor(t.name, gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    os.replace(str(dst) + ".part", dst)
    return dst


def llama_quantize(f32: Path, dst: Path, kind: str) -> Path:
    import llama_cpp

    if not dst.is_file():
        p = llama_cpp.llama_model_quantize_default_params()
        p.ftype, p.nthread = FTYPES[kind], 2
        rc = llama_cpp.llama_model_quantize(str(f32).encode(), (str(dst) + ".part").encode(), ctypes.byref(p))
        assert rc == 0, (kind, rc)
        os.replace(str(dst) + ".part", dst)
    return dst


def convert(gguf_file: Path, folder: Path, dtype) -> tuple[Path, list[str]]:
    from mlxsuite.convert.from_gguf import from_gguf

    notes = []
    if not (folder / "config.json").is_file():
        notes = from_gguf(gguf_file, folder, dtype=dtype, force=True).notes
    return folder, notes


def max_weight_difference(a: Path, b: Path) -> float:
    """Largest |Δ| between two float folders' tensors (0.0: the same weights, so the same cross-entropy)."""
    wa, wb = mx.load(str(a / "model.safetensors")), mx.load(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    return max(mx.max(mx.abs(wa[k].astype(mx.float32) - wb[k].astype(mx.float32))).item() for k in wa)


def mean_ce(folder: Path, windows: list[list[int]]) -> float:
    """Cross-entropy of a converted folder (cached in the output folder's ce.json per folder and windows)."""
    import hashlib
    import json

    cache = folder.parent / "ce.json"
    key = f"{folder.name}-{hashlib.sha1(json.dumps(windows).encode()).hexdigest()[:12]}"
    known = json.loads(cache.read_text()) if cache.is_file() else {}
    if key not in known:
        known[key] = _mean_ce(folder, windows)
        cache.write_text(json.dumps(known, indent=1))
    return known[key]


def _mean_ce(folder: Path, windows: list[list[int]]) -> float:
    from mlxsuite import store

    model = store.load(str(folder), "lm", dequantize=True).model  # float32 on the CPU (kept values, exactly)
    total = count = 0
    for ids in windows:
        x = mx.array([ids])
        loss = nn.losses.cross_entropy(model(x[:, :-1]).astype(mx.float32), x[:, 1:], reduction="sum").item()
        total, count = total + loss, count + len(ids) - 1
    return total / count


def llama_cpp_logits(path: Path, windows: list[list[int]], f32_cache: bool = False) -> list[np.ndarray]:
    """llama.cpp's logits at every position (its default KV cache is float16; `f32_cache`: float32)."""
    import llama_cpp

    kv = {"type_k": 0, "type_v": 0, "flash_attn": False} if f32_cache else {}  # 0: GGML_TYPE_F32
    llm = llama_cpp.Llama(str(path), n_ctx=WINDOW + 8, logits_all=True, n_threads=2, verbose=False, **kv)
    out = []
    for ids in windows:
        llm.reset()
        llm.eval(ids)
        out.append(np.array(llm.scores[: len(ids)], dtype=np.float64))
    return out


def llama_cpp_ce(path: Path, windows: list[list[int]]) -> float:
    total = count = 0
    for ids, logits in zip(windows, llama_cpp_logits(path, windows)):
        logits = logits[:-1]
        lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
        total += float((lse - logits[np.arange(len(ids) - 1), ids[1:]]).sum())
        count += len(ids) - 1
    return total / count


def held_out_windows(folder: Path, files: int, per_file: int) -> tuple[list[list[int]], list[str]]:
    from mlxsuite.data import corpus as data
    from mlxsuite.data.tokenizer import load_tokenizer

    root, paths = data.stdlib_files()
    chosen = [p for p in paths if data._is_val(str(p.relative_to(root)))]
    tok = load_tokenizer(folder)
    windows, names = [], []
    for p in chosen:
        ids = tok.encode(p.read_text())
        if len(ids) >= WINDOW * per_file:
            windows += [ids[i * WINDOW : (i + 1) * WINDOW] for i in range(per_file)]
            names.append(str(p.relative_to(root)))
        if len(names) == files:
            break
    return windows, names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", type=Path, default=DEFAULT)
    ap.add_argument("--out", type=Path, default=Path.home() / ".cache" / "mlxsuite" / "kquants")
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--windows", type=int, default=4, help="windows of 256 tokens per file")
    a = ap.parse_args()
    if not a.gguf.is_file():
        sys.exit(f"{a.gguf} not found: run scripts/get-smollm2.sh")
    a.out.mkdir(parents=True, exist_ok=True)
    f32 = dequantized_copy(a.gguf, a.out / "SmolLM2-135M-Instruct.F32.gguf")
    f32_folder, _ = convert(f32, a.out / "f32", None)
    windows, names = held_out_windows(f32_folder, a.files, a.windows)
    print(f"held-out text: {', '.join(names)}; {len(windows)} windows of {WINDOW} tokens")
    print(
        "| file | tensor types | kept quantized | --dtype float32 (max |Δw| vs gguf's) | gguf-dequantized F32 "
        "| llama.cpp on the file |"
    )
    print("|---|---|---:|---:|---:|---:|")
    ref = mean_ce(f32_folder, windows)
    print(f"| F32 original | F32 | {ref:.4f} | {ref:.4f} | {ref:.4f} | {llama_cpp_ce(f32, windows):.4f} |", flush=True)
    for kind in FTYPES:
        q = llama_quantize(f32, a.out / f"SmolLM2-135M-Instruct.{kind}.gguf", kind)
        from mlxsuite.convert import gguf_reader

        types: dict[str, int] = {}
        for t in gguf_reader.read_header(q).tensors.values():
            types[t.type] = types.get(t.type, 0) + 1
        kept, notes = convert(q, a.out / f"{kind}-kept", None)
        deq, _ = convert(q, a.out / f"{kind}-f32", "float32")
        ind, _ = convert(dequantized_copy(q, a.out / f"{kind}.gguf-dequantized.gguf"), a.out / f"{kind}-ind", None)
        ind_ce = mean_ce(ind, windows)
        # the same weights as gguf's dequantization give the same cross-entropy: compare weights, not rerun it
        deq_cell = f"{ind_ce:.4f} ({max_weight_difference(deq, ind):.1e})"
        row = [f"{mean_ce(kept, windows):.4f}", deq_cell, f"{ind_ce:.4f}", f"{llama_cpp_ce(q, windows):.4f}"]
        mix = ", ".join(f"{k} {v}" for k, v in sorted(types.items()))
        print(f"| {kind} | {mix} | " + " | ".join(row) + " |", flush=True)
        for note in notes:
            print(f"|  | note: {note} | | | | |")
    export_check(f32_folder, a.out, windows[0][:64])


def export_check(folder: Path, out: Path, prompt: list[int]) -> None:
    """Our f32 to-gguf export in llama.cpp: its next-token logits against ours on the same prompt."""
    from mlxsuite import store
    from mlxsuite.convert.to_gguf import to_gguf

    exported = out / "SmolLM2-135M-Instruct.exported-f32.gguf"
    to_gguf(str(folder), exported, "f32", force=True)
    model = store.load(str(folder), "lm", dequantize=True).model
    ours = np.array(model(mx.array([prompt]))[0, -1].astype(mx.float32), dtype=np.float64)
    for f32_cache in (False, True):
        theirs = llama_cpp_logits(exported, [prompt], f32_cache)[0][-1]
        diff = np.abs(ours - theirs)
        print(
            f"llama.cpp on our `to-gguf --outtype f32` export, {len(prompt)}-token prompt, "
            f"{'float32' if f32_cache else 'default float16'} KV cache: next-token logits max |Δ| {diff.max():.2e} "
            f"(logits {theirs.min():.1f}..{theirs.max():.1f}), same argmax: {ours.argmax() == theirs.argmax()}"
        )


if __name__ == "__main__":
    main()
