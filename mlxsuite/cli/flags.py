"""The one table from the library's field names to the command-line flags that set them.

Library messages name a setting as `field` (backticks, see `mlxsuite.platform.errors`); the CLI shows the flag.
"""

from __future__ import annotations

from mlxsuite.platform.errors import FIELD

FLAGS = {
    # training (the TRAIN_OPTIONS and RUN_OPTIONS of cli/common.py)
    "steps": "--steps",
    "lr": "--lr",
    "warmup": "--warmup",
    "schedule": "--lr-schedule",
    "min_lr_ratio": "--min-lr-ratio",
    "grad_accum": "--grad-accum",
    "grad_clip": "--grad-clip",
    "weight_decay": "--weight-decay",
    "save_every": "--save-every",
    "eval_every": "--eval-every",
    "log_every": "--log-every",
    "compile": "--compile",
    "device": "--device",
    "resume": "--resume",
    "force": "--force",
    "out": "--out",
    # recipes
    "seq_len": "--seq-len",
    "preset": "--preset",
    "init_from": "--init-from",
    "tokenizer": "--tokenizer",
    "batch_size": "--batch-size",
    "corpus": "--corpus",
    "vocab_size": "--vocab-size",
    "variant": "--variant",
    "upcycle_from": "--upcycle-from",
    "aux": "--aux",
    "predictor_init": "--predictor-init",
    "baseline": "--baseline",
    "kvp": "--kvp",
    "max_tokens": "--max-tokens",
    "plot": "--plot",
    "eval_windows": "--eval-windows",
    "codebook_size": "--codebook-size",
    "text_tokens": "--text-tokens",
    "lambda_kv": "--lambda-kv",
    "lambda_aux": "--lambda-aux",
    "z_loss": "--z-loss",
    # convert
    "keep": "--keep",
    "quantize": "--quantize",
    "dequantize": "-d/--dequantize",
    "bits": "--q-bits",
    "group_size": "--q-group-size",
    "mode": "--q-mode",
    "recipe": "--quant-predicate",
    # bench ttft
    "reps": "--reps",
    "prefix_cache": "--prefix-cache",
    "generation_tokens": "-g",
    "modes": "--modes",
}


def with_flags(message: str) -> str:
    """A library message as the CLI shows it: every `field` it names becomes its flag (`seq_len` → --seq-len)."""
    return FIELD.sub(lambda m: FLAGS.get(m.group(1), m.group(0)), message)


def flag_of(field: str) -> str:
    return FLAGS[field]
