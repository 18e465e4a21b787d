"""Densities: one table of examples drives generic checks against independent references.

Every example states, next to the density, how to check it without pbde: a log-density written
with scipy or numpy, a reference CDF (scipy, or a closed form) for a goodness-of-fit test of the
sampler, or the probability table of a finite support. Normalization integrals use a pbde
``Support``/``Grid``, whose trapezoid rule is itself checked against numpy and closed forms at the
end of this file.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyro.distributions
import pytest
import scipy.integrate
import scipy.special
import scipy.stats
import torch
from torch.func import functional_call

import pbde
from pbde.densities import (
    Categorical,
    Density,
    EnergyModel,
    FromDistribution,
    Mixture,
    Tabulated,
    TruncatedNormalMixture,
)

N_SAMPLES = 4000
MIN_P_VALUE = 1e-3  # fixed seeds: a correct sampler passes, a wrong one gives p ~ 0


# -- independent references ---------------------------------------------------------------


def truncnorm_mixture_reference(loc, scale, weights, low, high):
    """log-density and CDF of a truncated-normal mixture, from scipy.stats.truncnorm."""
    weights = np.asarray(weights, dtype=np.float64) / np.sum(weights)
    parts = [
        scipy.stats.truncnorm((low - m) / s, (high - m) / s, loc=m, scale=s)
        for m, s in zip(loc, scale, strict=True)
    ]

    def log_prob(x):
        x = np.asarray(x, dtype=np.float64)
        return scipy.special.logsumexp(
            [np.log(w) + d.logpdf(x) for w, d in zip(weights, parts, strict=True)], axis=0
        )

    def cdf(x):
        return sum(w * d.cdf(x) for w, d in zip(weights, parts, strict=True))

    return log_prob, cdf


def energy_model_reference(model: EnergyModel):
    """log-density and CDF of an EnergyModel, normalized by adaptive quadrature (scipy.quad)
    of its energy rather than by pbde's grid."""

    def energy(x):
        with torch.no_grad():
            t = torch.as_tensor(np.atleast_1d(x), dtype=torch.float64).to(model._dtype())
            return model.energy(t).double().numpy()

    log_z = math.log(
        scipy.integrate.quad(
            lambda t: math.exp(-energy(t)[0]), model.low, model.high, limit=200, epsabs=1e-12
        )[0]
    )

    def log_prob(x):
        return -energy(x) - log_z

    fine = np.linspace(model.low, model.high, 20001)
    cumulative = scipy.integrate.cumulative_trapezoid(np.exp(log_prob(fine)), fine, initial=0.0)

    def cdf(x):
        return np.interp(x, fine, cumulative)

    return log_prob, cdf


def energy_model(low, high, hidden, seed):
    torch.manual_seed(seed)
    return EnergyModel(low, high, hidden=hidden, grid_size=1025)


# -- the table ----------------------------------------------------------------------------


@dataclass
class Example:
    """A density and what is known about it independently of pbde.

    Attributes:
        id: test id.
        make: builds a fresh density (seeded where it has random initialization).
        support: where to check normalization (a finite ``Support`` or a fine ``Grid``).
        reference: ``density -> (log_prob, cdf)`` in numpy, built without the code under
            test (scipy, closed forms; for an EnergyModel, its energy normalized by
            ``scipy.integrate.quad``); ``cdf`` is ``None`` for finite supports.
        pmf: for finite supports, the probability of each point of ``support``.
        in_support: ``samples -> bool tensor``, which samples are legal items.
        grad_params: names of parameters to gradcheck ``log_prob`` against, in float64.
        grad_x: gradcheck ``log_prob`` with respect to the items too (smooth continuous
            densities).
        norm_tol: tolerance of the normalization check (quadrature error plus dtype).
        ref_tol: tolerance of ``log_prob`` against the reference.
    """

    id: str
    make: Callable[[], Density]
    support: pbde.Support
    reference: Callable
    pmf: np.ndarray | None = None
    in_support: Callable[[torch.Tensor], torch.Tensor] | None = None
    grad_params: tuple[str, ...] = ()
    grad_x: bool = False
    norm_tol: float = 1e-5
    ref_tol: float = 1e-5

    @property
    def finite(self) -> bool:
        return self.pmf is not None


