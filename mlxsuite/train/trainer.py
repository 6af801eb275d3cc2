"""The training loop every model here shares (LM, KV Prediction, MoMa): AdamW, warm-up + cosine, clipping, gradient
accumulation, one compiled step, data parallelism over `mx.distributed`, atomic checkpoints and exact resume.

The loop knows nothing about the model: it takes a `loss_fn(model, batch) -> loss | (loss, {name: scalar})`, a
`batches(step) -> np.ndarray | tuple[np.ndarray, ...]` (the rank's share of the global batch, a pure function of the
step), and reports through `callback(event, info)` with events "start", "step", "eval", "save", "end".
Only the model's trainable parameters are trained and checkpointed (freeze what should stay fixed).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Optional

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.nn.utils import average_gradients
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from mlxsuite.platform import atomic
from mlxsuite.platform.errors import UserError

CHECKPOINT = "checkpoint"
METRICS = "metrics.jsonl"


@dataclass
class TrainConfig:
    steps: int = 200
    lr: float = 3e-3
    schedule: str = "cosine"  # decay after warm-up: "cosine" (the vocabulary paper) or "linear" (MoMa)
    min_lr_ratio: float = 0.1  # the decay ends at lr · min_lr_ratio (vocabulary paper: 4e-4 → 4e-5; MoMa: 1 %)
    warmup: int = 20
    weight_decay: float = 0.1  # not applied to norms and biases (parameters with fewer than 2 dims)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    grad_accum: int = 1
    save_every: int = 50
    eval_every: int = 100
    log_every: int = 10
    compile: bool = True
    seed: int = 0  # for random numbers drawn inside the loss (noise, dropout); data order is seeded by the batches

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def validate(self) -> None:
        for name in ("steps", "grad_accum", "save_every", "eval_every", "log_every"):
            if getattr(self, name) <= 0:
                raise UserError(f"`{name}` must be a positive integer, got {getattr(self, name)}")
        if not self.lr > 0:
            raise UserError(f"learning rate must be positive, got {self.lr}")
        if self.warmup < 0:
            raise UserError(f"`warmup` must be >= 0, got {self.warmup}")
        if self.schedule not in SCHEDULES:
            raise UserError(f"unknown learning-rate schedule {self.schedule!r}: choose {' or '.join(SCHEDULES)}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise UserError(f"`min_lr_ratio` must be in [0, 1], got {self.min_lr_ratio}")


SCHEDULES = ("cosine", "linear")


class RunSpec:
    """The base of every recipe's run spec (a dataclass with `out`, `train: TrainConfig` and the recipe's settings),
    what `open_run` saves as run/spec.json and rebuilds on resume. A recipe lists its positive integer fields in
    `POSITIVE` and adds its own checks to `validate`."""

    POSITIVE: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_dict(cls, d: dict):
        """The spec from its saved dict (keys it no longer has are dropped)."""
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        d["train"] = TrainConfig.from_dict(d.get("train", {}))
        return cls(**d)

    def validate(self) -> None:
        for name in self.POSITIVE:
            if getattr(self, name) <= 0:
                raise UserError(f"`{name}` must be a positive integer, got {getattr(self, name)}")
        self.train.validate()


def lr_schedule(cfg: TrainConfig):
    """Linear warm-up from 0, then cosine or linear decay to lr · min_lr_ratio at the last step."""
    steps, end = max(1, cfg.steps - cfg.warmup), cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "linear":
        decay = optim.linear_schedule(cfg.lr, end, steps)
    else:
        decay = optim.cosine_decay(cfg.lr, steps, end)
    if cfg.warmup == 0:
        return decay
    return optim.join_schedules([optim.linear_schedule(0.0, cfg.lr, cfg.warmup), decay], [cfg.warmup])


def make_optimizer(cfg: TrainConfig) -> optim.Optimizer:
    schedule = lr_schedule(cfg)
    betas = [cfg.beta1, cfg.beta2]
    decayed = optim.AdamW(learning_rate=schedule, betas=betas, weight_decay=cfg.weight_decay)
    plain = optim.AdamW(learning_rate=schedule, betas=betas, weight_decay=0.0)
    return optim.MultiOptimizer([decayed, plain], [lambda path, w: w.ndim >= 2])


def _split(batch, parts: int):
    """Split a batch (array or tuple of arrays) along its rows into `parts` micro-batches."""
    if isinstance(batch, tuple):
        return list(zip(*[_split(b, parts) for b in batch]))
    rows = batch.shape[0]
    if rows % parts:
        raise UserError(f"a batch of {rows} rows per process does not split into {parts} accumulation steps")
    return [batch[i * rows // parts : (i + 1) * rows // parts] for i in range(parts)]


def _to_mx(batch):
    if isinstance(batch, tuple):
        return tuple(mx.array(b) for b in batch)
    return mx.array(batch)


def _stack(micro: list):
    if isinstance(micro[0], tuple):
        return tuple(mx.stack([m[i] for m in micro]) for i in range(len(micro[0])))
    return mx.stack(micro)


def _index(batch, i: int):
    if isinstance(batch, tuple):
        return tuple(b[i] for b in batch)
    return batch[i]


# ---- checkpoints --------------------------------------------------------------------------------------------------


def save_checkpoint(run_dir: Path, step: int, model: nn.Module, optimizer: optim.Optimizer, extra: dict) -> Path:
    """model (trainable params), optimizer and data position (the step), written to a temp folder then renamed.
    The RNG needs no saving: it is reseeded from (seed, step) at every checkpoint boundary (see `_reseed`)."""
    final = Path(run_dir) / CHECKPOINT
    with atomic.folder(final, force=True) as tmp:
        mx.save_safetensors(str(tmp / "model.safetensors"), dict(tree_flatten(model.trainable_parameters())))
        mx.save_safetensors(str(tmp / "optimizer.safetensors"), dict(tree_flatten(optimizer.state)))
        (tmp / "state.json").write_text(json.dumps({"step": step, **extra}))
    return final


def load_checkpoint(run_dir: Path, model: nn.Module, optimizer: optim.Optimizer) -> dict:
    ckpt = Path(run_dir) / CHECKPOINT
    if not (ckpt / "state.json").exists():
        raise UserError(f"nothing to resume: {run_dir} has no checkpoint")
    model.load_weights(list(mx.load(str(ckpt / "model.safetensors")).items()), strict=False)
    optimizer.state = tree_unflatten(list(mx.load(str(ckpt / "optimizer.safetensors")).items()))
    return json.loads((ckpt / "state.json").read_text())


def _reseed(seed: int, step: int) -> None:
    """MLX's global RNG state cannot be assigned, so instead of saving it the run reseeds from (seed, step) at every
    checkpoint boundary; an uninterrupted run and a resumed one then draw the same random numbers."""
    mx.random.seed((seed * 1_000_003 + step) % (1 << 31))


@dataclass
class Run:
    """An opened run: its spec (as saved at the start), the folder it writes (the run itself in `dir`), and the
    process group. Rank r of `size` trains on rows r::size of every global batch; only rank 0 writes."""

    spec: Any
    folder: Path
    group: Any
    created: bool = False  # this process started the run (not a resume)
    made: tuple = ()  # the folder's ancestors that starting it created (the store itself on a first run)

    @property
    def dir(self) -> Path:
        return self.folder / "run"

    @property
    def rank(self) -> int:
        return self.group.rank()

    @property
    def size(self) -> int:
        return self.group.size()

    @contextmanager
    def preparing(self):
        """Wrap what a recipe does between opening the run and training: if it fails (bad data, a vocabulary the
        corpus cannot fill, Ctrl-C …), a run this process created is removed again, so a retry starts clean."""
        try:
            yield self
        except BaseException:
            if self.created and self.rank == 0:
                shutil.rmtree(self.folder, ignore_errors=True)
                for parent in self.made:  # deepest first; only while empty
                    try:
                        parent.rmdir()
                    except OSError:
                        break
            raise


def _changed(spec, saved, given: Iterable[str]) -> list[str]:
    """'name value (saved: value)' for every explicitly given setting that differs from the saved spec."""
    out = []
    for name in given:
        for obj, old in ((spec, saved), (getattr(spec, "train", None), getattr(saved, "train", None))):
            if obj is not None and hasattr(obj, name) and hasattr(old, name):
                if getattr(obj, name) != getattr(old, name):
                    out.append(f"`{name}` {getattr(obj, name)} (the run has {getattr(old, name)})")
                break
    return out


def open_run(folder: Path, spec, resume: bool, force: bool, group=None, given: Iterable[str] = ()) -> Run:
    """Start or resume the run kept in `folder`/run: the one run scaffold of every recipe. Resuming reloads the
    spec saved at the start (so the run goes on exactly as begun) and refuses settings `given` explicitly that
    differ from it; starting refuses an existing folder unless `force`, then saves the spec. `spec` is a dataclass
    with `from_dict` and `validate`. Every rank calls this and checks the same things; only rank 0 writes."""
    folder = Path(folder)
    group = group or mx.distributed.init()
    spec_file = folder / "run" / "spec.json"
    if resume:
        if not spec_file.exists():
            raise UserError(f"nothing to resume: {folder} has no run")
        saved = type(spec).from_dict(json.loads(spec_file.read_text()))
        changed = _changed(spec, saved, given)
        if changed:
            raise UserError(
                "`resume` continues a run with the settings it began with; these differ: "
                + ", ".join(changed)
                + " (drop them, or start over with `force`)"
            )
        spec = saved
    spec.validate()
    if not resume and folder.exists() and not force:
        raise UserError(f"{folder} exists: pass `resume` to continue its run or `force` to start over")
    barrier(group)  # every rank has checked before rank 0 writes anything
    made = tuple(p for p in folder.absolute().parents if not p.exists())
    if group.rank() == 0 and not resume:
        if folder.exists():
            shutil.rmtree(folder)
        atomic.write_json(spec_file, asdict(spec))
    barrier(group)  # the others wait for rank 0's folder
    return Run(spec, folder, group, created=not resume, made=made)


def barrier(group) -> None:
    """Every rank waits here until all have arrived (an all-reduce of one number)."""
    mx.eval(mx.distributed.all_sum(mx.array(1.0), group=group))


def has_checkpoint(run_dir: Path) -> bool:
    return (Path(run_dir) / CHECKPOINT / "state.json").exists()


def _rewrite_metrics(path: Path, up_to_step: int) -> None:
    """On resume, drop log lines written after the checkpoint so the log reads as one uninterrupted run."""
    if not path.exists():
        return
    keep = [r for r in _records(path.read_text()) if r.get("step", 0) <= up_to_step]
    atomic.write_text(path, "".join(json.dumps(r) + "\n" for r in keep))


def _records(text: str) -> list[dict]:
    """The log's records; a line cut short by a kill (appends are not atomic) is dropped."""
    out = []
    for ln in text.splitlines():
        try:
            out.append(json.loads(ln))
        except ValueError:
            continue
    return out


