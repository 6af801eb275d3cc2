"""Corpora, token streams and packed batches.

The default corpus is the running interpreter's Python standard library (~1,800 `.py` files, ~31 MB): on every
machine, no download. Files are split into train/validation by a hash of their relative path, so the split is the
same everywhere. User corpora: a text file, a folder of text files, or JSONL with a `text` field.
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mlxsuite.platform import atomic, cache_dir
from mlxsuite.platform.errors import UserError

VAL_PERCENT = 3  # documents whose path hash falls below this percentage go to validation
CHUNK_CHARS = 1 << 16  # a single user text file is cut into documents of about this many characters


@dataclass
class Corpus:
    name: str
    train: list[str]
    val: list[str]
    fingerprint: str = field(default="")


def _is_val(key: str) -> bool:
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % 100 < VAL_PERCENT


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    if b"\x00" in raw[:8192]:
        raise UserError(f"{path} looks binary (NUL bytes): give a UTF-8 text file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text") from None


def _split(docs: list[tuple[str, str]], name: str) -> Corpus:
    docs = [(k, t) for k, t in docs if t.strip()]
    if not docs:
        raise UserError(f"corpus {name} is empty: no non-blank text found")
    train = [t for k, t in docs if not _is_val(k)]
    val = [t for k, t in docs if _is_val(k)]
    if not val:  # tiny corpora: hold out the last document
        val = [train.pop()] if len(train) > 1 else [train[0][-len(train[0]) // 10 :]]
    fp = hashlib.sha1()
    for k, t in docs:
        fp.update(k.encode())
        fp.update(str(len(t)).encode())
    return Corpus(name, train, val, fp.hexdigest()[:16])


def stdlib_files() -> tuple[Path, list[Path]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and "dist-packages" not in p.parts)
    return root, files


def stdlib_corpus() -> Corpus:
    root, files = stdlib_files()
    docs = []
    for p in files:
        try:
            docs.append((str(p.relative_to(root)), p.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError):
            continue  # a handful of stdlib test files are deliberately not UTF-8
    return _split(docs, "stdlib")


def _chunks(text: str, key: str) -> list[tuple[str, str]]:
    out, start = [], 0
    while start < len(text):
        end = text.find("\n", start + CHUNK_CHARS)
        end = len(text) if end < 0 else end + 1
        out.append((f"{key}#{len(out)}", text[start:end]))
        start = end
    return out


def load_corpus(spec: str | None = None) -> Corpus:
    """`None` or "stdlib": the embedded corpus; else a .txt file, a folder of text files, or a .jsonl file."""
    if spec in (None, "", "stdlib"):
        return stdlib_corpus()
    path = Path(spec).expanduser()
    if not path.exists():
        raise UserError(f"corpus not found: {spec}")
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        if not files:
            raise UserError(f"corpus folder {spec} has no files")
        return _split([(str(p.relative_to(path)), _read_text(p)) for p in files], str(path.resolve()))
    if path.suffix == ".jsonl":
        docs = []
        for i, line in enumerate(_read_text(path).splitlines()):
            if not line.strip():
                continue
            try:
                text = json.loads(line)["text"]
            except (ValueError, KeyError, TypeError):
                raise UserError(f"{spec} line {i + 1}: expected a JSON object with a 'text' field") from None
            if not isinstance(text, str):
                raise UserError(f"{spec} line {i + 1}: 'text' must be a string")
            docs.append((f"{i}", text))
        return _split(docs, str(path.resolve()))
    return _split(_chunks(_read_text(path), path.name), str(path.resolve()))


# ---- token streams ----------------------------------------------------------------------------------------------


def _cache_dir() -> Path:
    return cache_dir() / "tokens"


def encode_docs(tokenizer, docs: list[str], max_tokens: int | None = None, progress=None) -> np.ndarray:
    """Documents encoded and joined with EOS after each, as int32; stops once `max_tokens` are reached.
    `progress(documents done, documents)` follows the work."""
    out, n = [], 0
    batch = 64
    for i in range(0, len(docs), batch):
        for ids in tokenizer.encode_batch(docs[i : i + batch]):
            out.append(np.asarray(ids + [tokenizer.eos_id], dtype=np.int32))
            n += len(ids) + 1
        if progress is not None:
            progress(min(i + batch, len(docs)), len(docs))
        if max_tokens is not None and n >= max_tokens:
            break
    stream = np.concatenate(out) if out else np.zeros(0, np.int32)
    return stream[:max_tokens] if max_tokens is not None else stream


CACHE_LIMIT_BYTES = 1 << 30  # token streams kept on disk; the least recently used go first


def token_stream(tokenizer, corpus: Corpus, split: str, max_tokens: int | None = None, progress=None) -> np.ndarray:
    """The split's token stream, cached on disk per (tokenizer content, corpus, split, limit), at most
    CACHE_LIMIT_BYTES of them."""
    docs = corpus.train if split == "train" else corpus.val
    tok_hash = hashlib.sha1(tokenizer.path.read_bytes()).hexdigest()[:16]
    path = _cache_dir() / f"{corpus.fingerprint}-{tok_hash}-{split}-{max_tokens or 'all'}.npy"
    if corpus.fingerprint and path.exists():
        try:
            stream = np.load(path, allow_pickle=False)
            path.touch()  # recently used
            return stream
        except (OSError, ValueError):
            pass
    stream = encode_docs(tokenizer, docs, max_tokens, progress)
    if corpus.fingerprint:
        try:
            atomic.write_file(path, lambda tmp: np.save(tmp, stream))
            prune_cache(path.parent, CACHE_LIMIT_BYTES, keep=path)
        except OSError:
            pass
    return stream


def prune_cache(folder: Path, limit: int, keep: Path | None = None) -> list[Path]:
    """Delete the least recently used `.npy` files of `folder` until the rest fit in `limit` bytes."""
    entries = []
    for p in Path(folder).glob("*.npy"):
        try:
            st = p.stat()
        except OSError:
            continue
        entries.append((st.st_mtime, st.st_size, p))
    total = sum(size for _, size, _ in entries)
    removed = []
    for _, size, p in sorted(entries, key=lambda e: e[0]):
        if total <= limit:
            break
        if p == keep:
            continue
        p.unlink(missing_ok=True)
        total -= size
        removed.append(p)
    return removed


def chars_in(corpus: Corpus, split: str, tokenizer, stream_len: int) -> int:
    """Characters behind the first `stream_len` tokens of a split (for bits per character)."""
    docs = corpus.train if split == "train" else corpus.val
    chars, toks = 0, 0
    for text, ids in zip(docs, tokenizer.encode_batch(docs)):
        if toks + len(ids) + 1 > stream_len:
            frac = (stream_len - toks) / (len(ids) + 1)
            return chars + int(round(frac * len(text)))
        chars += len(text) + 1
        toks += len(ids) + 1
    return chars


class Batches:
    """Packed, shuffled windows of `seq_len + 1` tokens over a token stream.

    The batch for a step is a pure function of (seed, step), so a resumed run sees exactly the data it would have
    seen, and the data position in a checkpoint is just the step. Under data parallelism rank r takes rows r::size
    of the global batch."""

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, seed: int = 0, rank: int = 0, size: int = 1):
        self.tokens, self.seq_len, self.batch_size = tokens, seq_len, batch_size
        self.seed, self.rank, self.size = seed, rank, size
        self.n_windows = (len(tokens) - 1) // seq_len
        if self.n_windows < batch_size:
            raise UserError(
                f"not enough training data: {len(tokens)} tokens make {self.n_windows} windows of {seq_len}, "
                f"fewer than the batch size {batch_size}"
            )
        if batch_size % size:
            raise UserError(f"batch size {batch_size} does not divide over {size} processes")
        self._perm_epoch, self._perm = -1, None

    @property
    def steps_per_epoch(self) -> int:
        return self.n_windows // self.batch_size

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n_windows)
            self._perm_epoch = epoch
        return self._perm

    def __call__(self, step: int) -> np.ndarray:
        epoch, i = divmod(step, self.steps_per_epoch)
        rows = self._permutation(epoch)[i * self.batch_size : (i + 1) * self.batch_size][self.rank :: self.size]
        idx = rows[:, None] * self.seq_len + np.arange(self.seq_len + 1)[None]
        return self.tokens[idx]


def eval_windows(tokens: np.ndarray, seq_len: int, max_windows: int | None = None) -> np.ndarray:
    """Consecutive non-overlapping windows of seq_len + 1 tokens for validation."""
    n = (len(tokens) - 1) // seq_len
    if max_windows is not None:
        n = min(n, max_windows)
    idx = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)[None]
    return tokens[idx]