def in_interval(low, high):
    return lambda x: (x >= low) & (x <= high)


CATEGORICAL_PROBS = np.array([0.1, 0.2, 0.3, 0.4])
TABLE_POINTS = torch.tensor([[0.0, 1.0], [2.0, -3.0], [4.5, 5.0]])
TABLE_PROBS = np.array([0.5, 0.3, 0.2])
MIX_A, MIX_B, MIX_W = np.array([0.7, 0.1, 0.2]), np.array([0.1, 0.6, 0.3]), np.array([0.25, 0.75])
PAPER_P_STAR = ([-2.5, 2.5], [0.25, 1.0], [0.4, 0.6], -10.0, 10.0)  # eq. 10
THREE_COMPONENTS = ([-1.0, 0.5, 2.0], [0.5, 1.0, 2.0], [0.2, 0.3, 0.5], -2.0, 3.0)
RIGHT_TAIL = ([0.0], [1.0], [1.0], 9.0, 10.0)  # 9 to 10 standard deviations above the mean
LEFT_TAIL = ([0.0], [1.0], [1.0], -13.0, -12.0)  # 12 to 13 below


def table_log_prob(x):
    """log-probability of rows of TABLE_POINTS, by matching rows in numpy."""
    x = np.asarray(x)
    rows = [int(np.flatnonzero((TABLE_POINTS.numpy() == row).all(1))[0]) for row in x]
    return np.log(TABLE_PROBS[rows])


def linear_density_reference(_density):
    """p(x) = (1 + x) / 1.5 on [0, 1]; CDF (x + x²/2) / 1.5."""
    return (lambda x: np.log((1.0 + np.asarray(x)) / 1.5)), (lambda x: (x + x**2 / 2) / 1.5)


def tnm(spec, learnable=False):
    loc, scale, weights, low, high = spec
    return TruncatedNormalMixture(loc, scale, weights, low=low, high=high, learnable=learnable)


def tnm_reference(spec):
    return lambda _density: truncnorm_mixture_reference(*spec)


LINEAR_GRID = pbde.Grid(0.0, 1.0, 1001, dtype=torch.float64)
MIXED_COMPONENTS = ([-3.0], [1.0], (2.0, 0.5), [0.3, 0.7])


def mixed_reference(_density):
    (loc,), (scale,), (n_loc, n_scale), (w1, w2) = MIXED_COMPONENTS
    trunc = scipy.stats.truncnorm((-10 - loc) / scale, (10 - loc) / scale, loc=loc, scale=scale)
    normal = scipy.stats.norm(n_loc, n_scale)
    return (
        lambda x: np.log(w1 * trunc.pdf(x) + w2 * normal.pdf(x)),
        lambda x: w1 * trunc.cdf(x) + w2 * normal.cdf(x),
    )


