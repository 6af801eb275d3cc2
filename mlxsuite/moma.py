"""MoMa experiments: mixed-modal sequences, the training recipe, auxiliary-router training, the η comparison and
generation.

Data (early fusion). One vocabulary: text BPE ids [0, V_t), image codes [V_t, V_t + K), then BOI and EOI. A training
row of seq_len + 1 tokens holds a fixed number of image documents, each either caption→image
`[BOS] caption [BOI] codes [EOI] [EOS]` or image→caption `[BOS] [BOI] codes [EOI] caption [EOS]` (50/50), followed by
text-only filler from the text corpus. The number of image tokens per row is therefore constant, so every batch has
the same text/image token counts (static expert capacities, one compiled step; MoMa's "balanced data mix"), and the
batch carries the image positions (B, n) as the per-token modality index (§3.3: modality indices from the host).

A run is a model folder: config.json (model args + an "mlxsuite" block), tokenizer.model, codebook.safetensors,
run/ (spec, checkpoint, metrics), routers/ (router-training run), model.safetensors when training ends.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from . import data, store, trainer
from .errors import UserError
from .plots import pyplot
from .images import ImageSet, ImageTokenizer, load_images, read_image
from .models import lm
from .models import moma as mm
from .tokenizer import Tokenizer, train_tokenizer

VARIANT_RE = re.compile(r"^(dense|moe(\d+)x|moma(\d+)t(\d+)i)(\+mod)?$")
DEFAULT_VARIANTS = "dense,moe8x,moma4t4i,moma4t4i+mod"


# ---- variants and FLOPs matching ----------------------------------------------------------------------------------


def parse_variant(name: str, mod: bool = False) -> dict:
    """"dense" | "moe{E}x" | "moma{T}t{I}i", optionally "+mod" → ModelArgs fields."""
    m = VARIANT_RE.match(name.strip().lower())
    if not m:
        raise UserError(f"unknown variant {name!r}: use dense, moe8x (moe<E>x), moma4t4i (moma<T>t<I>i), with an "
                        "optional +mod")
    out: dict = {"mod": bool(m.group(5)) or mod}
    if m.group(1) == "dense":
        out["ffn"] = "dense"
    elif m.group(2):
        out.update(ffn="moe", num_experts=int(m.group(2)))
    else:
        out.update(ffn="moma", text_experts=int(m.group(3)), image_experts=int(m.group(4)))
    for k in ("num_experts", "text_experts", "image_experts"):
        if k in out and out[k] < 1:
            raise UserError(f"variant {name!r}: expert groups need at least one expert")
    return out


def variant_name(fields: dict) -> str:
    base = {"dense": "dense", "moe": f"moe{fields.get('num_experts')}x",
            "moma": f"moma{fields.get('text_experts')}t{fields.get('image_experts')}i"}[fields["ffn"]]
    return base + ("+mod" if fields.get("mod") else "")


def model_args(spec: "MomaRunSpec", layout: "Layout") -> mm.ModelArgs:
    """The variant at FLOPs matched to the dense model of the preset (Table 1): experts are full-size FFNs at
    capacity 1/E per group; MoD models get more layers (alternating from layer 0, c_d = 0.25)."""
    base = dict(lm.PRESETS[spec.preset])
    base.update(spec.model_overrides)
    fields = parse_variant(spec.variant, spec.mod)
    if fields["mod"]:
        base["num_hidden_layers"] = mm.mod_matched_layers(base["num_hidden_layers"], 0.25)
    base.update(fields)
    base.update(vocab_size=layout.size, image_start=layout.image_start, image_end=layout.image_end,
                router_noise=bool(spec.upcycle_from), tie_word_embeddings=True)
    return mm.ModelArgs.from_dict(base)


def flops_table(spec: "MomaRunSpec", layout: "Layout", variants: list[str], image_fraction: float) -> list[dict]:
    """FLOPs per token of each variant against dense (the FLOPs accounting of ModelArgs.flops_per_token)."""
    rows = []
    dense = None
    for v in ["dense"] + [v for v in variants if v != "dense"]:
        args = model_args(MomaRunSpec(**{**asdict(spec), "variant": v, "mod": False, "train": spec.train}), layout)
        f = args.flops_per_token(spec.seq_len, image_fraction)["total"]
        dense = dense or f
        rows.append({"variant": v, "layers": args.num_hidden_layers, "flops_per_token": f, "ratio_to_dense": f / dense,
                     "params": args.n_params_total})
    return rows


# ---- vocabulary and data ------------------------------------------------------------------------------------------


@dataclass
class Layout:
    """The unified vocabulary: text ids [0, text_size), image codes, then BOI, EOI."""

    text_size: int
    num_codes: int
    bos: int
    eos: int

    @property
    def image_start(self) -> int:
        return self.text_size

    @property
    def image_end(self) -> int:
        return self.text_size + self.num_codes

    @property
    def boi(self) -> int:
        return self.image_end

    @property
    def eoi(self) -> int:
        return self.image_end + 1

    @property
    def size(self) -> int:
        return self.image_end + 2

    def is_image(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids)
        return (ids >= self.image_start) & (ids < self.image_end)


class MixedData:
    """Rows of interleaved caption/image documents plus text filler, with the image positions of each row."""

    def __init__(self, layout: Layout, codes: np.ndarray, captions: list[list[list[int]]], text: np.ndarray,
                 seq_len: int, images_per_row: int = 0):
        self.layout, self.codes, self.captions, self.text = layout, codes, captions, text
        self.seq_len = seq_len
        self.P = codes.shape[1]
        max_cap = max(len(c) for caps in captions for c in caps)
        doc_max = 4 + self.P + max_cap
        if images_per_row <= 0:
            images_per_row = seq_len // doc_max
        if images_per_row < 1 or images_per_row * doc_max > seq_len:
            raise UserError(f"seq-len {seq_len} is too short for {max(images_per_row, 1)} image document(s) of up to "
                            f"{doc_max} tokens per row")
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


# ---- run spec -----------------------------------------------------------------------------------------------------


@dataclass
class MomaRunSpec:
    out: str
    variant: str = "moma4t4i"
    mod: bool = False
    upcycle_from: Optional[str] = None  # a trained moma1t1i run: copy its FFNs into every expert of the group
    preset: str = "tiny"
    model_overrides: dict = field(default_factory=dict)
    images: Optional[str] = None  # folder of PNG/JPEG; None: scikit-learn digits
    captions: Optional[str] = None  # JSONL {"file", "caption"}; default FOLDER/captions.jsonl
    image_size: int = 8
    patch: int = 2
    codebook_size: int = 64
    corpus: Optional[str] = None  # text-only data; None: the embedded stdlib corpus
    text_tokens: int = 300_000  # text budget: tokens of the corpus used for filler
    text_vocab: int = 512
    assets: Optional[str] = None  # copy tokenizer.model and codebook.safetensors from this folder
    seq_len: int = 128
    batch_size: int = 16
    images_per_row: int = 0  # 0: as many as fit
    augment: bool = True  # one-pixel shifts of the training images
    seed: int = 0
    eval_batches: int = 2
    data_offset: int = 0  # upcycling keeps the data position of the seed run
    router_steps: int = 200
    router_lr: float = 1e-2
    train: trainer.TrainConfig = field(default_factory=trainer.TrainConfig)

    @classmethod
    def from_dict(cls, d: dict) -> "MomaRunSpec":
        d = dict(d)
        d["train"] = trainer.TrainConfig.from_dict(d.get("train", {}))
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def validate(self) -> None:
        parse_variant(self.variant, self.mod)
        if self.preset not in lm.PRESETS:
            raise UserError(f"unknown preset {self.preset!r}: choose one of {', '.join(lm.PRESETS)}")
        for name in ("seq_len", "batch_size", "codebook_size", "patch", "image_size", "text_tokens", "eval_batches",
                     "router_steps"):
            if getattr(self, name) <= 0:
                raise UserError(f"{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        if self.image_size % self.patch:
            raise UserError(f"patch size {self.patch} does not divide the image size {self.image_size}")
        self.train.validate()


def check_divisible(args: mm.ModelArgs, rows: int, seq_len: int, image_tokens_per_row: int) -> None:
    """Expert-choice capacities must be whole: each group's tokens per (micro-)batch divide by its expert count."""
    N = rows * seq_len
    n_img = rows * image_tokens_per_row
    checks = []
    if args.ffn == "moe":
        checks.append(("the batch", N, args.num_experts))
    elif args.ffn == "moma":
        checks += [("the text group", N - n_img, args.text_experts), ("the image group", n_img, args.image_experts)]
    if args.mod:
        checks.append(("mixture-of-depths (capacity 1/4)", N, 4))
    for what, n, e in checks:
        if n % e:
            raise UserError(f"{what} sees {n} tokens per micro-batch, which does not divide into {e} experts: "
                            "change --batch-size, --seq-len or the variant")


