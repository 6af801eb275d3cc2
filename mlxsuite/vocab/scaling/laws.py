"""Scaling laws with vocabulary (Tao et al., NeurIPS 2024): FLOPs, tokens per character and the three predictors of
the compute-optimal vocabulary size. Pure numpy, no MLX.

Conventions follow the public reference code (sail-sg/scaling-with-vocab, `optimal_Nv_predict.py`, `utils.py`),
which reproduces the paper's Table 1 where the paper's text and the code differ:

- N_nv: non-vocabulary parameters (attention, MLP, norms); N_v = V·d: vocabulary parameters, **one** V×d matrix
  even when input embedding and output head are untied (paper footnote 1). All counts are plain numbers (not millions)
  unless a name or docstring says otherwise.
- H: training characters; D = H·f(V): training tokens; C = 6·(N_nv + V·d)·D: training FLOPs (output head counted
  once, no attention term).
- d is not free: it follows from N_nv by the paper's Table 5 (`embedding_dim`), unless the caller knows it.
- Natural logarithms throughout. Predicted N_v is truncated to an int and V = N_v // d, as the reference code does.

The published constants are the defaults (frozen dataclasses); every predictor takes replacements, e.g. a
`Compression` fitted on your own tokenizers or a `ParametricLoss` fitted on your own runs (`scaling.fits`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mlxsuite.platform.errors import UserError

# ---- tokens per character ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Compression:
    """Tokens per character f(V) = a·ln²V' + b·lnV' + c with V' = min(V, clamp).

    Defaults: the reference code's constants (the paper rounds them to 0.0064, -0.1581, 1.2047), fitted on
    SentencePiece BPE tokenizers over SlimPajama. The clamp exists because the quadratic turns upward near 235K.
    """

    a: float = 0.00639222
    b: float = -0.15811069
    c: float = 1.20470122
    clamp: float = 200_000

    def __call__(self, vocab):
        """f(V): tokens per character for vocabulary size V (scalar or array)."""
        lnv = np.log(np.minimum(vocab, self.clamp))
        return self.a * lnv**2 + self.b * lnv + self.c

    def slope(self, vocab):
        """df/dV; zero above the clamp."""
        v = np.asarray(vocab, dtype=float)
        return np.where(v < self.clamp, (2 * self.a * np.log(v) + self.b) / v, 0.0)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Compression:
        """Reads a, b, c (and clamp, if present); other keys, such as fit statistics, are ignored."""
        try:
            a, b, c = (float(d[k]) for k in "abc")
        except (KeyError, TypeError, ValueError):
            raise UserError("a compression needs numeric 'a', 'b' and 'c'") from None
        clamp = float(d.get("clamp", cls.clamp))
        if not all(map(math.isfinite, (a, b, c, clamp))) or clamp <= 1:
            raise UserError("compression constants must be finite numbers and the clamp above 1")
        return cls(a, b, c, clamp)

    @classmethod
    def load(cls, path: str | Path) -> Compression:
        """A JSON file with top-level a, b, c (as written by `mlxsuite vocab fit-compression --save`)."""
        try:
            doc = json.loads(Path(path).read_text())
        except OSError as e:
            raise UserError(f"cannot read compression file {path}: {e.strerror or e}") from None
        except ValueError:
            raise UserError(f"compression file {path} is not valid JSON") from None
        if not isinstance(doc, dict):
            raise UserError(f"compression file {path} must hold a JSON object with a, b, c")
        return cls.from_dict(doc)


PAPER_COMPRESSION = Compression()


def tokens_from_characters(characters, vocab, compression: Compression = PAPER_COMPRESSION):
    """D = H·f(V): training tokens from training characters."""
    return characters * compression(vocab)


def characters_from_tokens(tokens, vocab, compression: Compression = PAPER_COMPRESSION):
    """H = D / f(V): training characters from training tokens."""
    return tokens / compression(vocab)


# ---- N_nv → d and FLOPs -----------------------------------------------------------------------------------------

# Paper Table 5 (= reference `Nnv_to_d`): N_nv up to and including the bound → embedding dimension d.
# The paper prints 12888 for (100B, 200B]; the code's 12288 is the one that reproduces Table 1.
# The table ends at 1000B; the reference code falls back to d = 24576 beyond it, we ask for d instead.
NNV_TO_D: tuple[tuple[float, int], ...] = (
    (50e6, 512),
    (200e6, 768),
    (500e6, 1024),
    (1e9, 1536),
    (2e9, 2048),
    (5e9, 3200),
    (10e9, 4096),
    (20e9, 5120),
    (50e9, 6048),
    (100e9, 8192),
    (200e9, 12288),
    (500e9, 16384),
    (1e12, 20480),
)


def _check_positive(name: str, value) -> None:
    if not (isinstance(value, (int, float, np.number)) and math.isfinite(value) and value > 0):
        raise UserError(f"{name} must be a positive number, got {value}")


def embedding_dim(nnv: float) -> int:
    """Embedding dimension d for N_nv non-vocabulary parameters (intervals are left-open, right-closed)."""
    _check_positive("N_nv", nnv)
    for bound, d in NNV_TO_D:
        if nnv <= bound:
            return d
    raise UserError(f"N_nv = {nnv:.4g} is beyond the N_nv → d table (up to 1e12): give the embedding dimension d")


def training_flops(nnv, vocab, characters, d: int | None = None, compression: Compression = PAPER_COMPRESSION):
    """C = 6·(N_nv + V·d)·H·f(V) FLOPs for H training characters (paper Eq. 5; reference `func_flops`)."""
    d = embedding_dim(nnv) if d is None else d
    return 6 * (nnv + vocab * d) * tokens_from_characters(characters, vocab, compression)


# ---- approach 1: IsoFLOPs power laws ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PowerLaw:
    """y = coef · x^exponent."""

    coef: float
    exponent: float

    def __call__(self, x):
        return self.coef * np.power(x, self.exponent)

    def inverse(self, y):
        """x such that coef · x^exponent = y."""
        return np.power(y / self.coef, 1 / self.exponent)


@dataclass(frozen=True)
class IsoFlopsLaws:
    """Approach 1: compute-optimal N_nv, N_v (parameters) and H (characters) as power laws of the budget C (FLOPs).

    Defaults are the reference code's fit (paper: 0.08·C^0.50, 0.20·C^0.42, 6.42·C^0.50). The N_nv and H exponents
    are fixed at 0.5 (model size and data scaled equally). The H law is printed by the reference fit script only.
    """

    nnv: PowerLaw = PowerLaw(math.exp(-2.4846510161625193), 0.5)
    nv: PowerLaw = PowerLaw(math.exp(-1.589031299255507), 0.4163622634135234)
    characters: PowerLaw = PowerLaw(math.exp(1.85958504), 0.5)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> IsoFlopsLaws:
        return cls(**{k: PowerLaw(**v) for k, v in d.items()})


PAPER_ISOFLOPS = IsoFlopsLaws()


def compute_optimal_flops(nnv, laws: IsoFlopsLaws = PAPER_ISOFLOPS):
    """C_opt(N_nv): the budget (FLOPs) for which N_nv is compute-optimal (reference `Nnvopt_to_flops`)."""
    return laws.nnv.inverse(nnv)


def compute_optimal_nnv(flops, laws: IsoFlopsLaws = PAPER_ISOFLOPS):
    """N_nv that is compute-optimal for a budget of `flops` (reference `flops_to_Nnvopt`)."""
    return laws.nnv(flops)


@dataclass(frozen=True)
class Prediction:
    """An optimal vocabulary: N_v = V·d parameters (truncated to int, as the reference), V = N_v // d, for budget C."""

    nv: int
    vocab: int
    flops: float

    @classmethod
    def from_nv(cls, nv: float, d: int, flops: float) -> Prediction:
        nv = int(nv)
        return cls(nv, int(nv // d), float(flops))


def predict_isoflops(nnv: float, d: int | None = None, laws: IsoFlopsLaws = PAPER_ISOFLOPS) -> Prediction:
    """Approach 1 at the compute-optimal budget: C = C_opt(N_nv), N_v = laws.nv(C)."""
    _check_positive("N_nv", nnv)
    d = embedding_dim(nnv) if d is None else d
    flops = compute_optimal_flops(nnv, laws)
    return Prediction.from_nv(laws.nv(flops), d, flops)


# ---- approach 2: derivative-based estimate ----------------------------------------------------------------------


def _bisect(fn: Callable[[float], float], lo: float, hi: float, iters: int = 200) -> float:
    """Root of a function that is positive at lo and negative at hi (or the reverse)."""
    f_lo = fn(lo)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        f_mid = fn(mid)
        if (f_mid > 0) == (f_lo > 0):
            lo, f_lo = mid, f_mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def flops_slope(vocab: float, nnv: float, d: int, compression: Compression = PAPER_COMPRESSION) -> float:
    """∂C/∂V divided by 6H (H drops out): d·f(V) + (N_nv + V·d)·f'(V). Above the clamp only d·f(V) remains."""
    return d * compression(vocab) + (nnv + vocab * d) * compression.slope(vocab)


def derivative_root(nnv: float, d: int | None = None, compression: Compression = PAPER_COMPRESSION) -> float:
    """The raw V* with ∂C/∂V = 0 (paper Eq. 7): the vocabulary that needs the fewest FLOPs for the same characters.

    This is the minimum of C over V at fixed N_nv and H. If C only grows with V the answer is 1; if it still falls
    at the clamp, the clamp (there f stops falling and C grows with V).
    """
    _check_positive("N_nv", nnv)
    d = embedding_dim(nnv) if d is None else d

    def slope(lnv: float) -> float:
        return float(flops_slope(math.exp(lnv), nnv, d, compression))

    hi = math.log(compression.clamp) - 1e-12  # just below the clamp, where f still falls
    if slope(0.0) >= 0:
        return 1.0
    if slope(hi) < 0:
        return float(compression.clamp)
    return math.exp(_bisect(slope, 0.0, hi))


# N_nv of the paper's seven model families (reference `approach2_derivative.py`): the points γ is fitted on.
ROOT_NNV = (33e6, 85e6, 151e6, 302e6, 631e6, 1130e6, 2870e6)


@dataclass(frozen=True)
class DerivativeLaw:
    """Approach 2: N_v,opt = anchor_nv · (N_nv / anchor_nnv)^γ.

    γ = 0.8354 is fitted on the raw roots of ∂C/∂V = 0 (`fit_gamma` over `ROOT_NNV`); the absolute level comes from
    an experiment: among the 33M-parameter runs, V = 6144 (N_v = 6144·512) had the lowest L_u at C = 2.7e17.
    """

    anchor_nnv: float = 33e6
    anchor_nv: float = 6144 * 512
    gamma: float = 0.8353974035228025

    def __call__(self, nnv):
        return self.anchor_nv * np.power(nnv / self.anchor_nnv, self.gamma)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DerivativeLaw:
        return cls(**d)


PAPER_DERIVATIVE = DerivativeLaw()


def predict_derivative(
    nnv: float, d: int | None = None, law: DerivativeLaw = PAPER_DERIVATIVE, laws: IsoFlopsLaws = PAPER_ISOFLOPS
) -> Prediction:
    """Approach 2. It assumes compute-optimal training, so the budget reported is C_opt(N_nv) from `laws`."""
    _check_positive("N_nv", nnv)
    d = embedding_dim(nnv) if d is None else d
    return Prediction.from_nv(law(nnv), d, compute_optimal_flops(nnv, laws))


# ---- approach 3: parametric loss --------------------------------------------------------------------------------

MILLION, BILLION, FLOPS_UNIT = 1e6, 1e9, 1e15


@dataclass(frozen=True)
class ParametricLoss:
    """Approach 3: L_u(N_nv, N_v, D) = -E + A1/N_nv^alpha1 + A2/N_v^alpha2 + B/D^beta (nats, unigram-normalized).

    The constants are in the paper's units: N_nv and N_v in **millions** of parameters, D in **billions** of tokens
    (so a budget is in units of 1e15 FLOPs). The fit ties alpha1 = beta. Methods take plain counts and convert.

    Note: the reference fit evaluated D as (H/1e9)·f(V/1000) (V already in thousands), about 3x the true token
    count, while its prediction uses the true D = C / (6(N_nv + N_v)). With these constants the optimal V matches
    the paper, but loss *values* from the true D sit about 0.46 nats above the measured L_u.
    """

    A1: float = 1.8313851559554126
    A2: float = 0.19584238398665638
    B: float = 2.1241123120064955
    E: float = 5.5327846803337435
    alpha1: float = 0.44660634152009615
    alpha2: float = 0.6707374679896795
    beta: float = 0.44660634152009615

    def __call__(self, nnv, nv, tokens):
        """L_u for N_nv, N_v parameters and D training tokens (plain counts)."""
        n, x, t = nnv / MILLION, nv / MILLION, tokens / BILLION
        return -self.E + self.A1 / n**self.alpha1 + self.A2 / x**self.alpha2 + self.B / t**self.beta

    def optimal_nv(self, nnv: float, flops: float) -> float:
        """N_v (parameters) minimizing L_u at fixed N_nv and budget C, with D = C / (6(N_nv + N_v)).

        ∂L_u/∂V = 0 reduces to alpha2·A2·x^-(alpha2+1) = beta·B·6^beta·(N + x)^(beta-1)·F^-beta with x = N_v,
        N = N_nv in millions and F = C/1e15: d cancels, so N_v depends only on (N_nv, C). The left side minus the
        right side (in logs) falls strictly with x, so the root is unique; we bisect on ln x.
        """
        _check_positive("N_nv", nnv)
        _check_positive("FLOPs", flops)
        n, f = nnv / MILLION, flops / FLOPS_UNIT
        a2, b = self.alpha2, self.beta
        if min(a2 * self.A2, b * self.B) <= 0:
            raise UserError(f"no optimal N_v for these loss constants (alpha2·A2 and beta·B must be positive): {self}")
        const = math.log(a2 * self.A2) - math.log(b * self.B) - b * math.log(6) + b * math.log(f)

        def gap(lnx: float) -> float:
            return const - (a2 + 1) * lnx + (1 - b) * math.log(n + math.exp(lnx))

        lo, hi = -10.0, 10.0
        for _ in range(60):  # widen the bracket; ln x in ±600 covers every float
            if gap(lo) >= 0 and gap(hi) <= 0:
                return math.exp(_bisect(gap, lo, hi)) * MILLION
            lo, hi = lo - 10, hi + 10
        raise UserError(f"no optimal N_v for these loss constants (alpha2 + beta must be positive): {self}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ParametricLoss:
        return cls(**d)


PAPER_PARAMETRIC = ParametricLoss()


def predict_parametric(
    nnv: float,
    flops: float | None = None,
    d: int | None = None,
    loss: ParametricLoss = PAPER_PARAMETRIC,
    laws: IsoFlopsLaws = PAPER_ISOFLOPS,
) -> Prediction:
    """Approach 3 at a budget of `flops` (default: the compute-optimal C_opt(N_nv) from `laws`)."""
    _check_positive("N_nv", nnv)
    d = embedding_dim(nnv) if d is None else d
    if flops is None:
        flops = compute_optimal_flops(nnv, laws)
    return Prediction.from_nv(loss.optimal_nv(nnv, flops), d, flops)


# ---- spending a budget ------------------------------------------------------------------------------------------


def allocate(nnv: float, d: int, nv: float, flops: float, compression: Compression = PAPER_COMPRESSION) -> dict:
    """Spend a budget on a model: V = N_v // d, D = C / (6(N_nv + V·d)) tokens, H = D / f(V) characters."""
    vocab = max(1, int(nv // d))
    tokens = flops / (6 * (nnv + vocab * d))
    return {
        "nnv": nnv,
        "d": d,
        "nv": vocab * d,
        "vocab": vocab,
        "tokens": tokens,
        "characters": float(characters_from_tokens(tokens, vocab, compression)),
    }


APPROACHES = ("isoflops", "derivative", "parametric")


def plan_budget(
    flops: float,
    approach: str = "parametric",
    d: int | None = None,
    compression: Compression = PAPER_COMPRESSION,
    derivative: DerivativeLaw = PAPER_DERIVATIVE,
) -> dict:
    """Compute-optimal allocation of a budget: N_nv from the IsoFLOPs law, N_v from `approach`, then `allocate`."""
    _check_positive("FLOPs", flops)
    if approach not in APPROACHES:
        raise UserError(f"unknown approach {approach!r}: choose from {', '.join(APPROACHES)}")
    nnv = float(compute_optimal_nnv(flops))
    d = d or embedding_dim(nnv)
    if approach == "isoflops":
        nv = PAPER_ISOFLOPS.nv(flops)
    elif approach == "derivative":
        nv = derivative(nnv)
    else:
        nv = PAPER_PARAMETRIC.optimal_nv(nnv, flops)
    return {"flops": flops, "approach": approach, **allocate(nnv, d, nv, flops, compression)}
