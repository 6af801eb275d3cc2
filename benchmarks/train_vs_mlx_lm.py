"""Training throughput: mlxsuite's trainer vs mlx-lm's trainer on the same model, data and optimizer settings.

Both train the same randomly initialised weights (mlxsuite's LM and mlx-lm's `llama` are the same module tree) on
the same packed windows, alternating rounds in one process; reported are median tokens/s over rounds and the ratio.
mlx-lm's loss masks padding (none here: every row is full length); ours is plain mean cross-entropy. `ours-plain`
is our trainer with the fast CPU kernels switched off (`kernels.disabled()`): what the kernels buy in training.
Throughput is the steady state, as each trainer reports it: the wall time from the end of the first step (which
includes compiling the step) to the end of the last, per-step callbacks on both sides; the final checkpoint and
evaluation are not counted.

    python benchmarks/train_vs_mlx_lm.py --preset small --steps 20 --rounds 3
"""

import argparse
import contextlib
import io
import json
import os
import statistics
import tempfile
import time

import mlxsuite  # noqa: F401  (fast BLAS before mlx.core)

# isort: split
import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten
from mlx_lm.models import llama
from mlx_lm.tuner import trainer as lm_trainer

from mlxsuite import platform
from mlxsuite.data.corpus import Batches
from mlxsuite.models import kernels, lm
from mlxsuite.train import trainer
from mlxsuite.train.evaluate import lm_loss


def ours_plain(args, weights, tokens):
    with kernels.disabled():
        return ours(args, weights, tokens)


def ours(args, weights, tokens):
    model = lm.Model(args)
    model.load_weights(weights)
    batches = Batches(tokens, A.seq_len, A.batch_size)
    cfg = trainer.TrainConfig(steps=A.steps, warmup=0, save_every=10**9, eval_every=10**9, log_every=1)
    ends = []
    with tempfile.TemporaryDirectory() as d:
        trainer.train(
            model,
            lm_loss,
            batches,
            cfg,
            d,
            callback=lambda event, info: ends.append(time.perf_counter()) if event == "step" else None,
        )
    return (len(ends) - 1) * A.batch_size * A.seq_len / (ends[-1] - ends[0])


def theirs(args, weights, tokens):
    model = llama.Model(llama.ModelArgs.from_dict(args.to_dict()))
    model.load_weights(weights)
    mx.eval(model.parameters())
    rows = (len(tokens) - 1) // A.seq_len
    dataset = [(tokens[i * A.seq_len : i * A.seq_len + A.seq_len + 1].tolist(), 0) for i in range(rows)]
    targs = lm_trainer.TrainingArgs(
        batch_size=A.batch_size,
        iters=A.steps,
        steps_per_report=1,
        steps_per_eval=10**9,
        steps_per_save=10**9,
        max_seq_length=A.seq_len + 1,
        adapter_file=os.path.join(tempfile.mkdtemp(), "a.safetensors"),
    )
    opt = optim.AdamW(learning_rate=1e-3, betas=[0.9, 0.95], weight_decay=0.1)
    ends = []

    class Ends(lm_trainer.TrainingCallback):
        def on_train_loss_report(self, info):
            ends.append(time.perf_counter())

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        lm_trainer.train(model, opt, dataset, args=targs, training_callback=Ends())
    return (len(ends) - 1) * A.batch_size * A.seq_len / (ends[-1] - ends[0])


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="small")
    p.add_argument("--vocab-size", type=int, default=2048)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    A = p.parse_args()
    args = lm.preset_args(A.preset, A.vocab_size)
    weights = list(tree_flatten(lm.build(args, seed=0).parameters()))
    tokens = (
        np.random.default_rng(0)
        .integers(0, A.vocab_size, size=A.batch_size * A.seq_len * (A.steps + 2))
        .astype(np.int32)
    )
    runs = {"mlxsuite": ours, "mlxsuite-plain": ours_plain, "mlx_lm": theirs}
    samples = {name: [] for name in runs}
    load = [os.getloadavg()[0]]
    for r in range(A.rounds):
        for name in list(runs) if r % 2 == 0 else reversed(list(runs)):
            samples[name].append(runs[name](args, weights, tokens))
    load.append(os.getloadavg()[0])
    med = {name: statistics.median(v) for name, v in samples.items()}
    paired = lambda a, b: statistics.median(x / y for x, y in zip(samples[a], samples[b]))  # noqa: E731
    result = {
        "preset": A.preset,
        "vocab_size": A.vocab_size,
        "tokens_per_step": A.batch_size * A.seq_len,
        "tok_s": med,
        "ratio": med["mlxsuite"] / med["mlx_lm"],
        "ratio_paired": paired("mlxsuite", "mlx_lm"),
        "ratio_plain": med["mlxsuite-plain"] / med["mlx_lm"],
        "samples": samples,
        "blas": platform.blas_info().library,
        "load_average": load,
    }
    print(json.dumps(result, indent=2))