# ---- the loop -----------------------------------------------------------------------------------------------------


def train(
    model: nn.Module,
    loss_fn: Callable,
    batches: Callable[[int], Any],
    cfg: TrainConfig,
    run_dir: Path,
    evaluate: Optional[Callable[[nn.Module], dict]] = None,
    callback: Optional[Callable[[str, dict], None]] = None,
    resume: bool = False,
    tokens_per_row: int = 0,
    group: Optional[mx.distributed.Group] = None,
) -> dict:
    """Train for cfg.steps optimizer steps; returns the final metrics. `evaluate(model) -> dict` runs every
    cfg.eval_every steps and at the end. `tokens_per_row` (tokens in one batch row) gives tokens/s."""
    cfg.validate()
    callback = callback or (lambda event, info: None)
    group = group or mx.distributed.init()
    rank, world = group.rank(), group.size()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    optimizer = make_optimizer(cfg)
    optimizer.init(model.trainable_parameters())
    start = _start_step(run_dir, model, optimizer, resume, rank)
    _reseed(cfg.seed, start)
    mx.eval(model.parameters(), optimizer.state)
    step_fn, state = _step_function(model, loss_fn, optimizer, cfg, group)

    callback("start", {"step": start, "steps": cfg.steps, "rank": rank, "world": world})
    log_path = run_dir / METRICS
    window = _Window()
    metrics: dict = {}
    for step in range(start, cfg.steps):
        micro = _stack([_to_mx(m) for m in _split(batches(step), cfg.grad_accum)])
        loss, grad_norm, aux = step_fn(micro)
        mx.eval(state, loss, grad_norm, aux)
        window.losses.append(loss)
        window.tokens += tokens_per_row * _rows(micro) * world
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            metrics = window.metrics(done, grad_norm, aux, optimizer, group)
            _log(log_path, rank, {"event": "train", **metrics})
            callback("step", metrics)
            window = _Window()
        if evaluate is not None and (done % cfg.eval_every == 0 or done == cfg.steps):
            val = {"step": done, **evaluate(model)}
            _log(log_path, rank, {"event": "eval", **val})
            callback("eval", val)
            metrics.update({f"val_{k}": v for k, v in val.items() if k != "step"})
            window.t0 = time.perf_counter()
        if done % cfg.save_every == 0 or done == cfg.steps:
            _reseed(cfg.seed, done)
            if rank == 0:
                path = save_checkpoint(run_dir, done, model, optimizer, {"config": asdict(cfg)})
                callback("save", {"step": done, "path": str(path)})
            window.t0 = time.perf_counter() if done % cfg.log_every == 0 else window.t0
    callback("end", metrics)
    return metrics


