"""TTFT of each family of the one forward against mlx-lm's own class of that family, on random-weight models with
the public configs' shapes (the vocabulary cut to 32,000 so the head does not dominate a CPU run).

    python benchmarks/families_ttft.py                          # every family, 512 tokens, 5 rounds
    python benchmarks/families_ttft.py --families gemma3_text phi3 --prompt-lengths 128,512

Each model is written once into --dir (default ~/.cache/mlxsuite/families-bench) and measured with
`mlxsuite bench ttft DIR --compare-mlx-lm -p LENGTHS -r REPS -o md`; the records' speedup_vs_mlx_lm is mlx-lm's
median TTFT over ours (target, recorded and not asserted: >= 1.0 at 512 tokens). Needs a quiet machine.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import mlxsuite  # noqa: F401  (must come before mlx.core: loads the optimized BLAS)
from mlxsuite import store
from mlxsuite.cli import main
from mlxsuite.models import lm

V = 32000
SHAPES = {  # the public config.json files' fields (vocabulary cut to V)
    "gemma2": {  # google/gemma-2-2b, 8 of its 26 layers
        "model_type": "gemma2", "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 8,
        "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "query_pre_attn_scalar": 256,
        "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "rms_norm_eps": 1e-6,
    },
    "gemma3_text": {  # google/gemma-3-270m
        "model_type": "gemma3_text", "hidden_size": 640, "intermediate_size": 2048, "num_hidden_layers": 18,
        "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256, "query_pre_attn_scalar": 256,
        "sliding_window": 512, "sliding_window_pattern": 6, "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
    },
    "phi3": {  # microsoft/Phi-3.5-mini-instruct's attention, 8 of its 32 layers
        "model_type": "phi3", "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 8,
        "num_attention_heads": 32, "num_key_value_heads": 32, "max_position_embeddings": 131072,
        "original_max_position_embeddings": 4096, "tie_word_embeddings": False,
        "rope_scaling": {"type": "longrope", "long_factor": [1.0] * 48, "short_factor": [1.0] * 48},
    },
    "openelm": {  # apple/OpenELM-270M
        "model_type": "openelm", "model_dim": 1280, "num_transformer_layers": 16, "head_dim": 64,
        "num_query_heads": [12, 12, 12, 12, 12, 16, 16, 16, 16, 16, 16, 16, 20, 20, 20, 20],
        "num_kv_heads": [3, 3, 3, 3, 3, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5], "ffn_dim_divisor": 256,
        "ffn_multipliers": [0.5, 0.73, 0.97, 1.2, 1.43, 1.67, 1.9, 2.13, 2.37, 2.6, 2.83, 3.07, 3.3, 3.53, 3.77, 4.0],
        "normalize_qk_projections": True, "share_input_output_layers": True, "rope_freq_constant": 10000,
    },
}  # fmt: skip


def folder_for(family: str, root: Path) -> Path:
    path = root / family
    if not (path / store.WEIGHTS_FILE).exists():
        model = lm.build(lm.ModelArgs.from_dict({**SHAPES[family], "vocab_size": V}))
        store.save(path, model)
    return path


def run() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--prompt-lengths", default="512")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--dir", type=Path, default=Path.home() / ".cache" / "mlxsuite" / "families-bench")
    a = ap.parse_args()
    for family in a.families:
        path = folder_for(family, a.dir)
        try:
            main(
                ["bench", "ttft", str(path), "--compare-mlx-lm", "-p", a.prompt_lengths, "-r", str(a.reps), "-o", "md"]
            )
        except SystemExit as e:
            if e.code:
                raise


if __name__ == "__main__":
    run()
