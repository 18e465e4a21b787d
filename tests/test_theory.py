"""pbde.theory against closed forms and independent numerical references.

Everything here is exact enumeration on small finite supports (or a grid): no sampling. The
references are computed in numpy/scipy float64 from the papers' formulas, never from pbde:

* Theorems 1 and 2 (Dumoulin et al., Appendix A.1): a model that shares the annotator's PBDE
  recovers π = p*;
* eq. 16 (DPO under a Luce annotator) and eq. 18 (geometric behavior) in closed form;
* misspecified models and eq. 25's mixture of annotators against scipy.optimize.minimize of the
  population objective Σ_ab q_ab KL(Bern(P*_ab) ‖ Bern(σ(Ω_π(a) − Ω_π(b))));
* IPO (Azar et al., eq. 17) in Azar et al.'s examples with deterministic preferences, and its
  population optimum π ∝ π_ref · exp(τ⁻¹ P(y ≻ µ)) (Azar et al., eq. 9 with Ψ = identity).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.integrate
import scipy.optimize
import scipy.special
import scipy.stats
import torch

import pbde
from pbde.densities import Categorical, FromDistribution, TruncatedNormalMixture


@pytest.fixture(autouse=True)
def float64_default():
    """Exact enumeration deserves float64 end to end: pbde's densities (Categorical, f of
    length_normalized, ...) are created in torch's default dtype, float32 unless changed.
    ``test_float32_defaults_agree_to_float32_precision`` covers the default."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


N_ITEMS = 5
ITEMS = torch.arange(N_ITEMS)
P_STAR = np.array([0.1, 0.2, 0.3, 0.15, 0.25])
REF = np.array([0.3, 0.25, 0.2, 0.15, 0.1])
# non-uniform proposal masses for the pairs (x_A, x_B drawn independently from it)
MU = np.array([0.05, 0.1, 0.15, 0.3, 0.4])
# lengths are powers of two so that 1/length is exact in float32, the dtype length_normalized
# evaluates f in (the numpy references use exact float64 values)
LENGTHS = 2.0 ** np.arange(N_ITEMS)


def categorical(probs) -> Categorical:
    return Categorical(probs=torch.as_tensor(np.asarray(probs), dtype=torch.float64))


def probs_of(density) -> np.ndarray:
    with torch.no_grad():
        return density.prob(ITEMS).double().numpy()


def length_of(x: torch.Tensor) -> torch.Tensor:
    return 2.0 ** x.double()


def custom_f(x: torch.Tensor) -> torch.Tensor:
    return 0.5 + x.double() ** 2 / 4


def custom_g(x: torch.Tensor) -> torch.Tensor:
    return torch.cos(x.double())


# numpy twins of the behaviors above: (f, g) on ITEMS
CUSTOM_FG = (0.5 + np.arange(N_ITEMS) ** 2 / 4, np.cos(np.arange(N_ITEMS)))
LENGTH_FG = (1.0 / LENGTHS, np.zeros(N_ITEMS))
LUCE_FG = (np.ones(N_ITEMS), np.zeros(N_ITEMS))


class Generic(pbde.PreferenceProcess):
    """Wraps any process so that optimal_density cannot take the Lemma-1 closed form: it goes
    through the generic pairwise logit matrix and Newton's method."""

    def __init__(self, inner: pbde.PreferenceProcess):
        super().__init__()
        self.inner = inner

    def _logits(self, xa, xb):
        return self.inner.logits(xa, xb)


class TotalOrder(pbde.PreferenceProcess):
    """Deterministic preferences: item i beats item j whenever i < j (P ∈ {0, 1} in float64)."""

    def _logits(self, xa, xb):
        return 1e3 * (xb - xa).double()


# -- independent numpy references ----------------------------------------------------------


def luce_matrix(p: np.ndarray) -> np.ndarray:
    """P_ab = p(a) / (p(a) + p(b)) (Dumoulin et al., eq. 9)."""
    return p[:, None] / (p[:, None] + p[None, :])


def luce_log_matrix(log_p: np.ndarray) -> np.ndarray:
    """eq. 9 from log-densities: P_ab = σ(log p(a) − log p(b))."""
    return scipy.special.expit(log_p[:, None] - log_p[None, :])


