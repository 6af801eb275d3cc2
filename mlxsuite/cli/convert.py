"""`mlxsuite convert`: weights in from Hugging Face / mlx-lm / GGUF, out to mlx-lm / GGUF, prune, quantize.

The options of `from-hf` and `quantize` are `mlx_lm.convert`'s (`--hf-path`, `--mlx-path`, `-q`, `--q-bits`,
`--q-group-size`, `--q-mode`, `--quant-predicate`, `--dtype`, `-d`).
"""

from __future__ import annotations

from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Optional

import typer

from mlxsuite.cli.common import Dtype, Progress, err, out, print_json, print_note
from mlxsuite.convert import derive, hf
from mlxsuite.convert import from_gguf as gguf_convert
from mlxsuite.convert import to_gguf as gguf_export
from mlxsuite.convert.quantization import quant_spec
from mlxsuite.platform.errors import UserError
from mlxsuite.store.refs import output_path, source_folder

app = typer.Typer(
    rich_markup_mode=None,
    help="Convert weights: from Hugging Face / mlx-lm / GGUF, to mlx-lm / GGUF, prune, quantize.",
    no_args_is_help=True,
)

FORCE = typer.Option(False, "--force", help="Replace OUT if it exists.")
JSON = typer.Option(False, "--json", help="Print one JSON document (what was written) on stdout.")


class QMode(StrEnum):
    affine = "affine"
    mxfp4 = "mxfp4"
    nvfp4 = "nvfp4"
    mxfp8 = "mxfp8"


class Recipe(StrEnum):
    mixed_2_6 = "mixed_2_6"
    mixed_3_4 = "mixed_3_4"
    mixed_3_6 = "mixed_3_6"
    mixed_4_6 = "mixed_4_6"


Q_BITS_HELP = "Bits per weight: affine 2, 3, 4, 5, 6 or 8 (default 4); mxfp4 and nvfp4 4; mxfp8 8."
Q_GROUP_HELP = "Group size: affine 32, 64 or 128 (default 64); mxfp4 and mxfp8 32; nvfp4 16."
Q_MODE_HELP = "Quantization mode: affine (default), mxfp4, nvfp4 or mxfp8."
RECIPE_HELP = "Mixed-bit recipe (affine; mlx-lm's): mixed_2_6, mixed_3_4, mixed_3_6 or mixed_4_6."


