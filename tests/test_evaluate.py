"""Validation metrics by hand: L_u, bits per character, and gradient accumulation equivalence in the trainer."""

import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from mlxsuite.train import trainer
from mlxsuite.train.evaluate import evaluate_lm


class UnigramModel(nn.Module):
    """Predicts the same distribution p at every position, whatever the context."""

    def __init__(self, p: np.ndarray):
        super().__init__()
        self.log_p = mx.array(np.log(p).astype(np.float32))

    def __call__(self, x):
        return mx.broadcast_to(self.log_p, (*x.shape, self.log_p.shape[0]))


def test_lu_of_a_model_predicting_the_unigram_distribution_is_zero():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(50))
    windows = rng.choice(50, size=(6, 17), p=p).astype(np.int32)
    r = evaluate_lm(UnigramModel(p), windows, unigram=p, chars=1000)
    assert abs(r["lu"]) < 1e-5
    # CE by hand: mean of -log p over the targets; bits/char = total CE in bits over the characters
    ce = float(np.mean(-np.log(p[windows[:, 1:]])))
    assert math.isclose(r["ce"], ce, rel_tol=1e-5)
    assert math.isclose(r["bpc"], ce * windows[:, 1:].size / math.log(2) / 1000, rel_tol=1e-5)
    # a model better than unigram has negative L_u: L_u = CE + mean log p_uni(target)
    q = p.copy()
    r2 = evaluate_lm(UnigramModel(q), windows, unigram=np.full(50, 1 / 50))
    assert math.isclose(r2["lu"], ce + math.log(1 / 50), rel_tol=1e-5) and r2["lu"] < 0


def test_gradient_accumulation_equals_the_combined_batch(tmp_path):
    def loss_fn(model, batch):
        x = batch.astype(mx.float32)
        return ((model(x) - 1.0) ** 2).mean()

    def run(accum, name):
        mx.random.seed(0)
        model = nn.Linear(4, 4)
        mx.eval(model.parameters())
        data = np.random.default_rng(1).standard_normal((40, 8, 4)).astype(np.float32)
        cfg = trainer.TrainConfig(steps=5, warmup=0, grad_accum=accum, save_every=100, eval_every=100, log_every=1)
        trainer.train(model, loss_fn, lambda s: data[s], cfg, tmp_path / name)
        return np.array(model.weight)

    np.testing.assert_allclose(run(1, "a"), run(4, "b"), rtol=1e-5, atol=1e-6)