# ---- assets (text tokenizer, image codebook) ----------------------------------------------------------------------


def prepare_assets(
    spec: MomaRunSpec, folder: Path, imageset: ImageSet, corpus: data.Corpus
) -> tuple[Tokenizer, ImageTokenizer]:
    folder.mkdir(parents=True, exist_ok=True)
    if spec.assets:
        src = store.resolve(spec.assets) if not Path(spec.assets).is_dir() else Path(spec.assets)
        for name in ("tokenizer.model", "codebook.safetensors"):
            if not (src / name).exists():
                raise UserError(f"{src} has no {name} to reuse")
            if not (folder / name).exists():
                shutil.copy(src / name, folder / name)
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
    return Tokenizer(folder / "tokenizer.model"), ImageTokenizer.load(folder)


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
        out[part] = MixedData(layout, imtok.encode(imgs), [[enc[c] for c in cs] for cs in caps], text, spec.seq_len,
                              spec.images_per_row)
    return layout, out["train"], out["val"]


# ---- losses and evaluation ----------------------------------------------------------------------------------------


def per_modality_ce(logits: mx.array, targets: mx.array, image_start: int, image_end: int):
    """Mean CE overall, over text targets and over image targets (by the target token's modality)."""
    ce = nn.losses.cross_entropy(logits, targets, reduction="none")
    img = ((targets >= image_start) & (targets < image_end)).astype(ce.dtype)
    n_img = img.sum()
    n_txt = img.size - n_img
    return ce.mean(), (ce * (1 - img)).sum() / mx.maximum(n_txt, 1), (ce * img).sum() / mx.maximum(n_img, 1)