EXAMPLES = [
    Example(
        "categorical",
        lambda: Categorical(probs=torch.tensor(CATEGORICAL_PROBS, dtype=torch.float32)),
        pbde.Support(torch.arange(4)),
        lambda _d: ((lambda x: np.log(CATEGORICAL_PROBS[np.asarray(x)])), None),
        pmf=CATEGORICAL_PROBS,
        grad_params=("logits",),
    ),
    Example(
        "tabulated-finite-2d",
        lambda: Tabulated(TABLE_POINTS, torch.tensor(np.log(TABLE_PROBS))),
        pbde.Support(TABLE_POINTS),
        lambda _d: (table_log_prob, None),
        pmf=TABLE_PROBS,
    ),
    Example(
        "tabulated-grid",
        lambda: Tabulated(LINEAR_GRID, torch.log((1.0 + LINEAR_GRID.points) / 1.5)),
        pbde.Grid(0.0, 1.0, 2**14 + 1, dtype=torch.float64),
        linear_density_reference,
        in_support=in_interval(0.0, 1.0),
        norm_tol=1e-6,
        ref_tol=1e-6,  # linear interpolation of log(1 + x) between points 1e-3 apart
    ),
    Example(
        "truncnorm-paper-p-star",
        lambda: tnm(PAPER_P_STAR),
        pbde.Grid(-10.0, 10.0, 2**16, dtype=torch.float64),
        tnm_reference(PAPER_P_STAR),
        in_support=in_interval(-10.0, 10.0),
        grad_x=True,
        ref_tol=1e-10,
    ),
    Example(
        "truncnorm-learnable-3",
        lambda: tnm(THREE_COMPONENTS, learnable=True),
        pbde.Grid(-2.0, 3.0, 2**14 + 1, dtype=torch.float64),
        tnm_reference(THREE_COMPONENTS),
        in_support=in_interval(-2.0, 3.0),
        grad_params=("loc", "log_scale", "weight_logits"),
        grad_x=True,
        ref_tol=1e-10,
    ),
    Example(
        "truncnorm-right-tail",
        lambda: tnm(RIGHT_TAIL),
        pbde.Grid(9.0, 10.0, 2**14 + 1, dtype=torch.float64),
        tnm_reference(RIGHT_TAIL),
        in_support=in_interval(9.0, 10.0),
        grad_x=True,
        ref_tol=1e-8,
    ),
    Example(
        "truncnorm-left-tail",
        lambda: tnm(LEFT_TAIL),
        pbde.Grid(-13.0, -12.0, 2**14 + 1, dtype=torch.float64),
        tnm_reference(LEFT_TAIL),
        in_support=in_interval(-13.0, -12.0),
        grad_x=True,
        ref_tol=1e-8,
    ),
    Example(
        "torch-normal",
        lambda: FromDistribution(torch.distributions.Normal(torch.tensor(0.5), torch.tensor(2.0))),
        pbde.Grid(-20.0, 21.0, 2**14 + 1),  # ±10 standard deviations
        lambda _d: (scipy.stats.norm(0.5, 2.0).logpdf, scipy.stats.norm(0.5, 2.0).cdf),
        in_support=lambda x: torch.isfinite(x),
        grad_x=True,
    ),
    Example(
        "pyro-beta",
        lambda: FromDistribution(pyro.distributions.Beta(2.0, 5.0)),
        pbde.Grid(0.0, 1.0, 2**14 + 1),
        lambda _d: (scipy.stats.beta(2.0, 5.0).logpdf, scipy.stats.beta(2.0, 5.0).cdf),
        in_support=in_interval(0.0, 1.0),
        grad_x=True,
    ),
    Example(
        "mixture-truncnorm-normal",
        lambda: Mixture(
            [
                TruncatedNormalMixture(*MIXED_COMPONENTS[:2], low=-10.0, high=10.0),
                FromDistribution(torch.distributions.Normal(*MIXED_COMPONENTS[2])),
            ],
            MIXED_COMPONENTS[3],
            learn_weights=True,
        ),
        pbde.Grid(-10.0, 10.0, 2**16),
        mixed_reference,
        in_support=in_interval(-10.0, 10.0),
        grad_params=("weight_logits",),
        grad_x=True,
    ),
    Example(
        "mixture-categoricals",
        lambda: Mixture(
            [
                Categorical(probs=torch.tensor(MIX_A, dtype=torch.float32)),
                Categorical(probs=torch.tensor(MIX_B, dtype=torch.float32)),
            ],
            MIX_W,
        ),
        pbde.Support(torch.arange(3)),
        lambda _d: ((lambda x: np.log((MIX_W[0] * MIX_A + MIX_W[1] * MIX_B)[np.asarray(x)])), None),
        pmf=MIX_W[0] * MIX_A + MIX_W[1] * MIX_B,
        grad_params=("components.0.logits", "components.1.logits"),
    ),
    Example(
        "energy-model",
        lambda: energy_model(-3.0, 3.0, (8, 8), seed=0),
        pbde.Grid(-3.0, 3.0, 2**14 + 1),
        energy_model_reference,
        in_support=in_interval(-3.0, 3.0),
        grad_params=(
            "energy_net.0.weight",
            "energy_net.0.bias",
            "energy_net.2.weight",
            "energy_net.4.weight",
            "energy_net.4.bias",
        ),
        grad_x=True,
        norm_tol=1e-4,  # trapezoid on 1025 points in float32
        ref_tol=1e-4,
    ),
]

