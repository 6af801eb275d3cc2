"""`mlxsuite tokenizer`: train SentencePiece BPE tokenizers with the vocabulary paper's settings."""

from __future__ import annotations

from typing import Optional

import typer

from mlxsuite import store
from mlxsuite.cli.common import out, positive, print_json, status
from mlxsuite.data import corpus as data
from mlxsuite.data.tokenizer import train_tokenizer_folder

app = typer.Typer(rich_markup_mode=None, help="Train and inspect tokenizers.", no_args_is_help=True)


@app.command("train")
def train(
    vocab_size: int = typer.Option(..., "--vocab-size", help="Number of pieces V."),
    out_name: str = typer.Option(..., "--out", help="Store name or folder to write."),
    corpus: Optional[str] = typer.Option(
        None, "--corpus", help="Text file, folder or JSONL (default: the Python stdlib)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing output."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document (path, vocab_size, token counts)."),
):
    """Train a BPE tokenizer and its unigram table (for L_u) into a folder."""
    positive("vocab size", vocab_size)
    c = data.load_corpus(corpus)
    path = store.output_path(out_name)
    with status(f"training a {vocab_size}-piece tokenizer on {c.name}"):
        result = train_tokenizer_folder(path, c, vocab_size, force)
    if json_out:
        print_json(result)
    else:
        out.print(
            f"tokenizer: {path} (V={result['vocab_size']}, {result['val_tokens_per_char']:.3f} tokens/char on "
            "validation)"
        )
