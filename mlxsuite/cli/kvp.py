"""`mlxsuite kvp`: KV Prediction: train an auxiliary model and KV predictor, generate with it, evaluate it."""

from __future__ import annotations

from typing import Literal, Optional

import typer

from mlxsuite import platform
from mlxsuite.cli.common import (
    Device,
    device_option,
    out,
    print_json,
    print_whole,
    run_training,
    task_progress,
    train_options,
)
from mlxsuite.kvp.evaluate import evaluate_kvp, plot_kv_errors
from mlxsuite.kvp.recipe import KVPRunSpec, train_kvp
from mlxsuite.platform.errors import UserError
from mlxsuite.platform.plots import check_path

app = typer.Typer(
    rich_markup_mode=None,
    help="KV Prediction: train an auxiliary model and KV predictor, evaluate it "
    "(generate with `mlxsuite generate BASE --kvp DIR`).",
    no_args_is_help=True,
)


@app.command("train")
@train_options(lr=1e-3)
def train(
    base: Optional[str] = typer.Argument(
        None,
        metavar="MODEL",
        help="The (frozen) base model: store name, folder, "
        "Hugging Face repo id or .gguf file (not needed with --resume).",
    ),
    base_option: Optional[str] = typer.Option(None, "--base", hidden=True, help="The base model (older spelling)."),
    aux: str = typer.Option(
        "prune:0.5", help="prune:0.75|0.5|0.25 (KVP-LP) or a smaller model sharing the base's tokenizer (KVP-C)."
    ),
    out_name: str = typer.Option(..., "--out", help="Store name (or folder) of the KVP pair to write."),
    lambda_kv: Optional[float] = typer.Option(
        None,
        "--lambda-kv",
        help="λ_C on the layer-summed KV L1 loss "
        "(default 1/n_base, the paper's choice; 1 = released configs; 0 = off).",
    ),
    lambda_aux: float = typer.Option(1.0, "--lambda-aux", help="λ_A on the auxiliary's own CE."),
    z_loss: float = typer.Option(0.0, "--z-loss", help="z-loss weight on both logits (configs: 1e-4)."),
    corpus: Optional[str] = typer.Option(
        None, "--corpus", help="Text file, folder or JSONL (default: the Python stdlib)."
    ),
    seq_len: int = typer.Option(128, "--seq-len", help="Tokens per training sequence."),
    batch_size: int = typer.Option(16, "--batch-size", help="Sequences per step, over all processes."),
    eval_windows: int = typer.Option(16, "--eval-windows", help="Validation windows of --seq-len tokens."),
    seed: int = typer.Option(0, "--seed", help="Seed of the predictor's initialization and of the batch order."),
    baseline: bool = typer.Option(
        False,
        "--baseline",
        help="Also train the paper's OE-LP baseline beside the pair: "
        "the pruned model alone, plain cross-entropy, same batches and steps (KVP-LP only).",
    ),
    predictor_init: Literal["default", "identity"] = typer.Option(
        "default",
        "--predictor-init",
        help="default (nn.Linear's init, the paper's) or identity (a warm start for a "
        "layer-pruned auxiliary, whose KV widths equal the base's).",
    ),
    train_embeddings: bool = typer.Option(
        True,
        "--train-embeddings/--freeze-embeddings",
        help="Train the auxiliary's (and baseline's) embedding and head, or keep "
        "them as initialized (cheaper for large vocabularies).",
    ),
    train: object = None,
    run: object = None,
):
    """Train the auxiliary and predictor against a frozen base."""
    if base and base_option and base != base_option:
        raise UserError(f"two base models given: {base} and --base {base_option}")
    base = base or base_option
    if base is None and not run.resume:
        raise UserError("missing MODEL: the base model to pair (a store name, folder, repo id or .gguf file)")
    platform.set_device(run.device)
    spec = KVPRunSpec(
        out=out_name,
        base=base,
        aux=aux,
        lambda_kv=lambda_kv,
        lambda_aux=lambda_aux,
        z_loss=z_loss,
        corpus=corpus,
        seq_len=seq_len,
        batch_size=batch_size,
        seed=seed,
        eval_windows=eval_windows,
        baseline=baseline,
        predictor_init=predictor_init,
        train_embeddings=train_embeddings,
        train=train,
    )
    run_training(
        train_kvp,
        spec,
        run,
        "kvp",
        lambda r: (
            f"kvp: {r['folder']}  val KVP CE {r.get('val_kvp_ce', float('nan')):.4f}  "
            f"aux CE {r.get('val_aux_ce', float('nan')):.4f}"
        ),
    )