@contextmanager
def _progress(what: str):
    """A rich progress bar on stderr, fed by the library's progress(done, total, name) callback."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("tensors"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[name]}", style="dim", markup=False),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task(what, total=None, name="")

        def update(done: int, total: int, name: str) -> None:
            bar.update(task, completed=done, total=total, name=name)

        yield update


def _report(result, what: str, json_out: bool) -> None:
    if json_out:
        print_json(
            {
                "path": str(result.path),
                "tensors": result.n_tensors,
                "bytes": result.nbytes,
                "shards": result.shards,
                "config": result.config,
                "notes": result.notes,
            }
        )
        return
    for note in result.notes:
        print_note(note)
    out.print(
        f"{what} {result.path}: {result.n_tensors} tensors, {result.nbytes / 2**20:.1f} MiB in {result.shards} "
        f"shard{'s' if result.shards != 1 else ''}",
        highlight=False,
        soft_wrap=True,
    )


def _out_path(name: str) -> Path:
    return output_path(name)


def _one_of(positional: Optional[str], option: Optional[str], what: str, flag: str) -> str:
    if positional is not None and option is not None and positional != option:
        raise UserError(f"{what} given twice ({positional} and {flag} {option}): give one")
    if positional is None and option is None:
        raise UserError(f"give {what} (as an argument or {flag})")
    return positional if positional is not None else option


def _quant_spec(quantize: bool, bits, group_size, mode: Optional[QMode], recipe: Optional[Recipe]):
    """The -q options as mlx_lm.convert reads them; the --q-* options without -q are refused, not ignored."""
    given = [f for f, v in (("--q-bits", bits), ("--q-group-size", group_size), ("--q-mode", mode),
                            ("--quant-predicate", recipe)) if v is not None]  # fmt: skip
    if not quantize:
        if given:
            raise UserError(f"{', '.join(given)} apply only with -q/--quantize")
        return None
    return quant_spec(bits, group_size, mode.value if mode else "affine", recipe.value if recipe else None)


@app.command("from-hf")
def from_hf(
    hf_dir: Optional[str] = typer.Argument(
        None,
        metavar="HF_PATH",
        help="A Hugging Face or mlx-lm checkpoint: a folder (config.json, *.safetensors), a Hugging Face cache folder "
        "(models--org--name), or a repo id org/name[@revision] (from the cache, else downloaded). Or --hf-path.",
    ),
    out_name: Optional[str] = typer.Argument(
        None, metavar="OUT", help="Store name, or a path (with a slash). Or --mlx-path."
    ),
    hf_path: Optional[str] = typer.Option(None, "--hf-path", "--model", help="The checkpoint, as HF_PATH."),
    mlx_path: Optional[str] = typer.Option(None, "--mlx-path", help="The folder to write (a path), as OUT."),
    quantize: bool = typer.Option(False, "--quantize", "-q", help="Quantize Linear and Embedding layers."),
    q_bits: Optional[int] = typer.Option(None, "--q-bits", help=Q_BITS_HELP),
    q_group_size: Optional[int] = typer.Option(None, "--q-group-size", help=Q_GROUP_HELP),
    q_mode: Optional[QMode] = typer.Option(None, "--q-mode", help=Q_MODE_HELP),
    quant_predicate: Optional[Recipe] = typer.Option(None, "--quant-predicate", help=RECIPE_HELP),
    dtype: Dtype = typer.Option(None, "--dtype", help="Float dtype (default: the checkpoint's torch_dtype)."),
    dequantize: bool = typer.Option(False, "--dequantize", "-d", help="Dequantize an mlx-lm quantized checkpoint."),
    force: bool = FORCE,
    json_out: bool = JSON,
):
    """Convert a Llama/Mistral/Qwen2/Qwen3 checkpoint (safetensors only) into a model here, as mlx_lm.convert does."""
    source = _one_of(hf_dir, hf_path, "the checkpoint", "--hf-path")
    target = _one_of(out_name, mlx_path, "the output", "--mlx-path")
    target_path = Path(target) if mlx_path is not None else _out_path(target)
    if quantize and dequantize:
        raise UserError("choose either quantize (-q) or dequantize (-d), not both")
    quant = _quant_spec(quantize, q_bits, q_group_size, q_mode, quant_predicate)
    with _progress("converting") as progress:
        result = hf.from_hf(
            source_folder(source),
            target_path,
            dtype=dtype,
            quant=quant,
            dequantize=dequantize,
            force=force,
            progress=progress,
        )
    _report(result, "wrote", json_out)


@app.command("from-gguf")
def from_gguf(
    gguf_file: str = typer.Argument(
        ...,
        metavar="GGUF",
        help="A GGUF file: llama, qwen2 or qwen3; F32/F16/BF16, Q4_0/Q4_1/Q5_0/Q5_1/Q8_0, Q2_K/Q3_K/Q4_K/Q5_K/Q6_K.",
    ),
    out_name: str = typer.Argument(..., metavar="OUT", help="Store name, or a path (with a slash)."),
    dtype: Dtype = typer.Option(
        None,
        "--dtype",
        help="Dequantize exactly, and store every float tensor, in this dtype (default: quantized tensors stay "
        "quantized - Q2_K/Q3_K/Q6_K as 8-bit group 32, the error reported - floats as stored; on the CPU use float32).",
    ),
    force: bool = FORCE,
    json_out: bool = JSON,
):
    """Convert a llama.cpp GGUF file (Llama 1-3, Mistral-style, SmolLM2, Qwen2, Qwen3) into a model folder that mlx-lm
    also opens."""
    with _progress("converting") as progress:
        result = gguf_convert.from_gguf(gguf_file, _out_path(out_name), dtype=dtype, force=force, progress=progress)
    _report(result, "wrote", json_out)


class OutType(StrEnum):
    f32 = "f32"
    f16 = "f16"
    bf16 = "bf16"
    q8_0 = "q8_0"
    q4_0 = "q4_0"
    q4_1 = "q4_1"


@app.command("to-gguf")
def to_gguf(
    model: str = typer.Argument(..., metavar="MODEL", help="Model name in the store, a folder, a repo id."),
    out_file: str = typer.Argument(..., metavar="OUT", help="The GGUF file to write (a path ending in .gguf)."),
    outtype: Optional[OutType] = typer.Option(
        None,
        "--outtype",
        help="Type of every matrix: f32, f16, bf16, q8_0, q4_0 or q4_1 (default: floats as stored, MLX 4/5/8-bit "
        "group-32 layers keep their codes as Q4_1/Q5_1/Q8_0).",
    ),
    force: bool = FORCE,
    json_out: bool = JSON,
):
    """Export a model as a GGUF file that llama.cpp runs (llama, qwen2 or qwen3; tokenizer and chat template)."""
    if not out_file.endswith(".gguf"):
        raise UserError(f"{out_file}: the output name must end in .gguf")
    with _progress("exporting") as progress:
        result = gguf_export.to_gguf(
            model, Path(out_file), outtype.value if outtype else None, force=force, progress=progress
        )
    types = ", ".join(f"{k} {v}" for k, v in result.config["tensor_types"].items())
    _report(result, f"{result.config['architecture']} ({types}), wrote", json_out)


@app.command("to-mlx-lm")
def to_mlx_lm(
    model: str = typer.Argument(..., metavar="MODEL", help="Model name in the store, or a path."),
    out_dir: str = typer.Argument(
        ..., metavar="OUT", help="Store name, or a path (with a slash): the folder mlx_lm.load opens."
    ),
    force: bool = FORCE,
    json_out: bool = JSON,
):
    """Export a model for mlx-lm (`mlx_lm.load` / `mlx_lm.generate`), with a tokenizer.json for its tokenizer."""
    with _progress("exporting") as progress:
        result = derive.to_mlx_lm(model, _out_path(out_dir), force=force, progress=progress)
    _report(result, f"wrote ({result.config['model_type']} for mlx-lm)", json_out)


@app.command("prune")
def prune(
    model: str = typer.Argument(..., metavar="MODEL", help="Model name in the store, or a path."),
    out_name: str = typer.Argument(..., metavar="OUT", help="Store name, or a path (with a slash)."),
    keep: float = typer.Option(..., "--keep", help="0.75, 0.5 or 0.25: the KV Prediction paper's LP models."),
    force: bool = FORCE,
    json_out: bool = JSON,
):
    """Layer-pruned copy (KVP-LP): keep 0.75 drops layers i%4==3, 0.5 keeps even layers, 0.25 keeps i%4==0."""
    with _progress("pruning") as progress:
        result = derive.prune(model, _out_path(out_name), keep, force=force, progress=progress)
    kept = result.config["mlxsuite"]["pruned"]["layers"]
    _report(result, f"kept layers {','.join(map(str, kept))}; wrote", json_out)


@app.command("quantize")
def quantize(
    model: str = typer.Argument(..., metavar="MODEL", help="Model name in the store, or a path."),
    out_name: str = typer.Argument(..., metavar="OUT", help="Store name, or a path (with a slash)."),
    q_bits: Optional[int] = typer.Option(None, "--q-bits", "--bits", help=Q_BITS_HELP),
    q_group_size: Optional[int] = typer.Option(None, "--q-group-size", "--group-size", help=Q_GROUP_HELP),
    q_mode: Optional[QMode] = typer.Option(None, "--q-mode", help=Q_MODE_HELP),
    quant_predicate: Optional[Recipe] = typer.Option(None, "--quant-predicate", help=RECIPE_HELP),
    force: bool = FORCE,
    json_out: bool = JSON,
):
    """Quantize Linear and Embedding layers as mlx_lm.convert -q does; loads everywhere a model does."""
    spec = _quant_spec(True, q_bits, q_group_size, q_mode, quant_predicate)
    with _progress("quantizing") as progress:
        result = derive.quantize(model, _out_path(out_name), spec, force=force, progress=progress)
    what = spec.recipe or f"{spec.bits}-bit {spec.mode}"
    _report(result, f"{what}, wrote", json_out)