def pbde_matrix(p: np.ndarray, f: np.ndarray, g: np.ndarray) -> np.ndarray:
    """P_ab = σ(Ω(a) − Ω(b)), Ω = f·log p + g (eq. 11)."""
    omega = f * np.log(p) + g
    return scipy.special.expit(omega[:, None] - omega[None, :])


def population_objective(log_pi, P, Q, f, g):
    """J(π) = Σ_ab Q_ab KL(Bern(P_ab) ‖ Bern(σ(h_ab))), h_ab = Ω_π(a) − Ω_π(b); and dJ/dΩ."""
    omega = f * log_pi + g
    h = omega[:, None] - omega[None, :]
    log_s, log_1ms = -np.logaddexp(0.0, -h), -np.logaddexp(0.0, h)
    kl = (
        scipy.special.xlogy(P, P)
        - P * log_s
        + scipy.special.xlogy(1 - P, 1 - P)
        - (1 - P) * log_1ms
    )
    residual = Q * (scipy.special.expit(h) - P)
    return float((Q * kl).sum()), residual.sum(1) - residual.sum(0)


def scipy_optimum(P, Q, f, g, log_weights=None):
    """min_π J(π) with BFGS over free logits θ (θ_0 = 0 fixes the gauge).

    The masses are softmax(θ); the density is log π = log mass − log weight, with the support's
    measure (0 = counting measure; the trapezoid weights on a grid).
    """
    n = P.shape[0]
    log_weights = np.zeros(n) if log_weights is None else log_weights

    def log_density(free):
        theta = np.concatenate([[0.0], free])
        log_mass = theta - scipy.special.logsumexp(theta)
        return log_mass - log_weights, np.exp(log_mass)

    def fun(free):
        log_pi, mass = log_density(free)
        value, d_omega = population_objective(log_pi, P, Q, f, g)
        d_log_pi = d_omega * f
        d_theta = d_log_pi - mass * d_log_pi.sum()  # d log π_a / d θ_j = δ_aj − mass_j
        return value, d_theta[1:]

    result = scipy.optimize.minimize(
        fun, np.zeros(n - 1), jac=True, method="BFGS", options={"gtol": 1e-12, "maxiter": 10_000}
    )
    assert np.abs(result.jac).max() < 1e-8, result.message  # the reference itself converged
    return np.exp(log_density(result.x)[0]), float(result.fun)


def check_against_scipy(pi: np.ndarray, P, Q, f, g, log_weights=None, atol=1e-7) -> None:
    """pbde's optimum matches the scipy one: π to ``atol`` and J to 1e-10. BFGS stops at a
    gradient of ~1e-10, so the reference's own error is far below these; and pbde's π must be at
    least as good as BFGS's (J no larger, up to rounding)."""
    pi_ref, value_ref = scipy_optimum(P, Q, f, g, log_weights)
    value, _ = population_objective(np.log(pi), P, Q, f, g)
    np.testing.assert_allclose(pi, pi_ref, rtol=0, atol=atol)
    assert value == pytest.approx(value_ref, abs=1e-10)
    assert value <= value_ref + 1e-12


# -- the behaviors under test, with their numpy twins ------------------------------------------


def behavior(name: str) -> pbde.PBDE:
    ref = categorical(REF)
    return {
        "luce": lambda: pbde.luce(),
        "dpo": lambda: pbde.dpo(2.0, ref),
        "geometric": lambda: pbde.geometric(0.5, ref),
        "length_normalized": lambda: pbde.length_normalized(length_of),
        "custom_f_and_g": lambda: pbde.PBDE(custom_f, custom_g),
    }[name]()


