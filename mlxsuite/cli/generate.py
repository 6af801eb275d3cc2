"""`mlxsuite generate`: sample text from a model, optionally with KV Prediction at prefill."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from mlxsuite import store
from mlxsuite.cli.common import generation_prompt, model_argument, print_json, print_note
from mlxsuite.generate import generate_text
from mlxsuite.platform.errors import UserError


def generate(
    model: str = model_argument(),
    prompt: str = typer.Option("", "--prompt", "-p", help="Prompt text ('-' reads stdin)."),
    max_tokens: int = typer.Option(64, "--max-tokens", "-m", help="Tokens to generate at most (EOS stops earlier)."),
    temperature: float = typer.Option(0.0, "--temp", help="Sampling temperature; 0 is greedy."),
    top_k: int = typer.Option(0, "--top-k", help="Sample among the k most likely tokens only (0: all)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sampler."),
    kvp: Optional[str] = typer.Option(
        None,
        "--kvp",
        help="KV Prediction folder trained for MODEL: its auxiliary and "
        "predictor fill MODEL's prompt cache, MODEL generates every token.",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document (model, prompt, completion)."),
):
    """Generate a continuation of a prompt."""
    import mlx.core as mx

    prompt = generation_prompt(prompt, max_tokens, temperature, top_k)
    kw = {}
    if kvp is not None:
        from mlxsuite.kvp.recipe import load_pair, prompt_fill

        pair, tok, _, _ = load_pair(kvp, expect_base=model)
        m, folder = pair.base, store.resolve(model)
        kw["cache"], kw["fill"] = prompt_fill(pair)
    else:
        loaded = store.load(model, "lm", dequantize=None)
        m, tok, folder = loaded.model, loaded.tokenizer, loaded.folder
        for note in loaded.notes:
            print_note(note)
    if tok is None:
        raise UserError(f"{folder} has no tokenizer")
    mx.random.seed(seed)
    started = []  # the prompt is echoed with the first token, after generate_text has checked its input

    def stream(piece: str) -> None:
        if not started:
            sys.stdout.write(prompt)
            started.append(True)
        sys.stdout.write(piece)
        sys.stdout.flush()

    text = generate_text(m, tok, prompt, max_tokens, temperature, top_k, on_token=None if json_out else stream, **kw)
    if json_out:
        print_json({"model": str(folder), "prompt": prompt, "completion": text})
    else:
        sys.stdout.write(("" if started else prompt) + "\n")
