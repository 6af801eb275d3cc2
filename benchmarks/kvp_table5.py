"""TTFT against quality, in the shape of the KV Prediction paper's Table 5, from the JSON of `bench ttft --kvp … -o
json` and of `kvp eval … --json` (one or more pairs on the same base; the first holds the OE-LP baseline).

    python benchmarks/kvp_table5.py --ttft ttft.json main=smollm2-kvp-id-eval.json \
        "λ_C = 0"=smollm2-kvp-id-lc0-eval.json

Rows: the base, the paper's OE-LP baseline and the jointly trained auxiliary (both run as the auxiliary does), and
KV Prediction of every pair given. TTFT reduction = base median TTFT ÷ the method's (measured, per prompt length);
FLOPs reduction at the longest length measured, as `bench ttft` counts it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--ttft", required=True, help="bench ttft -o json output")
    p.add_argument(
        "evals",
        nargs="+",
        help="LABEL=kvp-eval.json (split at the last =; the first: the pair whose baseline is shown)",
    )
    a = p.parse_args()
    records = json.loads(Path(a.ttft).read_text())
    lengths = sorted({r["prompt_tokens"] for r in records if r["cached_tokens"] == 0})
    by = {(r["mode"], r["prompt_tokens"]): r for r in records if r["cached_tokens"] == 0 and r["batch"] == 1}
    evals = [(label, json.loads(Path(path).read_text())) for label, path in (e.rsplit("=", 1) for e in a.evals)]

    def ttft_cells(mode: str) -> list[str]:
        return [f"{by[(mode, n)]['ttft_reduction_vs_base']:.2f}×" for n in lengths]

    head = (
        ["method", "runs as"]
        + [f"TTFT red. {n}" for n in lengths]
        + [
            f"FLOPs red. {lengths[-1]}",
            "cont. CE",
            "first-token acc.",
            "agree (tokens)",
            "agree (exact)",
            "same prefix",
            "code EM",
        ]
    )
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join([":---", ":---"] + ["---:"] * (len(head) - 2)) + "|")

    def row(label: str, mode: str, m: dict) -> None:
        flops = by[(mode, lengths[-1])]["flops_reduction_vs_base"]
        cells = (
            [label, mode]
            + ttft_cells(mode)
            + [
                f"{flops:.2f}×",
                f"{m['ce']:.3f}",
                f"{100 * m['first_acc']:.1f} %",
                f"{100 * m['agree_token_match']:.1f} %",
                f"{100 * m['agree_exact']:.1f} %",
                f"{m['agree_prefix']:.2f}" if "agree_prefix" in m else "–",
                f"{100 * m['code_em']:.1f} %",
            ]
        )
        print("| " + " | ".join(cells) + " |")

    first_label, first = evals[0]
    row("base", "base", first["methods"]["base"])
    if "baseline" in first["methods"]:
        row("OE-LP baseline (pruned, fine-tuned alone)", "aux", first["methods"]["baseline"])
    for label, ev in evals:
        row(f"auxiliary trained jointly ({label})", "aux", ev["methods"]["aux-joint"])
    for label, ev in evals:
        row(f"**KV Prediction ({label})**", "kvp", ev["methods"]["kvp"])
    any_rec = records[0]
    print(
        f"\n{first['samples']} held-out prompts; code EM over {first['code_samples']} samples. TTFT: "
        f"{any_rec['reps']} reps, {any_rec['device']}, {any_rec['blas']} ({any_rec['blas_threads']} BLAS "
        f"thread{'' if any_rec['blas_threads'] == 1 else 's'}), load "
        f"{any_rec['load_avg_start']:.2f} → {any_rec['load_avg_end']:.2f}."
    )


if __name__ == "__main__":
    main()
