"""MoMa training: losses per modality, evaluation, the main run (stage 1) and the auxiliary routers (stage 2).

Both stages open their runs through the shared scaffold (`trainer.open_run`, `trainer.train`): resume and restart
work as for the LM, and under `mlx.launch` rank r trains on rows r::size of every global batch (expert choice then
runs over each process's micro-batch; the paper does not say whether its "batch" is per GPU or global) and only
rank 0 writes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from mlxsuite import store
from mlxsuite.models import flops
from mlxsuite.models import moma as mm
from mlxsuite.moma.data import MixedBatches, build_data, load_assets, load_sources, prepare_assets, val_batches
from mlxsuite.moma.spec import MomaRunSpec, check_divisible, model_args, parse_variant, variant_name
from mlxsuite.platform import atomic
from mlxsuite.platform.errors import UserError
from mlxsuite.train import trainer

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


def _router_terms(model, tokens: mx.array, n_image: int) -> list[tuple[mx.array, mx.array, mx.array]]:
    """Per auxiliary router: (BCE against the batch-level selections, correct decisions, decisions), over the
    tokens the router decides for. The selections come from the noise-free expert-choice forward."""
    collect: list = []
    model(tokens, n_image=n_image, mode="train", collect=collect)
    terms = []
    for logits, target, valid in collect:
        v = valid.astype(logits.dtype)[:, None]
        bce = nn.losses.binary_cross_entropy(logits, target, with_logits=True, reduction="none")
        count = mx.maximum(v.sum() * logits.shape[1], 1)
        terms.append(((bce * v).sum() / count, (((logits > 0) == (target > 0.5)) * v).sum(), count))
    return terms


def router_loss(model, batch):
    """Stage 2: BCE of every auxiliary router against the batch-level selections (main model frozen)."""
    tokens, img_pos = batch
    terms = _router_terms(model, tokens[:, :-1], img_pos.size)
    accuracy = sum(t[1] for t in terms) / sum(t[2] for t in terms)
    return sum(t[0] for t in terms) / len(terms), {"router_acc": accuracy}


def router_accuracy(model, batches: list) -> dict:
    """Auxiliary-router accuracy against the batch-level selections on validation batches, overall and per router."""
    per = [[(c / n).item() for _, c, n in _router_terms(model, mx.array(t[:, :-1]), p.size)] for t, p in batches]
    if not per or not per[0]:
        return {}
    mean = np.mean(np.array(per), axis=0)
    return {"router_acc": float(mean.mean()), "router_acc_per_router": [round(float(a), 4) for a in mean]}


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


# ---- stage 1: the main model --------------------------------------------------------------------------------------


def _upcycle_source(spec: MomaRunSpec) -> Optional[mm.Model]:
    """The trained moma1t1i model an upcycled run starts from; a new run also takes over its assets and data
    position (§2.5: the seed run's data is not seen again)."""
    if not spec.upcycle_from:
        return None
    source, src_spec, src_folder = load_run(spec.upcycle_from)
    if source.args.ffn != "moma" or source.args.groups != [1, 1]:
        raise UserError(f"`upcycle_from` needs a moma1t1i run, {spec.upcycle_from} is {src_spec.variant}")
    if parse_variant(spec.variant, spec.mod)["ffn"] != "moma":
        raise UserError("upcycling makes a moma<T>t<I>i model: choose such a `variant`")
    spec.assets = str(src_folder)
    spec.data_offset = src_spec.train.steps + src_spec.data_offset
    return source


def _run_config(spec: MomaRunSpec, args, layout, train_data, imtok) -> tuple[dict, dict]:
    """(what the run trains, for the progress callback; the run's config.json)."""
    fpt = flops.moma_train_per_token(args, spec.seq_len, train_data.image_fraction)["total"]
    tokens_per_step = spec.batch_size * spec.seq_len
    info = {
        "variant": variant_name(parse_variant(spec.variant, spec.mod)),
        "layers": args.num_hidden_layers,
        "params": args.n_params_total,
        "flops_per_token": fpt,
        "vocab": layout.size,
        "text_vocab": layout.text_size,
        "image_codes": layout.num_codes,
        "images_per_row": train_data.images_per_row,
        "image_fraction": train_data.image_fraction,
    }
    config = {
        **args.to_dict(),
        "mlxsuite": {
            "format": 1,
            "kind": "moma",
            **info,
            "tokens_per_step": tokens_per_step,
            "routers_trained": args.ffn == "dense" and not args.mod,
            "image_size": imtok.size,
            "patch": imtok.patch,
        },
    }
    return info, config


def train_moma(
    spec: MomaRunSpec, resume: bool = False, force: bool = False, callback: Optional[Callable] = None, given=()
) -> dict:
    """Train (or resume) a MoMa run; returns final metrics (train and val per modality) and the folder. `given`:
    the settings the user gave explicitly (a resume refuses changed ones)."""
    callback = callback or (lambda event, info: None)
    folder = store.output_path(spec.out)
    source = None
    if not resume:
        spec.validate()
        source = _upcycle_source(spec)  # checked (its assets and data position taken) before anything is written
    run = trainer.open_run(folder, spec, resume, force, given=given)
    spec, group, rank, size = run.spec, run.group, run.rank, run.size
    final = store.finished(folder) if resume else None
    if final is not None:  # nothing left to train: the recorded result, and the record left alone
        return {**final, "folder": str(folder)}
    if resume:
        source = _upcycle_source(spec)
    imageset, corpus = load_sources(spec)
    with run.preparing():  # what can only be checked with the run's tokenizer: a failed start leaves nothing
        if rank == 0:
            prepare_assets(spec, folder, imageset, corpus)
        trainer.barrier(group)
        tok, imtok = load_assets(folder)
        layout, train_data, val_data = build_data(spec, tok, imtok, imageset, corpus)
        args = model_args(spec, layout)
        check_divisible(args, spec.micro_rows(size), spec.seq_len, train_data.image_tokens_per_row)
        if source is not None and (source.args.hidden_size, source.args.num_hidden_layers, source.args.vocab_size) != (
            args.hidden_size,
            args.num_hidden_layers,
            args.vocab_size,
        ):
            raise UserError(f"{spec.upcycle_from} has other dimensions than this run: use the same preset")
    mx.random.seed(spec.seed)
    model = mm.build(args, seed=spec.seed)
    if source is not None:
        mm.upcycle(model, source)
    info, config = _run_config(spec, args, layout, train_data, imtok)
    callback("model", info)
    if rank == 0:
        atomic.write_json(folder / "config.json", config)

    vb = val_batches(val_data, spec.batch_size // spec.train.grad_accum, spec.eval_batches)
    batches = MixedBatches(train_data, spec.batch_size, spec.seed, rank, size, offset=spec.data_offset)
    metrics = trainer.train(
        model,
        make_loss("train"),
        batches,
        spec.train,
        folder / "run",
        evaluate=lambda m: evaluate(m, vb, "train"),
        callback=callback,
        resume=resume,
        tokens_per_row=spec.seq_len,
        group=group,
    )
    if rank == 0:
        store.write_weights(folder, model)
        config["mlxsuite"]["final"] = metrics
        atomic.write_json(folder / "config.json", config)
    return {**metrics, "folder": str(folder), **info}


def load_run(name: str) -> tuple[mm.Model, MomaRunSpec, Path]:
    """A finished MoMa run (the one loader, `store.load`), with the spec it was trained with."""
    loaded = store.load(name, "moma")
    spec_file = loaded.folder / "run" / "spec.json"
    spec = MomaRunSpec.from_dict(json.loads(spec_file.read_text())) if spec_file.exists() else MomaRunSpec(out=name)
    loaded.model.freeze_aux()
    return loaded.model, spec, loaded.folder


# ---- stage 2: the auxiliary routers -------------------------------------------------------------------------------


@dataclass
class RouterRunSpec:
    """Stage 2 of a MoMa run (its folder's routers/): BCE training of the auxiliary routers, main model frozen."""

    run: str
    train: trainer.TrainConfig = field(default_factory=trainer.TrainConfig)

    @classmethod
    def from_dict(cls, d: dict) -> RouterRunSpec:
        return cls(run=d["run"], train=trainer.TrainConfig.from_dict(d.get("train", {})))

    def validate(self) -> None:
        self.train.validate()


def router_config(spec: MomaRunSpec, steps: Optional[int] = None) -> trainer.TrainConfig:
    """The router-training recipe: `router_steps` steps at `router_lr`, 10 % warm-up, linear decay to 1 % (the
    paper's Table 6 shape: warm-up, then linear to 1 % of the peak), no weight decay."""
    steps = steps or spec.router_steps
    return trainer.TrainConfig(
        steps=steps,
        lr=spec.router_lr,
        schedule="linear",
        min_lr_ratio=0.01,
        warmup=max(1, steps // 10),
        weight_decay=0.0,
        save_every=max(10, steps // 4),
        eval_every=10**9,
        log_every=10,
        compile=spec.train.compile,
        seed=spec.seed,
    )


def train_routers(
    name: str,
    steps: Optional[int] = None,
    callback: Optional[Callable] = None,
    resume: bool = False,
    force: bool = False,
) -> dict:
    """Stage 2 (§2.4): train the auxiliary routers with BCE against the batch-level selections, the main model
    frozen; then report router accuracy and the causal (inference-mode) validation losses next to the EC ones."""
    callback = callback or (lambda event, info: None)
    group = mx.distributed.init()
    rank, size = group.rank(), group.size()
    model, spec, folder = load_run(name)
    imageset, corpus = load_sources(spec)
    tok, imtok = load_assets(folder)
    _, train_data, val_data = build_data(spec, tok, imtok, imageset, corpus)
    vb = val_batches(val_data, spec.batch_size // spec.train.grad_accum, spec.eval_batches)
    config = store.read_config(folder)
    result: dict = {"folder": str(folder)}
    if model.aux_modules():
        if steps is not None and steps <= 0:
            raise UserError(f"steps must be a positive integer, got {steps}")
        rspec = trainer.open_run(
            folder / "routers",
            RouterRunSpec(str(folder), router_config(spec, steps)),
            resume,
            force,
            group,
            given=("steps",) if steps is not None else (),
        ).spec
        model.only_aux_trainable()
        batches = MixedBatches(train_data, spec.batch_size, spec.seed + 1, rank, size)
        trainer.train(
            model,
            router_loss,
            batches,
            rspec.train,
            folder / "routers" / "run",
            callback=callback,
            resume=resume,
            tokens_per_row=spec.seq_len,
            group=group,
        )
        model.freeze()
        result.update(router_accuracy(model, vb))
        model.freeze_aux()
        if rank == 0:
            store.write_weights(folder, model)
    result["val_ec"] = evaluate(model, vb, "train")
    result["val_causal"] = evaluate(model, vb, "infer")
    config["mlxsuite"]["routers_trained"] = True
    config["mlxsuite"]["routers"] = {k: v for k, v in result.items() if k != "folder"}
    if rank == 0:
        atomic.write_json(folder / "config.json", config)
    return result