def make_loss(mode: str = "train") -> Callable:
    def loss_fn(model, batch):
        tokens, img_pos = batch
        logits = model(tokens[:, :-1], n_image=img_pos.size, mode=mode)
        loss, lt, li = per_modality_ce(logits, tokens[:, 1:], model.args.image_start, model.args.image_end)
        return loss, {"loss_text": lt, "loss_image": li}

    return loss_fn


def router_loss(model, batch):
    """Stage 2: BCE of every auxiliary router against the batch-level selections (main model frozen)."""
    tokens, img_pos = batch
    collect: list = []
    model(tokens[:, :-1], n_image=img_pos.size, mode="train", collect=collect)
    losses, correct, count = [], 0.0, 0.0
    for logits, target, valid in collect:
        v = valid.astype(logits.dtype)[:, None]
        bce = nn.losses.binary_cross_entropy(logits, target, with_logits=True, reduction="none")
        n = mx.maximum(v.sum() * logits.shape[1], 1)
        losses.append((bce * v).sum() / n)
        correct = correct + (((logits > 0) == (target > 0.5)) * v).sum()
        count = count + v.sum() * logits.shape[1]
    return sum(losses) / len(losses), {"router_acc": correct / mx.maximum(count, 1)}


def evaluate(model, batches: list, mode: str = "train") -> dict:
    """Per-modality validation losses; mode "train" is batch-level expert choice (the paper's non-causal training
    loss), "infer" the causal path through the auxiliary routers."""
    was_training = model.training
    model.eval()
    sums = np.zeros(3)
    loss_fn = make_loss(mode)
    for toks, pos in batches:
        loss, aux = loss_fn(model, (mx.array(toks), mx.array(pos)))
        mx.eval(loss, aux)
        sums += [loss.item(), aux["loss_text"].item(), aux["loss_image"].item()]
    model.train(was_training)
    sums /= max(1, len(batches))
    return {"loss": float(sums[0]), "loss_text": float(sums[1]), "loss_image": float(sums[2])}


