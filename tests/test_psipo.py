"""ΨPO (Azar et al.): the optimum for any Ψ, deterministic annotators, IPO's population loss.

References are computed independently in numpy from the closed forms of the paper.
"""

import math

import numpy as np
import pytest
import torch

import pbde
from pbde.densities import Categorical


def bt_matrix(p):
    """Bradley–Terry preference matrix P[a, b] = p_a / (p_a + p_b), in numpy."""
    p = np.asarray(p, dtype=np.float64)
    return p[:, None] / (p[:, None] + p[None, :])


def psipo_reference(P, psi, tau, ref, mu):
    """π*(y) ∝ π_ref(y) exp(τ⁻¹ Σ_y′ μ(y′) Ψ(P[y, y′])) (Azar et al. eq. 9), in numpy."""
    g = psi(P) @ mu
    unnormalized = ref * np.exp(g / tau)
    return unnormalized / unnormalized.sum(), g


P_STAR = [0.1, 0.2, 0.3, 0.4]
REF = [0.4, 0.3, 0.2, 0.1]
MU = [0.1, 0.4, 0.3, 0.2]


@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0, 2.0])
def test_identity_two_actions_deterministic(tau):
    """Azar et al. §5: p*(y1 ≻ y2) = 1, uniform π_ref and μ → π(y1) = σ(1/(2τ))."""
    always = pbde.DeterministicAnnotator(torch.tensor([1.0, 0.0]))
    ref = Categorical(size=2)
    pi = pbde.psipo_optimum(always, "identity", tau, ref, None, torch.arange(2))
    expected = 1.0 / (1.0 + math.exp(-1.0 / (2.0 * tau)))
    assert pi.prob(torch.tensor([0])).item() == pytest.approx(expected, abs=1e-12)


def test_logit_two_actions_deterministic_has_no_optimum():
    always = pbde.DeterministicAnnotator(torch.tensor([1.0, 0.0]))
    ref = Categorical(size=2)
    with pytest.raises(ValueError, match="does not exist"):
        pbde.psipo_optimum(always, "logit", 1.0, ref, None, torch.arange(2))


def test_logit_with_only_sure_losers_drawn_puts_zero_mass_on_them():
    """With μ on the winner alone, Ψ(p*(y2 ≻ y1)) = logit(0) = −∞ only penalizes y2: the
    objective is bounded and its maximizer is π = (1, 0) for any τ."""
    always = pbde.DeterministicAnnotator(torch.tensor([1.0, 0.0]))
    ref = Categorical(size=2)
    pi = pbde.psipo_optimum(always, "logit", 1.0, ref, torch.tensor([1.0, 0.0]), torch.arange(2))
    assert pi.prob(torch.arange(2)).tolist() == [1.0, 0.0]


@pytest.mark.parametrize("tau", [0.25, 1.0, 4.0])
def test_logit_matches_dpo_optimum_under_bradley_terry(tau):
    """Prop. 1: Ψ = logit under a BT annotator gives π_ref·p*^{1/τ}, = optimal_density(dpo(τ))."""
    annotator = pbde.Annotator(Categorical(probs=torch.tensor(P_STAR)))
    ref = Categorical(probs=torch.tensor(REF))
    support = torch.arange(4)
    pi = pbde.psipo_optimum(annotator, "logit", tau, ref, torch.tensor(MU), support)
    closed = np.array(REF) * np.array(P_STAR) ** (1.0 / tau)
    closed /= closed.sum()
    np.testing.assert_allclose(pi.prob(support).numpy(), closed, atol=1e-6)
    dpo = pbde.optimal_density(annotator, pbde.dpo(tau, ref), support)
    np.testing.assert_allclose(pi.values.numpy(), dpo.values.numpy(), atol=1e-6)


