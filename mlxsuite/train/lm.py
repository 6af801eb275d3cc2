"""Train a vocab-scaled LM end to end: tokenizer → token streams → unigram table → model → trainer → model folder.

The model folder (in the store) is the run: `config.json`, `tokenizer.model` and `unigram.safetensors` are written
at the start, `run/` holds the spec, checkpoint and metrics log, and `model.safetensors` appears (atomically) when
training ends. `resume=True` continues from `run/checkpoint` with the spec saved at the start.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import mlx.core as mx
import numpy as np

from mlxsuite import store
from mlxsuite.data import corpus as data
from mlxsuite.data.tokenizer import (
    Tokenizer,
    load_tokenizer,
    load_unigram,
    save_unigram,
    train_tokenizer,
    unigram_probs,
)
from mlxsuite.models import lm
from mlxsuite.models.mlx_lm_class import implementation
from mlxsuite.platform import atomic
from mlxsuite.platform.errors import UserError
from mlxsuite.train import trainer
from mlxsuite.train.evaluate import evaluate_lm, lm_loss
from mlxsuite.vocab import scaling


@dataclass
class LMRunSpec(trainer.RunSpec):
    out: str
    preset: str = "tiny"
    vocab_size: int = 2048
    tokenizer: Optional[str] = None  # reuse the tokenizer of this model/tokenizer folder instead of training one
    init_from: Optional[str] = None  # start from this stored model (weights, config, tokenizer): continued training
    corpus: Optional[str] = None  # None: the embedded stdlib corpus
    seq_len: int = 128
    batch_size: int = 16  # sequences per optimizer step, over all processes
    seed: int = 0
    eval_windows: int = 64
    model_overrides: dict = field(default_factory=dict)
    train: trainer.TrainConfig = field(default_factory=trainer.TrainConfig)

    POSITIVE = ("seq_len", "batch_size", "eval_windows", "vocab_size")

    def validate(self) -> None:
        if self.preset not in lm.PRESETS:
            raise UserError(f"unknown preset {self.preset!r}: choose one of {', '.join(lm.PRESETS)}")
        super().validate()
        context = lm.preset_args(self.preset, 1, **self.model_overrides).max_position_embeddings
        if not self.init_from and self.seq_len > context:
            raise UserError(f"`seq_len` {self.seq_len} is longer than the model's context ({context} tokens)")


def prepare_tokenizer(spec: LMRunSpec, folder: Path, corpus: data.Corpus):
    """The run's tokenizer in `folder`: the init model's, copied from spec.tokenizer, or trained at spec.vocab_size."""
    existing = load_tokenizer(folder)
    if existing is not None:
        return existing
    if spec.init_from:
        tok = load_tokenizer(store.resolve(spec.init_from))
        if tok is None:
            raise UserError(f"{spec.init_from} has no tokenizer to train with")
        tok.save(folder)
        return load_tokenizer(folder)
    path = folder / "tokenizer.model"
    if spec.tokenizer:
        src = Path(spec.tokenizer)
        if not src.is_file():
            src = store.resolve(spec.tokenizer) / "tokenizer.model"
        if not src.exists():
            raise UserError(f"{spec.tokenizer} has no SentencePiece tokenizer (tokenizer.model)")
        Tokenizer(src).save(folder)
        return Tokenizer(path)
    return train_tokenizer(corpus.train, spec.vocab_size, path)


def _model(spec: LMRunSpec, tok) -> tuple[lm.Model, lm.ModelArgs, dict]:
    """The model to train (from a preset, or a stored float model), its args and where it came from."""
    if spec.init_from:
        model, _, src = store.load_model(spec.init_from)
        store.require_own_forward(model, src, "training")
        if "quantization" in store.read_config(src):
            raise UserError(f"{src} is quantized: train from a float model (convert from-hf without `quantize`)")
        model.train()
        args = model.args
        origin = {"init_from": str(src)}
    else:
        args = lm.preset_args(spec.preset, tok.vocab_size, **spec.model_overrides)
        model = lm.build(args, seed=spec.seed)
        origin = {"preset": spec.preset}
    if spec.seq_len > args.max_position_embeddings:
        raise UserError(
            f"`seq_len` {spec.seq_len} is longer than the model's context ({args.max_position_embeddings} tokens)"
        )
    if args.vocab_size < tok.vocab_size:
        raise UserError(f"the tokenizer has {tok.vocab_size} ids but the model only {args.vocab_size} embeddings")
    return model, args, origin


def _unigram(folder: Path, tok, train_tokens, rank: int):
    """The unigram table of the run's tokenizer (for L_u): the folder's, else counted and saved (rank 0)."""
    unigram = load_unigram(folder)
    if unigram is None or len(unigram) != tok.vocab_size:
        unigram = unigram_probs(train_tokens, tok.vocab_size)
        if rank == 0:
            save_unigram(folder, unigram)
    return unigram


def train_lm(
    spec: LMRunSpec,
    resume: bool = False,
    force: bool = False,
    callback: Optional[Callable] = None,
    given=(),
    group=None,
) -> dict:
    """Train (or resume) the run described by `spec`; returns final metrics and the model folder. `given`: the
    settings the user gave explicitly (a resume refuses changed ones). `group`: the processes that train it together
    (default: all of `mlx.launch`'s)."""
    callback = callback or (lambda event, info: None)
    run = trainer.open_run(store.output_path(spec.out), spec, resume, force, group=group, given=given)
    spec, folder, rank = run.spec, run.folder, run.rank
    final = store.finished(folder) if resume else None
    if final is not None:  # nothing left to train: the recorded result, and the record left alone
        return {**final, "folder": str(folder)}
    with run.preparing():
        mx.random.seed(spec.seed)

        corpus = data.load_corpus(spec.corpus)
        callback("corpus", {"name": corpus.name, "train_docs": len(corpus.train), "val_docs": len(corpus.val)})
        if rank == 0:
            prepare_tokenizer(spec, folder, corpus)
        trainer.barrier(run.group)
        tok = load_tokenizer(folder)
        callback("tokenizer", {"vocab_size": tok.vocab_size, "path": str(tok.path)})

        train_tokens = data.token_stream(tok, corpus, "train")
        val_tokens = data.token_stream(tok, corpus, "val")
        unigram = _unigram(folder, tok, train_tokens, rank)
        windows = data.eval_windows(val_tokens, spec.seq_len, spec.eval_windows)
        chars = data.chars_in(corpus, "val", tok, windows.shape[0] * spec.seq_len + 1)

        model, args, origin = _model(spec, tok)
        if rank == 0 and not (folder / "config.json").exists():
            atomic.write_json(folder / "config.json", {**args.to_dict(), "mlxsuite": {"format": 1, **origin}})
        callback(
            "model",
            {
                **origin,
                "n_nonvocab": args.n_nonvocab_params,
                "n_vocab": args.n_vocab_params,
                "n_params": args.n_params,
                "train_tokens": int(len(train_tokens)),
                "val_tokens": int(windows.size),
            },
        )

        batches = data.Batches(train_tokens, spec.seq_len, spec.batch_size, spec.seed, rank, run.size)
    metrics = trainer.train(
        model,
        lm_loss,
        batches,
        spec.train,
        run.dir,
        evaluate=lambda m: evaluate_lm(m, windows, unigram, chars),
        callback=callback,
        resume=resume,
        tokens_per_row=spec.seq_len,
        group=run.group,
    )
    if rank == 0:
        store.write_weights(folder, model)
        config = store.read_config(folder)
        config["mlxsuite"].update({"corpus": corpus.name, "seq_len": spec.seq_len, "final": metrics})
        atomic.write_json(folder / "config.json", config)
    return {**metrics, "folder": str(folder)}


def auto_vocab_size(
    preset: str, flops: Optional[float] = None, multiple: int = 128, minimum: int = 512, tokens: Optional[int] = None
) -> dict:
    """V for a preset from the vocabulary paper's approach 3 (parametric L_u fit) at its N_nv and width d, at a
    training budget of `flops`, else of `tokens` training tokens (C = 6 (N_nv + V d) tokens, solved together with
    V), else the paper's compute-optimal budget for that N_nv. Rounded to a multiple of 128 as in the paper's
    configs; at least `minimum` (byte fallback plus a useful merge table). The published fit was made at 33M–3B
    non-vocabulary parameters, so for the tiny presets this is an extrapolation."""
    if preset not in lm.PRESETS:
        raise UserError(f"unknown preset {preset!r}: choose one of {', '.join(lm.PRESETS)}")
    args = lm.preset_args(preset, 1)
    nnv, d = args.n_nonvocab_params, args.hidden_size

    def choose(budget):
        pred = scaling.predict_parametric(nnv, budget, d=d)
        return max(minimum, int(round(pred.vocab / multiple)) * multiple), pred

    vocab, pred = choose(flops if flops is not None or not tokens else 6 * (nnv + minimum * d) * tokens)
    for _ in range(10 if flops is None and tokens else 0):  # the budget depends on V through N_v = V d
        again, pred = choose(6 * (nnv + vocab * d) * tokens)
        if again == vocab:
            break
        vocab = again
    return {"vocab_size": vocab, "predicted_vocab": pred.vocab, "nnv": nnv, "flops": pred.flops}


def eval_model(
    name: str, corpus_spec: Optional[str] = None, seq_len: int = 128, windows: int = 64, progress=None
) -> dict:
    """Validation metrics of a stored model on a corpus's validation split (default: that of the corpus the model
    was trained on, as its config records it; the embedded corpus for models trained elsewhere).
    `progress(done, total, what)` follows each stage (tokenizing, evaluating)."""

    def stage(what: str):
        return None if progress is None else lambda done, total: progress(done, total, what)

    model, tok, folder = store.load_model(name)
    if tok is None:
        raise UserError(f"{folder} has no tokenizer")
    if seq_len > model.args.max_position_embeddings:
        raise UserError(
            f"validation windows of {seq_len} tokens are longer than the model's context "
            f"({model.args.max_position_embeddings} tokens)"
        )
    if corpus_spec is None:
        corpus_spec = store.read_config(folder).get("mlxsuite", {}).get("corpus")
        if corpus_spec not in (None, "stdlib") and not Path(corpus_spec).exists():
            raise UserError(
                f"{folder} was trained on {corpus_spec}, which is gone: pass `corpus` (stdlib: the embedded corpus)"
            )
    corpus = data.load_corpus(corpus_spec)
    val = data.token_stream(tok, corpus, "val", progress=stage("tokenizing the validation documents"))
    w = data.eval_windows(val, seq_len, windows)
    if len(w) == 0:
        raise UserError(f"validation text is shorter than one window of {seq_len} tokens")
    unigram = load_unigram(folder)
    if unigram is None:
        train = data.token_stream(tok, corpus, "train", progress=stage("tokenizing the training documents (for L_u)"))
        unigram = unigram_probs(train, tok.vocab_size)
    chars = data.chars_in(corpus, "val", tok, w.shape[0] * seq_len + 1)
    metrics = evaluate_lm(model, w, np.asarray(unigram), chars, progress=stage("evaluating batches"))
    return {"model": str(folder), "corpus": corpus.name, "implementation": implementation(model), **metrics}
