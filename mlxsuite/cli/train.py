"""`mlxsuite train`: train a vocab-scaled LM on the embedded corpus or your own (resumable, data-parallel)."""

from __future__ import annotations

from typing import Optional

import typer

from .. import platform
from ..errors import UserError
from ..train_lm import LMRunSpec, auto_vocab_size, train_lm
from ..trainer import TrainConfig
from .common import Device, TrainProgress, device_option, err, out, positive, print_json


def train(
    out_name: str = typer.Option(..., "--out", "-o", help="Store name (or folder) of the model to write."),
    preset: str = typer.Option("tiny", "--preset", help="Model preset (micro, tiny, small, base, vocab-33m, …)."),
    vocab_size: str = typer.Option(
        "2048", "--vocab-size", "-v",
        help="Vocabulary size V of the tokenizer to train, or 'auto' (vocabulary scaling law).",
    ),
    flops: Optional[float] = typer.Option(
        None, "--flops", help="With --vocab-size auto: the training budget in FLOPs."),
    tokenizer: Optional[str] = typer.Option(
        None, "--tokenizer", help="Reuse this tokenizer folder instead of training one."),
    init_from: Optional[str] = typer.Option(
        None, "--init-from", metavar="MODEL",
        help="Continue training this stored model (e.g. one from `convert from-hf`); ignores --preset.",
    ),
    corpus: Optional[str] = typer.Option(
        None, "--corpus", help="Text file, folder or JSONL (default: the Python stdlib)."),
    seq_len: int = typer.Option(128, "--seq-len", help="Tokens per training sequence."),
    batch_size: int = typer.Option(16, "--batch-size", help="Sequences per step, over all processes."),
    steps: int = typer.Option(200, "--steps", help="Optimizer steps."),
    lr: float = typer.Option(3e-3, "--lr", help="Peak learning rate (AdamW; warm-up, then cosine to 10 %)."),
    warmup: int = typer.Option(20, "--warmup", help="Linear warm-up steps."),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Micro-batches accumulated per step."),
    grad_clip: float = typer.Option(1.0, "--grad-clip", help="Global gradient-norm clip (0: none)."),
    weight_decay: float = typer.Option(0.1, "--weight-decay", help="AdamW weight decay (not on norms and biases)."),
    save_every: int = typer.Option(50, "--save-every", help="Checkpoint every N steps (and at the end)."),
    eval_every: int = typer.Option(100, "--eval-every", help="Validate every N steps (and at the end)."),
    eval_windows: int = typer.Option(64, "--eval-windows", help="Validation windows of seq-len tokens."),
    seed: int = typer.Option(0, "--seed", help="Seed of the initialization and the data order."),
    compile: bool = typer.Option(True, "--compile/--no-compile", help="Compile the training step."),
    device: Device = device_option(),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    force: bool = typer.Option(False, "--force", help="Start over, replacing an existing --out."),
    json_out: bool = typer.Option(False, "--json", help="Print the final metrics as one JSON document."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress output."),
):
    """Train a model. Launch data-parallel runs with `mlx.launch -n 2 -- mlxsuite train …`."""
    platform.set_device(device)
    positive("flops", flops)
    if vocab_size == "auto":
        choice = auto_vocab_size(preset, flops)
        err.print(f"vocab-size auto: V = {choice['vocab_size']} (approach 3 predicts {choice['predicted_vocab']} for "
                  f"N_nv = {choice['nnv']:,} at {choice['flops']:.3g} FLOPs)")
        vocab = choice["vocab_size"]
    else:
        try:
            vocab = int(vocab_size)
        except ValueError:
            raise UserError(f"--vocab-size must be an integer or 'auto', got {vocab_size!r}") from None
    spec = LMRunSpec(
        out=out_name, preset=preset, vocab_size=vocab, tokenizer=tokenizer, init_from=init_from, corpus=corpus, seq_len=seq_len,
        batch_size=batch_size, seed=seed, eval_windows=eval_windows,
        train=TrainConfig(
            steps=steps, lr=lr, warmup=warmup, grad_accum=grad_accum, grad_clip=grad_clip, weight_decay=weight_decay,
            save_every=save_every, eval_every=eval_every, compile=compile,
        ),
    )
    import mlx.core as mx

    rank = mx.distributed.init().rank()
    with TrainProgress(quiet=quiet or json_out or rank != 0) as progress:
        result = train_lm(spec, resume=resume, force=force, callback=progress)
    if rank != 0:
        return
    if json_out:
        print_json(result)
    else:
        out.print(f"model: {result['folder']}  val CE {result.get('val_ce', float('nan')):.4f}  "
                  f"L_u {result.get('val_lu', float('nan')):.4f}  bits/char {result.get('val_bpc', float('nan')):.4f}")
