"""A MoMa run's settings and its variants at matched FLOPs (the paper's Table 1)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np

from mlxsuite.models import flops, lm
from mlxsuite.models import moma as mm
from mlxsuite.platform.errors import UserError
from mlxsuite.train import trainer

VARIANT_RE = re.compile(r"^(dense|moe(\d+)x|moma(\d+)t(\d+)i)(\+mod)?$")
DEFAULT_VARIANTS = "dense,moe8x,moma4t4i,moma4t4i+mod"


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


def paper_schedule(**overrides) -> trainer.TrainConfig:
    """Training settings with MoMa's learning-rate schedule as the default (§4.1): linear warm-up, then linear decay
    to 1 % of the peak (the LM recipe keeps the vocabulary paper's cosine to 10 %)."""
    return trainer.TrainConfig.from_dict({"schedule": "linear", "min_lr_ratio": 0.01, **overrides})


def parse_variant(name: str, mod: bool = False) -> dict:
    """ "dense" | "moe{E}x" | "moma{T}t{I}i", optionally "+mod" → ModelArgs fields."""
    m = VARIANT_RE.match(name.strip().lower())
    if not m:
        raise UserError(
            f"unknown variant {name!r}: use dense, moe8x (moe<E>x), moma4t4i (moma<T>t<I>i), with an optional +mod"
        )
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
    base = {
        "dense": "dense",
        "moe": f"moe{fields.get('num_experts')}x",
        "moma": f"moma{fields.get('text_experts')}t{fields.get('image_experts')}i",
    }[fields["ffn"]]
    return base + ("+mod" if fields.get("mod") else "")


@dataclass
class MomaRunSpec(trainer.RunSpec):
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
    batch_size: int = 16  # rows per optimizer step, over all processes
    images_per_row: int = 0  # 0: as many as fit
    augment: bool = True  # one-pixel shifts of the training images
    seed: int = 0
    eval_batches: int = 2
    data_offset: int = 0  # upcycling keeps the data position of the seed run
    router_steps: int = 200
    router_lr: float = 1e-2
    train: trainer.TrainConfig = field(default_factory=paper_schedule)

    POSITIVE = (
        "seq_len",
        "batch_size",
        "codebook_size",
        "patch",
        "image_size",
        "text_tokens",
        "eval_batches",
        "router_steps",
    )

    def validate(self) -> None:
        parse_variant(self.variant, self.mod)
        if self.preset not in lm.PRESETS:
            raise UserError(f"unknown preset {self.preset!r}: choose one of {', '.join(lm.PRESETS)}")
        super().validate()
        if self.image_size % self.patch:
            raise UserError(f"patch size {self.patch} does not divide the image size {self.image_size}")
        if not self.router_lr > 0:
            raise UserError(f"router learning rate must be positive, got {self.router_lr}")

    def micro_rows(self, processes: int) -> int:
        """Rows of one micro-batch in one process: the expert-choice batch."""
        if self.batch_size % (processes * self.train.grad_accum):
            raise UserError(
                f"batch size {self.batch_size} does not split into {processes} process(es) × "
                f"{self.train.grad_accum} accumulation step(s)"
            )
        return self.batch_size // processes // self.train.grad_accum


MOD_TOLERANCE = 0.02  # a MoD variant's training FLOPs per token are within 2 % of dense's
DEPTH_ONLY_TOLERANCE = 0.015  # depth alone is kept when it gets this close (a margin inside MOD_TOLERANCE)
WIDTH_TOLERANCE = 0.01  # else the narrowest change of width that, with its best depth, gets this close
MATCH_IMAGE_FRACTION = 0.5  # the share of image tokens the match assumes (it moves only the d·E router terms)


def _train_flops(fields: dict, seq_len: int) -> float:
    return flops.moma_train_per_token(mm.ModelArgs.from_dict(fields), seq_len, MATCH_IMAGE_FRACTION)["total"]


def mod_matched_shape(base: dict, seq_len: int) -> dict:
    """Depth, and width if depth alone cannot, of a MoD model (`base` has mod=True) whose training FLOPs per token
    match the dense model of `base`'s shape, as the paper's Table 1 does: first the layer count (alternating MoD
    layers from layer 0, c_d = 0.25); when no layer count comes within DEPTH_ONLY_TOLERANCE (2 dense layers have
    1.5 or 2.5 MoD-layer equivalents), the width nearest the dense width (head count kept, head_dim even, the FFN
    scaled with it to a multiple of 8) whose best depth comes within WIDTH_TOLERANCE. Returns the ModelArgs fields
    num_hidden_layers, hidden_size, head_dim, intermediate_size and the ratio to dense."""
    dense = _train_flops({**base, "ffn": "dense", "mod": False}, seq_len)
    d, layers, ffn = base["hidden_size"], base["num_hidden_layers"], base["intermediate_size"]
    heads = base["num_attention_heads"]

    def shape(n: int, width: int) -> dict:
        inner = ffn if width == d else max(8, round(ffn * width / d / 8) * 8)
        fields = {"num_hidden_layers": n, "hidden_size": width, "head_dim": width // heads, "intermediate_size": inner}
        return {**fields, "ratio": _train_flops({**base, **fields}, seq_len) / dense}

    def best_depth(width: int) -> dict:
        return min((shape(n, width) for n in range(layers, 4 * layers + 1)), key=lambda s: abs(s["ratio"] - 1))

    same_width = best_depth(d)
    if abs(same_width["ratio"] - 1) <= DEPTH_ONLY_TOLERANCE:
        return same_width
    widths = sorted(range(max(2 * heads, d // 2), 2 * d + 1, 2 * heads), key=lambda w: (abs(w - d), w))
    for width in widths:
        candidate = best_depth(width)
        if abs(candidate["ratio"] - 1) <= WIDTH_TOLERANCE:
            return candidate
    return same_width


def model_args(spec: MomaRunSpec, layout: Layout) -> mm.ModelArgs:
    """The variant at FLOPs matched to the dense model of the preset (Table 1): experts are full-size FFNs at
    capacity 1/E per group; MoD models get more layers, and another width where depth alone cannot match
    (`mod_matched_shape`)."""
    base = dict(lm.PRESETS[spec.preset])
    base.update(spec.model_overrides)
    base.update(parse_variant(spec.variant, spec.mod))
    base.update(
        vocab_size=layout.size,
        image_start=layout.image_start,
        image_end=layout.image_end,
        router_noise=bool(spec.upcycle_from),
        tie_word_embeddings=True,
    )
    if base["mod"]:
        matched = mod_matched_shape(base, spec.seq_len)
        base.update({k: v for k, v in matched.items() if k != "ratio"})
    return mm.ModelArgs.from_dict(base)


def flops_table(spec: MomaRunSpec, layout: Layout, variants: list[str], image_fraction: float) -> list[dict]:
    """FLOPs per token of each variant against dense (the FLOPs accounting of ModelArgs.flops_per_token)."""
    rows = []
    dense = None
    for v in ["dense"] + [v for v in variants if v != "dense"]:
        args = model_args(MomaRunSpec(**{**asdict(spec), "variant": v, "mod": False, "train": spec.train}), layout)
        f = flops.moma_train_per_token(args, spec.seq_len, image_fraction)["total"]
        dense = dense or f
        rows.append(
            {
                "variant": v,
                "layers": args.num_hidden_layers,
                "hidden_size": args.hidden_size,
                "intermediate_size": args.intermediate_size,
                "flops_per_token": f,
                "ratio_to_dense": f / dense,
                "params": args.n_params_total,
            }
        )
    return rows


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
            raise UserError(
                f"{what} sees {n} tokens per micro-batch, which does not divide into {e} experts: "
                "change `batch_size`, `seq_len` or the variant"
            )