def numpy_fg(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(f, g) on ITEMS, written from the papers' definitions (eqs. 9, 15, 18, 26)."""
    return {
        "luce": (np.ones(N_ITEMS), np.zeros(N_ITEMS)),
        "dpo": (np.full(N_ITEMS, 2.0), -2.0 * np.log(REF)),
        "geometric": (np.full(N_ITEMS, 1 / 0.5), (1 - 1 / 0.5) * np.log(REF)),
        "length_normalized": (1.0 / LENGTHS, np.zeros(N_ITEMS)),
        "custom_f_and_g": (0.5 + np.arange(N_ITEMS) ** 2 / 4, np.cos(np.arange(N_ITEMS))),
    }[name]


BEHAVIORS = ["luce", "dpo", "geometric", "length_normalized", "custom_f_and_g"]


def test_numpy_twins_match_the_behaviors():
    """The references below rely on numpy_fg being the same behaviors as pbde's."""
    log_p = torch.log(torch.tensor(P_STAR))
    for name in BEHAVIORS:
        f, g = numpy_fg(name)
        omega = behavior(name).omega(log_p, ITEMS).double().numpy()
        np.testing.assert_allclose(omega, f * np.log(P_STAR) + g, rtol=1e-12, atol=1e-12)


# -- Theorems 1 and 2 ------------------------------------------------------------------------


@pytest.mark.parametrize("name", BEHAVIORS)
@pytest.mark.parametrize("solver", ["closed_form", "newton"])
def test_shared_behavior_recovers_p_star(name, solver):
    """Theorem 1 (Luce) and Theorem 2 (any PBDE): annotator and model share (f, g) ⇒ π = p*,
    whatever the proposal (the Newton path is given a non-uniform one)."""
    annotator = pbde.Annotator(categorical(P_STAR), behavior(name))
    proposal = None
    if solver == "newton":
        annotator, proposal = Generic(annotator), torch.tensor(MU)
    pi = pbde.optimal_density(annotator, behavior(name), ITEMS, proposal=proposal)
    np.testing.assert_allclose(probs_of(pi), P_STAR, rtol=0, atol=1e-9)


def test_non_constant_f_is_not_trivially_p_star():
    """The custom-f case above is not vacuous: the same scores read through another behavior give
    another density."""
    annotator = pbde.Annotator(categorical(P_STAR), behavior("custom_f_and_g"))
    pi = pbde.optimal_density(annotator, pbde.luce(), ITEMS)
    assert np.abs(probs_of(pi) - P_STAR).max() > 0.05


# -- eq. 16 and eq. 18 -----------------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.5, 1.0, 4.0])
@pytest.mark.parametrize("solver", ["closed_form", "newton"])
def test_dpo_under_luce_annotator_is_eq_16(beta, solver):
    """π ∝ π_ref · p*^{1/β} (eq. 16); through Newton with a non-uniform proposal too."""
    annotator = pbde.Annotator(categorical(P_STAR))
    proposal = None
    if solver == "newton":
        annotator, proposal = Generic(annotator), torch.tensor(MU)
    model = pbde.dpo(beta, categorical(REF))
    pi = pbde.optimal_density(annotator, model, ITEMS, proposal=proposal)
    expected = REF * P_STAR ** (1 / beta)
    np.testing.assert_allclose(probs_of(pi), expected / expected.sum(), rtol=0, atol=1e-9)


@pytest.mark.parametrize("alpha", [0.25, 0.5, 2.0])
def test_geometric_under_luce_annotator_is_eq_18(alpha):
    """π ∝ π_ref^{1−α} · p*^α (eq. 18)."""
    model = pbde.geometric(alpha, categorical(REF))
    pi = pbde.optimal_density(pbde.Annotator(categorical(P_STAR)), model, ITEMS)
    expected = REF ** (1 - alpha) * P_STAR**alpha
    np.testing.assert_allclose(probs_of(pi), expected / expected.sum(), rtol=0, atol=1e-9)


# -- misspecified models against scipy -------------------------------------------------------

UNIFORM_Q = np.full((N_ITEMS, N_ITEMS), 1.0 / N_ITEMS**2)


@pytest.mark.parametrize(
    "annotator_name, model_name",
    [
        ("luce", "length_normalized"),
        ("luce", "custom_f_and_g"),
        ("length_normalized", "luce"),
        ("custom_f_and_g", "length_normalized"),
        ("dpo", "custom_f_and_g"),
    ],
)
def test_misspecified_model_matches_scipy(annotator_name, model_name):
    """A single PBDE annotator fitted by a model with another behavior with non-constant f.

    Every score vector is reachable (log π = (w − g − C)/f), so the optimum has J = 0 and
    π = exp((Ω_{p*} − g − C)/f), where C enters non-linearly because f varies (pbde finds it by
    root finding). The scipy reference knows none of this: it minimizes J over the simplex.
    """
    annotator = pbde.Annotator(categorical(P_STAR), behavior(annotator_name))
    pi = pbde.optimal_density(annotator, behavior(model_name), ITEMS)
    P = pbde_matrix(P_STAR, *numpy_fg(annotator_name))
    check_against_scipy(probs_of(pi), P, UNIFORM_Q, *numpy_fg(model_name))


# -- a mixture of annotators (eq. 25) --------------------------------------------------------

P1 = np.array([0.6, 0.25, 0.1, 0.04, 0.01])
P2 = P1[::-1].copy()
MIXTURE_WEIGHTS = np.array([0.6, 0.4])
# eq. 25: P(a ≻ b) = Σ_i w_i p_i(a) / (p_i(a) + p_i(b))
MIXTURE_P = MIXTURE_WEIGHTS[0] * luce_matrix(P1) + MIXTURE_WEIGHTS[1] * luce_matrix(P2)
# a joint proposal that is not a product: pairs of neighbours are favoured
JOINT = np.exp(-np.abs(np.subtract.outer(np.arange(N_ITEMS), np.arange(N_ITEMS))))
JOINT = JOINT / JOINT.sum()


def mixture_annotator() -> pbde.MixtureAnnotator:
    return pbde.MixtureAnnotator(
        [pbde.Annotator(categorical(P1)), pbde.Annotator(categorical(P2))],
        weights=torch.tensor(MIXTURE_WEIGHTS),
    )


PROPOSALS = {
    # name: (what pbde is given, the numpy joint Q_ab it means)
    "uniform": (lambda: None, UNIFORM_Q),
    "density": (lambda: categorical(MU), np.outer(MU, MU)),
    "tensor": (lambda: torch.tensor(MU), np.outer(MU, MU)),
    "unnormalized_tensor": (lambda: torch.tensor(3.0 * MU), np.outer(MU, MU)),
    "joint": (lambda: torch.tensor(JOINT), JOINT),
}


@pytest.mark.parametrize("proposal", list(PROPOSALS))
@pytest.mark.parametrize("model_name", ["luce", "custom_f_and_g"])
def test_mixture_annotator_matches_scipy(proposal, model_name):
    """eq. 25's process is no PBDE: the optimum has J > 0 and depends on the proposal; pbde's
    Newton solver must agree with BFGS on the population objective."""
    given, Q = PROPOSALS[proposal]
    pi = pbde.optimal_density(mixture_annotator(), behavior(model_name), ITEMS, proposal=given())
    check_against_scipy(probs_of(pi), MIXTURE_P, Q, *numpy_fg(model_name))
    assert population_objective(np.log(probs_of(pi)), MIXTURE_P, Q, *numpy_fg(model_name))[0] > 1e-4


def test_mixture_optimum_depends_on_the_proposal():
    """Uniform and non-uniform proposals give different optima; the non-uniform one given as a
    Density or as a tensor of masses gives the same one."""
    optimum = {
        name: probs_of(
            pbde.optimal_density(mixture_annotator(), pbde.luce(), ITEMS, proposal=given())
        )
        for name, (given, _) in PROPOSALS.items()
    }
    assert 0.5 * np.abs(optimum["uniform"] - optimum["tensor"]).sum() > 5e-3
    np.testing.assert_allclose(optimum["density"], optimum["tensor"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(optimum["unnormalized_tensor"], optimum["tensor"], atol=1e-12)


@pytest.mark.parametrize("model_name", ["luce", "dpo", "custom_f_and_g"])
def test_one_component_mixture_equals_the_annotator(model_name):
    """A one-annotator MixtureAnnotator is the annotator: Newton's method on the pairwise
    objective must land on Lemma 1's closed form."""
    annotator = pbde.Annotator(categorical(P_STAR))
    alone = pbde.optimal_density(annotator, behavior(model_name), ITEMS)
    mixed = pbde.optimal_density(
        pbde.MixtureAnnotator([annotator]), behavior(model_name), ITEMS, proposal=torch.tensor(MU)
    )
    np.testing.assert_allclose(probs_of(mixed), probs_of(alone), rtol=0, atol=1e-9)


# -- IPO (Azar et al.) -----------------------------------------------------------------------
#
# IPO's loss (pbde.losses.ipo; Azar et al., eq. 17) is linear in y, so under a process with
# preference probabilities P and pairs (a, b) ~ µ ⊗ µ the population objective is, per pair,
#     P·(h − c)² + (1 − P)·(h + c)² = (h − (2P − 1)·c)² + const,   c = 1/(2τ),
# with h_ab = w_a − w_b and w = log π − log π_ref (behavior dpo(1, π_ref)). It is a weighted
# least-squares problem; setting the derivative in w_a to zero (T_ab = (2P_ab − 1)c is
# antisymmetric because P_ba = 1 − P_ab):
#     2 µ_a Σ_b µ_b (w_a − w_b − T_ab) = 0   ⇒   w_a = Σ_b µ_b T_ab + const = τ⁻¹·P(a ≻ µ) + const,
# i.e. π ∝ π_ref · exp(τ⁻¹ P(y ≻ µ)), Azar et al.'s eq. 9 with Ψ = identity (the sums include
# b = a, where P = 1/2).
#
# Two actions, y1 ≻ y2 always, µ uniform: P(y1 ≻ µ) = (1/2 + 1)/2 = 3/4, P(y2 ≻ µ) = 1/4, so
# π(y1) = σ(1/(2τ)), Azar et al.'s Section 5.3.1.
#
# Three actions a ≻ b ≻ c always, µ uniform on all 9 ordered pairs, (x, x) included:
# P(· ≻ µ) = (5/6, 1/2, 1/6), so π ∝ (e^{2/(3τ)}, e^{1/(3τ)}, 1) — the same as the optimum of
# the empirical loss on Azar et al.'s dataset D1 = {(a,b), (b,c), (a,c)}. That is no accident:
# pairs (x, x) have h ≡ 0 and add a constant; each unordered pair gets the same weight 2/9 and
# both of its orders contribute the same (h_winner,loser − c)²; so the population objective is
# (2/9)·(D1's empirical objective) + const. With a non-uniform µ the two differ, which the
# general test below checks.


def two_actions(kind: str) -> pbde.PreferenceProcess:
    """y1 ≻ y2 with probability 1 (in float64): a deterministic process, or a Luce annotator
    with an extreme p* (logit 1000, σ(1000) == 1.0)."""
    if kind == "total_order":
        return TotalOrder()
    return pbde.Annotator(Categorical(logits=torch.tensor([0.0, -1000.0])))


@pytest.mark.parametrize("kind", ["total_order", "extreme_annotator"])
@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0, 4.0])
def test_ipo_two_actions_with_deterministic_preference(kind, tau):
    pi = pbde.optimal_density(
        two_actions(kind), pbde.dpo(1.0, Categorical(size=2)), torch.arange(2), loss="ipo", tau=tau
    )
    expected = 1.0 / (1.0 + math.exp(-1.0 / (2.0 * tau)))
    np.testing.assert_allclose(
        pi.prob(torch.arange(2)).numpy(), [expected, 1 - expected], atol=1e-10
    )


@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0, 4.0])
def test_ipo_three_actions_total_order(tau):
    items = torch.arange(3)
    pi = pbde.optimal_density(
        TotalOrder(), pbde.dpo(1.0, Categorical(size=3)), items, loss="ipo", tau=tau
    )
    expected = np.exp([2 / (3 * tau), 1 / (3 * tau), 0.0])
    np.testing.assert_allclose(pi.prob(items).numpy(), expected / expected.sum(), atol=1e-10)


