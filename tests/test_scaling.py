"""mlxsuite.vocab.scaling against the reference values of the vocabulary paper's notes (its "Checks" section)."""

import math

import numpy as np
import pytest

from mlxsuite.platform.errors import UserError
from mlxsuite.vocab import scaling as s

F = s.PAPER_COMPRESSION


def test_scaling_is_numpy_only():
    import subprocess
    import sys

    code = "import sys, mlxsuite.vocab.scaling; print('mlx.core' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


# ---- f(V), FLOPs, d ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "vocab, expected",
    [
        (1024, 0.415878),
        (4096, 0.331821),
        (8192, 0.299006),
        (16384, 0.272333),
        (32000, 0.252404),
        (32768, 0.251803),
        (43000, 0.245430),
        (65536, 0.237415),
        (128000, 0.229350),
        (200000, 0.227156),
        (1e6, 0.227156),
    ],
)
def test_tokens_per_character(vocab, expected):
    assert F(vocab) == pytest.approx(expected, abs=1e-6)


def test_characters_tokens_and_flops():
    assert s.characters_from_tokens(1.2e9, 4096) == pytest.approx(3.6164e9, rel=1e-4)
    # exp_data.csv row 1 (N_nv carries the csv's nominal-size quirk)
    assert s.training_flops(33_222_784, 4096, 180_820_540.85, d=512) == pytest.approx(1.271517696e16, rel=1e-9)
    # Table 2: 3B model, V = 32K, 67.3B tokens ≈ 1.2e21 FLOPs and 266.6B characters
    h = s.characters_from_tokens(67.3e9, 32000)
    assert h == pytest.approx(266.6e9, rel=1e-3)
    assert s.training_flops(2.87e9, 32000, h, d=3200) == pytest.approx(1.2e21, rel=2e-3)


def test_embedding_dim_table_is_right_closed():
    assert [s.embedding_dim(n) for n in (1, 50e6, 50e6 + 1, 2.87e9, 7e9, 150e9, 1e12)] == [
        512,
        512,
        768,
        3200,
        4096,
        12288,
        20480,
    ]
    with pytest.raises(UserError, match="beyond"):
        s.embedding_dim(1.5e12)
    for bad in (0, -1, math.nan, math.inf):
        with pytest.raises(UserError, match="positive"):
            s.embedding_dim(bad)


# ---- the three approaches ---------------------------------------------------------------------------------------

# Table 1 rows from the public code: N_nv → (C_opt, V approach 1, 2, 3)
TABLE1 = {
    3e9: (1.2953e21, 39_367, 42_538, 36_648),
    7e9: (7.0524e21, 62_280, 67_450, 59_547),
    13e9: (2.4324e22, 83_429, 90_503, 81_347),
    30e9: (1.2953e23, 141_711, 154_071, 141_898),
    70e9: (7.0524e23, 211_860, 230_861, 217_961),
    130e9: (2.4324e24, 236_500, 258_138, 248_187),
    300e9: (1.2953e25, 355_894, 389_324, 383_659),
    33e6: (1.5674e17, 5_754, 6_144, 4_662),
    302e6: (1.3127e19, 18_183, 19_527, 15_758),
    1.13e9: (1.8378e20, 27_280, 29_401, 24_630),
    2.87e9: (1.1855e21, 37_942, 40_993, 35_271),
}


@pytest.mark.parametrize("nnv", TABLE1)
def test_table1(nnv):
    c_opt, v1, v2, v3 = TABLE1[nnv]
    assert s.compute_optimal_flops(nnv) == pytest.approx(c_opt, rel=1e-4)
    assert s.predict_isoflops(nnv).vocab == pytest.approx(v1, rel=1e-4)
    assert s.predict_derivative(nnv).vocab == pytest.approx(v2, rel=1e-4)
    assert s.predict_parametric(nnv).vocab == pytest.approx(v3, rel=1e-4)


def test_reference_script_output_at_7b():
    """`python optimal_Nv_predict.py` prints N_v = 255102858, 276276206, 243906869."""
    preds = [s.predict_isoflops(7e9), s.predict_derivative(7e9), s.predict_parametric(7e9)]
    assert [p.nv for p in preds] == pytest.approx([255_102_858, 276_276_206, 243_906_869], rel=1e-6)
    assert all(p.flops == pytest.approx(7.0524e21, rel=1e-4) for p in preds)
    assert s.predict_isoflops(70e9).nv == pytest.approx(1_735_560_878, rel=1e-6)


