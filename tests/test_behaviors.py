"""Behaviors (f, g) and annotators, checked against the paper's formulas written out by hand.

Items are the ids 0..4 of a Categorical p* (so everything can be enumerated). Every behavior
example states its f and g in numpy, and the preference probability in the paper's own form,
a ratio of powers of densities (eqs. 9, 15/16, 18, 26), which the code computes as σ(Ω_A − Ω_B).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import mpmath
import numpy as np
import pytest
import torch

import pbde
from pbde.densities import Categorical, Mixture

P_STAR = np.array([0.05, 0.15, 0.2, 0.25, 0.35])
REF = np.array([0.3, 0.25, 0.2, 0.15, 0.1])  # π_ref
ITEMS = np.arange(5)
LENGTH = ITEMS + 1.0  # |x| for the length-normalized rule


def categorical(probs) -> Categorical:
    return Categorical(probs=torch.tensor(probs, dtype=torch.float32))


def all_pairs() -> tuple[torch.Tensor, torch.Tensor]:
    xa, xb = torch.meshgrid(torch.arange(5), torch.arange(5), indexing="ij")
    return xa.reshape(-1), xb.reshape(-1)


def sigmoid(h):
    return 1.0 / (1.0 + np.exp(-h))


@dataclass
class BehaviorExample:
    """A behavior and its paper form.

    Attributes:
        make: ``reference density -> PBDE``.
        f, g: numpy functions of item ids.
        weight: numpy function of item ids, ``exp(Ω(x))`` written as the paper's product of
            powers of densities, so that ``P(A ≻ B) = weight(A) / (weight(A) + weight(B))``.
    """

    id: str
    make: Callable[[Categorical], pbde.PBDE]
    f: Callable[[np.ndarray], np.ndarray]
    g: Callable[[np.ndarray], np.ndarray]
    weight: Callable[[np.ndarray], np.ndarray]


BETA, ALPHA = 0.5, 0.3
BEHAVIORS = [
    BehaviorExample(  # eq. 9: Luce / Bradley–Terry
        "luce",
        lambda ref: pbde.luce(),
        lambda x: np.ones(len(x)),
        lambda x: np.zeros(len(x)),
        lambda x: P_STAR[x],
    ),
    BehaviorExample(  # eq. 26: p(x)^(1/|x|)
        "length_normalized",
        lambda ref: pbde.length_normalized(lambda x: x + 1),
        lambda x: 1.0 / LENGTH[x],
        lambda x: np.zeros(len(x)),
        lambda x: P_STAR[x] ** (1.0 / LENGTH[x]),
    ),
    BehaviorExample(  # eq. 15: Ω = β log p − β log π_ref
        "dpo",
        lambda ref: pbde.dpo(BETA, ref),
        lambda x: np.full(len(x), BETA),
        lambda x: -BETA * np.log(REF[x]),
        lambda x: (P_STAR[x] / REF[x]) ** BETA,
    ),
    BehaviorExample(  # TRL's ipo/sigmoid_norm: Ω = β (log p − log π_ref) / |x|
        "dpo_per_length",
        lambda ref: pbde.dpo(BETA, ref, length=lambda x: x + 1),
        lambda x: BETA / LENGTH[x],
        lambda x: -BETA * np.log(REF[x]) / LENGTH[x],
        lambda x: (P_STAR[x] / REF[x]) ** (BETA / LENGTH[x]),
    ),
    BehaviorExample(  # eq. 18: f = 1/α, g = (1 − 1/α) log π_ref
        "geometric",
        lambda ref: pbde.geometric(ALPHA, ref),
        lambda x: np.full(len(x), 1.0 / ALPHA),
        lambda x: (1.0 - 1.0 / ALPHA) * np.log(REF[x]),
        lambda x: P_STAR[x] ** (1.0 / ALPHA) * REF[x] ** (1.0 - 1.0 / ALPHA),
    ),
    BehaviorExample(
        "callable-f-and-g",
        lambda ref: pbde.PBDE(f=lambda x: (x + 2.0) / 3.0, g=lambda x: torch.sin(x.double())),
        lambda x: (x + 2.0) / 3.0,
        lambda x: np.sin(x),
        lambda x: P_STAR[x] ** ((x + 2.0) / 3.0) * np.exp(np.sin(x)),
    ),
    BehaviorExample(
        "constants",
        lambda ref: pbde.PBDE(f=2.0, g=-1.5),
        lambda x: np.full(len(x), 2.0),
        lambda x: np.full(len(x), -1.5),
        lambda x: P_STAR[x] ** 2.0 * math.exp(-1.5),
    ),
]
behavior_ids = [b.id for b in BEHAVIORS]


def make_annotator(example: BehaviorExample) -> pbde.Annotator:
    return pbde.Annotator(categorical(P_STAR), example.make(categorical(REF)))


def omega_by_hand(example: BehaviorExample, x: np.ndarray) -> np.ndarray:
    return example.f(x) * np.log(P_STAR[x]) + example.g(x)


@pytest.mark.parametrize("example", BEHAVIORS, ids=behavior_ids)
def test_f_and_g(example):
    behavior = example.make(categorical(REF))
    x = torch.arange(5)
    np.testing.assert_allclose(behavior.f(x).double().numpy(), example.f(ITEMS), rtol=1e-6)
    np.testing.assert_allclose(
        behavior.g(x).double().numpy(), example.g(ITEMS), rtol=1e-6, atol=1e-7
    )


@pytest.mark.parametrize("example", BEHAVIORS, ids=behavior_ids)
def test_omega_and_its_inverse(example):
    annotator = make_annotator(example)
    x = torch.arange(5)
    with torch.no_grad():
        omega = annotator.omega(x)
        log_p = annotator.density.log_prob(x)
    # atol: float32 rounding where Ω crosses 0 (p* = π_ref at item 2)
    np.testing.assert_allclose(
        omega.double().numpy(), omega_by_hand(example, ITEMS), rtol=1e-6, atol=1e-7
    )
    torch.testing.assert_close(annotator.behavior.invert(omega, x), log_p.to(omega))


@pytest.mark.parametrize("example", BEHAVIORS, ids=behavior_ids)
def test_logits_and_prob_are_the_paper_formulas(example):
    annotator = make_annotator(example)
    xa, xb = all_pairs()
    a, b = xa.numpy(), xb.numpy()
    with torch.no_grad():
        logits = annotator.logits(xa, xb).double().numpy()
        prob = annotator.prob(xa, xb).double().numpy()
    np.testing.assert_allclose(
        logits, omega_by_hand(example, a) - omega_by_hand(example, b), rtol=1e-5, atol=1e-6
    )
    wa, wb = example.weight(a), example.weight(b)
    np.testing.assert_allclose(prob, wa / (wa + wb), rtol=1e-5)
    np.testing.assert_allclose(prob[a == b], 0.5)  # a tie with itself


@pytest.mark.parametrize("example", BEHAVIORS, ids=behavior_ids)
def test_label_frequencies_match_prob(example):
    annotator = make_annotator(example)
    xa, xb = all_pairs()
    repeats = 400
    prefs = annotator.label(
        xa.repeat(repeats), xb.repeat(repeats), generator=torch.Generator().manual_seed(0)
    )
    assert isinstance(prefs, pbde.Preferences)
    assert set(prefs.y.unique().tolist()) <= {0.0, 1.0}
    frequency = prefs.y.reshape(repeats, -1).double().mean(0).numpy()
    wa, wb = example.weight(xa.numpy()), example.weight(xb.numpy())
    p = wa / (wa + wb)
    standard_error = np.sqrt(p * (1 - p) / repeats)
    assert np.all(np.abs(frequency - p) <= 4 * standard_error + 1e-12)


@pytest.mark.parametrize("example", BEHAVIORS, ids=behavior_ids)
def test_log_likelihood_is_minus_bce(example):
    annotator = make_annotator(example)
    xa, xb = all_pairs()
    y = torch.linspace(0, 1, len(xa))  # hard and soft labels
    prefs = pbde.Preferences(xa, xb, y)
    with torch.no_grad():
        got = annotator.log_likelihood(prefs).double().numpy()
        assert torch.equal(
            annotator.log_likelihood(prefs),
            -pbde.losses.bce(annotator.logits(xa, xb), y),
        )
    h = omega_by_hand(example, xa.numpy()) - omega_by_hand(example, xb.numpy())
    yn = y.double().numpy()
    expected = yn * np.log(sigmoid(h)) + (1 - yn) * np.log(sigmoid(-h))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


# -- behavior details ---------------------------------------------------------------------


@pytest.mark.parametrize("make", [lambda r: pbde.dpo(0.7, r), lambda r: pbde.geometric(2.0, r)])
def test_reference_is_a_frozen_copy(make):
    reference = categorical(REF)
    behavior = make(reference)
    x = torch.arange(5)
    before = behavior.g(x).clone()
    with torch.no_grad():
        reference.logits.copy_(torch.zeros(5))  # the caller's reference changes afterwards
    torch.testing.assert_close(behavior.g(x), before)
    model = pbde.Annotator(categorical(P_STAR), behavior)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(trainable) == 1 and trainable[0] is model.density.logits


def test_dpo_with_beta_one_is_the_log_ratio():
    """With β = 1 the DPO score is log π/π_ref, the implicit reward (eq. 15)."""
    behavior = pbde.dpo(1.0, categorical(REF))
    annotator = pbde.Annotator(categorical(P_STAR), behavior)
    with torch.no_grad():
        np.testing.assert_allclose(
            annotator.omega(torch.arange(5)).double().numpy(), np.log(P_STAR / REF), rtol=1e-6
        )


def test_dpo_per_length_with_beta_one_is_the_mean_log_ratio_per_token():
    """TRL's ``ipo``/``sigmoid_norm`` score: (log π(x) − log π_ref(x)) / |x|."""
    annotator = pbde.Annotator(
        categorical(P_STAR), pbde.dpo(1.0, categorical(REF), length=lambda x: x + 1)
    )
    with torch.no_grad():
        np.testing.assert_allclose(
            annotator.omega(torch.arange(5)).double().numpy(),
            np.log(P_STAR / REF) / LENGTH,
            rtol=1e-6,
            atol=1e-7,
        )