@pytest.mark.parametrize("annotator", ["total_order", "luce", "mixture"])
@pytest.mark.parametrize("tau", [0.3, 2.0])
def test_ipo_population_optimum_is_azar_eq_9(annotator, tau):
    """π ∝ π_ref · exp(τ⁻¹ P(y ≻ µ)) for a non-uniform µ and π_ref (derivation above)."""
    process, P = {
        "total_order": (
            TotalOrder(),
            np.triu(np.ones((N_ITEMS, N_ITEMS)), 1) + np.eye(N_ITEMS) / 2,
        ),
        "luce": (pbde.Annotator(categorical(P_STAR)), luce_matrix(P_STAR)),
        "mixture": (mixture_annotator(), MIXTURE_P),
    }[annotator]
    pi = pbde.optimal_density(
        process,
        pbde.dpo(1.0, categorical(REF)),
        ITEMS,
        proposal=categorical(MU),
        loss="ipo",
        tau=tau,
    )
    expected = REF * np.exp(P @ MU / tau)
    np.testing.assert_allclose(probs_of(pi), expected / expected.sum(), rtol=0, atol=1e-10)


def test_ipo_needs_tau():
    with pytest.raises(TypeError, match="tau"):
        pbde.optimal_density(
            TotalOrder(), pbde.dpo(1.0, Categorical(size=3)), torch.arange(3), loss="ipo"
        )