def test_compute_optimal_budget_round_trip():
    assert s.compute_optimal_nnv(1.2953e21) == pytest.approx(3.0e9, rel=1e-4)
    assert s.compute_optimal_nnv(s.compute_optimal_flops(123e6)) == pytest.approx(123e6, rel=1e-12)


def test_derivative_raw_roots_and_gamma():
    assert s.derivative_root(33e6, 512) == pytest.approx(10_322.9, rel=1e-5)
    assert s.derivative_root(2.87e9, 3200) == pytest.approx(65_928.3, rel=1e-5)
    roots = [s.derivative_root(n) * s.embedding_dim(n) for n in s.ROOT_NNV]
    assert s.fit_gamma(s.ROOT_NNV, roots) == pytest.approx(0.835397, rel=1e-5)
    # ∂C/∂V changes sign at the root: C is smallest there
    v = s.derivative_root(302e6)
    assert s.flops_slope(v * 0.99, 302e6, 1024) < 0 < s.flops_slope(v * 1.01, 302e6, 1024)


def test_derivative_anchor():
    assert s.predict_derivative(33e6).nv == 3_145_728
    assert s.predict_derivative(33e6).vocab == 6144


def test_derivative_law_refit_with_paper_compression_is_the_paper_law():
    law = s.derivative_law(F)
    assert law.gamma == pytest.approx(s.PAPER_DERIVATIVE.gamma, rel=1e-5)


@pytest.mark.parametrize("flops, vocab", [(2.8e20, 23_885), (1.2e21, 35_388), (2.3e21, 42_211)])
def test_parametric_at_given_budget_for_3b(flops, vocab):
    """Tables 2-3: the 2.87B model at 2.8e20 / 1.2e21 / 2.3e21 FLOPs (paper: 24K, 35K, 43K)."""
    assert s.predict_parametric(2.87e9, flops).vocab == pytest.approx(vocab, rel=1e-4)


def test_parametric_root_solves_the_reference_equation():
    """The closed form zeroes the reference's ∂L_u/∂V (V and d in thousands) for any N_nv and budget."""
    L = s.PAPER_PARAMETRIC
    rng = np.random.default_rng(0)
    for nnv, scale in zip(10 ** rng.uniform(6, 12, 50), 10 ** rng.uniform(-1.5, 1.5, 50)):
        flops = s.compute_optimal_flops(nnv) * scale
        d = s.embedding_dim(nnv)
        n, dk, f = nnv / 1e6, d / 1e3, flops / 1e15
        v = L.optimal_nv(nnv, flops) / d / 1e3

        def dl_dv(v, f=f, n=n, dk=dk):
            u = f / (6 * (n + v * dk))
            return -L.alpha2 * L.A2 * dk / (v * dk) ** (L.alpha2 + 1) + L.beta * L.B * (
                f * dk / (6 * (n + v * dk) ** 2)
            ) / u ** (L.beta + 1)

        assert abs(dl_dv(v)) < 1e-8 * abs(L.alpha2 * L.A2 * dk / (v * dk) ** (L.alpha2 + 1))
        assert dl_dv(v * 0.999) < 0 < dl_dv(v * 1.001)


def test_parametric_vocab_grows_with_budget():
    c_opt = s.compute_optimal_flops(302e6)
    expected = {0.2: 10_187, 0.3: 11_368, 0.5: 13_055, 1: 15_758, 2: 19_032, 3: 21_261, 4: 23_002, 5: 24_453, 6: 25_707}
    got = {k: s.predict_parametric(302e6, k * c_opt).vocab for k in expected}
    assert got == pytest.approx(expected, rel=1e-4)
    vocabs = [s.predict_parametric(2.87e9, c).vocab for c in np.geomspace(1e18, 1e24, 25)]
    assert all(a < b for a, b in zip(vocabs, vocabs[1:]))


