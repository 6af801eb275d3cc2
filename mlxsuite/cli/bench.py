"""`mlxsuite bench`: Benchmarks: time to first token, decode speed, prompt caching."""

from __future__ import annotations

import io
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, Optional

import typer
from rich.text import Text

from mlxsuite import platform
from mlxsuite.bench import report as report_lib
from mlxsuite.bench import ttft as lib
from mlxsuite.cli.common import (
    Device,
    Dtype,
    Progress,
    device_option,
    dtype_option,
    err,
    out,
    parse_int_list,
    positive,
    print_note,
)
from mlxsuite.platform.errors import UserError

app = typer.Typer(
    rich_markup_mode=None, help="Benchmarks: time to first token, decode speed, prompt caching.", no_args_is_help=True
)

DEFAULT_LENGTHS = "128,512,1024"
TABLE_WIDTH = 100  # the default table drops its lowest-priority columns until it fits (all of them with --wide)


@contextmanager
def _progress(header: str):
    """Progress on stderr (a bar on a terminal, plain lines elsewhere), fed by the library's progress callback;
    `header` first, once the library has checked its input and starts measuring."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[bold]ttft"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("runs"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[what]}", style="dim", markup=False),
        transient=True,
    ) as bar:
        task = bar.add_task("ttft runs", total=None, what="")

        def update(done: int, total: int, what: str) -> None:
            if not bar.tasks[0].total:
                bar.console.print(Text.assemble(("ttft", "bold"), " ", header), highlight=False, soft_wrap=True)
            bar.update(task, completed=done, total=total, what=what)

        yield update


def ttft(
    model: Optional[list[str]] = typer.Argument(
        None,
        metavar="MODEL",
        help="Models: folders or store names, or presets with random weights (micro, "
        "tiny, …). Several are measured in one interleaved run.",
    ),
    models: Optional[list[str]] = typer.Option(
        None,
        "--model",
        "-m",
        metavar="MODEL",
        help="A model to measure, as MODEL; repeat to compare models (llama-bench's -m).",
    ),
    modes: Optional[str] = typer.Option(
        None,
        "--modes",
        help="Comma-separated modes: base, mlx-lm, aux, kvp (aux and kvp need --kvp), llama.cpp (a .gguf MODEL or "
        "--gguf). Default: base, or base,aux,kvp with --kvp.",
    ),
    kvp: Optional[str] = typer.Option(
        None,
        "--kvp",
        help="A KV Prediction folder trained for MODEL (`mlxsuite kvp train`): times the auxiliary alone (aux) and "
        "KV Prediction (kvp) beside the base, with TTFT and FLOPs reductions vs the base. One MODEL only.",
    ),
    prompt_lengths: Optional[str] = typer.Option(
        None, "--prompt-lengths", "-p", help=f"Comma-separated prompt lengths in tokens (default: {DEFAULT_LENGTHS})."
    ),
    batch_sizes: Optional[str] = typer.Option(
        None, "--batch-sizes", "-b", help="Comma-separated batch sizes (default: 1)."
    ),
    reps: int = typer.Option(5, "--reps", "-r", help="Timed runs per configuration and mode (llama-bench's -r)."),
    warmup: int = typer.Option(
        1, "--warmup", help="Untimed passes over every configuration and mode before the first timed run (0: none)."
    ),
    generation_tokens: int = typer.Option(
        0,
        "--generation-tokens",
        "-g",
        help="Also decode this many tokens after the first and report decode "
        "tokens/s (batch-1 configurations; KV Prediction decodes with the base).",
    ),
    prefix_cache: int = typer.Option(
        0,
        "--prefix-cache",
        help="Also measure each prompt with its first N tokens already in a prompt cache "
        "(as mlx_lm.cache_prompt saves one), beside the uncached prompt. Modes base, aux and mlx-lm.",
    ),
    prefill_step: Optional[int] = typer.Option(
        None,
        "--prefill-step",
        help="Prefill chunk size (default 2048; on a CPU without the native attention 256, 128 above 1,024 tokens).",
    ),
    device: Device = device_option(),
    dtype: Dtype = dtype_option(),
    vocab_size: Optional[int] = typer.Option(
        None, "--vocab-size", help=f"Vocabulary size of a preset (default: {lib.PRESET_VOCAB})."
    ),
    compare_mlx_lm: bool = typer.Option(
        False,
        "--compare-mlx-lm",
        help="Also time mlx-lm's generate_step on the same weights (batch 1), interleaved, and report the ratio.",
    ),
    compare_llama_cpp: bool = typer.Option(
        False,
        "--compare-llama-cpp",
        help="Also time llama.cpp (llama-cpp-python, the llama-cpp extra) on MODEL's GGUF file (MODEL itself, or "
        "--gguf), batch 1, interleaved, with as many threads as the BLAS, and report the ratio.",
    ),
    gguf: Optional[Path] = typer.Option(
        None,
        "--gguf",
        help="The GGUF file llama.cpp runs for MODEL when MODEL is a folder or store name (e.g. the file it was "
        "converted from). One MODEL only.",
    ),
    paper_regime: bool = typer.Option(
        False,
        "--paper-regime",
        help="The KV Prediction paper's settings: 59 tokens × batch 64, and batch 8 × 128/256/512/1024 tokens.",
    ),
    output: Literal["table", "md", "csv", "json", "jsonl"] = typer.Option(
        "table",
        "--output",
        "-o",
        help="table (fits 100 columns), md (GitHub markdown), or one record per row: csv, json (an array), jsonl.",
    ),
    json_out: bool = typer.Option(False, "--json", help="The same as -o json."),
    wide: bool = typer.Option(False, "--wide", help="Every column in the table or markdown (std, GFLOP, …)."),
    plot: Optional[Path] = typer.Option(
        None, "--plot", help="Draw TTFT against prompt length per mode into this PNG (needs matplotlib)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the random prompt (and of a preset's weights)."),
):
    """Time to first token: from the prompt's token ids to the first sampled token.

    One record per model, mode, prompt length, cached prefix and batch size: median TTFT with p10/p90, mean, std
    and the samples; prompt tokens/s; decode tokens/s (-g); the prefill's FLOPs and GFLOP/s, also as a fraction of
    the best GEMM rate (in the model's dtype) measured between rounds, or the best prefill rate if higher, so
    never above 100 %; peak memory; model size and type (llama-bench's size, type); versions, device, chip, OS.
    Warm-up covers every configuration and mode before the first timed run; the timed rounds rotate the configurations
    and alternate the modes; every run starts from a fresh KV cache. Tokenization is timed apart, for models with a
    tokenizer. A warning names the load when a configuration's p90/p10 exceeds 1.5×.

    Short flags as llama-bench's: -m model, -p prompt lengths, -b batch sizes, -r repetitions, -g generated
    tokens, -o output format.
    """
    names = _model_names(model, models, kvp)
    output = _output_format(output, json_out, wide)
    mode_names = _mode_names(modes, kvp, compare_mlx_lm)
    if compare_llama_cpp and "llama.cpp" not in mode_names:
        mode_names.append("llama.cpp")
    ggufs = _gguf_files(names, gguf, "llama.cpp" in mode_names)
    lib.check_mode_names(mode_names, kvp=kvp is not None)
    configs = _configs(paper_regime, prompt_lengths, batch_sizes)
    positive("--reps", reps)
    positive("--prefill-step", prefill_step)
    positive("--vocab-size", vocab_size)
    if warmup < 0:
        raise UserError(f"--warmup must be 0 or more, got {warmup}")
    if generation_tokens < 0 or prefix_cache < 0:
        raise UserError("-g and --prefix-cache must be 0 or more")
    if plot is not None:
        report_lib.check_plot_path(plot)

    used_device = platform.set_device(device)
    dt = platform.parse_dtype(dtype)
    setups, described = [], []
    for name in names:
        setup, what, notes = lib.open_setup(name, kvp, vocab_size, dt, seed, prefill_step)
        for note in notes:
            print_note(note)
        if name in ggufs:
            setup.gguf = str(ggufs[name])
        setups.append(setup)
        described.append(what)
        lib.check_configs(setup.model.args, configs, reps, warmup, prefix_cache, generation_tokens)
    header = (
        f"{'; '.join(described)} on {used_device}: {len(configs)} configuration(s)"
        + (f" (uncached and {prefix_cache} cached)" if prefix_cache else "")
        + f" × {len(mode_names)} mode(s), {warmup} warm-up pass(es), {reps} timed round(s)"
    )
    with _progress(header) as progress:
        report = lib.run(setups, mode_names, configs, reps, warmup, seed, progress, generation_tokens, prefix_cache)
    report["described"] = described
    _print_report(report, output, wide, plot)


def _model_names(model: Optional[list[str]], models: Optional[list[str]], kvp: Optional[str]) -> list[str]:
    names = list(model or []) + list(models or [])
    if not names:
        raise UserError("name a model: MODEL or -m MODEL (a folder, a store name or a preset: micro, tiny, …)")
    if len(set(names)) != len(names):
        raise UserError(f"a model is named twice: {', '.join(names)}")
    if kvp is not None and len(names) > 1:
        raise UserError("--kvp belongs to one base model: measure one MODEL with it")
    return names


def _output_format(output: str, json_out: bool, wide: bool) -> str:
    if json_out:
        if output not in ("table", "json"):
            raise UserError(f"--json is -o json: drop it or -o {output}")
        output = "json"
    if wide and output not in ("table", "md"):
        raise UserError(f"--wide selects table columns: -o {output} has every field already")
    return output


def _mode_names(modes: Optional[str], kvp: Optional[str], compare_mlx_lm: bool) -> list[str]:
    if modes is None:
        modes = "base,aux,kvp" if kvp is not None else "base"
    mode_names = [m.strip() for m in modes.split(",") if m.strip()]
    if compare_mlx_lm and "mlx-lm" not in mode_names:
        mode_names.append("mlx-lm")
    lib.check_mode_names(mode_names, kvp=kvp is not None)
    return mode_names


def _configs(paper_regime: bool, prompt_lengths: Optional[str], batch_sizes: Optional[str]) -> list[tuple[int, int]]:
    if paper_regime:
        if prompt_lengths is not None or batch_sizes is not None:
            raise UserError(
                "--paper-regime sets the prompt lengths and batch sizes: drop --prompt-lengths/--batch-sizes"
            )
        return lib.PAPER_REGIME
    lengths = parse_int_list("--prompt-lengths", DEFAULT_LENGTHS if prompt_lengths is None else prompt_lengths)
    batches = parse_int_list("--batch-sizes", "1" if batch_sizes is None else batch_sizes)
    return [(T, B) for B in batches for T in lengths]


def _print_report(report: dict, output: str, wide: bool, plot: Optional[Path]) -> None:
    recs = report_lib.records(report)
    for warning in report_lib.spread_warnings(recs):
        err.print(Text.assemble(("warning:", "yellow"), " ", warning), highlight=False, soft_wrap=True)
    if plot is not None:
        report_lib.plot(recs, plot)
    for note in report["notes"]:
        print_note(note)
    if output == "table":
        _table(recs, report, wide)
    elif output == "md":
        print(report_lib.to_markdown(recs, report, wide), end="")
    else:
        print(
            {"csv": report_lib.to_csv, "json": report_lib.to_json, "jsonl": report_lib.to_jsonl}[output](recs),
            end="" if output != "json" else "\n",
        )
    if plot is not None:
        err.print(f"plot written to {plot}", highlight=False, soft_wrap=True)


def _gguf_files(names: list[str], gguf: Optional[Path], llama_cpp: bool) -> dict[str, Path]:
    """The GGUF file llama.cpp runs for each model: --gguf, or the model itself when it is a .gguf file."""
    if gguf is not None:
        if not llama_cpp:
            raise UserError("--gguf is the file llama.cpp runs: add --compare-llama-cpp (or the llama.cpp mode)")
        if len(names) > 1:
            raise UserError("--gguf belongs to one model: measure one MODEL with it, or give each model as a .gguf")
        if gguf.suffix.lower() != ".gguf" or not gguf.expanduser().is_file():
            raise UserError(f"--gguf {gguf}: not a .gguf file")
        return {names[0]: gguf.expanduser()}
    if not llama_cpp:
        return {}
    for name in names:
        if not (name.lower().endswith(".gguf") and Path(name).expanduser().is_file()):
            raise UserError(
                f"llama.cpp runs GGUF files: give MODEL as a .gguf file, or --gguf FILE ({name} is neither)"
            )
    return {name: Path(name).expanduser() for name in names}


def _rich_table(recs: list[dict], cols):
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for c in cols:
        table.add_column(c.header, justify="left" if c.header in ("model", "mode") else "right", no_wrap=True)
    for r in recs:
        table.add_row(*(c.cell(r) for c in cols))
    return table


def _width(table) -> int:
    from rich.console import Console

    console = Console(file=io.StringIO(), width=10_000)
    console.print(table)
    return max(len(line) for line in console.file.getvalue().splitlines())


def _table(recs: list[dict], report: dict, wide: bool) -> None:
    """The default columns that fit TABLE_WIDTH (every column with --wide), then the run's metadata."""
    from rich.console import Console

    cols = report_lib.columns(recs, wide)
    table = _rich_table(recs, cols)
    dropped = []
    while not wide and _width(table) > TABLE_WIDTH and len(cols) > 1:
        lowest = min(cols, key=lambda c: c.priority)
        dropped.append(lowest.header)
        cols = [c for c in cols if c is not lowest]
        table = _rich_table(recs, cols)
    out.print("Time to first token: " + "; ".join(report["described"]), highlight=False, soft_wrap=True)
    (out if out.is_terminal else Console(width=max(out.width, _width(table)))).print(table)
    more = f" More columns with --wide or -o csv/json ({', '.join(dropped)}, …)." if dropped else ""
    out.print("\n" + "\n".join(report_lib.footer(report, cols)) + more, highlight=False, soft_wrap=True)


app.command("ttft")(ttft)