@pytest.mark.parametrize("n", [2, 3, 5])
def test_deterministic_preferences_have_no_bce_optimum(n):
    """Under the BCE loss a total order pushes the logits to ±∞ (what makes DPO greedy)."""
    with pytest.raises(ValueError, match="(?i)no finite optimum"):
        pbde.optimal_density(TotalOrder(), pbde.dpo(1.0, Categorical(size=n)), torch.arange(n))


@pytest.mark.parametrize("proposal", [None, "mu"])
def test_deterministic_two_actions_have_no_bce_optimum(proposal):
    """The same through a Luce annotator with an extreme p* (the pairwise solver: MixtureAnnotator)."""
    process = pbde.MixtureAnnotator([two_actions("extreme_annotator")])
    proposal = None if proposal is None else torch.tensor([0.9, 0.1])
    with pytest.raises(ValueError, match="(?i)no finite optimum"):
        pbde.optimal_density(process, pbde.luce(), torch.arange(2), proposal=proposal)


def test_a_deterministic_cycle_has_a_finite_bce_optimum():
    """P ∈ {0, 1} alone does not rule out an optimum: a ≻ b ≻ c ≻ a (Azar et al.'s D2) is
    symmetric under rotation and the objective is strictly convex in the margins, so the
    optimum is uniform."""

    class Cycle(pbde.PreferenceProcess):
        def _logits(self, xa, xb):
            wins = (xb - xa) % 3 == 1
            loses = (xb - xa) % 3 == 2
            return 1e3 * (wins.double() - loses.double())

    pi = pbde.optimal_density(Cycle(), pbde.luce(), torch.arange(3))
    np.testing.assert_allclose(pi.prob(torch.arange(3)).numpy(), np.full(3, 1 / 3), atol=1e-12)