def test_parametric_loss_values():
    """Check 11: L_u(302M, V = 16384, d = 1024, H = 43e9) with the true D and with the reference fit's D."""
    L, nv, h = s.PAPER_PARAMETRIC, 16384 * 1024, 43e9
    assert L(302e6, nv, s.tokens_from_characters(h, 16384)) == pytest.approx(-4.6524, abs=1e-4)
    assert L(302e6, nv, h * F(16384 / 1000)) == pytest.approx(-4.9259, abs=1e-4)


def test_llama2_70b_mean_is_216k():
    """The abstract's "Llama2-70B → at least 216K": the mean of the three approaches at the real N_nv."""
    shape = s.KNOWN_MODELS["llama2-70b"]
    assert shape.nnv == 68_452_360_192
    vocabs = [p(shape.nnv, d=shape.d).vocab for p in (s.predict_isoflops, s.predict_derivative, s.predict_parametric)]
    assert vocabs == pytest.approx([207_953, 226_590, 213_788], rel=1e-4)
    assert np.mean(vocabs) == pytest.approx(216_110, rel=1e-4)


def test_model_shapes_count_nonvocab_params():
    assert s.KNOWN_MODELS["llama2-7b"].nnv == 6_476_271_616
    # the paper's 2870M model (24 layers, d 3200, d_ff 8192, MHA)
    assert s.ModelShape(24, 3200, 8192, 32, 32, 32000).nnv == 2_870_633_600
    # Qwen2-7B: 7.6156B total with untied 152064×3584 embedding and head
    assert s.KNOWN_MODELS["qwen2-7b"].nnv + 2 * 152064 * 3584 == 7_615_616_512


# ---- constants from files ---------------------------------------------------------------------------------------


def test_compression_json_round_trip(tmp_path):
    path = tmp_path / "f.json"
    path.write_text('{"a": 0.01, "b": -0.2, "c": 1.5, "r2": 0.99}')
    assert s.Compression.load(path) == s.Compression(0.01, -0.2, 1.5)
    assert s.Compression.from_dict(F.to_dict()) == F
    for text in ("not json", "[1, 2]", '{"a": 1}', '{"a": "x", "b": 1, "c": 1}'):
        path.write_text(text)
        with pytest.raises(UserError):
            s.Compression.load(path)
    with pytest.raises(UserError, match="cannot read"):
        s.Compression.load(tmp_path / "missing.json")


def test_laws_dict_round_trip():
    assert s.IsoFlopsLaws.from_dict(s.PAPER_ISOFLOPS.to_dict()) == s.PAPER_ISOFLOPS
    assert s.ParametricLoss.from_dict(s.PAPER_PARAMETRIC.to_dict()) == s.PAPER_PARAMETRIC
    assert s.DerivativeLaw.from_dict(s.PAPER_DERIVATIVE.to_dict()) == s.PAPER_DERIVATIVE


# ---- fitting ----------------------------------------------------------------------------------------------------


def test_fit_compression_recovers_constants():
    sizes = [1024, 2048, 4096, 8192, 16384, 32768, 65536, 128000]
    fit = s.fit_compression(sizes, F(sizes))
    assert (fit.a, fit.b, fit.c) == pytest.approx((F.a, F.b, F.c), rel=1e-8)
    assert fit.clamp == 200_000
    # a quadratic that turns inside the range: f is held at its minimum beyond the turning point
    turned = s.fit_compression([1000, 2000, 4000, 8000], s.Compression(0.05, -0.8, 4.0)([1000, 2000, 4000, 8000]))
    assert turned.clamp == pytest.approx(math.exp(0.8 / 0.1), rel=1e-6)
    # f straight in ln V: a ≈ 0 (either sign), its turning point far away; the clamp stays
    sizes = [128, 256, 512, 1024]
    straight = s.fit_compression(sizes, [0.7 - 0.1 * math.log2(v / 128) for v in sizes])
    assert straight.clamp == 200_000 and straight(512) == pytest.approx(0.5)
    with pytest.raises(UserError, match="3 different"):
        s.fit_compression([1024, 1024, 2048], [0.4, 0.4, 0.3])