@pytest.mark.parametrize(
    ("length", "error", "match"),
    [
        (3, TypeError, "'length' must be None or a callable of x. Got 3"),
        (lambda x: x, ValueError, r"length\(x\)"),  # item 0 has length 0
        (lambda x: x - 1.0, ValueError, r"length\(x\)"),
    ],
)
def test_dpo_rejects_bad_lengths(length, error, match):
    with pytest.raises(error, match=match):
        behavior = pbde.dpo(BETA, categorical(REF), length=length)
        behavior.f(torch.arange(5))
    if error is ValueError:  # g divides by the same checked length
        with pytest.raises(error, match=match):
            behavior.g(torch.arange(5))


def test_constant_f_is_reported():
    assert pbde.luce().constant_f == 1.0
    assert pbde.dpo(0.25, categorical(REF)).constant_f == 0.25
    assert pbde.geometric(4.0, categorical(REF)).constant_f == 0.25
    assert pbde.length_normalized(lambda x: x + 1).constant_f is None
    assert pbde.dpo(0.25, categorical(REF), length=lambda x: x + 1).constant_f is None


# -- mixtures of annotators (eq. 25) --------------------------------------------------------


def components():
    """Three annotators with different tastes and behaviors, and their h by hand."""
    annotators = [
        pbde.Annotator(categorical(P_STAR)),
        pbde.Annotator(categorical(REF)),
        pbde.Annotator(categorical(P_STAR), pbde.dpo(BETA, categorical(REF))),
    ]

    def h(a, b):
        return np.stack(
            [
                np.log(P_STAR[a]) - np.log(P_STAR[b]),
                np.log(REF[a]) - np.log(REF[b]),
                BETA * (np.log(P_STAR[a] / REF[a]) - np.log(P_STAR[b] / REF[b])),
            ],
            axis=-1,
        )

    return annotators, h


