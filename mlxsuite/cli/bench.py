"""`mlxsuite bench`: Benchmarks: time to first token."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer

import mlx.core as mx

from ..errors import UserError
from .common import err, out, parse_int_list, positive, print_json

app = typer.Typer(help="Benchmarks: time to first token.", no_args_is_help=True)

DEFAULT_LENGTHS = "128,512,1024"
DEFAULT_VOCAB = 4096


@contextmanager
def _progress():
    """A rich progress bar on stderr, fed by the library's progress(done, total, what) callback."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[bold]ttft"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("runs"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[what]}", style="dim"),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    ) as bar:
        task = bar.add_task("ttft", total=None, what="")

        def update(done: int, total: int, what: str) -> None:
            bar.update(task, completed=done, total=total, what=what)

        yield update


def _load(name: str, vocab_size: Optional[int], dtype, seed: int):
    """A model folder or store name (with its tokenizer), else a preset with random weights."""
    from .. import store
    from ..models import lm

    try:
        folder = store.resolve(name)
    except UserError as e:
        if name not in lm.PRESETS:
            if Path(name).expanduser().exists():
                raise
            raise UserError(f"{e}; or name a preset: {', '.join(lm.PRESETS)}") from None
        V = vocab_size or DEFAULT_VOCAB
        model = lm.build(lm.preset_args(name, V), seed=seed, dtype=dtype)
        model.eval()
        return model, None, None, f"preset {name}, random weights, V={V}"
    if vocab_size is not None:
        raise UserError(f"--vocab-size applies to presets only; {folder} has its own vocabulary")
    loaded = store.load(str(folder), "lm", dtype=dtype, dequantize=None)
    for note in loaded.notes:
        err.print(f"[yellow]note:[/yellow] {note}", highlight=False, soft_wrap=True)
    return loaded.model, loaded.tokenizer, folder, str(folder)


def _load_kvp(model: str, kvp: str, vocab_size: Optional[int], dtype):
    """The pair in `kvp`, refused unless its base is `model` (same weights); the base mode times the pair's base."""
    from .. import store
    from ..kvp import load_pair
    from ..models import lm

    if vocab_size is not None:
        raise UserError("--vocab-size applies to presets only, not with --kvp")
    try:
        store.resolve(model)
    except UserError:
        if model in lm.PRESETS:
            raise UserError(
                f"--kvp needs the pair's base model folder or store name as MODEL, not the preset {model!r}"
            ) from None
        raise
    pair, tokenizer, folder, meta = load_pair(kvp, expect_base=model)
    if dtype is not None:
        pair.set_dtype(dtype)
        mx.eval(pair.parameters())
    described = f"{model} with KV Prediction {folder.name} ({meta['aux'].get('kind', '?')}"
    described += f"-{meta['aux']['keep']:.2f})" if "keep" in meta["aux"] else ")"
    return pair.base, tokenizer, folder, described, {"kvp": pair}


