"""SentencePiece BPE tokenizers with the vocabulary paper's settings, and the unigram table behind L_u.

Settings follow sail-sg/scaling-with-vocab `train_tokenizer.py` (notes §7): BPE, byte fallback, split digits, split
by unicode script, whitespace-only pieces allowed, no whitespace folding (indentation survives), NFKC, pad id 3.
SentencePiece trains on lines; newlines inside a document are encoded through byte fallback (<0x0A>).

Without byte fallback (`byte_fallback=False`, what the vocabulary sweep uses so that V can go down to ~100) the newline
is its own piece, characters outside the 99.99 % most frequent map to <unk>, and no id is spent on the 256 bytes.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Optional

import numpy as np

from mlxsuite.data.corpus import Corpus, encode_docs
from mlxsuite.data.hf_tokenizer import HFTokenizer
from mlxsuite.platform import atomic
from mlxsuite.platform.errors import UserError

TOKENIZER_FILE = "tokenizer.model"
UNIGRAM_FILE = "unigram.safetensors"


class Tokenizer:
    """One interface over a SentencePiece model: encode/decode, special ids, vocabulary size."""

    def __init__(self, path: str | Path):
        import sentencepiece as spm

        self.path = Path(path)
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
        except (OSError, RuntimeError) as e:
            raise UserError(f"cannot read tokenizer {self.path}: {e}") from None

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    @property
    def bos_id(self) -> int:
        return self.sp.bos_id()

    @property
    def eos_id(self) -> int:
        return self.sp.eos_id()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(texts, num_threads=os.cpu_count() or 1)

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode([int(i) for i in ids])

    def save(self, folder: Path) -> None:
        data = self.path.read_bytes()
        atomic.write_file(Path(folder) / TOKENIZER_FILE, lambda tmp: tmp.write_bytes(data))


def _lines(texts: list[str], max_lines: int) -> Iterator[str]:
    """Up to `max_lines` non-blank lines, sampled evenly across the whole corpus (not just its first files)."""
    total = sum(t.count("\n") + 1 for t in texts)
    stride = max(1, total // max_lines)
    n = 0
    for text in texts:
        for line in text.splitlines():
            if (n % stride == 0 or stride == 1) and line.strip():
                yield line
            n += 1


MIN_VOCAB_BYTE_FALLBACK = 320  # 256 byte ids + 4 specials + the characters
MIN_VOCAB_NO_FALLBACK = 128  # 5 specials (with the newline) + ~100 characters of English text or code at 99.99 %
CHARACTER_COVERAGE_NO_FALLBACK = 0.9999
SMALL_CORPUS_CHARS = 2_000_000  # below this a corpus may not support even the smallest vocabulary


def min_vocab_size(byte_fallback: bool = True) -> int:
    return MIN_VOCAB_BYTE_FALLBACK if byte_fallback else MIN_VOCAB_NO_FALLBACK


def train_tokenizer(
    texts: list[str], vocab_size: int, out_file: str | Path, max_lines: int = 200_000, byte_fallback: bool = True
) -> Tokenizer:
    """Train a BPE tokenizer of exactly `vocab_size` pieces on about `max_lines` lines sampled from `texts`."""
    smallest = min_vocab_size(byte_fallback)
    if vocab_size < smallest:
        why = "byte fallback alone needs 260 ids" if byte_fallback else "the characters alone need ~100 ids"
        if sum(map(len, texts)) > SMALL_CORPUS_CHARS:  # a corpus of a few MB supports the smallest size
            raise UserError(f"vocabulary size {vocab_size} is too small: {why}, use >= {smallest}")
        try:  # a small corpus may not: tried (in well under a second), so that the size suggested trains
            _train_bpe(texts, smallest, max_lines, byte_fallback)
        except RuntimeError as e:
            raise UserError(_vocab_size_message(e, texts, vocab_size, max_lines, byte_fallback)) from None
        raise UserError(f"vocabulary size {vocab_size} is too small: {why}, use >= {smallest}")
    try:
        model = _train_bpe(texts, vocab_size, max_lines, byte_fallback)
    except RuntimeError as e:
        raise UserError(_vocab_size_message(e, texts, vocab_size, max_lines, byte_fallback)) from None
    atomic.write_file(Path(out_file), lambda tmp: tmp.write_bytes(model))
    return Tokenizer(out_file)


def _train_bpe(texts: list[str], vocab_size: int, max_lines: int, byte_fallback: bool) -> bytes:
    """SentencePiece BPE trained in memory (no temporary path ends up in the model's trainer_spec.model_prefix)."""
    import sentencepiece as spm

    chars = {}
    if not byte_fallback:
        chars = {"user_defined_symbols": ["\n"], "character_coverage": CHARACTER_COVERAGE_NO_FALLBACK}
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=_lines(texts, max_lines),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=byte_fallback,
        split_digits=True,
        split_by_unicode_script=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="nfkc",
        pad_id=3,
        max_sentence_length=10000,
        shuffle_input_sentence=False,
        hard_vocab_limit=True,
        num_threads=os.cpu_count() or 1,
        minloglevel=2,
        **chars,
    )
    return model.getvalue()


