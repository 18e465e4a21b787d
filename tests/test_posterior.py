"""pbde.posterior: the Laplace posterior and the query criteria, against independent references.

* BALD and the expected Fisher weight: scipy.integrate.quad of the Gaussian integrals;
* the posterior of a tabular DPO model: its precision, covariance, features and policy Fisher
  matrix written out in numpy from the closed forms ∇_θ log softmax(θ)_x = e_x − π and
  G = diag(π) − ππᵀ;
* ½·tr(G·Σ) as the second-order E_θ[KL(π_θ̂ ‖ π_θ)]: Monte Carlo over θ ~ N(θ̂, Σ);
* the policy criterion: the drop of ½·tr(G·Σ) with the updated Σ from an explicit inverse;
* greedy batches: a numpy greedy that re-inverts the precision after every pick;
* a network's last-layer features: central finite differences of the model's logits.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import scipy.integrate
import scipy.special
import torch

import pbde
from pbde import online, posterior
from pbde.densities import Categorical


def _quad(fn, m, s2):
    """E[fn(z)], z ~ N(m, s2), by adaptive quadrature."""
    s = math.sqrt(s2)
    density = lambda z: math.exp(-0.5 * ((z - m) / s) ** 2) / (s * math.sqrt(2 * math.pi))  # noqa: E731
    return scipy.integrate.quad(lambda z: fn(z) * density(z), m - 12 * s, m + 12 * s, limit=200)[0]


def _entropy(p):
    return -scipy.special.xlogy(p, p) - scipy.special.xlogy(1 - p, 1 - p)


CASES = [
    (0.0, 0.01),
    (0.0, 4.0),
    (1.5, 0.3),
    (-2.0, 9.0),
    (4.0, 1.0),
    (0.3, 25.0),
    (-3.0, 400.0),
    (5.0, 2500.0),
]


@pytest.mark.parametrize(("m", "s2"), CASES)
def test_bald_and_policy_weight_match_quadrature(m, s2):
    p = _quad(scipy.special.expit, m, s2)
    expected_bald = _entropy(p) - _quad(lambda z: _entropy(scipy.special.expit(z)), m, s2)
    mean, var = torch.tensor([m], dtype=torch.float64), torch.tensor([s2], dtype=torch.float64)
    assert float(posterior.bald(mean, var)) == pytest.approx(expected_bald, rel=1e-6, abs=1e-9)
    weight = _quad(lambda z: scipy.special.expit(z) * (1 - scipy.special.expit(z)), m, s2)
    spread = torch.tensor([0.7], dtype=torch.float64)
    gain = 0.5 * weight * 0.7 / (1 + weight * s2)
    assert float(posterior.policy_gain(mean, var, spread)) == pytest.approx(gain, rel=1e-6)


BETA = 2.0
REFERENCE = np.array([0.1, 0.2, 0.3, 0.4])
FIT = np.array([0.37, 0.31, 0.22, 0.1])  # where the model is now
DATA_A = np.array([0, 0, 1, 2, 3, 3, 0])
DATA_B = np.array([1, 1, 2, 3, 0, 2, 0])
CAND_A = np.array([0, 1, 2, 0, 3, 1, 2])
CAND_B = np.array([1, 3, 3, 2, 0, 2, 2])


def _tabular():
    model = pbde.Annotator(
        Categorical(probs=torch.tensor(FIT, dtype=torch.float64)),
        pbde.dpo(BETA, Categorical(probs=torch.tensor(REFERENCE, dtype=torch.float64))),
    )
    data = pbde.Preferences(torch.tensor(DATA_A), torch.tensor(DATA_B), torch.ones(len(DATA_A)))
    return model, data


def _numpy_posterior(tau, data_a=DATA_A, data_b=DATA_B):
    """Precision, covariance, candidate features and logits, G — written out by hand."""
    omega = BETA * (np.log(FIT) - np.log(REFERENCE))
    eye = np.eye(4)
    features = lambda a, b: BETA * (eye[a] - eye[b])  # noqa: E731 (β·(e_a − π) − β·(e_b − π))
    slope = lambda z: scipy.special.expit(z) * (1 - scipy.special.expit(z))  # noqa: E731
    precision = tau * eye
    for a, b in zip(data_a, data_b, strict=True):
        u = features(a, b)
        precision = precision + slope(omega[a] - omega[b]) * np.outer(u, u)
    u = np.stack([features(a, b) for a, b in zip(CAND_A, CAND_B, strict=True)])
    logits = omega[CAND_A] - omega[CAND_B]
    fisher = np.diag(FIT) - np.outer(FIT, FIT)
    return precision, np.linalg.inv(precision), u, logits, fisher


def _built(model, data, tau=0.5, support=True):
    return posterior.LaplacePosterior(
        model,
        data,
        (torch.tensor(CAND_A), torch.tensor(CAND_B)),
        support=pbde.Support(torch.arange(4)) if support else None,
        prior_precision=tau,
    )


def test_tabular_posterior_matches_its_closed_form():
    model, data = _tabular()
    built = _built(model, data)
    _, covariance, u, logits, fisher = _numpy_posterior(0.5)
    np.testing.assert_allclose(built.covariance.numpy(), covariance, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(built.features.numpy(), u, atol=1e-9)
    np.testing.assert_allclose(built.logits.numpy(), logits, atol=1e-9)
    np.testing.assert_allclose(built.fisher.numpy(), fisher, atol=1e-9)
    np.testing.assert_allclose(
        built.variance().numpy(), np.einsum("cd,de,ce->c", u, covariance, u), rtol=1e-9
    )
    # without data: the prior alone
    prior = _built(model, None)
    np.testing.assert_allclose(prior.covariance.numpy(), np.eye(4) / 0.5, atol=1e-12)


def test_half_trace_of_g_sigma_is_the_expected_kl_of_a_posterior_draw():
    """½·tr(G·Σ) ≈ E_θ[KL(π_θ̂ ‖ π_θ)] for a tight posterior, by Monte Carlo in numpy."""
    model, data = _tabular()
    built = _built(model, data, tau=400.0)
    rng = np.random.default_rng(0)
    theta = rng.multivariate_normal(np.log(FIT), built.covariance.numpy(), size=200_000)
    draws = scipy.special.softmax(theta, axis=1)
    kls = (FIT * (np.log(FIT) - np.log(draws))).sum(1)
    half_trace = 0.5 * float(torch.trace(built.fisher @ built.covariance))
    assert kls.mean() == pytest.approx(half_trace, rel=0.02)  # third-order terms ~ 1 %


def test_policy_gain_is_the_drop_of_the_expected_kl():
    model, data = _tabular()
    built = _built(model, data)
    precision, covariance, u, logits, fisher = _numpy_posterior(0.5)
    gain = posterior.policy_gain(
        built.logits,
        built.variance(),
        torch.einsum(
            "cd,de,ef,fc->c",
            built.features,
            built.covariance,
            built.fisher,
            built.covariance @ built.features.T,
        ),
    ).numpy()
    for c in range(len(CAND_A)):
        s2 = float(u[c] @ covariance @ u[c])
        weight = _quad(
            lambda z: scipy.special.expit(z) * (1 - scipy.special.expit(z)), logits[c], s2
        )
        updated = np.linalg.inv(precision + weight * np.outer(u[c], u[c]))
        drop = 0.5 * np.trace(fisher @ (covariance - updated))
        assert gain[c] == pytest.approx(drop, rel=1e-6, abs=1e-12)


def _numpy_greedy(criterion, n, tau, available):
    """Greedy picks, re-inverting the precision after each (no Sherman–Morrison)."""
    precision, _, u, logits, fisher = _numpy_posterior(tau)
    slope = lambda z: scipy.special.expit(z) * (1 - scipy.special.expit(z))  # noqa: E731
    left, picked = list(np.flatnonzero(available)), []
    for _ in range(n):
        covariance = np.linalg.inv(precision)
        best, best_score = None, -np.inf
        for c in left:
            s2 = float(u[c] @ covariance @ u[c])
            if criterion == "bald":
                p = _quad(scipy.special.expit, logits[c], s2)
                score = _entropy(p) - _quad(
                    lambda z: _entropy(scipy.special.expit(z)), logits[c], s2
                )
            else:
                w = _quad(slope, logits[c], s2)
                updated = np.linalg.inv(precision + w * np.outer(u[c], u[c]))
                score = 0.5 * np.trace(fisher @ (covariance - updated))
            if score > best_score + 1e-12:
                best, best_score = c, score
        picked.append(best)
        left.remove(best)
        s2 = float(u[best] @ covariance @ u[best])
        precision = precision + _quad(slope, logits[best], s2) * np.outer(u[best], u[best])
    return picked


@pytest.mark.parametrize("criterion", ["policy", "bald"])
def test_greedy_batch_matches_a_reference_greedy_and_never_repeats(criterion):
    model, data = _tabular()
    built = _built(model, data, tau=0.5)
    available = np.array([True, True, True, True, True, True, False])  # the last is (2, 2)
    chosen = posterior.select_pairs(built, 5, criterion, torch.tensor(available)).tolist()
    assert chosen == _numpy_greedy(criterion, 5, 0.5, available)
    assert len(set(chosen)) == len(chosen)


def test_greedy_batch_spreads_over_a_pool_of_copies():
    """A pool of 50 copies of each distinct pair: the batch does not pile onto the best one."""
    model, data = _tabular()
    xa, xb = torch.tensor(CAND_A[:6]).repeat(50), torch.tensor(CAND_B[:6]).repeat(50)
    built = posterior.LaplacePosterior(
        model, data, (xa, xb), support=pbde.Support(torch.arange(4)), prior_precision=0.5
    )
    for criterion in ("policy", "bald"):
        chosen = posterior.select_pairs(built, 60, criterion)
        assert len(set(chosen.tolist())) == 60
        pairs = {(int(xa[i]), int(xb[i])) for i in chosen}
        assert len(pairs) >= 3


def _central_differences(model, xa, xb, parameters, h: float) -> torch.Tensor:
    """d logits / d each entry of ``parameters`` by central differences, one column each."""
    columns = []
    for p in parameters:
        for i in range(p.numel()):
            with torch.no_grad():
                p.view(-1)[i] += h
                up = model.logits(xa, xb)
                p.view(-1)[i] -= 2 * h
                down = model.logits(xa, xb)
                p.view(-1)[i] += h
            columns.append((up - down) / (2 * h))
    return torch.stack(columns, 1)


def test_last_layer_features_match_finite_differences():
    torch.manual_seed(0)
    reference = pbde.densities.EnergyModel(-2.0, 2.0, hidden=(8, 8), grid_size=65)
    density = copy.deepcopy(reference).double().requires_grad_(True)
    density.energy_net[-1].bias.requires_grad_(False)
    model = pbde.Annotator(density, pbde.dpo(3.0, reference.double()))
    grid = density.grid.points
    xa, xb = grid[[3, 10, 40]], grid[[60, 10, 5]]
    built = posterior.LaplacePosterior(model, None, (xa, xb), max_parameters=16)
    weight, bias = density.energy_net[-1].weight, density.energy_net[-3].bias
    assert built.features.shape == (3, bias.numel() + weight.numel())
    h = 1e-6
    np.testing.assert_allclose(
        built.features.numpy(),
        _central_differences(model, xa, xb, (bias, weight), h).numpy(),
        rtol=1e-5,
        atol=1e-7,
    )
    assert float(built.features[1].abs().max()) == 0.0  # a pair of one item twice


def test_bad_input_is_named():
    model, data = _tabular()
    pair = (torch.tensor([0]), torch.tensor([1]))
    with pytest.raises(ValueError, match="'prior_precision'"):
        posterior.LaplacePosterior(model, data, pair, prior_precision=0.0)
    with pytest.raises(ValueError, match="'max_parameters'"):
        posterior.LaplacePosterior(model, data, pair, max_parameters=0)
    with pytest.raises(TypeError, match="'model'"):
        posterior.LaplacePosterior(model.density, data, pair)
    with pytest.raises(TypeError, match="'data'"):
        posterior.LaplacePosterior(model, "data", pair)
    built = posterior.LaplacePosterior(model, data, pair)
    with pytest.raises(ValueError, match="'criterion'"):
        posterior.select_pairs(built, 1, "entropy")
    with pytest.raises(ValueError, match="support"):
        posterior.select_pairs(built, 1, "policy")
    with pytest.raises(ValueError, match="larger pool"):
        posterior.select_pairs(built, 2, "bald")
    with pytest.raises(ValueError, match="'criterion'"):
        online.Active(criterion="entropy")
    with pytest.raises(ValueError, match="'prior_precision'"):
        online.Active(prior_precision=-1.0)
    with pytest.raises(ValueError, match="'base'"):
        online.Active(base=(torch.tensor([0, 1]), torch.tensor([1])))


def test_features_with_a_varying_f_match_finite_differences():
    """f(x) = 1/|x| does not cancel the normalizer's gradient in Ω(x_A) − Ω(x_B) (an energy
    model's unnormalized log-density leaves it out)."""
    torch.manual_seed(1)
    density = pbde.densities.EnergyModel(-2.0, 2.0, hidden=(8, 8), grid_size=65).double()
    density.energy_net[-1].bias.requires_grad_(False)
    model = pbde.Annotator(density, pbde.length_normalized(lambda x: x + 3.0))
    grid = density.grid.points
    xa, xb = grid[[3, 10, 40]], grid[[60, 10, 5]]
    built = posterior.LaplacePosterior(model, None, (xa, xb), max_parameters=16)
    h = 1e-6
    last = (density.energy_net[-3].bias, density.energy_net[-1].weight)
    expected = _central_differences(model, xa, xb, last, h).numpy()
    np.testing.assert_allclose(built.features.numpy(), expected, rtol=1e-5, atol=1e-7)
    # the pair of one item twice: f(a) = f(b), so the normalizer cancels there
    assert float(built.features[1].abs().max()) == 0.0