@app.command("eval")
def evaluate(
    kvp_dir: str = typer.Argument(..., metavar="KVP", help="The KV Prediction pair: store name or folder."),
    corpus: Optional[str] = typer.Option(
        None, "--corpus", help="Held-out text (default: the embedded corpus's validation files)."
    ),
    prompt_len: int = typer.Option(64, "--prompt-len", help="Prompt tokens."),
    cont_len: int = typer.Option(32, "--cont-len", help="Continuation tokens scored after the prompt."),
    samples: int = typer.Option(32, "--samples", help="Prompt+continuation windows."),
    agree_tokens: int = typer.Option(16, "--agree-tokens", help="Greedy tokens compared with the base's (0: skip)."),
    code: int = typer.Option(
        32, "--code", help="Samples of the 1-shot code task (complete the end of a held-out line; 0: skip)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the code-task sample draw."),
    plot: Optional[str] = typer.Option(None, "--plot", help="Write per-layer KV error vs depth to this PNG."),
    device: Device = device_option(),
    json_out: bool = typer.Option(False, "--json", help="Print the results as one JSON document."),
):
    """Base, the paper's baseline, the jointly trained auxiliary and KV Prediction: continuation CE, first-token
    accuracy, agreement with the base, the 1-shot code task, TTFT FLOPs and per-layer KV error."""
    from rich.table import Table

    platform.set_device(device)
    if plot:
        check_path(plot)
    with task_progress("kvp eval") as progress:
        result = evaluate_kvp(
            kvp_dir, corpus, prompt_len, cont_len, samples, agree_tokens, code, seed, progress=progress
        )
    if plot:
        plot_kv_errors(result, plot)
        result["plot"] = plot
    if json_out:
        print_json(result)
        return
    fl = result["flops"]
    table = Table(title=f"KV Prediction: {result['kvp']} ({result['samples']} prompts of {prompt_len} tokens)")
    columns = [
        ("method", None),
        (f"CE next {cont_len}", "ce"),
        ("first-token acc", "first_acc"),
        (f"agree {agree_tokens} tok", "agree_token_match"),
        ("agree exact", "agree_exact"),
        ("same prefix", "agree_prefix"),
        (f"code EM ({result['code_samples']})", "code_em"),
    ]
    columns = [
        (title, key) for title, key in columns if key is None or any(key in d for d in result["methods"].values())
    ]
    for title, _ in columns + [("prefill FLOPs", None), ("FLOPs red.", None)]:
        table.add_column(title, justify="left" if title == "method" else "right")
    base_f = fl["prefill_flops"]["base"]
    for m, d in result["methods"].items():
        f = fl["prefill_flops"]["kvp" if m == "kvp" else "base" if m == "base" else "aux"]
        cells = [
            f"{d[key]:.4f}" if key == "ce" else f"{d[key]:.2f}" if key == "agree_prefix" else f"{d[key]:.3f}"
            for _, key in columns[1:]
        ]
        table.add_row(m, *cells, f"{f:.3g}", f"{base_f / f:.2f}×")
    print_whole(table)
    out.print(f"parameter ratio base/aux (the paper's FLOPs reduction): {fl['param_ratio']:.2f}×")
    k, v = result["kv_error"]["k_l1"], result["kv_error"]["v_l1"]
    out.print("per-layer L1  keys: " + " ".join(f"{x:.3f}" for x in k))
    out.print("            values: " + " ".join(f"{x:.3f}" for x in v))