def router_accuracy(model, batches: list) -> dict:
    """Auxiliary-router accuracy against the batch-level selections on validation batches, overall and per router."""
    per: list[list[float]] = []
    for toks, pos in batches:
        collect: list = []
        model(mx.array(toks[:, :-1]), n_image=pos.size, mode="train", collect=collect)
        accs = []
        for logits, target, valid in collect:
            v = valid.astype(mx.float32)[:, None]
            ok = (((logits > 0) == (target > 0.5)) * v).sum() / mx.maximum(v.sum() * logits.shape[1], 1)
            accs.append(ok.item())
        per.append(accs)
    if not per or not per[0]:
        return {}
    mean = np.mean(np.array(per), axis=0)
    return {"router_acc": float(mean.mean()), "router_acc_per_router": [round(float(a), 4) for a in mean]}


# ---- training -----------------------------------------------------------------------------------------------------


def _load_sources(spec: MomaRunSpec):
    imageset = load_images(spec.images, spec.captions, spec.image_size)
    corpus = data.load_corpus(spec.corpus)
    return imageset, corpus


def train_moma(
    spec: MomaRunSpec, resume: bool = False, force: bool = False, callback: Optional[Callable] = None
) -> dict:
    """Train (or resume) a MoMa run; returns final metrics (train and val per modality) and the folder."""
    callback = callback or (lambda event, info: None)
    folder = store.output_path(spec.out)
    run_dir = folder / "run"
    spec_file = run_dir / "spec.json"
    if resume and spec_file.exists():
        spec = MomaRunSpec.from_dict(json.loads(spec_file.read_text()))
    elif resume and not folder.exists():
        resume = False  # nothing to resume: a fresh run
    elif folder.exists():
        if resume:
            raise UserError(f"nothing to resume: {folder} has no run")
        if not force:
            raise UserError(f"{folder} exists: pass --resume to continue its run or --force to start over")
        shutil.rmtree(folder)
    spec.validate()
    mx.random.seed(spec.seed)
    source = None
    if spec.upcycle_from:
        source, src_spec, _ = load_run(spec.upcycle_from)
        if source.args.ffn != "moma" or source.args.groups != [1, 1]:
            raise UserError(f"--upcycle-from needs a moma1t1i run, {spec.upcycle_from} is {src_spec.variant}")
        if parse_variant(spec.variant, spec.mod)["ffn"] != "moma":
            raise UserError("upcycling makes a moma<T>t<I>i model: choose such a --variant")
        spec.assets = str(store.resolve(spec.upcycle_from))
        if not resume:
            spec.data_offset = src_spec.train.steps + src_spec.data_offset

    imageset, corpus = _load_sources(spec)
    run_dir.mkdir(parents=True, exist_ok=True)
    store.write_json(spec_file, asdict(spec))
    tok, imtok = prepare_assets(spec, folder, imageset, corpus)
    layout, train_data, val_data = build_data(spec, tok, imtok, imageset, corpus)
    args = model_args(spec, layout)
    micro_rows = spec.batch_size // spec.train.grad_accum
    if spec.batch_size % spec.train.grad_accum:
        raise UserError(f"batch size {spec.batch_size} does not split into {spec.train.grad_accum} accumulation steps")
    check_divisible(args, micro_rows, spec.seq_len, train_data.image_tokens_per_row)
    model = mm.build(args, seed=spec.seed)
    if source is not None:
        if source.args.hidden_size != args.hidden_size or source.args.num_hidden_layers != args.num_hidden_layers \
                or source.args.vocab_size != args.vocab_size:
            raise UserError(f"{spec.upcycle_from} has other dimensions than this run: use the same preset")
        mm.upcycle(model, source)
    fpt = args.flops_per_token(spec.seq_len, train_data.image_fraction)["total"]
    tokens_per_step = spec.batch_size * spec.seq_len
    info = {"variant": variant_name(parse_variant(spec.variant, spec.mod)), "layers": args.num_hidden_layers,
            "params": args.n_params_total, "flops_per_token": fpt, "vocab": layout.size, "text_vocab": layout.text_size,
            "image_codes": layout.num_codes, "images_per_row": train_data.images_per_row,
            "image_fraction": train_data.image_fraction}
    callback("model", info)
    config = {**args.to_dict(), "mlxsuite": {"format": 1, "kind": "moma", **info, "tokens_per_step": tokens_per_step,
                                             "routers_trained": args.ffn == "dense" and not args.mod,
                                             "image_size": imtok.size, "patch": imtok.patch}}
    store.write_json(folder / "config.json", config)

    vb = val_batches(val_data, micro_rows, spec.eval_batches)
    batches = MixedBatches(train_data, spec.batch_size, spec.seed, offset=spec.data_offset)
    metrics = trainer.train(model, make_loss("train"), batches, spec.train, run_dir,
                            evaluate=lambda m: evaluate(m, vb, "train"), callback=callback, resume=resume,
                            tokens_per_row=spec.seq_len)
    write_weights(folder, model)
    config["mlxsuite"]["final"] = metrics
    store.write_json(folder / "config.json", config)
    return {**metrics, "folder": str(folder), **info}


