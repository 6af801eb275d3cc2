"""`mlxsuite tokenizer`: train SentencePiece BPE tokenizers with the vocabulary paper's settings."""

from __future__ import annotations

from typing import Optional

import typer

from mlxsuite import store
from mlxsuite.cli.common import err, out, positive, print_json
from mlxsuite.data import corpus as data
from mlxsuite.data.tokenizer import save_unigram, train_tokenizer, unigram_probs
from mlxsuite.platform import atomic

app = typer.Typer(help="Train and inspect tokenizers.", no_args_is_help=True)


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
    with atomic.folder(path, force=force) as tmp:
        with err.status(f"training a {vocab_size}-piece tokenizer on {c.name}"):
            tok = train_tokenizer(c.train, vocab_size, tmp / "tokenizer.model")
            stream = data.encode_docs(tok, c.train)
            save_unigram(tmp, unigram_probs(stream, tok.vocab_size))
            val_chars = sum(len(t) for t in c.val)
            val_tokens = len(data.encode_docs(tok, c.val))
    result = {
        "path": str(path),
        "vocab_size": tok.vocab_size,
        "train_tokens": int(len(stream)),
        "val_tokens_per_char": val_tokens / max(1, val_chars),
    }
    if json_out:
        print_json(result)
    else:
        out.print(
            f"tokenizer: {path} (V={tok.vocab_size}, {result['val_tokens_per_char']:.3f} tokens/char on validation)"
        )
