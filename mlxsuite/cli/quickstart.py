"""`mlxsuite quickstart`: KV Prediction end to end on the embedded corpus (the paper's Table 5 in miniature)."""

from __future__ import annotations

from typing import Optional

import typer
from rich.text import Text

from mlxsuite.cli.common import TrainProgress, err, out, print_json, print_whole
from mlxsuite.quickstart import QuickstartConfig, run_quickstart


class QuickstartProgress(TrainProgress):
    """The trainer's bars and lines (TrainProgress), plus a line per stage and a bar per measurement, on stderr."""

    def __init__(self, quiet: bool = False):
        super().__init__(quiet=quiet, label="train")
        self.measure_task = None

    def __call__(self, event: str, info: dict) -> None:
        if self.quiet:
            return
        if event == "stage":
            if not self.started:
                self.progress.start()
                self.started = True
            state = (" (done before: reused)", "green") if info["reused"] else ""
            stage = (f"stage {info['index']}/{info['total']}", "bold cyan")
            self.progress.console.print(Text.assemble(stage, " ", info["title"], state), soft_wrap=True)
            self.measure_task = None
        elif event == "measure":
            if self.measure_task is None:
                self.measure_task = self.progress.add_task("measure", total=info["total"], stats="")
            self.progress.update(self.measure_task, completed=info["done"], total=info["total"], stats=info["what"])
        elif event == "eval" and "kvp_ce" in info:  # the pair's validation metrics
            parts = [f"{k} {info[k]:.4f}" for k in ("kvp_ce", "aux_ce", "k_l1", "v_l1") if k in info]
            self.progress.console.print(f"step {info['step']}: val " + "  ".join(parts))
        else:
            super().__call__(event, info)


def quickstart(
    name: str = typer.Option(
        "quickstart",
        "--name",
        help="Store name prefix: NAME-lm (base) and NAME-kvp (the pair; NAME-MODEL-kvp with --model).",
    ),
    model: Optional[str] = typer.Option(
        None,
        "--model",
        "-m",
        help="Use this model as the base instead of training "
        "one (a store name, folder, Hugging Face repo id or .gguf file).",
    ),
    steps: int = typer.Option(300, "--steps", help="Base model training steps (without --model)."),
    kvp_steps: Optional[int] = typer.Option(
        None, "--kvp-steps", help="KV Prediction training steps (default 60; 30 with --model, at batch 4)."
    ),
    reps: int = typer.Option(3, "--reps", "-r", help="Timed TTFT runs per length and method."),
    fresh: bool = typer.Option(False, "--fresh", help="Redo everything, even what is finished in the store."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document with both tables on stdout."),
):
    """Train a tokenizer, a small base LM and an LP-0.50 KV Prediction pair on the Python stdlib, then show time to
    first token (base, auxiliary, KV Prediction at 128/512/1024 tokens) beside quality (continuation loss,
    first-token accuracy, agreement with the base; the paper's OE-LP baseline beside). With --model, the same on
    your model. Finished stages are reused when run again."""
    if model is None:
        cfg = QuickstartConfig(name=name, steps=steps, kvp_steps=kvp_steps or 60, reps=reps)
    else:  # a real model: a short fine-tune (batch 4, embeddings frozen, the predictor from the identity: on
        # SmolLM2 the default init did not recover within 100 steps), and the code task discriminates there
        cfg = QuickstartConfig(
            name=name,
            model=model,
            kvp_steps=kvp_steps or 30,
            kvp_batch_size=4,
            kvp_lr=1e-3,
            train_embeddings=False,
            predictor_init="identity",
            samples=32,
            code=24,
            lengths=(128, 512, 1024, 2048),
            reps=reps,
        )
    with QuickstartProgress() as progress:
        result = run_quickstart(cfg, fresh, callback=progress)
    if json_out:
        print_json(result)
        return
    render(result)


def _ttft_view(table: list[dict]):
    from rich.table import Table

    t = Table(title="Time to first token (median ms; base ÷ method)", title_justify="left")
    for col in ("tokens", "base", "auxiliary", "KV Prediction"):
        t.add_column(col, justify="right", no_wrap=True)
    for row in table:
        cells = [str(row["prompt_tokens"]), f"{row['base']['median_s'] * 1e3:,.1f}"]
        for m in ("aux", "kvp"):
            r = row[m]
            cells.append(f"{r['median_s'] * 1e3:,.1f} ({r['ttft_reduction']:.2f}×)")
        t.add_row(*cells)
    fl = table[-1]
    t.caption = (
        f"FLOPs reduction at {fl['prompt_tokens']}: aux {fl['aux']['flops_reduction']:.2f}×, "
        f"KVP {fl['kvp']['flops_reduction']:.2f}×"
    )
    return t


def _quality_view(q: dict):
    from rich.table import Table

    qt = Table(title=f"Quality ({q['samples']} held-out prompts)", title_justify="left")
    columns = [
        ("cont. loss", "continuation_ce"),
        ("first tok.", "first_token_acc"),
        (f"agree {q['agree_tokens']}", "agree_token_match"),
        ("exact", "agree_exact"),
        (f"code EM ({q['code_samples']})", "code_em"),
    ]
    columns = [(t, k) for t, k in columns if any(k in v for v in q["methods"].values())]
    for col in ["method"] + [t for t, _ in columns]:
        qt.add_column(col, justify="left" if col == "method" else "right", no_wrap=True)
    labels = {"base": "base", "baseline": "OE-LP baseline", "aux-joint": "aux (joint)", "kvp": "KV Prediction"}
    for m, v in q["methods"].items():
        cells = [f"{v[k]:.3f}" if k == "continuation_ce" else f"{100 * v[k]:.1f}%" for _, k in columns]
        qt.add_row(labels.get(m, m), *cells)
    return qt


def render(result: dict) -> None:
    from rich.columns import Columns

    base, kvp, q = result["base"], result["kvp"], result["quality"]
    t, qt = _ttft_view(result["ttft"]["table"]), _quality_view(q)
    err.print("")
    preset = base["preset"] + ", " if base["preset"] else ""
    out.print(
        Text.assemble(
            ("base", "bold"),
            f" {base['folder']} ({preset}{base['layers']} layers, {base['params']:,} params"
            f"{', reused' if base['reused'] else ''}); ",
            ("KV Prediction", "bold"),
            f" {kvp['folder']} (LP-{kvp['aux'].get('keep', 0):.2f}: {kvp['aux_layers']} layers, parameter ratio "
            f"{kvp['param_ratio']:.2f}×{', reused' if kvp['reused'] else ''})",
        ),
        highlight=False,
        soft_wrap=True,
    )
    tables = Columns([t, qt], padding=(0, 4))
    print_whole(tables)
    load = result["ttft"]["load_average"]
    out.print(
        f"TTFT on {result['ttft']['device']}, prefill step {result['ttft']['prefill_step']}, median of "
        f"{result['ttft']['reps']} interleaved runs"
        + (f", load average {load['start']:.2f}" if load["start"] else "")
        + f"; quality: loss in nats/token over {q['prompt_tokens']}-token prompts. "
        f"Wall time {result['wall_s']:.0f} s.",
        highlight=False,
        soft_wrap=True,
    )
