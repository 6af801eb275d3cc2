"""`mlxsuite generate`: sample text from a stored model."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from .. import generate as gen
from .. import store
from ..errors import UserError
from .common import generation_prompt, print_json


def generate(
    model: str = typer.Argument(..., help="Model name in the store, or a model folder."),
    prompt: str = typer.Option("", "--prompt", "-p", help="Prompt text ('-' reads stdin)."),
    max_tokens: int = typer.Option(64, "--max-tokens", "-m"),
    temperature: float = typer.Option(0.0, "--temp", help="0 is greedy."),
    top_k: int = typer.Option(0, "--top-k"),
    seed: int = typer.Option(0),
    kvp: Optional[str] = typer.Option(None, "--kvp", help="KV Prediction folder: its auxiliary + predictor prefill MODEL's cache."),
    json_out: bool = typer.Option(False, "--json"),
):
    """Generate a continuation of a prompt."""
    import mlx.core as mx

    prompt = generation_prompt(prompt, max_tokens, temperature)
    mx.random.seed(seed)
    stream = None if json_out else (lambda s: (sys.stdout.write(s), sys.stdout.flush()))
    if kvp is not None:
        from ..kvp import kvp_generate_text

        folder = store.resolve(model)
        if stream:
            sys.stdout.write(prompt)
        text = kvp_generate_text(kvp, prompt=prompt, max_tokens=max_tokens, temperature=temperature, top_k=top_k,
                                 on_token=stream, base=model)
    else:
        m, tok, folder = store.load_model(model)
        if tok is None:
            raise UserError(f"{folder} has no tokenizer")
        if stream:
            sys.stdout.write(prompt)
        text = gen.generate_text(m, tok, prompt, max_tokens, temperature, top_k, on_token=stream)
    if json_out:
        print_json({"model": str(folder), "prompt": prompt, "completion": text})
    else:
        sys.stdout.write("\n")