WEIGHTS = np.array([0.2, 0.5, 0.3])


def test_mixture_annotator_logits_are_logit_of_weighted_probs():
    annotators, h = components()
    mixture = pbde.MixtureAnnotator(annotators, torch.tensor(WEIGHTS * 10))  # normalized
    xa, xb = all_pairs()
    naive = (WEIGHTS * sigmoid(h(xa.numpy(), xb.numpy()))).sum(-1)
    with torch.no_grad():
        logits = mixture.logits(xa, xb).double().numpy()
        prob = mixture.prob(xa, xb).double().numpy()
    np.testing.assert_allclose(logits, np.log(naive / (1 - naive)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(prob, naive, rtol=1e-6)
    np.testing.assert_allclose(mixture.weights.double().numpy(), WEIGHTS, rtol=1e-6)


def mpmath_mixture_logit(weights, h) -> float:
    """logit(Σ w σ(h)) with 600 significant digits: 1 − P is computed naively."""
    with mpmath.workdps(600):
        p = sum(
            mpmath.mpf(w) / (1 + mpmath.exp(-mpmath.mpf(hi)))
            for w, hi in zip(weights, h, strict=True)
        )
        return float(mpmath.log(p) - mpmath.log(1 - p))


HUGE_MARGINS = [
    [500.0, -500.0, 0.0],
    [500.0, 400.0, 450.0],
    [-500.0, -480.0, -700.0],
    [0.0, 700.0, -3.0],
    [40.0, 38.0, 45.0],  # beyond float32 resolution of σ but not of log σ
    [-1e4, 1e4, 2.0],
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mixture_annotator_combine_is_stable_for_huge_margins(dtype):
    torch.set_default_dtype(dtype)  # the weights are stored in the default dtype
    mixture = pbde.MixtureAnnotator(components()[0], torch.tensor(WEIGHTS))
    h = torch.tensor(HUGE_MARGINS, dtype=dtype)
    got = mixture.combine(h)
    assert got.dtype == dtype
    assert torch.isfinite(got).all()
    expected = [mpmath_mixture_logit(WEIGHTS, row) for row in HUGE_MARGINS]
    rtol = 1e-6 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=rtol, atol=rtol)


def test_mixture_annotator_with_huge_margins_end_to_end():
    """Annotators whose score differences are ±500 (g = ±500·x) still give finite logits."""
    uniform = categorical(np.full(5, 0.2))
    likes_large = pbde.Annotator(uniform, pbde.PBDE(g=lambda x: 500.0 * x.double()))
    likes_small = pbde.Annotator(uniform, pbde.PBDE(g=lambda x: -500.0 * x.double()))
    mixture = pbde.MixtureAnnotator([likes_large, likes_small], torch.tensor([0.3, 0.7]))
    xa, xb = torch.tensor([1, 0, 3]), torch.tensor([0, 1, 2])
    logits = mixture.logits(xa, xb)
    margins = 500.0 * (xa - xb).double().numpy()
    expected = [mpmath_mixture_logit([0.3, 0.7], [m, -m]) for m in margins]
    np.testing.assert_allclose(logits.detach().double().numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(
        mixture.prob(xa, xb).detach().double().numpy(), [0.3, 0.7, 0.3], rtol=1e-6
    )


def test_mixture_annotator_label_records_who_labelled():
    annotators, h = components()
    mixture = pbde.MixtureAnnotator(annotators, torch.tensor(WEIGHTS))
    n = 20000
    xa = torch.full((n,), 4)  # P* likes 4 and REF likes 0: annotators disagree on this pair
    xb = torch.full((n,), 0)
    prefs = mixture.label(xa, xb, generator=torch.Generator().manual_seed(0))
    ids = prefs.annotator_id
    assert ids is not None and ids.shape == (n,) and not ids.is_floating_point()
    frequency = np.bincount(ids.numpy(), minlength=3) / n
    standard_error = np.sqrt(WEIGHTS * (1 - WEIGHTS) / n)
    assert np.all(np.abs(frequency - WEIGHTS) <= 4 * standard_error)
    p = sigmoid(h(np.array([4]), np.array([0])))[0]  # each annotator's own probability
    for i in range(3):
        mine = prefs.y[ids == i].double().numpy()
        assert abs(mine.mean() - p[i]) <= 4 * math.sqrt(p[i] * (1 - p[i]) / len(mine))


def test_mixture_annotator_learn_weights():
    mixture = pbde.MixtureAnnotator(components()[0], learn_weights=True)
    assert mixture.weight_logits.requires_grad
    torch.testing.assert_close(mixture.weights, torch.full((3,), 1 / 3))
    fixed = pbde.MixtureAnnotator(components()[0])
    assert not fixed.weight_logits.requires_grad


def test_annotator_of_a_mixture_differs_from_a_mixture_of_annotators():
    """Eq. 24 (one annotator whose p* is a mixture) vs eq. 25 (each comparison made by one of
    two annotators): on the pair (0, 2) they disagree."""
    p1, p2, w = np.array([0.7, 0.1, 0.2]), np.array([0.1, 0.7, 0.2]), np.array([0.4, 0.6])
    one_annotator = pbde.Annotator(Mixture([categorical(p1), categorical(p2)], w))
    population = pbde.MixtureAnnotator(
        [pbde.Annotator(categorical(p1)), pbde.Annotator(categorical(p2))], torch.tensor(w)
    )
    a, b = 0, 2
    mixed = w[0] * p1 + w[1] * p2
    eq24 = mixed[a] / (mixed[a] + mixed[b])  # = 0.34 / 0.54
    eq25 = w[0] * p1[a] / (p1[a] + p1[b]) + w[1] * p2[a] / (p2[a] + p2[b])  # 0.311 + 0.200
    assert abs(eq24 - eq25) > 0.1
    xa, xb = torch.tensor([a]), torch.tensor([b])
    with torch.no_grad():
        assert float(one_annotator.prob(xa, xb)) == pytest.approx(eq24, rel=1e-6)
        assert float(population.prob(xa, xb)) == pytest.approx(eq25, rel=1e-6)