ids = [e.id for e in EXAMPLES]


def reference_points(example: Example) -> torch.Tensor:
    """Items to evaluate at: the finite support, or 200 points strictly inside the grid."""
    points = example.support.points
    if example.finite:
        return points
    return points[1:-1][torch.linspace(0, len(points) - 3, 200).long()]


# -- generic checks -----------------------------------------------------------------------


@pytest.mark.parametrize("example", EXAMPLES, ids=ids)
def test_log_prob_shape(example):
    density = example.make()
    x = reference_points(example)
    out = density.log_prob(x)
    assert out.shape == (x.shape[0],)
    assert out.is_floating_point()
    assert density.log_prob(x[:1]).shape == (1,)
    torch.testing.assert_close(density.prob(x), out.exp())


@pytest.mark.parametrize("example", EXAMPLES, ids=ids)
def test_log_prob_matches_independent_reference(example):
    density = example.make()
    reference_log_prob, _ = example.reference(density)
    x = reference_points(example)
    with torch.no_grad():
        got = density.log_prob(x).double().numpy()
    np.testing.assert_allclose(got, reference_log_prob(x.numpy()), atol=example.ref_tol, rtol=0)


@pytest.mark.parametrize("example", EXAMPLES, ids=ids)
def test_normalized(example):
    density = example.make()
    with torch.no_grad():
        log_p = density.log_prob(example.support.points)
    total = float(example.support.log_integral(log_p.double()).exp())
    assert total == pytest.approx(1.0, abs=example.norm_tol)


@pytest.mark.parametrize("example", EXAMPLES, ids=ids)
def test_sample_shape_and_support(example, generator):
    density = example.make()
    x = density.sample(N_SAMPLES, generator=generator)
    assert x.shape == (N_SAMPLES, *density.event_shape)
    assert not x.requires_grad
    if example.finite:
        points = example.support.points
        matches = (x.reshape(len(x), -1)[:, None] == points.reshape(len(points), -1)).all(-1)
        assert bool((matches.sum(-1) == 1).all())
    else:
        assert bool(example.in_support(x).all())
    again = density.sample(N_SAMPLES, generator=torch.Generator().manual_seed(1234))
    assert torch.equal(x, again), "the same seed must give the same samples"


@pytest.mark.parametrize("example", EXAMPLES, ids=ids)
def test_sample_goodness_of_fit(example, generator):
    density = example.make()
    x = density.sample(N_SAMPLES, generator=generator)
    if example.finite:
        points = example.support.points
        flat = points.reshape(len(points), -1)
        index = (x.reshape(len(x), -1)[:, None] == flat).all(-1).float().argmax(-1)
        counts = np.bincount(index.numpy(), minlength=len(points))
        result = scipy.stats.chisquare(counts, N_SAMPLES * example.pmf)
    else:
        _, cdf = example.reference(density)
        result = scipy.stats.kstest(x.double().numpy(), cdf)
    assert result.pvalue > MIN_P_VALUE, result


