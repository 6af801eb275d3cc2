"""`mlxsuite moma`: MoMa: mixed-modal early-fusion models with modality-aware experts."""

from __future__ import annotations

from typing import Literal, Optional

import typer
from rich.text import Text

from mlxsuite.cli.common import TrainProgress, out, positive, print_json, print_whole, run_training, train_options
from mlxsuite.moma.compare import compare as run_compare
from mlxsuite.moma.compare import plot_curves
from mlxsuite.moma.generate import caption_image, generate_image
from mlxsuite.moma.images import preview, save_png
from mlxsuite.moma.spec import DEFAULT_VARIANTS, MOD_TOLERANCE, Layout, MomaRunSpec, flops_table
from mlxsuite.moma.train import train_moma
from mlxsuite.moma.train import train_routers as run_train_routers
from mlxsuite.platform.errors import UserError
from mlxsuite.platform.plots import check_path

app = typer.Typer(
    rich_markup_mode=None,
    help="MoMa: mixed-modal early-fusion models with modality-aware experts.",
    no_args_is_help=True,
)


SCHEDULE_HELP = "Decay after warm-up: linear (the MoMa paper's) or cosine."
MIN_LR_HELP = "The decay ends at lr × this (the MoMa paper: 0.01)."


class MomaTrainProgress(TrainProgress):
    def __call__(self, event: str, info: dict) -> None:
        if self.quiet:
            return
        if event == "step" and self.task is not None:
            stats = (
                f"loss {info['loss']:.3f} (text {info.get('loss_text', float('nan')):.3f}, "
                f"image {info.get('loss_image', float('nan')):.3f})  {info['tokens_per_s']:,.0f} tok/s"
            )
            if "router_acc" in info:
                stats = f"BCE {info['loss']:.4f}  acc {info['router_acc']:.3f}"
            self.progress.update(self.task, completed=info["step"], stats=stats)
        elif event == "start":
            if self.task is not None:
                self.progress.remove_task(self.task)
            super().__call__(event, info)
        elif event == "variant":
            self.progress.console.print(
                Text.assemble(
                    (info["variant"], "bold"),
                    f": {info['steps']} steps, {info['flops_per_token']:,.0f} FLOPs/token"
                    + (" (done)" if info["done"] else ""),
                )
            )
        elif event == "model":
            self.progress.console.print(
                "model: " + "  ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}" for k, v in info.items()),
                style="dim",
                soft_wrap=True,
            )
        else:
            super().__call__(event, info)


@app.command("train")
@train_options(steps=300, eval_every=25, schedule="linear", min_lr_ratio=0.01)
def train(
    variant: str = typer.Option(
        "moma4t4i", "--variant", help="dense | moe8x (moe<E>x) | moma1t1i | moma4t4i (moma<T>t<I>i)."
    ),
    mod: bool = typer.Option(False, "--mod", help="Mixture-of-depths in alternating layers (FLOPs re-matched)."),
    upcycle_from: Optional[str] = typer.Option(None, "--upcycle-from", help="Start from this trained moma1t1i run."),
    out_name: str = typer.Option(..., "--out", help="Store name (or folder) of the run."),
    preset: str = typer.Option(
        "tiny", "--preset", help="Dense model size the variant is FLOPs-matched to (micro, tiny, …)."
    ),
    images: Optional[str] = typer.Option(
        None, "--images", help="Folder of PNG/JPEG images (default: scikit-learn digits)."
    ),
    captions: Optional[str] = typer.Option(
        None, "--captions", help="Captions JSONL {file, caption}; default FOLDER/captions.jsonl."
    ),
    corpus: Optional[str] = typer.Option(None, "--corpus", help="Text-only corpus (default: the Python stdlib)."),
    text_tokens: int = typer.Option(300_000, "--text-tokens", help="Text budget (tokens of the corpus)."),
    codebook_size: int = typer.Option(64, "--codebook-size", help="Image codebook entries K."),
    seq_len: int = typer.Option(128, "--seq-len", help="Tokens per training row."),
    batch_size: int = typer.Option(16, "--batch-size", help="Rows per step, over all processes."),
    seed: int = typer.Option(0, "--seed", help="Seed of the initialization and of the data."),
    train: object = None,
    run: object = None,
):
    """Train a dense, MoE or MoMa early-fusion model on interleaved captions, images and text. Launch data-parallel
    runs with `mlx.launch -n 2 -- mlxsuite moma train …`."""
    spec = MomaRunSpec(
        out=out_name,
        variant=variant,
        mod=mod,
        upcycle_from=upcycle_from,
        preset=preset,
        images=images,
        captions=captions,
        corpus=corpus,
        text_tokens=text_tokens,
        codebook_size=codebook_size,
        seq_len=seq_len,
        batch_size=batch_size,
        seed=seed,
        train=train,
    )
    run_training(
        train_moma,
        spec,
        run,
        "train",
        lambda r: (
            f"run: {r['folder']}  val loss {r.get('val_loss', float('nan')):.4f}  "
            f"text {r.get('val_loss_text', float('nan')):.4f}  image {r.get('val_loss_image', float('nan')):.4f}"
        ),
        progress_class=MomaTrainProgress,
    )