def test_fit_power_law_recovers_constants():
    rng = np.random.default_rng(1)
    c = np.geomspace(1e17, 1e22, 30)
    law = s.PAPER_ISOFLOPS.nv
    fit = s.fit_power_law(c, law(c))
    assert (fit.coef, fit.exponent) == pytest.approx((law.coef, law.exponent), rel=1e-9)
    noisy = law(c) * np.exp(rng.normal(0, 0.05, c.size))
    fit = s.fit_power_law(c, noisy)
    assert fit.exponent == pytest.approx(law.exponent, abs=0.02)
    fixed = s.fit_power_law(c, s.PAPER_ISOFLOPS.nnv(c), exponent=0.5)
    assert fixed.coef == pytest.approx(s.PAPER_ISOFLOPS.nnv.coef, rel=1e-9)


def test_lower_envelope():
    flops = np.array([5.0, 1.0, 3.0, 2.0, 4.0])
    loss = np.array([0.5, 3.0, 1.0, 2.5, 1.5])
    assert s.lower_envelope(flops, loss).tolist() == [1, 3, 2, 0]


def _synthetic_runs():
    """(N_nv, N_v, D) like the paper's grid: 6 model sizes × 10 vocabularies × 4 data sizes."""
    nnv, vocab, chars = np.meshgrid(
        [33e6, 85e6, 151e6, 302e6, 631e6, 1130e6],
        [4096, 6144, 8192, 10240, 16384, 24576, 32768, 48128, 64512, 96256],
        [1e9, 5e9, 2e10, 1e11],
        indexing="ij",
    )
    nnv, vocab, chars = nnv.ravel(), vocab.ravel(), chars.ravel()
    nv = vocab * np.array([s.embedding_dim(n) for n in nnv])
    return nnv, nv, s.tokens_from_characters(chars, vocab)


def test_fit_parametric_loss_recovers_constants():
    true = s.PAPER_PARAMETRIC
    nnv, nv, tokens = _synthetic_runs()
    fit = s.fit_parametric_loss(nnv, nv, tokens, true(nnv, nv, tokens))
    for name in ("A1", "A2", "B", "E", "alpha1", "alpha2", "beta"):
        assert getattr(fit, name) == pytest.approx(getattr(true, name), rel=1e-5), name


def test_fit_parametric_loss_with_noise_predicts_close_vocab():
    true = s.ParametricLoss(A1=2.0, A2=0.3, B=2.5, E=5.0, alpha1=0.4, alpha2=0.6, beta=0.4)
    nnv, nv, tokens = _synthetic_runs()
    noisy = true(nnv, nv, tokens) + np.random.default_rng(2).normal(0, 0.005, nnv.size)
    fit = s.fit_parametric_loss(nnv, nv, tokens, noisy)
    assert fit.alpha2 == pytest.approx(true.alpha2, abs=0.05)
    assert fit.beta == pytest.approx(true.beta, abs=0.05)
    for nnv_, c in [(302e6, 1e19), (2.87e9, 1e21)]:
        assert fit.optimal_nv(nnv_, c) == pytest.approx(true.optimal_nv(nnv_, c), rel=0.1)


def test_lower_envelope_keeps_one_point_per_flops_value():
    # IsoFLOPs grids put many points at one budget: only the lowest of them can be on the envelope
    flops = np.array([2.0, 1.0, 1.0, 2.0, 1.0, 3.0, 3.0])
    loss = np.array([1.5, 3.0, 2.0, 1.0, 2.5, 1.2, 0.9])
    assert s.lower_envelope(flops, loss).tolist() == [2, 3, 6]


def _huber_objective(x, y, delta):
    from scipy.special import huber

    return lambda p: float(np.sum(huber(delta, p[0] + p[1] * x - y)))