# -- grids -----------------------------------------------------------------------------------

LOW, HIGH = -10.0, 10.0


def eq_10_p_star() -> TruncatedNormalMixture:
    return TruncatedNormalMixture([-2.5, 2.5], [0.25, 1.0], [0.4, 0.6], low=LOW, high=HIGH)


def truncnorm_logpdf(x, loc, scale):
    a, b = (LOW - loc) / scale, (HIGH - loc) / scale
    return scipy.stats.truncnorm.logpdf(x, a, b, loc=loc, scale=scale)


def truncnorm_pdf(x, loc, scale):
    return np.exp(truncnorm_logpdf(x, loc, scale))


def eq_10_pdf(x):
    return 0.4 * truncnorm_pdf(x, -2.5, 0.25) + 0.6 * truncnorm_pdf(x, 2.5, 1.0)


@pytest.mark.parametrize("beta", [1.0, 4.0])
@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-6), (torch.float32, 1e-4)])
def test_dpo_on_a_grid_is_eq_16(beta, dtype, rtol):
    """Figure 3's setting: p* of eq. 10, π_ref = N_truncated(0, 5) on [−10, 10]; the optimum
    π ∝ π_ref · p*^{1/β}, normalized by the trapezoid rule, computed with scipy.

    On a float32 grid (the default) the points are rounded by up to 2⁻²⁴·10 ≈ 6e-7 while the
    Tabulated result interpolates at the exact grid positions; with |d log p*/dx| up to
    (10 − 2.5)/0.25² = 120 that is a relative error up to ~1e-4 (measured 2e-6 where π > 1e-12).
    """
    grid = pbde.Grid(LOW, HIGH, 2001, dtype=dtype)
    ref = TruncatedNormalMixture([0.0], [5.0], low=LOW, high=HIGH)
    pi = pbde.optimal_density(pbde.Annotator(eq_10_p_star()), pbde.dpo(beta, ref), grid)
    x = grid.points.double().numpy()
    unnormalized = truncnorm_pdf(x, 0.0, 5.0) * eq_10_pdf(x) ** (1 / beta)
    expected = unnormalized / scipy.integrate.trapezoid(unnormalized, x)
    with torch.no_grad():
        got = pi.prob(grid.points).numpy()
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=1e-12)