def _start_step(run_dir: Path, model, optimizer, resume: bool, rank: int) -> int:
    """The step to start from: the checkpoint's on resume (the log cut back to it), else 0 (a fresh log)."""
    if resume and has_checkpoint(run_dir):
        start = load_checkpoint(run_dir, model, optimizer)["step"]
        if rank == 0:
            _rewrite_metrics(run_dir / METRICS, start)
        return start
    if rank == 0:
        (run_dir / METRICS).unlink(missing_ok=True)
    return 0


def _step_function(model, loss_fn: Callable, optimizer, cfg: TrainConfig, group):
    """(one optimizer step over `cfg.grad_accum` micro-batches → (loss, grad norm, the recipe's metrics), the state
    it changes); compiled with `cfg.compile`. Gradients are averaged over the ranks and clipped."""
    value_and_grad = nn.value_and_grad(model, loss_fn)
    accum = cfg.grad_accum

    def step_fn(micro_batches):
        total, grads, aux_total = 0.0, None, {}
        for i in range(accum):
            out, g = value_and_grad(model, _index(micro_batches, i))
            loss, aux = out if isinstance(out, tuple) else (out, {})
            total = total + loss
            aux_total = {k: aux_total.get(k, 0.0) + v for k, v in aux.items()}
            grads = g if grads is None else tree_map(mx.add, grads, g)
        if accum > 1:
            grads = tree_map(lambda g: g / accum, grads)
        grads = average_gradients(grads, group=group)
        if cfg.grad_clip > 0:
            grads, grad_norm = optim.clip_grad_norm(grads, cfg.grad_clip)
        else:
            grad_norm = mx.sqrt(sum(mx.sum(g * g) for _, g in tree_flatten(grads)))
        optimizer.update(model, grads)
        return total / accum, grad_norm, {k: v / accum for k, v in aux_total.items()}

    state = [model.state, optimizer.state, mx.random.state]
    if cfg.compile:
        step_fn = partial(mx.compile, inputs=state, outputs=state)(step_fn)
    return step_fn, state