def test_huber_line_finds_the_minimum_of_the_reference_search():
    """The reference minimizes the Huber loss with L-BFGS-B from a grid of starts; the exact solver must do no
    worse, and shrug off the outliers a least-squares line follows."""
    from scipy.optimize import minimize, minimize_scalar

    rng = np.random.default_rng(3)
    x = rng.uniform(0, 10, 40)
    y = 1.5 + 0.4 * x + rng.normal(0, 0.02, 40)
    y[[3, 17, 30]] += [2.0, -1.5, 3.0]
    objective = _huber_objective(x, y, 1e-3)
    a, b = s.fit_line(x, y, delta=1e-3)
    starts = [(k, al) for k in np.linspace(-5, 5, 8) for al in np.linspace(0, 1, 8)]
    reference = min((minimize(objective, p, method="L-BFGS-B") for p in starts), key=lambda r: r.fun)
    assert objective([a, b]) <= reference.fun + 1e-9
    assert (a, b) == pytest.approx((1.5, 0.4), abs=0.03)
    assert abs(s.fit_line(x, y)[1] - 0.4) > abs(b - 0.4)  # least squares is pulled by the outliers
    # one parameter free: the minimum of a 1-D search
    a_fixed, _ = s.fit_line(x, y, slope=0.5, delta=1e-3)
    ref = minimize_scalar(lambda k: objective([k, 0.5]), bounds=(-10, 10), method="bounded", options={"xatol": 1e-10})
    assert objective([a_fixed, 0.5]) <= ref.fun + 1e-9
    _, b_fixed = s.fit_line(x, y, intercept=1.0, delta=1e-3)
    ref = minimize_scalar(lambda k: objective([1.0, k]), bounds=(-10, 10), method="bounded", options={"xatol": 1e-10})
    assert objective([1.0, b_fixed]) <= ref.fun + 1e-9


def _isoflops_grid(laws, budgets, rng, noise=0.0):
    """Per budget the optimal point on `laws` (L_u falls with C), plus worse allocations at the same budget and
    worse points between budgets, which the lower envelope must drop."""
    points, optimal = [], []
    for c, c_next in zip(budgets, list(budgets[1:]) + [budgets[-1] * 2]):
        best = -0.1 * math.log(c)
        jitter = np.exp(rng.normal(0, noise, 3))
        optimal.append(len(points))
        points.append((c, laws.nnv(c) * jitter[0], laws.nv(c) * jitter[1], laws.characters(c) * jitter[2], best))
        for _ in range(15):
            f = np.exp(rng.normal(0, 0.7, 3))
            points.append(
                (c, laws.nnv(c) * f[0], laws.nv(c) * f[1], laws.characters(c) * f[2], best + rng.uniform(0.01, 0.3))
            )
            between = c * (c_next / c) ** rng.uniform(0.1, 0.9)
            points.append(
                (between, laws.nnv(between), laws.nv(between), laws.characters(between), best + rng.uniform(0.001, 0.3))
            )
    return [np.array(col) for col in zip(*points)], optimal


def test_fit_isoflops_recovers_the_laws_on_the_lower_envelope():
    truth = s.IsoFlopsLaws(s.PowerLaw(0.03, 0.5), s.PowerLaw(0.7, 0.37), s.PowerLaw(9.0, 0.5))
    budgets = np.geomspace(1e15, 1e20, 11)
    rng = np.random.default_rng(0)
    (flops, nnv, nv, chars, loss), optimal = _isoflops_grid(truth, budgets, rng)
    fit = s.fit_isoflops(flops, nnv, nv, chars, loss)
    assert sorted(fit.selected) == optimal
    for key in ("nnv", "nv", "characters"):
        law = getattr(fit.laws, key)
        assert (law.coef, law.exponent) == pytest.approx(
            (getattr(truth, key).coef, getattr(truth, key).exponent), rel=1e-6
        )
        assert fit.r2[key] == pytest.approx(1.0)
    assert fit.laws.nnv.exponent == 0.5 and fit.laws.characters.exponent == 0.5  # fixed, as the reference

    # free exponents find exponents other than 0.5; with noise the envelope is the same and the fit close
    skewed = s.IsoFlopsLaws(s.PowerLaw(0.03, 0.55), s.PowerLaw(0.7, 0.37), s.PowerLaw(9.0, 0.45))
    (flops, nnv, nv, chars, loss), optimal = _isoflops_grid(skewed, budgets, rng, noise=0.05)
    free = s.fit_isoflops(flops, nnv, nv, chars, loss, free_exponents=True)
    assert sorted(free.selected) == optimal
    for key, exponent in (("nnv", 0.55), ("nv", 0.37), ("characters", 0.45)):
        assert getattr(free.laws, key).exponent == pytest.approx(exponent, abs=0.03)
    fixed = s.fit_isoflops(flops, nnv, nv, chars, loss)
    assert fixed.laws.nnv.exponent == 0.5 and fixed.free_exponents is False
    with pytest.raises(UserError, match="at least 2 budgets"):
        s.fit_isoflops([1e15, 1e15], [1, 2], [1, 2], [1, 2], [0.5, 0.4])