@pytest.mark.parametrize(
    "psi, psi_numpy",
    [
        ("identity", lambda q: q),
        ("logit", lambda q: np.log(q / (1 - q))),
        (lambda q: q**2, lambda q: q**2),
    ],
    ids=["identity", "logit", "square"],
)
def test_optimum_solves_the_root_finding_equations(psi, psi_numpy):
    """Eq. 11: h*(y, y′) = τ⁻¹(g(y) − g(y′)) with g(y) = E_μ Ψ(p*(y ≻ y′)), to 1e-8."""
    tau = 0.7
    annotator = pbde.Annotator(Categorical(probs=torch.tensor(P_STAR)))
    ref = Categorical(probs=torch.tensor(REF))
    support = torch.arange(4)
    pi = pbde.psipo_optimum(annotator, psi, tau, ref, torch.tensor(MU), support)
    expected, g = psipo_reference(bt_matrix(P_STAR), psi_numpy, tau, np.array(REF), np.array(MU))
    log_pi, log_ref = pi.values.numpy(), np.log(REF)
    h = (log_pi[:, None] - log_ref[:, None]) - (log_pi[None, :] - log_ref[None, :])
    np.testing.assert_allclose(h, (g[:, None] - g[None, :]) / tau, atol=1e-8)
    np.testing.assert_allclose(np.exp(log_pi), expected, atol=1e-6)


def test_decreasing_psi_and_bad_arguments_are_rejected():
    annotator = pbde.Annotator(Categorical(probs=torch.tensor(P_STAR)))
    ref = Categorical(size=4)
    support = torch.arange(4)
    with pytest.raises(ValueError, match="non-decreasing"):
        pbde.psipo_optimum(annotator, lambda q: -q, 1.0, ref, None, support)
    with pytest.raises(ValueError, match="'tau'"):
        pbde.psipo_optimum(annotator, "identity", 0.0, ref, None, support)
    with pytest.raises(ValueError, match="'psi'"):
        pbde.psipo_optimum(annotator, "square", 1.0, ref, None, support)
    with pytest.raises(ValueError, match="'proposal'"):
        pbde.psipo_optimum(annotator, "identity", 1.0, ref, torch.ones(4, 4), support)


def _annotators():
    bt = pbde.Annotator(Categorical(probs=torch.tensor(P_STAR)))
    two = pbde.MixtureAnnotator(
        [
            pbde.Annotator(Categorical(probs=torch.tensor([0.7, 0.1, 0.1, 0.1]))),
            pbde.Annotator(Categorical(probs=torch.tensor([0.05, 0.05, 0.1, 0.8]))),
        ],
        [0.4, 0.6],
    )
    ranking = pbde.DeterministicAnnotator(torch.tensor([2.0, 3.0, 1.0, 0.0]))
    return {"bradley-terry": bt, "two annotators": two, "deterministic": ranking}


@pytest.mark.parametrize("name", list(_annotators()))
def test_ipo_newton_solver_agrees_with_the_closed_form(name):
    """optimal_density(…, loss='ipo') (Newton on the sampled loss's expectation) and
    psipo_optimum(Ψ = identity) (Azar's closed form) are two independent routes to IPO's optimum."""
    annotator = _annotators()[name]
    ref = Categorical(probs=torch.tensor(REF))
    support = torch.arange(4)
    for tau in (0.3, 1.0):
        closed = pbde.psipo_optimum(annotator, "identity", tau, ref, torch.tensor(MU), support)
        newton = pbde.optimal_density(
            annotator, pbde.dpo(1.0, ref), support, proposal=torch.tensor(MU), loss="ipo", tau=tau
        )
        np.testing.assert_allclose(newton.values.numpy(), closed.values.numpy(), atol=1e-8)


def test_population_and_sampled_ipo_losses_differ_by_a_constant():
    """Prop. 3: eq. 13 and the expectation of eq. 17 differ by a constant independent of π."""
    tau = 0.5
    annotator = _annotators()["two annotators"].double()
    ref = Categorical(probs=torch.tensor(REF))
    support = torch.arange(4)
    mu = torch.tensor(MU, dtype=torch.float64)
    P = torch.sigmoid(annotator.logits(support.repeat_interleave(4), support.repeat(4)))
    P = P.detach().double().reshape(4, 4)
    generator = torch.Generator().manual_seed(0)
    population, sampled = [], []
    for _ in range(5):
        density = Categorical(logits=torch.randn(4, generator=generator))
        model = pbde.Annotator(density, pbde.dpo(1.0, ref)).double()  # float64 throughout
        population.append(pbde.ipo_population_loss(model, annotator, tau, mu, support).item())
        h = model.logits(support.repeat_interleave(4), support.repeat(4)).detach().reshape(4, 4)
        per_pair = P * (h - 1 / (2 * tau)) ** 2 + (1 - P) * (h + 1 / (2 * tau)) ** 2
        sampled.append(float((mu[:, None] * mu[None, :] * per_pair).sum()))
    differences = np.array(population) - np.array(sampled)
    assert np.ptp(population) > 1e-2  # the losses do depend on π ...
    assert np.ptp(differences) < 1e-10  # ... but their difference does not