@dataclass
class _Window:
    """The steps since the last log line: their losses, tokens and start time."""

    losses: list = field(default_factory=list)
    tokens: int = 0
    t0: float = field(default_factory=time.perf_counter)

    def metrics(self, done: int, grad_norm, aux: dict, optimizer, group) -> dict:
        """The log line: loss (last and window mean) and the recipe's metrics, averaged over the ranks."""
        world = group.size()
        losses = mx.distributed.all_sum(mx.stack(self.losses), group=group) / world
        names = sorted(aux)
        extra = mx.distributed.all_sum(mx.stack([aux[k] for k in names]), group=group) / world if names else []
        dt = time.perf_counter() - self.t0
        return {
            "step": done,
            "loss": float(losses[-1].item()),
            "loss_avg": float(losses.mean().item()),
            "lr": float(optimizer.learning_rate.item()),
            "grad_norm": float(grad_norm.item()),
            "tokens_per_s": self.tokens / dt if dt > 0 else 0.0,
            "peak_memory_bytes": mx.get_peak_memory(),
            **{k: float(extra[i].item()) for i, k in enumerate(names)},
        }


def _rows(micro) -> int:
    first = micro[0] if isinstance(micro, tuple) else micro
    return first.shape[0] * first.shape[1]


def _log(path: Path, rank: int, record: dict) -> None:
    if rank == 0:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    return _records(path.read_text())