def write_weights(folder: Path, model) -> None:
    import os

    tmp = folder / f".model.tmp{os.getpid()}.safetensors"
    mx.save_safetensors(str(tmp), dict(tree_flatten(model.parameters())), metadata={"format": "mlx"})
    os.replace(tmp, folder / store.WEIGHTS_FILE)


def load_run(name: str) -> tuple[mm.Model, MomaRunSpec, Path]:
    folder = store.resolve(name)
    config = store.read_config(folder)
    if config.get("mlxsuite", {}).get("kind") != "moma":
        raise UserError(f"{folder} is not a MoMa run")
    spec_file = folder / "run" / "spec.json"
    spec = MomaRunSpec.from_dict(json.loads(spec_file.read_text())) if spec_file.exists() else MomaRunSpec(out=name)
    args = mm.ModelArgs.from_dict(config)
    model = mm.Model(args)
    try:
        model.load_weights(str(folder / store.WEIGHTS_FILE), strict=True)
    except (ValueError, FileNotFoundError) as e:
        raise UserError(f"cannot load {folder}: {e}") from None
    model.freeze_aux()
    mx.eval(model.parameters())
    return model, spec, folder


def _run_data(spec: MomaRunSpec, folder: Path):
    imageset, corpus = _load_sources(spec)
    tok, imtok = Tokenizer(folder / "tokenizer.model"), ImageTokenizer.load(folder)
    layout, train_data, val_data = build_data(spec, tok, imtok, imageset, corpus)
    return tok, imtok, layout, train_data, val_data