class _LogProb(torch.nn.Module):
    """``Density`` has no ``forward``; torch.func.functional_call needs one."""

    def __init__(self, density: Density):
        super().__init__()
        self.density = density

    def forward(self, x):
        return self.density.log_prob(x)


def _double_params(density: Density) -> dict[str, torch.Tensor]:
    return {
        name: p.detach().double().requires_grad_(True) for name, p in density.named_parameters()
    }


@pytest.mark.parametrize("example", [e for e in EXAMPLES if e.grad_params], ids=lambda e: e.id)
def test_gradcheck_parameters(example, generator):
    density = example.make().double()
    x = density.sample(6, generator=generator)
    x = x.double() if x.is_floating_point() else x
    params = _double_params(density)
    names = example.grad_params
    assert set(names) <= set(params)

    def log_prob(*values):
        values = {**params, **dict(zip(names, values, strict=True))}
        return functional_call(
            _LogProb(density), {f"density.{k}": v for k, v in values.items()}, (x,)
        )

    assert torch.autograd.gradcheck(log_prob, tuple(params[n] for n in names))


@pytest.mark.parametrize("example", [e for e in EXAMPLES if e.grad_x], ids=lambda e: e.id)
def test_gradcheck_items(example, generator):
    density = example.make().double()
    x = density.sample(6, generator=generator).double().requires_grad_(True)
    assert torch.autograd.gradcheck(density.log_prob, (x,))


def _train(density: Density, x: torch.Tensor, steps: int = 5) -> None:
    optimizer = torch.optim.Adam(density.parameters(), lr=0.1)
    for _ in range(steps):
        optimizer.zero_grad()
        (-density.log_prob(x).mean()).backward()
        optimizer.step()


@pytest.mark.parametrize("example", EXAMPLES, ids=ids)
def test_frozen_copy(example, generator):
    density = example.make()
    x = density.sample(64, generator=generator)
    frozen = density.frozen()
    assert frozen is not density
    assert not any(p.requires_grad for p in frozen.parameters())
    assert not frozen.training
    with torch.no_grad():
        before = frozen.log_prob(x).clone()
        torch.testing.assert_close(before, density.log_prob(x))
    trainable = [p for p in density.parameters() if p.requires_grad]
    if not trainable:
        return
    _train(density, x)
    with torch.no_grad():
        assert not torch.allclose(density.log_prob(x), before), "training had no effect"
        torch.testing.assert_close(frozen.log_prob(x), before, rtol=0, atol=0)


# -- specific densities -------------------------------------------------------------------


