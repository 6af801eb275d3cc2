"""`mlxsuite train`: train a vocab-scaled LM on the embedded corpus or your own (resumable, data-parallel)."""

from __future__ import annotations

from typing import Optional

import typer

from mlxsuite import platform
from mlxsuite.cli.common import RunFlags, err, positive, run_training, train_options
from mlxsuite.cli.flags import flag_of
from mlxsuite.platform.errors import UserError
from mlxsuite.train.lm import LMRunSpec, auto_vocab_size, train_lm
from mlxsuite.train.trainer import TrainConfig


@train_options()
def train(
    out_name: str = typer.Option(..., "--out", help="Store name (or folder) of the model to write."),
    preset: str = typer.Option("tiny", "--preset", help="Model preset (micro, tiny, small, base, vocab-33m, …)."),
    vocab_size: str = typer.Option(
        "2048",
        "--vocab-size",
        help="Vocabulary size V of the tokenizer to train, or 'auto' (vocabulary scaling law).",
    ),
    flops: Optional[float] = typer.Option(
        None, "--flops", help="With --vocab-size auto: the training budget in FLOPs."
    ),
    tokenizer: Optional[str] = typer.Option(
        None, "--tokenizer", help="Reuse this tokenizer folder instead of training one."
    ),
    init_from: Optional[str] = typer.Option(
        None,
        "--init-from",
        metavar="MODEL",
        help="Continue training this stored model (e.g. one from `convert from-hf`); ignores --preset.",
    ),
    corpus: Optional[str] = typer.Option(
        None, "--corpus", help="Text file, folder or JSONL (default: the Python stdlib)."
    ),
    seq_len: int = typer.Option(128, "--seq-len", help="Tokens per training sequence."),
    batch_size: int = typer.Option(16, "--batch-size", help="Sequences per step, over all processes."),
    eval_windows: int = typer.Option(64, "--eval-windows", help="Validation windows of --seq-len tokens."),
    seed: int = typer.Option(0, "--seed", help="Seed of the initialization and of the batch order."),
    train: TrainConfig = None,
    run: RunFlags = None,
):
    """Train a model. Launch data-parallel runs with `mlx.launch -n 2 -- mlxsuite train …`."""
    platform.set_device(run.device)
    positive("flops", flops)
    for source, ignored in (("init_from", ("preset", "vocab_size", "tokenizer")), ("tokenizer", ("vocab_size",))):
        both = [flag_of(n) for n in ignored if n in run.given]
        if locals()[source] is not None and both:
            raise UserError(
                f"{flag_of(source)} fixes what {' and '.join(both)} would set: drop {'them' if len(both) > 1 else 'it'}"
            )
    if flops is not None and vocab_size != "auto":
        raise UserError("--flops only applies to --vocab-size auto")
    if vocab_size == "auto":
        tokens = train.steps * batch_size * seq_len
        choice = auto_vocab_size(preset, flops, tokens=tokens)
        budget = "--flops" if flops is not None else f"{tokens:,} tokens: --steps × --batch-size × --seq-len"
        err.print(
            f"vocab-size auto: V = {choice['vocab_size']} (approach 3 predicts {choice['predicted_vocab']} for "
            f"N_nv = {choice['nnv']:,} at {choice['flops']:.3g} FLOPs, {budget})"
        )
        vocab = choice["vocab_size"]
    else:
        try:
            vocab = int(vocab_size)
        except ValueError:
            raise UserError(f"--vocab-size must be an integer or 'auto', got {vocab_size!r}") from None
    spec = LMRunSpec(
        out=out_name,
        preset=preset,
        vocab_size=vocab,
        tokenizer=tokenizer,
        init_from=init_from,
        corpus=corpus,
        seq_len=seq_len,
        batch_size=batch_size,
        seed=seed,
        eval_windows=eval_windows,
        train=train,
    )
    run_training(
        train_lm,
        spec,
        run,
        "train",
        lambda r: (
            f"model: {r['folder']}  val CE {r.get('val_ce', float('nan')):.4f}  "
            f"L_u {r.get('val_lu', float('nan')):.4f}  "
            f"bits/char {r.get('val_bpc', float('nan')):.4f}"
        ),
    )