def _vocab_bound(error: RuntimeError) -> Optional[tuple[str, int]]:
    """("max", M) when SentencePiece says the corpus supports at most M pieces, ("min", N) when its characters
    need N ids, else None."""
    fits = re.search(r"value <= (\d+)", str(error))
    if fits:
        return "max", int(fits.group(1))
    needs = re.search(r"smaller than required_chars\. \d+ vs (\d+)", str(error))
    return ("min", int(needs.group(1))) if needs else None


def _vocab_size_message(error: RuntimeError, texts, vocab_size: int, max_lines: int, byte_fallback: bool) -> str:
    """The one line for a failed training; a vocabulary size it suggests is one that trains (tried here)."""
    bound = _vocab_bound(error)
    if bound is None:
        return f"tokenizer training failed at vocabulary size {vocab_size}: {str(error).splitlines()[0]}"
    kind, value = bound
    if kind == "max" and value < min_vocab_size(byte_fallback):
        return (
            f"the corpus is too small for any vocabulary: it supports at most {value} pieces, fewer than the "
            f"{min_vocab_size(byte_fallback)} a tokenizer needs; use a larger corpus"
        )
    if kind == "max":
        text = f"the corpus is too small for a vocabulary of {vocab_size}: it supports at most {value} pieces"
    else:
        text = f"vocabulary size {vocab_size} is too small for this corpus: its characters alone need {value} ids"
    if _trains(texts, value, max_lines, byte_fallback):
        return f"{text}, pass `vocab_size` {value} or {'less' if kind == 'max' else 'more'}"
    return f"{text}; no vocabulary size fits it (at least {min_vocab_size(byte_fallback)}): use a larger corpus"


def _trains(texts, vocab_size: int, max_lines: int, byte_fallback: bool) -> bool:
    if vocab_size < min_vocab_size(byte_fallback):
        return False
    try:
        _train_bpe(texts, vocab_size, max_lines, byte_fallback)
    except RuntimeError:
        return False
    return True


def train_tokenizer_folder(path: Path, corpus: Corpus, vocab_size: int, force: bool = False) -> dict:
    """A tokenizer folder at `path`, written atomically: BPE trained on the corpus's train split and its unigram
    table (for L_u). Returns its path, V, the train tokens and the validation tokens per character."""
    with atomic.folder(path, force=force) as tmp:
        tok = train_tokenizer(corpus.train, vocab_size, tmp / TOKENIZER_FILE)
        stream = encode_docs(tok, corpus.train)
        save_unigram(tmp, unigram_probs(stream, tok.vocab_size))
        val_chars = sum(len(t) for t in corpus.val)
        val_tokens = len(encode_docs(tok, corpus.val))
    return {
        "path": str(path),
        "vocab_size": tok.vocab_size,
        "train_tokens": int(len(stream)),
        "val_tokens_per_char": val_tokens / max(1, val_chars),
    }


def unigram_probs(tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    """p(w | V): token frequencies in the tokenized corpus; ids never seen count 1 (as the paper's code does)."""
    counts = np.bincount(np.asarray(tokens, dtype=np.int64), minlength=vocab_size).astype(np.float64)
    counts[counts == 0] = 1.0
    return counts / counts.sum()


def save_unigram(folder: Path, probs: np.ndarray) -> None:
    from safetensors.numpy import save_file

    atomic.write_file(Path(folder) / UNIGRAM_FILE, lambda tmp: save_file({"probs": probs.astype(np.float64)}, str(tmp)))


def load_unigram(folder: Path) -> np.ndarray | None:
    path = Path(folder) / UNIGRAM_FILE
    if not path.exists():
        return None
    from safetensors.numpy import load_file

    return load_file(str(path))["probs"]


def load_tokenizer(folder: Path):
    """The tokenizer stored in a model folder: SentencePiece (`tokenizer.model`, ours) or Hugging Face
    (`tokenizer.json`, converted models; see `data.hf_tokenizer`), which wins in a folder that has both and a
    `tokenizer_config.json` (Llama-2/Mistral checkpoints and GGUFs: mlx-lm reads tokenizer.json, whose post-processor
    adds the BOS the model was trained with). None when the folder has neither."""
    folder = Path(folder)
    hf_folder = (folder / "tokenizer.json").exists() and (folder / "tokenizer_config.json").exists()
    if (folder / TOKENIZER_FILE).exists() and not hf_folder:
        return Tokenizer(folder / TOKENIZER_FILE)
    if (folder / "tokenizer.json").exists():  # a Hugging Face / mlx-lm folder: as mlx-lm reads it (e.g. its BOS)
        return HFTokenizer(folder)
    return None