def test_luce_on_a_grid_recovers_p_star():
    """Theorem 1 on a grid: π = p* (renormalized by the trapezoid rule)."""
    grid = pbde.Grid(LOW, HIGH, 2001, dtype=torch.float64)
    pi = pbde.optimal_density(pbde.Annotator(eq_10_p_star()), pbde.luce(), grid)
    x = grid.points.double().numpy()
    expected = eq_10_pdf(x) / np.trapezoid(eq_10_pdf(x), x)
    with torch.no_grad():
        np.testing.assert_allclose(pi.prob(grid.points).numpy(), expected, rtol=1e-6, atol=1e-12)


def test_mixture_annotator_on_a_grid_matches_scipy():
    """Eq. 25 with the two components of eq. 10 as two annotators, on a coarse grid with the
    default (uniform on [−10, 10]) proposal: Q_ab ∝ trapezoid weights w_a·w_b."""
    grid = pbde.Grid(LOW, HIGH, 41, dtype=torch.float64)
    components = eq_10_p_star().components()
    process = pbde.MixtureAnnotator([pbde.Annotator(c) for c in components], [0.4, 0.6])
    pi = pbde.optimal_density(process, pbde.luce(), grid, normalization_atol=0.05)
    x = grid.points.double().numpy()
    weights = np.full(x.shape, x[1] - x[0])
    weights[[0, -1]] /= 2
    # in log space: p1 underflows to 0 far from its mode, where P is still well defined
    log_p1, log_p2 = truncnorm_logpdf(x, -2.5, 0.25), truncnorm_logpdf(x, 2.5, 1.0)
    P = 0.4 * luce_log_matrix(log_p1) + 0.6 * luce_log_matrix(log_p2)
    Q = np.outer(weights, weights) / weights.sum() ** 2
    with torch.no_grad():
        got = pi.prob(grid.points).numpy()
    check_against_scipy(got, P, Q, np.ones_like(x), np.zeros_like(x), np.log(weights), atol=1e-6)


# -- divergences -----------------------------------------------------------------------------


def test_kl_and_tv_on_a_finite_support():
    p, q = np.array([0.2, 0.3, 0.5]), np.array([0.1, 0.6, 0.3])
    items = torch.arange(3)
    assert pbde.kl(categorical(p), categorical(q), items) == pytest.approx(
        float(np.sum(p * np.log(p / q))), rel=1e-12
    )
    assert pbde.kl(categorical(q), categorical(p), items) == pytest.approx(
        float(np.sum(q * np.log(q / p))), rel=1e-12
    )
    assert pbde.tv(categorical(p), categorical(q), items) == pytest.approx(0.3, rel=1e-12)
    assert pbde.tv(categorical(q), categorical(p), items) == pytest.approx(0.3, rel=1e-12)
    assert pbde.kl(categorical(p), categorical(p), items) == pytest.approx(0.0, abs=1e-15)
    assert pbde.tv(categorical(p), categorical(p), items) == 0.0


def test_kl_where_a_density_is_zero():
    """0·log 0 = 0: points outside p's support add nothing to KL(p ‖ q); points where q is 0 but
    p is not make it infinite."""
    items = torch.arange(3)
    p = pbde.densities.Tabulated(items, torch.log(torch.tensor([0.5, 0.5, 0.0])))
    q = categorical([0.2, 0.3, 0.5])
    expected = 0.5 * math.log(0.5 / 0.2) + 0.5 * math.log(0.5 / 0.3)
    assert pbde.kl(p, q, items) == pytest.approx(expected, rel=1e-12)
    assert pbde.kl(q, p, items) == math.inf
    assert pbde.tv(p, q, items) == pytest.approx(0.5, rel=1e-12)


def normal(loc, scale) -> FromDistribution:
    return FromDistribution(
        torch.distributions.Normal(
            torch.tensor(loc, dtype=torch.float64), torch.tensor(scale, dtype=torch.float64)
        )
    )