@app.command("train-routers")
def train_routers(
    run: str = typer.Argument(..., metavar="RUN", help="A trained MoMa run: store name or folder."),
    steps: Optional[int] = typer.Option(
        None, "--steps", help="Router-training steps (default: the run's router_steps)."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue the run's router training from its last checkpoint."),
    force: bool = typer.Option(False, "--force", help="Train the routers again, replacing an earlier router training."),
    json_out: bool = typer.Option(False, "--json", help="Print the final metrics as one JSON document."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress output."),
):
    """Stage 2: train the auxiliary routers (main model frozen) that make inference causal."""
    import mlx.core as mx

    if steps is not None:
        positive("steps", steps)
    rank = mx.distributed.init().rank()
    with MomaTrainProgress(quiet=quiet or rank != 0, label="routers") as progress:
        result = run_train_routers(run, steps=steps, callback=progress, resume=resume, force=force)
    if rank != 0:
        return
    if json_out:
        print_json(result)
        return
    if "router_acc" in result:
        out.print(
            f"auxiliary-router accuracy {result['router_acc']:.4f} (per router: {result['router_acc_per_router']})"
        )
    for key, label in (("val_ec", "expert choice (non-causal)"), ("val_causal", "auxiliary routers (causal)")):
        v = result[key]
        out.print(f"{label:>28}: loss {v['loss']:.4f}  text {v['loss_text']:.4f}  image {v['loss_image']:.4f}")


def _fmt(x, spec=".2f", suffix=""):
    return "–" if x is None else f"{x:{spec}}{suffix}"


def _compare_table(result: dict, flops: float):
    from rich.table import Table

    t = Table(
        title=f"MoMa comparison at {flops:.3g} training FLOPs per variant (image tokens {result['image_fraction']:.0%})"
    )
    for col in (
        "variant",
        "params",
        "train loss all/text/image",
        "val loss (EC)",
        "val loss (causal)",
        "η all",
        "η text",
        "η image",
        "tok/s",
        "× dense",
        "router acc",
    ):
        t.add_column(col, justify="right")
    for r in result["variants"]:
        tr, va, c = r["final_train"], r["final"], r.get("final_causal") or {}
        t.add_row(
            r["variant"],
            f"{r['params']:,}",
            f"{tr['loss']:.3f}/{tr['loss_text']:.3f}/{tr['loss_image']:.3f}",
            f"{va['loss']:.4f}",
            _fmt(c.get("loss"), ".4f"),
            _fmt(r["eta"]["overall"], ".2f", "×"),
            _fmt(r["eta"]["text"], ".2f", "×"),
            _fmt(r["eta"]["image"], ".2f", "×"),
            f"{r['tokens_per_s']:,.0f}",
            _fmt(r["throughput_ratio"], ".2f"),
            _fmt(r["router_acc"], ".3f"),
        )
    return t


@app.command("compare")
def compare(
    variants: str = typer.Option(DEFAULT_VARIANTS, "--variants", help="Comma-separated variants."),
    flops: float = typer.Option(6e11, "--flops", help="Training FLOPs budget per variant."),
    prefix: str = typer.Option("moma-compare", "--prefix", help="Run names: PREFIX-VARIANT (resumable)."),
    preset: str = typer.Option("micro", "--preset", help="Dense model size the variants are FLOPs-matched to."),
    seq_len: int = typer.Option(64, "--seq-len", help="Tokens per training row."),
    batch_size: int = typer.Option(16, "--batch-size", help="Rows per step."),
    text_tokens: int = typer.Option(200_000, "--text-tokens", help="Text budget (tokens of the corpus)."),
    corpus: Optional[str] = typer.Option(None, "--corpus", help="Text-only corpus (default: the Python stdlib)."),
    images: Optional[str] = typer.Option(
        None, "--images", help="Folder of PNG/JPEG images (default: scikit-learn digits)."
    ),
    captions: Optional[str] = typer.Option(
        None, "--captions", help="Captions JSONL {file, caption}; default FOLDER/captions.jsonl."
    ),
    lr: float = typer.Option(3e-3, "--lr", help="Peak learning rate, reached after 10 warm-up steps."),
    lr_schedule: Literal["cosine", "linear"] = typer.Option("linear", "--lr-schedule", help=SCHEDULE_HELP),
    min_lr_ratio: float = typer.Option(0.01, "--min-lr-ratio", help=MIN_LR_HELP),
    compile: bool = typer.Option(True, "--compile/--no-compile", help="Compile the training step (mx.compile)."),
    plot: Optional[str] = typer.Option(None, "--plot", help="Write loss-vs-FLOPs curves per modality to this PNG."),
    json_out: bool = typer.Option(False, "--json", help="Print the comparison as one JSON document."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress output."),
):
    """Train each variant at the same FLOPs budget and report losses, η (overall/text/image) and throughput."""
    positive("flops", flops)
    if plot:
        check_path(plot)
    names = [v.strip() for v in variants.split(",") if v.strip()]
    base = dict(
        preset=preset,
        seq_len=seq_len,
        batch_size=batch_size,
        text_tokens=text_tokens,
        corpus=corpus,
        images=images,
        captions=captions,
        train=dict(lr=lr, schedule=lr_schedule, min_lr_ratio=min_lr_ratio, compile=compile, warmup=10),
    )
    with MomaTrainProgress(quiet=quiet, label="compare") as progress:
        result = run_compare(names, flops, prefix=prefix, base=base, callback=progress)
    if json_out:
        if plot:
            plot_curves(result["curves"], plot)
            result["plot"] = plot
        print_json({k: v for k, v in result.items()})
        return
    t = _compare_table(result, flops)
    print_whole(t)
    out.print(
        "η: dense FLOPs / FLOPs at which the variant's training loss (centred local fit in log FLOPs, same "
        "batches for every variant) first reaches dense's final training loss; – means not reached within the "
        "budget (η < 1). "
        "Validation losses: expert choice over the batch (non-causal) and auxiliary routers (causal).",
        soft_wrap=True,
    )
    if plot:  # after the table: a failing plot cannot lose it
        plot_curves(result["curves"], plot)
        out.print(f"plot: {plot}")


@app.command("generate")
def generate(
    run: str = typer.Argument(..., metavar="RUN", help="A trained MoMa run: store name or folder."),
    prompt: str = typer.Option(..., "--prompt", help="Caption to draw, e.g. 'a handwritten digit seven'."),
    out_file: str = typer.Option("moma.png", "--out", help="PNG to write."),
    temperature: float = typer.Option(
        0.7, "--temperature", help="Sampling temperature of the image codes (0: greedy)."
    ),
    seed: int = typer.Option(0, "--seed", help="Sampling seed."),
    scale: int = typer.Option(8, "--scale", help="Pixel upscaling of the PNG."),
    json_out: bool = typer.Option(False, "--json", help="Print the codes and the PNG's path as JSON."),
):
    """Caption → image through the causal inference path; writes a PNG and prints a block-character preview."""
    positive("scale", scale)
    if temperature < 0:
        raise UserError(f"temperature must be >= 0, got {temperature}")
    result = generate_image(run, prompt, temperature=temperature, seed=seed)
    path = save_png(result["image"], out_file, scale=scale)
    if json_out:
        print_json({"prompt": prompt, "codes": result["codes"], "png": str(path)})
        return
    out.print(preview(result["image"]), highlight=False)
    out.print(f"wrote {path}")


@app.command("caption")
def caption(
    run: str = typer.Argument(..., metavar="RUN", help="A trained MoMa run: store name or folder."),
    image: str = typer.Argument(..., metavar="IMAGE", help="PNG/JPEG image."),
    json_out: bool = typer.Option(False, "--json", help="Print the caption as JSON."),
):
    """Image → caption through the causal inference path."""
    text = caption_image(run, image)
    if json_out:
        print_json({"image": image, "caption": text})
    else:
        out.print(text, highlight=False)


@app.command("flops")
def flops(
    variants: str = typer.Option(
        "dense,moe8x,moma1t1i,moma4t4i,moma4t4i+mod", "--variants", help="Comma-separated variants."
    ),
    preset: str = typer.Option("tiny", "--preset", help="Dense model size the variants are FLOPs-matched to."),
    seq_len: int = typer.Option(128, "--seq-len", help="Tokens per row."),
    image_fraction: float = typer.Option(0.5, "--image-fraction", help="Share of image tokens in a batch."),
    text_vocab: int = typer.Option(512, "--text-vocab", help="Text vocabulary size."),
    codebook_size: int = typer.Option(64, "--codebook-size", help="Image codebook entries K."),
    json_out: bool = typer.Option(False, "--json", help="Print the table as JSON."),
):
    """FLOPs accounting: training FLOPs per token of each variant against the dense model it is matched to."""
    if not 0 <= image_fraction <= 1:
        raise UserError(f"image fraction must be in [0, 1], got {image_fraction}")
    spec = MomaRunSpec(out="-", preset=preset, seq_len=seq_len)
    spec.validate()
    names = [v.strip() for v in variants.split(",") if v.strip()]
    rows = flops_table(spec, Layout(text_vocab, codebook_size, 1, 2), names, image_fraction)
    if json_out:
        print_json(rows)
        return
    for r in rows:
        out.print(
            f"{r['variant']:>14}  layers {r['layers']:>2}  d {r['hidden_size']:>4}  ffn {r['intermediate_size']:>5}  "
            f"params {r['params']:>11,}  FLOPs/token {r['flops_per_token']:>12,.0f}  × dense {r['ratio_to_dense']:.3f}",
            soft_wrap=True,
        )
    out.print(
        f"MoD variants: depth, then width if needed, matched to dense within {MOD_TOLERANCE:.0%}", highlight=False
    )