def test_paper_p_star_is_eq_10_by_hand():
    """Eq. 10 with the truncated-normal pdf written out: N(x; μ, σ) / (Φ(b) − Φ(a))."""
    p_star = tnm(PAPER_P_STAR)
    x = np.array([-9.5, -2.6, -2.5, 0.0, 1.7, 2.5, 9.9])

    def component(mu, sigma):
        phi = np.exp(-0.5 * ((x - mu) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
        mass = 0.5 * (math.erf((10 - mu) / (sigma * math.sqrt(2))) + 1) - 0.5 * (
            math.erf((-10 - mu) / (sigma * math.sqrt(2))) + 1
        )
        return phi / mass

    expected = 2 / 5 * component(-2.5, 0.25) + 3 / 5 * component(2.5, 1.0)
    got = p_star.prob(torch.tensor(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12)


@pytest.mark.parametrize(
    "loc, scale, low, high",
    [
        (0.0, 1.0, -1.0, 1.0),
        (0.0, 1.0, 12.0, 13.0),  # far right tail: needs the symmetric formula
        (0.0, 1.0, -13.0, -12.0),  # far left tail
        (5.0, 0.1, -3.0, 3.0),  # the interval is 20 σ left of the mean
        (-1.0, 30.0, -1.0, 2.0),  # nearly uniform
    ],
)
def test_truncnorm_log_prob_against_scipy_in_the_tails(loc, scale, low, high):
    density = TruncatedNormalMixture([loc], [scale], low=low, high=high)
    x = np.linspace(low, high, 11)
    expected = scipy.stats.truncnorm((low - loc) / scale, (high - loc) / scale, loc, scale).logpdf(
        x
    )
    got = density.log_prob(torch.tensor(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)


def test_truncnorm_components_are_the_mixture_parts():
    p_star = tnm(PAPER_P_STAR)
    x = torch.linspace(-10, 10, 101, dtype=torch.float64)
    parts = torch.stack([c.prob(x) for c in p_star.components()])
    torch.testing.assert_close(p_star.weights @ parts, p_star.prob(x))


def test_energy_model_pretrain_to_truncated_normal():
    """The paper's π_pre: regress −E on log N_trunc(0, 5) on [−10, 10].

    Small network and few steps so it runs in well under a second; measured TV over seeds
    0..5 is 0.009–0.013, the bound leaves a margin of > 2×.
    """
    target = TruncatedNormalMixture([0.0], [5.0], low=-10.0, high=10.0)
    torch.manual_seed(0)
    model = EnergyModel(-10.0, 10.0, hidden=(16, 16), activation="silu", grid_size=1025)
    result = model.pretrain_to(target.log_prob, steps=300, lr=3e-2, points=256, progress=False)
    assert result.losses[-1] < result.losses[0]
    grid = pbde.Grid(-10.0, 10.0, 4097, dtype=torch.float64)
    with torch.no_grad():
        p = grid.masses(model.log_prob(grid.points.float()).double())
    x = grid.points.numpy()
    q = grid.masses(torch.tensor(scipy.stats.truncnorm(-2.0, 2.0, 0.0, 5.0).logpdf(x)))
    tv = 0.5 * float((p - q).abs().sum())
    assert tv < 0.03


def _count_grid_evaluations(model: EnergyModel) -> list[int]:
    calls: list[int] = []
    energy = model.energy

    def counting(x):
        if x.shape[0] == model.grid.size:
            calls.append(1)
        return energy(x)

    model.energy = counting  # the instance's energy, which the normalizer calls
    return calls


def test_energy_model_normalizer_cache_of_frozen_copy():
    torch.manual_seed(0)
    frozen = EnergyModel(-3.0, 3.0, hidden=(8,), grid_size=1025).frozen()
    calls = _count_grid_evaluations(frozen)
    x = torch.tensor([0.0, 1.0])
    first = frozen.log_prob(x)
    assert len(calls) == 1
    torch.testing.assert_close(frozen.log_prob(x), first)
    frozen.log_prob(x)
    assert len(calls) == 1, "a frozen copy must not recompute its normalizer"

    with torch.no_grad():
        frozen.energy_net[-1].bias.add_(0.5)  # E + 0.5: log Z − 0.5, log p unchanged
    log_z = frozen.log_normalizer()
    assert len(calls) == 2, "changing a parameter must invalidate the cache"
    torch.testing.assert_close(frozen.log_prob(x), first)
    energies = frozen.energy(frozen.grid.points)
    expected = math.log(
        scipy.integrate.trapezoid(np.exp(-energies.double().numpy()), dx=6.0 / 1024)
    )
    assert float(log_z) == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda p: p.data.add_(0.5), id="data-in-place"),
        pytest.param(lambda p: setattr(p, "data", p.data + 0.5), id="data-assignment"),
    ],
)
def test_energy_model_normalizer_cache_sees_every_parameter_change(change):
    """Parameters can change without bumping their autograd version counter (``.data``,
    ``torch.nn.utils.vector_to_parameters``); the cache must not go stale."""
    torch.manual_seed(0)
    frozen = EnergyModel(-3.0, 3.0, hidden=(8,), grid_size=1025).frozen()
    before = float(frozen.log_normalizer())
    change(frozen.energy_net[-1].bias)  # E + 0.5
    assert float(frozen.log_normalizer()) == pytest.approx(before - 0.5, abs=1e-5)


def test_energy_model_normalizer_recomputed_while_training():
    torch.manual_seed(0)
    model = EnergyModel(-3.0, 3.0, hidden=(8,), grid_size=1025)
    calls = _count_grid_evaluations(model)
    x = torch.tensor([0.0, 1.0])
    model.log_prob(x)
    model.log_prob(x)
    assert len(calls) == 2, "with gradients on, the normalizer is part of the graph"
    grads = torch.autograd.grad(model.log_prob(x).sum(), model.energy_net[0].weight)
    assert torch.isfinite(grads[0]).all()


def test_categorical_constructors_agree():
    probs = torch.tensor([0.2, 0.3, 0.5])
    by_probs = Categorical(probs=probs * 7)  # normalized in the constructor
    by_logits = Categorical(torch.log(probs) + 3.0)
    uniform = Categorical(size=4)
    x = torch.arange(3)
    torch.testing.assert_close(by_probs.prob(x), probs)
    torch.testing.assert_close(by_logits.prob(x), probs)
    torch.testing.assert_close(uniform.prob(torch.arange(4)), torch.full((4,), 0.25))
    assert torch.equal(by_probs.support.points, x)


def test_tabulated_normalize_option():
    support = torch.arange(3)
    density = Tabulated(support, torch.tensor([1.0, 2.0, 3.0]), normalize=True)
    expected = np.array([1.0, 2.0, 3.0]) - scipy.special.logsumexp([1.0, 2.0, 3.0])
    np.testing.assert_allclose(density.log_prob(support).numpy(), expected, rtol=1e-12)


# -- supports -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "low, high, size, fn, integral",
    [
        (0.0, 1.0, 2, lambda x: 1 + 2 * x, 2.0),  # trapezoid is exact on linear functions
        (0.0, math.pi, 4097, np.sin, 2.0),
        (-1.0, 2.0, 2049, np.exp, math.e**2 - math.exp(-1)),
        (
            -5.0,
            5.0,
            8193,
            lambda x: np.exp(-(x**2) / 2),
            math.sqrt(2 * math.pi) * math.erf(5 / 2**0.5),
        ),
    ],
)
def test_grid_integrates_like_scipy_trapezoid(low, high, size, fn, integral):
    grid = pbde.Grid(low, high, size, dtype=torch.float64)
    x = np.linspace(low, high, size)
    np.testing.assert_allclose(grid.points.numpy(), x, rtol=0, atol=1e-12)
    log_values = torch.log(torch.as_tensor(fn(x), dtype=torch.float64))
    total = float(grid.log_integral(log_values).exp())
    assert total == pytest.approx(scipy.integrate.trapezoid(fn(x), x), rel=1e-12)
    assert total == pytest.approx(integral, rel=1e-6 if size > 2 else 1e-12)
    assert float(grid.masses(log_values).sum()) == pytest.approx(total, rel=1e-12)


def test_support_counting_measure_and_weights():
    support = pbde.Support(torch.tensor([3, 1, 4]))
    log_values = torch.log(torch.tensor([0.5, 0.25, 1.0], dtype=torch.float64))
    assert len(support) == 3
    assert float(support.log_integral(log_values).exp()) == pytest.approx(1.75, rel=1e-12)
    weighted = pbde.Support(torch.tensor([3, 1, 4]), torch.log(torch.tensor([2.0, 4.0, 0.5])))
    assert float(weighted.log_integral(log_values).exp()) == pytest.approx(2.5, rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_categorical_keeps_the_dtype_it_is_given(dtype):
    probs = torch.tensor([0.25, 0.75], dtype=dtype)
    for density in (Categorical(probs=probs), Categorical(logits=probs.log())):
        assert density.logits.dtype == dtype
        assert density.log_prob(torch.tensor([1])).dtype == dtype
    assert Categorical(size=2).logits.dtype == torch.get_default_dtype()