def test_population_ipo_loss_is_minimized_at_the_psipo_optimum():
    tau = 0.5
    annotator = _annotators()["deterministic"]
    ref = Categorical(probs=torch.tensor(REF))
    support = torch.arange(4)
    mu = torch.tensor(MU)
    optimum = pbde.psipo_optimum(annotator, "identity", tau, ref, mu, support)
    model = pbde.Annotator(Categorical(logits=optimum.values.float()), pbde.dpo(1.0, ref))
    loss = pbde.ipo_population_loss(model, annotator, tau, mu, support)
    (gradient,) = torch.autograd.grad(loss, model.density.logits)
    assert loss.item() == pytest.approx(0.0, abs=1e-9)  # L(π*) = 0 (Azar et al. Thm. 2's proof)
    assert float(gradient.abs().max()) < 1e-5
    other = pbde.Annotator(Categorical(size=4), pbde.dpo(1.0, ref))
    assert pbde.ipo_population_loss(other, annotator, tau, mu, support).item() > 1e-3


def test_preference_against_matches_numpy():
    annotator = _annotators()["bradley-terry"]
    wins = pbde.preference_against(annotator, torch.arange(4), torch.tensor(MU))
    np.testing.assert_allclose(wins.numpy(), bt_matrix(P_STAR) @ np.array(MU), atol=1e-7)


def test_deterministic_annotator_labels_and_validation():
    ranking = pbde.DeterministicAnnotator(torch.tensor([2.0, 3.0, 1.0]))
    xa = torch.tensor([0, 1, 2, 1])
    xb = torch.tensor([1, 2, 0, 0])
    prefs = ranking.label(xa, xb, generator=torch.Generator().manual_seed(0))
    assert prefs.y.tolist() == [0.0, 1.0, 0.0, 1.0]
    by_callable = pbde.DeterministicAnnotator(lambda x: -x.abs())  # prefers items near 0
    assert by_callable.prob(torch.tensor([0.5]), torch.tensor([-2.0])).item() == 1.0
    log_likelihood = ranking.log_likelihood(pbde.Preferences(xa, xb, torch.tensor([0.0, 1, 1, 1])))
    assert log_likelihood.tolist() == [0.0, 0.0, -math.inf, 0.0]  # the third label is impossible
    with pytest.raises(ValueError, match="item ids"):
        ranking.prob(torch.tensor([3]), torch.tensor([0]))
    with pytest.raises(TypeError, match="'score'"):
        pbde.DeterministicAnnotator("higher is better")
    with pytest.raises(ValueError, match="no finite optimum|No finite optimum"):
        pbde.optimal_density(ranking, pbde.luce(), torch.arange(3))


@pytest.mark.parametrize("annotator_name, tau", [("bradley-terry", 0.5), ("deterministic", 1.0)])
def test_fitting_ipo_on_sampled_data_converges_to_psipo_optimum(annotator_name, tau):
    """IPO = behavior dpo(1, π_ref) × loss ipo(τ), fitted on pairs y, y′ ~ μ i.i.d.

    With n = 60 000 labelled pairs over 4 items the sampling error of each empirical pairwise
    preference is ~ sqrt(p(1−p)/(n·μ_a·μ_b)) ≲ 0.02, which moves π* by ≲ 0.01 in TV; we require
    TV < 0.02. Before fitting (π = uniform) the TV is > 0.1, so the check can fail.
    """
    annotator = _annotators()[annotator_name]
    ref = Categorical(probs=torch.tensor(REF))
    mu = Categorical(probs=torch.tensor(MU))
    support = torch.arange(4)
    generator = torch.Generator().manual_seed(1)
    xa, xb = pbde.sample_pairs(mu, 60_000, generator=generator)
    prefs = annotator.label(xa, xb, generator=generator)
    target = pbde.psipo_optimum(annotator, "identity", tau, ref, mu, support)
    model = pbde.Annotator(Categorical(size=4), pbde.dpo(1.0, ref))
    assert pbde.tv(model.density, target, support) > 0.1
    pbde.fit(model, prefs, loss="ipo", tau=tau, steps=400, lr=0.05, progress=False)
    assert pbde.tv(model.density, target, support) < 0.02