def train_routers(name: str, steps: Optional[int] = None, callback: Optional[Callable] = None,
                  resume: bool = False) -> dict:
    """Stage 2 (§2.4): train the auxiliary routers with BCE against the batch-level selections, the main model
    frozen; then report router accuracy and the causal (inference-mode) validation losses next to the EC ones."""
    callback = callback or (lambda event, info: None)
    model, spec, folder = load_run(name)
    tok, imtok, layout, train_data, val_data = _run_data(spec, folder)
    micro_rows = spec.batch_size // spec.train.grad_accum
    vb = val_batches(val_data, micro_rows, spec.eval_batches)
    config = store.read_config(folder)
    result: dict = {"folder": str(folder)}
    if model.aux_modules():
        model.only_aux_trainable()
        cfg = trainer.TrainConfig(steps=steps or spec.router_steps, lr=spec.router_lr, warmup=5, weight_decay=0.0,
                                  save_every=max(10, (steps or spec.router_steps)), eval_every=10**9,
                                  log_every=10, compile=spec.train.compile)
        batches = MixedBatches(train_data, spec.batch_size, spec.seed + 1)
        trainer.train(model, router_loss, batches, cfg, folder / "routers", callback=callback, resume=resume,
                      tokens_per_row=spec.seq_len)
        model.freeze()
        result.update(router_accuracy(model, vb))
        model.freeze_aux()
        write_weights(folder, model)
    result["val_ec"] = evaluate(model, vb, "train")
    result["val_causal"] = evaluate(model, vb, "infer")
    config["mlxsuite"]["routers_trained"] = True
    config["mlxsuite"]["routers"] = {k: v for k, v in result.items() if k != "folder"}
    store.write_json(folder / "config.json", config)
    return result


# ---- comparison and η ---------------------------------------------------------------------------------------------

SMOOTH_WIDTH = 0.3  # half-width of the smoothing window, as a fraction of a run's log-FLOPs range


def eta(dense_final: float, flops: list[float], losses: list[float], dense_total: float) -> Optional[float]:
    """Speed-up factor η = F_dense / t*, t* = FLOPs at which the loss curve first reaches dense's final loss
    (linear interpolation in log FLOPs between points). None when the curve never reaches it (η < 1 here)."""
    prev = None
    for f, l in zip(flops, losses):
        if l <= dense_final:
            if prev is None:
                t = f
            else:
                f0, l0 = prev
                t = f0 * (f / f0) ** ((l0 - dense_final) / (l0 - l)) if l0 != l else f
            return dense_total / t if t > 0 else None
        prev = (f, l)
    return None


def smooth(flops: list[float], values: list[float], width: float = SMOOTH_WIDTH) -> list[float]:
    """Centred local quadratic regression in log FLOPs (tricube weights, half-width `width` × the log-FLOPs range
    of the run): no lag, so the smoothed end point is not held up by earlier, higher losses, and a power-law curve
    keeps its shape (a trailing mean over a tenth of the run read a true η of 3.7 as 3.24). Near the ends the
    window is one-sided and the quadratic extrapolates the local trend."""
    x, y = np.log(np.asarray(flops, np.float64)), np.asarray(values, np.float64)
    if len(x) < 4:
        return y.tolist()
    half = max(width * (x[-1] - x[0]), 1e-12)
    out = np.empty_like(y)
    lo = np.searchsorted(x, x - half, "left")
    hi = np.searchsorted(x, x + half, "right")
    for i in range(len(x)):
        d = x[lo[i] : hi[i]] - x[i]
        w = (1 - np.abs(d / half) ** 3) ** 3
        if (w > 0).sum() < 3:  # too few points for a quadratic: take them as they are
            out[i] = y[i]
            continue
        X = np.stack([np.ones_like(d), d, d * d], 1) * np.sqrt(w)[:, None]
        out[i] = np.linalg.lstsq(X, y[lo[i] : hi[i]] * np.sqrt(w), rcond=None)[0][0]
    return out.tolist()


def curves(folder: Path) -> dict:
    """Loss curves against training FLOPs from a run's metrics log: the training loss per modality (logged every
    step by `compare`, smoothed by `smooth`) and the validation losses (expert-choice routing) at the evaluation
    points."""
    config = store.read_config(folder)
    m = config["mlxsuite"]
    per_step = m["flops_per_token"] * m["tokens_per_step"]
    records = trainer.read_metrics(folder / "run")
    evals = [r for r in records if r.get("event") == "eval"]
    trains = [r for r in records if r.get("event") == "train"]
    tps = [r["tokens_per_s"] for r in trains[2:]] or [r["tokens_per_s"] for r in trains]
    flops = [r["step"] * per_step for r in trains]
    out = {"flops": flops, "val_flops": [r["step"] * per_step for r in evals],
           "tokens_per_s": float(np.median(tps)) if tps else 0.0,
           "total_flops": (trains[-1]["step"] if trains else 0) * per_step}
    for k in ("loss", "loss_text", "loss_image"):
        out[f"raw_{k}"] = [r[k] for r in trains]
        out[k] = smooth(flops, out[f"raw_{k}"])
        out[f"val_{k}"] = [r[k] for r in evals]
    return out


