"""One tokenizer per vocabulary size, trained on a corpus's training split, with its tokens per character measured on
the held-out split: the loop behind the sweep's shared tokenizers and `mlxsuite vocab fit-compression`."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from mlxsuite.data.corpus import Corpus, load_corpus
from mlxsuite.data.tokenizer import Tokenizer, train_tokenizer
from mlxsuite.platform.errors import UserError
from mlxsuite.vocab import scaling


def tokens_per_char(tok: Tokenizer, texts: list[str]) -> float:
    """Tokens per character of `texts` (no EOS counted)."""
    return sum(map(len, tok.encode_batch(texts))) / max(1, sum(len(t) for t in texts))


def train_tokenizers(
    load_corpus: Callable[[], Corpus],
    sizes: list[int],
    path_of: Callable[[int], Path],
    byte_fallback: bool,
    known: Optional[dict[int, float]] = None,
    callback: Optional[Callable[[dict], None]] = None,
) -> dict[int, float]:
    """Tokens per character for every size, training the tokenizer at `path_of(V)` unless `known` already has V and
    the file exists (an existing file without a measurement is measured, not retrained). `load_corpus` is called
    once, and only if something must be trained or measured.

    `callback` gets {vocab, tokens_per_char, trained, seconds} for every size.
    """
    known, callback = dict(known or {}), callback or (lambda info: None)
    corpus = None
    out = {}
    for v in sizes:
        path = path_of(v)
        start = time.perf_counter()
        if v in known and path.exists():
            out[v] = known[v]
            callback({"vocab": v, "tokens_per_char": out[v], "trained": False, "seconds": 0.0})
            continue
        corpus = corpus or load_corpus()
        tok = Tokenizer(path) if path.exists() else train_tokenizer(corpus.train, v, path, byte_fallback=byte_fallback)
        out[v] = tokens_per_char(tok, corpus.val)
        callback({"vocab": v, "tokens_per_char": out[v], "trained": True, "seconds": time.perf_counter() - start})
    return out


def measure_compression(
    corpus_spec: Optional[str], sizes: list[int], callback: Optional[Callable[[dict], None]] = None
) -> dict:
    """Fit f(V) = a·ln²V + b·lnV + c on tokenizers trained at `sizes` (with byte fallback, the paper's settings) on
    the corpus's training split and measured on its held-out split. Returns the fit with its data and quality."""
    sizes = sorted(set(sizes))
    if len(sizes) < 3:
        raise UserError("fitting f(V) = a·ln²V + b·lnV + c needs at least 3 different vocabulary sizes")
    texts = load_corpus(corpus_spec)
    with tempfile.TemporaryDirectory(prefix="mlxsuite-fit-compression-") as tmp:
        measured = train_tokenizers(
            lambda: texts, sizes, lambda v: Path(tmp) / f"tokenizer-{v}.model", True, callback=callback
        )
    tpc = [measured[v] for v in sizes]
    fit = scaling.fit_compression(sizes, tpc)
    fitted = [float(x) for x in fit(sizes)]
    return {
        **fit.to_dict(),
        "r2": scaling.r_squared(tpc, fitted),
        "relative_mse": scaling.relative_mse(tpc, fitted),
        "corpus": texts.name,
        "val_chars": sum(len(t) for t in texts.val),
        "sizes": sizes,
        "tokens_per_char": tpc,
        "fitted": fitted,
    }