def test_kl_and_tv_on_a_grid_match_closed_forms():
    """KL(N(0,1) ‖ N(1,2²)) = log 2 + (1 + 1)/8 − 1/2; TV of two unit-variance normals at
    distance d is 2Φ(d/2) − 1."""
    grid = pbde.Grid(-12.0, 12.0, 4001, dtype=torch.float64)
    kl = pbde.kl(normal(0.0, 1.0), normal(1.0, 2.0), grid)
    assert kl == pytest.approx(math.log(2.0) + 2.0 / 8.0 - 0.5, abs=1e-6)
    tv = pbde.tv(normal(0.0, 1.0), normal(1.0, 1.0), grid)
    assert tv == pytest.approx(2 * scipy.stats.norm.cdf(0.5) - 1, abs=1e-6)
    assert pbde.tv(normal(1.0, 1.0), normal(0.0, 1.0), grid) == pytest.approx(tv, abs=1e-12)


@pytest.mark.parametrize("divergence", [pbde.kl, pbde.tv])
@pytest.mark.parametrize("position", ["p", "q"])
def test_divergences_reject_a_density_not_normalized_on_the_support(divergence, position):
    """N(0, 1) has only ~0.34 of its mass in [0, 1]."""
    grid = pbde.Grid(0.0, 1.0, 101)
    args = {"p": normal(0.0, 1.0), "q": TruncatedNormalMixture([0.5], [1.0], low=0.0, high=1.0)}
    if position == "q":
        args = {"p": args["q"], "q": args["p"]}
    with pytest.raises(ValueError, match="normalized"):
        divergence(args["p"], args["q"], grid)


def test_optimal_density_rejects_an_annotator_not_normalized_on_the_support():
    with pytest.raises(ValueError, match="normalized"):
        pbde.optimal_density(
            pbde.Annotator(normal(0.0, 1.0)), pbde.luce(), pbde.Grid(0.0, 1.0, 101)
        )


# -- torch's default dtype -------------------------------------------------------------------


def test_float32_defaults_agree_to_float32_precision():
    """With torch's default float32, densities and f are float32; the solver still works in
    float64 and the result matches the closed form to float32 precision."""
    torch.set_default_dtype(torch.float32)  # the fixture restores float64 after the test
    ref = Categorical(probs=torch.tensor(REF, dtype=torch.float32))
    annotator = pbde.Annotator(Categorical(probs=torch.tensor(P_STAR, dtype=torch.float32)))
    expected = REF * P_STAR**0.5
    for process, proposal in [(annotator, None), (Generic(annotator), torch.tensor(MU))]:
        pi = pbde.optimal_density(process, pbde.dpo(2.0, ref), ITEMS, proposal=proposal)
        np.testing.assert_allclose(probs_of(pi), expected / expected.sum(), rtol=0, atol=1e-6)
    lengths = np.arange(1.0, N_ITEMS + 1)  # 1/3, 1/5 are not exact in float32
    pi = pbde.optimal_density(annotator, pbde.length_normalized(lambda x: x + 1), ITEMS)
    check_against_scipy(
        probs_of(pi), luce_matrix(P_STAR), UNIFORM_Q, 1 / lengths, np.zeros(N_ITEMS), atol=1e-6
    )


def test_finite_optimum_with_extreme_logits_is_not_mistaken_for_divergence():
    """A Luce p* with ratio e^33 has preference logits of 33: finite, so the Newton solver
    (used here through a one-component MixtureAnnotator) must find it, not report divergence."""
    p_star = Categorical(probs=torch.tensor([1.0, math.exp(-33.0)], dtype=torch.float64))
    annotator = pbde.MixtureAnnotator([pbde.Annotator(p_star)])
    optimum = pbde.optimal_density(annotator, pbde.luce(), torch.arange(2))
    log_ratio = float(optimum.values[0] - optimum.values[1])
    # the solver sees P = σ(33) = 1 − 4.7e-15 in float64, whose distance to 1 is only known to
    # ~1.1e-16 absolute (2.4% relative), so logit(P) — the optimum — is known to ~0.024
    assert log_ratio == pytest.approx(33.0, abs=0.03)