def ttft(
    model: str = typer.Argument(..., help="A model folder or store name, or a preset (random weights): micro, tiny, …"),
    modes: Optional[str] = typer.Option(
        None,
        "--modes",
        help="Comma-separated modes: base, mlx-lm, aux, kvp (aux and kvp need --kvp). "
        "Default: base, or base,aux,kvp with --kvp.",
    ),
    kvp: Optional[str] = typer.Option(
        None,
        "--kvp",
        help="A KV Prediction folder trained for MODEL (`mlxsuite kvp train`): times the auxiliary alone (aux) and "
        "KV Prediction (kvp) beside the base, with TTFT and FLOPs reductions vs the base.",
    ),
    prompt_lengths: Optional[str] = typer.Option(
        None, "--prompt-lengths", help=f"Comma-separated prompt lengths (default: {DEFAULT_LENGTHS})."
    ),
    batch_sizes: Optional[str] = typer.Option(None, "--batch-sizes", help="Comma-separated batch sizes (default: 1)."),
    reps: int = typer.Option(5, "--reps", help="Timed runs per configuration and mode."),
    warmup: int = typer.Option(1, "--warmup", help="Untimed runs before them (0 for none)."),
    prefill_step: Optional[int] = typer.Option(
        None,
        "--prefill-step",
        help="Prefill chunk size (default: per device, 256 on the CPU; see mlxsuite/generate.py).",
    ),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or gpu (default: MLX's default device)."),
    dtype: Optional[str] = typer.Option(
        None, "--dtype", help="float32, bfloat16 or float16 (default: float32 on the CPU, bfloat16 on a GPU)."
    ),
    vocab_size: Optional[int] = typer.Option(
        None, "--vocab-size", help=f"Vocabulary size of a preset (default: {DEFAULT_VOCAB})."
    ),
    compare_mlx_lm: bool = typer.Option(
        False,
        "--compare-mlx-lm",
        help="Also time mlx-lm's generate_step on the same weights (batch 1), interleaved, and report the ratio.",
    ),
    paper_regime: bool = typer.Option(
        False,
        "--paper-regime",
        help="The KV Prediction paper's settings: 59 tokens × batch 64, and batch 8 × 128/256/512/1024 tokens.",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
    plot: Optional[Path] = typer.Option(
        None, "--plot", help="Draw TTFT against prompt length per mode into this PNG (needs matplotlib)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the random prompt (and of a preset's weights)."),
):
    """Time to first token: from the prompt's token ids to the first sampled token.

    Reports median, p10/p90, mean ± std and the samples; prompt tokens/s; the prefill's FLOPs and effective GFLOP/s,
    also as a fraction of the float32 GEMM rate measured between the trials; peak memory. Each configuration runs
    --warmup untimed and --reps timed trials per mode, modes interleaved, each trial with a fresh KV cache.
    Tokenization is timed apart, for models with a tokenizer.
    """
    from .. import ttft as lib

    if modes is None:
        modes = "base,aux,kvp" if kvp is not None else "base"
    mode_names = [m.strip() for m in modes.split(",") if m.strip()]
    if compare_mlx_lm and "mlx-lm" not in mode_names:
        mode_names.append("mlx-lm")
    lib.check_mode_names(mode_names, kvp=kvp is not None)
    if paper_regime:
        if prompt_lengths is not None or batch_sizes is not None:
            raise UserError(
                "--paper-regime sets the prompt lengths and batch sizes: drop --prompt-lengths/--batch-sizes"
            )
        configs = lib.PAPER_REGIME
    else:
        lengths = parse_int_list("--prompt-lengths", DEFAULT_LENGTHS if prompt_lengths is None else prompt_lengths)
        batches = parse_int_list("--batch-sizes", "1" if batch_sizes is None else batch_sizes)
        configs = [(T, B) for B in batches for T in lengths]
    positive("--reps", reps)
    positive("--prefill-step", prefill_step)
    positive("--vocab-size", vocab_size)
    if warmup < 0:
        raise UserError(f"--warmup must be 0 or more, got {warmup}")
    if plot is not None:
        lib.check_plot_path(plot)

    from .. import platform
    from ..generate import default_prefill_step

    used_device = platform.set_device(device)
    if kvp is not None:
        model_obj, tokenizer, folder, described, extras = _load_kvp(model, kvp, vocab_size, platform.parse_dtype(dtype))
    else:
        model_obj, tokenizer, folder, described = _load(model, vocab_size, platform.parse_dtype(dtype), seed)
        extras = {}
    setup = lib.Setup(model_obj, prefill_step or default_prefill_step(), extras)
    lib.check_configs(model_obj.args, configs, reps, warmup)
    err.print(
        f"[bold]ttft[/bold] {described} on {used_device}: {len(configs)} configuration(s) × "
        f"{len(mode_names)} mode(s), "
        f"{warmup} warm-up + {reps} timed runs each",
        highlight=False,
        soft_wrap=True,
    )
    with _progress() as progress:
        report = lib.run(setup, mode_names, configs, reps, warmup, tokenizer, seed, progress)
    report["model"] = described
    if plot is not None:
        lib.plot(report, plot)
    for note in report["notes"]:
        err.print(f"[yellow]note:[/yellow] {note}", highlight=False, soft_wrap=True)
    if json_out:
        print_json(report)
    else:
        _table(report)
    if plot is not None:
        err.print(f"plot written to {plot}", highlight=False, soft_wrap=True)


def _table(report: dict) -> None:
    from rich.table import Table

    ratio = any("speedup_vs_mlx_lm" in r for r in report["results"])
    tokenize = any("tokenize_s" in r for r in report["results"])
    table = Table(title=f"Time to first token: {report['model']}", title_justify="left")
    headers = ["mode", "tokens", "batch", "TTFT ms", "p10–p90", "std", "tok/s", "GFLOP/s", "roofline", "peak MiB"]
    reduction = any("ttft_reduction_vs_base" in r for r in report["results"]) and len(
        {r["mode"] for r in report["results"]}
    ) > 1
    headers += ["vs mlx-lm"] * ratio + ["TTFT red.", "FLOPs red.", "TTFT/FLOPs"] * reduction
    headers += ["tokenize ms"] * tokenize
    for name in headers:
        table.add_column(name, justify="left" if name == "mode" else "right", no_wrap=True)
    for r in report["results"]:
        t = r["ttft_s"]
        row = [
            r["mode"],
            str(r["prompt_tokens"]),
            str(r["batch"]),
            _ms(t["median"]),
            f"{_ms(t['p10'])}–{_ms(t['p90'])}",
            "" if t["std"] is None else _ms(t["std"]),
            f"{r['prompt_tps']:,.0f}",
            f"{r['gflops_per_s']:.1f}",
            f"{100 * r['roofline_fraction']:.0f}%",
            f"{r['peak_memory_bytes'] / 2**20:,.1f}",
        ]
        if ratio:
            row.append(f"{r['speedup_vs_mlx_lm']:.2f}×" if "speedup_vs_mlx_lm" in r else "")
        if reduction:
            row += (
                [f"{r['ttft_reduction_vs_base']:.2f}×", f"{r['flops_reduction_vs_base']:.2f}×",
                 f"{r['ttft_over_flops_reduction']:.2f}"]
                if "ttft_reduction_vs_base" in r else ["", "", ""]
            )
        if tokenize:
            row.append(_ms(r["tokenize_s"]["median"]) if "tokenize_s" in r else "")
        table.add_row(*row)
    if out.is_terminal:
        out.print(table)
    else:  # a pipe or a file gets the whole table, not one squeezed to 80 columns
        from rich.console import Console

        Console(width=max(out.width, 140)).print(table)
    load = report["load_average"]
    load_text = f"; load average {load['start']:.2f} → {load['end']:.2f}" if load["start"] is not None else ""
    out.print(
        f"{report['device']} ({report['cpu']}), {report['dtype']}, BLAS {report['blas']['library']}; float32 GEMM "
        f"{report['gemm_gflops']:.1f} GFLOP/s (the roofline); prefill step {report['prefill_step']}"
        f"{' (fused CPU prefill)' if report['fused_prefill'] else ''}{load_text}. "
        "GFLOP/s count the matmuls: linear layers on all prompt tokens, causal attention, the LM head on the last "
        "token." + (" vs mlx-lm: mlx-lm's median TTFT / this mode's (> 1: faster)." if ratio else "")
        + (" TTFT red.: base median TTFT / this mode's; FLOPs red.: base FLOPs / this mode's; TTFT/FLOPs: their "
           "ratio (1: time saved in proportion to FLOPs)." if reduction else "")
        + (f" KV Prediction: {report['kvp']['aux_layers']} of {report['kvp']['base_layers']} layers in the "
           f"auxiliary, parameter ratio {report['kvp']['param_ratio']:.2f}×." if "kvp" in report else ""),
        highlight=False,
        soft_wrap=True,
    )


def _ms(s: float) -> str:
    return f"{s * 1e3:,.1f}" if s < 100 else f"{s * 1e3:,.0f}"


app.command("ttft")(ttft)