KEYS = ("loss", "loss_text", "loss_image")
ETA_KEYS = (("overall", "loss"), ("text", "loss_text"), ("image", "loss_image"))


def etas(dense: dict, run: dict, validation: bool = False) -> dict:
    """η overall, text and image of a run's curves (`curves`) against dense's: on the smoothed training losses, or
    on the validation losses at the evaluation points."""
    p = "val_" if validation else ""
    return {name: eta(dense[p + k][-1], run[p + "flops"], run[p + k], dense["total_flops"]) for name, k in ETA_KEYS}


def compare(variants: list[str], flops_budget: float, prefix: str = "moma-compare", base: Optional[dict] = None,
            callback: Optional[Callable] = None, plot: Optional[str] = None) -> dict:
    """Train each variant on the same data at the same FLOPs budget (resumable), train their auxiliary routers, and
    report final losses, η overall/text/image against dense, throughput and router accuracy.

    η (§4.2): dense's final training loss L* (the smoothed curve's end point, see `smooth`); the FLOPs t* at which
    a variant's smoothed training-loss curve first reaches L*; η = dense FLOPs / t*. Every variant sees the same batches step by step.
    `eta_val` is the same on the validation curves (expert-choice routing)."""
    callback = callback or (lambda event, info: None)
    for v in variants:
        parse_variant(v)
    if not variants:
        raise UserError("no variants to compare")
    if "dense" not in [v.strip().lower() for v in variants]:
        variants = ["dense"] + variants
    base = dict(base or {})
    train_cfg = base.pop("train", {})
    assets_folder = store.output_path(f"{prefix}-data")
    probe = MomaRunSpec(out=f"{prefix}-data", **base, train=trainer.TrainConfig.from_dict(train_cfg))
    probe.validate()
    imageset, corpus = _load_sources(probe)
    tok, imtok = prepare_assets(probe, assets_folder, imageset, corpus)
    layout, train_data, _ = build_data(probe, tok, imtok, imageset, corpus)
    frac = train_data.image_fraction
    tokens_per_step = probe.batch_size * probe.seq_len
    runs = {}
    for v in variants:
        name = f"{prefix}-{v.replace('+', '-')}"
        spec = MomaRunSpec(out=name, variant=v, assets=str(assets_folder), **base,
                           train=trainer.TrainConfig.from_dict(train_cfg))
        args = model_args(spec, layout)
        fpt = args.flops_per_token(spec.seq_len, frac)["total"]
        spec.train.steps = max(2, int(round(flops_budget / (fpt * tokens_per_step))))
        spec.train.eval_every = max(1, spec.train.steps // 12)
        spec.train.save_every = max(spec.train.eval_every, spec.train.steps // 4)
        spec.train.log_every = 1  # per-step training losses per modality: the curves behind η
        folder = store.output_path(name)
        done = (folder / store.WEIGHTS_FILE).exists() and (folder / "config.json").exists() and \
            store.read_config(folder).get("mlxsuite", {}).get("final", {}).get("step") == spec.train.steps
        callback("variant", {"variant": v, "steps": spec.train.steps, "flops_per_token": fpt, "done": done})
        if not done:
            train_moma(spec, resume=folder.exists(), force=False, callback=callback)
        cfg = store.read_config(folder)
        if not cfg["mlxsuite"].get("routers"):
            train_routers(name, callback=callback)
        runs[v] = {"folder": folder, "config": store.read_config(folder)}

    dense_c = curves(runs["dense"]["folder"])
    rows = []
    for v, run in runs.items():
        c = curves(run["folder"])
        m = run["config"]["mlxsuite"]
        routers = m.get("routers", {})
        row = {
            "variant": v,
            "params": m["params"],
            "flops_per_token": m["flops_per_token"],
            "total_flops": c["total_flops"],
            "final_train": {k: c[k][-1] for k in KEYS},
            "final": {k: c[f"val_{k}"][-1] for k in KEYS},
            "final_causal": routers.get("val_causal"),
            "eta": etas(dense_c, c),
            "eta_val": etas(dense_c, c, validation=True),
            "tokens_per_s": c["tokens_per_s"],
            "throughput_ratio": c["tokens_per_s"] / dense_c["tokens_per_s"] if dense_c["tokens_per_s"] else None,
            "router_acc": routers.get("router_acc"),
        }
        rows.append(row)
    result = {"budget_flops": flops_budget, "image_fraction": frac, "variants": rows,
              "curves": {v: curves(r["folder"]) for v, r in runs.items()}}
    if plot:
        plot_curves(result["curves"], plot)
        result["plot"] = plot
    return result


def plot_curves(curve_map: dict, path: str) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, key, title in zip(axes, ("loss", "loss_text", "loss_image"), ("overall", "text", "image")):
        for i, (v, c) in enumerate(curve_map.items()):
            color = f"C{i}"
            ax.plot(c["flops"], c[f"raw_{key}"], color=color, alpha=0.15, linewidth=0.5)
            ax.plot(c["flops"], c[key], color=color, label=f"{v} (train, smoothed)")
            ax.plot(c["val_flops"], c[f"val_{key}"], color=color, linestyle="--", marker=".", label=f"{v} (val)")
        ax.set_title(f"{title} loss")
        ax.set_xlabel("training FLOPs")
        ax.set_ylabel("loss")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- generation ---------------------------------------------------------------------------------------------------


def _inference_model(name: str):
    model, spec, folder = load_run(name)
    m = store.read_config(folder)["mlxsuite"]
    if not m.get("routers_trained"):
        raise UserError(f"{folder} routes by expert choice, which is not causal: train its auxiliary routers first "
                        f"(mlxsuite moma train-routers {name})")
    model.eval()
    tok = Tokenizer(folder / "tokenizer.model")
    imtok = ImageTokenizer.load(folder)
    return model, tok, imtok, layout_of(tok, imtok), folder


def generate_image(name: str, prompt: str, temperature: float = 1.0, seed: int = 0) -> dict:
    """caption → image: [BOS] prompt [BOI], then exactly tokens_per_image image codes (logits restricted to image
    codes), decoded through the codebook. Causal inference path (auxiliary routers)."""
    model, tok, imtok, L, _ = _inference_model(name)
    key = mx.random.key(seed)
    tokens = [L.bos] + tok.encode(prompt) + [L.boi]
    codes = []
    for _ in range(imtok.tokens_per_image):
        logits = model(mx.array([tokens]), mode="infer")[0, -1, L.image_start : L.image_end]
        key, sub = mx.random.split(key)
        c = int(mx.argmax(logits).item()) if temperature <= 0 else int(
            mx.random.categorical(logits / temperature, key=sub).item())
        codes.append(c)
        tokens.append(L.image_start + c)
    image = imtok.decode(np.array([codes]))[0]
    return {"codes": codes, "image": image, "prompt": prompt}


def caption_image(name: str, image, max_tokens: int = 24) -> str:
    """image → caption: [BOS] [BOI] codes [EOI], then greedy text tokens until EOS."""
    model, tok, imtok, L, _ = _inference_model(name)
    if isinstance(image, (str, Path)):
        image = read_image(Path(image), imtok.size)
    codes = imtok.encode(np.asarray(image, np.float32)[None])[0]
    tokens = [L.bos, L.boi] + (codes + L.image_start).tolist() + [L.eoi]
    out = []
    for _ in range(max_tokens):
        logits = model(mx.array([tokens]), mode="infer")[0, -1]
        logits = mx.concatenate([logits[: L.text_size], mx.full((L.size - L.text_size,), -1e9)])
        t = int(mx.argmax(logits).item())
        if t == L.eos:
            break
        out.append(t)
        tokens.append(t)
    return tok.decode(out).strip()
