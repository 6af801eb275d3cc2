"""MoMa data (early fusion): the unified vocabulary, mixed-modal rows, and a run's text tokenizer and image codebook.

One vocabulary: text BPE ids [0, V_t), image codes [V_t, V_t + K), then BOI and EOI. A training row of seq_len + 1
tokens holds a fixed number of image documents, each either caption→image `[BOS] caption [BOI] codes [EOI] [EOS]` or
image→caption `[BOS] [BOI] codes [EOI] caption [EOS]` (50/50), followed by text-only filler from the text corpus. The
number of image tokens per row is therefore constant, so every batch has the same text/image token counts (static
expert capacities, one compiled step; MoMa's "balanced data mix"), and the batch carries the image positions (B, n)
as the per-token modality index (§3.3: modality indices from the host).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlxsuite import store
from mlxsuite.data import corpus as data
from mlxsuite.data.tokenizer import Tokenizer, train_tokenizer
from mlxsuite.moma.images import ImageSet, ImageTokenizer, load_images
from mlxsuite.moma.spec import Layout, MomaRunSpec
from mlxsuite.platform import atomic
from mlxsuite.platform.errors import UserError

ASSETS = ("tokenizer.model", "codebook.safetensors")


class MixedData:
    """Rows of interleaved caption/image documents plus text filler, with the image positions of each row."""

    def __init__(
        self,
        layout: Layout,
        codes: np.ndarray,
        captions: list[list[list[int]]],
        text: np.ndarray,
        seq_len: int,
        images_per_row: int = 0,
    ):
        self.layout, self.codes, self.captions, self.text = layout, codes, captions, text
        self.seq_len = seq_len
        self.P = codes.shape[1]
        max_cap = max(len(c) for caps in captions for c in caps)
        doc_max = 4 + self.P + max_cap
        if images_per_row <= 0:
            images_per_row = seq_len // doc_max
        if images_per_row < 1 or images_per_row * doc_max > seq_len:
            raise UserError(
                f"seq-len {seq_len} is too short for {max(images_per_row, 1)} image document(s) of up to "
                f"{doc_max} tokens per row"
            )
        if len(text) < seq_len + 2:
            raise UserError(f"the text corpus gave only {len(text)} tokens, fewer than one row of {seq_len + 1}")
        self.images_per_row = images_per_row

    @property
    def image_tokens_per_row(self) -> int:
        return self.images_per_row * self.P

    @property
    def image_fraction(self) -> float:
        return self.image_tokens_per_row / self.seq_len

    def rows(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        L = self.layout
        T1 = self.seq_len + 1
        toks = np.empty((n, T1), np.int32)
        pos = np.empty((n, self.image_tokens_per_row), np.int32)
        for r in range(n):
            seq: list[int] = []
            ipos: list[int] = []
            for _ in range(self.images_per_row):
                i = int(rng.integers(len(self.codes)))
                caps = self.captions[i]
                cap = caps[int(rng.integers(len(caps)))]
                img = [L.boi] + (self.codes[i] + L.image_start).tolist() + [L.eoi]
                if rng.random() < 0.5:  # caption → image
                    start = len(seq) + 1 + len(cap) + 1
                    seq += [L.bos] + cap + img + [L.eos]
                else:  # image → caption
                    start = len(seq) + 2
                    seq += [L.bos] + img + cap + [L.eos]
                ipos.extend(range(start, start + self.P))
            fill = T1 - len(seq)
            off = int(rng.integers(len(self.text) - fill))
            seq += self.text[off : off + fill].tolist()
            toks[r] = seq
            pos[r] = ipos
        return toks, pos


class MixedBatches:
    """batches(step) for the trainer: a pure function of (seed, step); rank r takes rows r::size."""

    def __init__(self, mixed: MixedData, batch_size: int, seed: int, rank: int = 0, size: int = 1, offset: int = 0):
        self.mixed, self.batch_size, self.seed = mixed, batch_size, seed
        self.rank, self.size, self.offset = rank, size, offset

    def __call__(self, step: int):
        rng = np.random.default_rng([self.seed, step + self.offset])
        toks, pos = self.mixed.rows(rng, self.batch_size)
        return toks[self.rank :: self.size], pos[self.rank :: self.size]


def val_batches(mixed: MixedData, batch_size: int, n: int, seed: int = 12345) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [mixed.rows(rng, batch_size) for _ in range(n)]


def load_sources(spec: MomaRunSpec) -> tuple[ImageSet, data.Corpus]:
    return load_images(spec.images, spec.captions, spec.image_size), data.load_corpus(spec.corpus)


def prepare_assets(spec: MomaRunSpec, folder: Path, imageset: ImageSet, corpus: data.Corpus) -> None:
    """Write the run's text tokenizer and image codebook into `folder`: copied from `spec.assets`, else trained
    (the tokenizer on the text corpus with the captions mixed in, the codebook on the training images)."""
    folder.mkdir(parents=True, exist_ok=True)
    if spec.assets:
        src = store.resolve(spec.assets) if not Path(spec.assets).is_dir() else Path(spec.assets)
        for name in ASSETS:
            if not (src / name).exists():
                raise UserError(f"{src} has no {name} to reuse")
            if not (folder / name).exists():
                atomic.copy_file(src / name, folder / name)
    if not (folder / "tokenizer.model").exists():
        # captions make about a tenth of the sampled lines, so their words become pieces
        uniq = sorted({c for cs in imageset.captions for c in cs})
        caps = "\n".join(uniq)
        corpus_lines = sum(t.count("\n") + 1 for t in corpus.train)
        texts = [caps] * max(1, corpus_lines // (10 * len(uniq))) + corpus.train
        train_tokenizer(texts, spec.text_vocab, folder / "tokenizer.model", max_lines=20_000)
    if not (folder / "codebook.safetensors").exists():
        train_imgs, _ = imageset.split("train")
        ImageTokenizer.train(train_imgs, spec.codebook_size, spec.patch, seed=spec.seed).save(folder)


def load_assets(folder: Path) -> tuple[Tokenizer, ImageTokenizer]:
    return Tokenizer(folder / ASSETS[0]), ImageTokenizer.load(folder)


def layout_of(tok: Tokenizer, imtok: ImageTokenizer) -> Layout:
    return Layout(tok.vocab_size, imtok.num_codes, tok.bos_id, tok.eos_id)


def shift_augment(images: np.ndarray, captions: list) -> tuple[np.ndarray, list]:
    """Each training image also shifted by one pixel in the 8 directions (zero fill): 9× the images, same captions.
    Digits are few (1,618 training images); without this a few hundred steps already overfit them."""
    n, S, _ = images.shape
    pad = np.pad(images, ((0, 0), (1, 1), (1, 1)))
    out = [pad[:, 1 + dy : 1 + dy + S, 1 + dx : 1 + dx + S] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    return np.concatenate(out), captions * 9


def build_data(spec: MomaRunSpec, tok: Tokenizer, imtok: ImageTokenizer, imageset: ImageSet, corpus: data.Corpus):
    layout = layout_of(tok, imtok)
    out = {}
    text_budget = {"train": spec.text_tokens, "val": max(spec.seq_len * 8, spec.text_tokens // 20)}
    for part in ("train", "val"):
        imgs, caps = imageset.split(part)
        if len(imgs) == 0:
            imgs, caps = imageset.split("train")
        if part == "train" and spec.augment:
            imgs, caps = shift_augment(imgs, caps)
        uniq = sorted({c for cs in caps for c in cs})
        enc = dict(zip(uniq, tok.encode_batch(uniq)))
        text = data.token_stream(tok, corpus, part, max_tokens=text_budget[part])
        if len(text) < spec.seq_len + 2:
            text = data.token_stream(tok, corpus, "train", max_tokens=text_budget[part])
        out[part] = MixedData(
            layout, imtok.encode(imgs), [[enc[c] for c in cs] for cs in caps], text, spec.seq_len, spec.images_per_row
        )
    return layout, out["train"], out["val"]
