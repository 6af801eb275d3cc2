"""`mlxsuite convert`: Convert weights: from Hugging Face, to mlx-lm, prune, quantize."""

from __future__ import annotations

from contextlib import contextmanager
from enum import Enum
from typing import Optional

import typer

from .common import err, out

app = typer.Typer(help="Convert weights: from Hugging Face, to mlx-lm, prune, quantize.", no_args_is_help=True)

FORCE = typer.Option(False, "--force", help="Replace OUT if it exists.")


class DType(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


@contextmanager
def _progress(what: str):
    """A rich progress bar on stderr, fed by the library's progress(done, total, name) callback."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("tensors"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[name]}", style="dim"),
        console=err,
        transient=True,
        disable=not err.is_terminal,  # no bar (and no stray blank line) when stderr is a file or a pipe
    ) as bar:
        task = bar.add_task(what, total=None, name="")

        def update(done: int, total: int, name: str) -> None:
            bar.update(task, completed=done, total=total, name=name)

        yield update


def _report(result, what: str) -> None:
    for note in result.notes:
        err.print(f"[yellow]note:[/yellow] {note}", highlight=False, soft_wrap=True)
    out.print(
        f"{what} {result.path}: {result.n_tensors} tensors, {result.nbytes / 2**20:.1f} MiB in {result.shards} "
        f"shard{'s' if result.shards != 1 else ''}",
        highlight=False,
        soft_wrap=True,
    )


def _out_path(name: str):
    from ..store import output_path

    return output_path(name)


@app.command("from-hf")
def from_hf(
    hf_dir: str = typer.Argument(..., metavar="HF_DIR", help="Local HF checkpoint (config.json, *.safetensors)."),
    out_name: str = typer.Argument(..., metavar="OUT", help="Store name, or a path (with a slash)."),
    dtype: Optional[DType] = typer.Option(None, "--dtype", help="Weight dtype (default: the checkpoint's)."),
    quantize: Optional[int] = typer.Option(None, "--quantize", "-q", help="Quantize to 4 or 8 bits."),
    group_size: int = typer.Option(64, "--group-size", help="Quantization group size."),
    force: bool = FORCE,
):
    """Convert a local Hugging Face Llama/Mistral/Qwen2/Qwen3 checkpoint (safetensors only) into a model here."""
    from .. import convert

    with _progress("converting") as progress:
        result = convert.from_hf(
            hf_dir,
            _out_path(out_name),
            dtype=dtype.value if dtype else None,
            quantize_bits=quantize,
            group_size=group_size,
            force=force,
            progress=progress,
        )
    _report(result, "wrote")


@app.command("to-mlx-lm")
def to_mlx_lm(
    model: str = typer.Argument(..., metavar="MODEL", help="Model name in the store, or a path."),
    out_dir: str = typer.Argument(..., metavar="OUT", help="Folder to write (mlx_lm.load opens it)."),
    force: bool = FORCE,
):
    """Export a model for mlx-lm (`mlx_lm.load` / `mlx_lm.generate`), with a tokenizer.json for its tokenizer."""
    from pathlib import Path

    from .. import convert

    with _progress("exporting") as progress:
        result = convert.to_mlx_lm(model, Path(out_dir), force=force, progress=progress)
    _report(result, f"wrote ({result.config['model_type']} for mlx-lm)")


@app.command("prune")
def prune(
    model: str = typer.Argument(..., metavar="MODEL", help="Model name in the store, or a path."),
    out_name: str = typer.Argument(..., metavar="OUT", help="Store name, or a path (with a slash)."),
    keep: float = typer.Option(..., "--keep", help="0.75, 0.5 or 0.25: the KV Prediction paper's LP models."),
    force: bool = FORCE,
):
    """Layer-pruned copy (KVP-LP): keep 0.75 drops layers i%4==3, 0.5 keeps even layers, 0.25 keeps i%4==0."""
    from .. import convert

    with _progress("pruning") as progress:
        result = convert.prune(model, _out_path(out_name), keep, force=force, progress=progress)
    kept = result.config["mlxsuite"]["pruned"]["layers"]
    _report(result, f"kept layers {','.join(map(str, kept))}; wrote")


@app.command("quantize")
def quantize(
    model: str = typer.Argument(..., metavar="MODEL", help="Model name in the store, or a path."),
    out_name: str = typer.Argument(..., metavar="OUT", help="Store name, or a path (with a slash)."),
    bits: int = typer.Option(4, "--bits", help="4 or 8."),
    group_size: int = typer.Option(64, "--group-size", help="Quantization group size (32, 64 or 128)."),
    force: bool = FORCE,
):
    """Affine-quantize Linear and Embedding layers (mlx-lm's scheme); loads everywhere a model does."""
    from .. import convert

    with _progress("quantizing") as progress:
        result = convert.quantize(model, _out_path(out_name), bits, group_size, force=force, progress=progress)
    _report(result, f"{bits}-bit, wrote")
