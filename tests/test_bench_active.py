"""The design bound of benchmarks/bench_active.py against references computed here: brute force
over the simplex, closed-form optima, pseudo-inverses in the raw parameters, and scipy."""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import numpy as np
import pytest
import scipy.optimize

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_active.py"
_SPEC = importlib.util.spec_from_file_location("bench_active", _PATH)
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)


def _sigmoid_slope(z):
    p = 1 / (1 + np.exp(-z))
    return p * (1 - p)


def _raw_bandit_risk(weights, rewards, eta, optimum):
    """½·tr(G·I⁺) in the raw logits, I = Σ w_ab·σ'(r_a − r_b)·η²(e_a − e_b)(e_a − e_b)ᵀ, for
    ``weights`` {pair: weight or array of weights} (one risk per entry of the arrays)."""
    k = len(rewards)
    info = 0.0
    for (a, b), w in weights.items():
        u = eta * (np.eye(k)[a] - np.eye(k)[b])
        term = _sigmoid_slope(rewards[a] - rewards[b]) * np.outer(u, u)
        info = info + np.multiply.outer(np.asarray(w, dtype=float), term)
    fisher = np.diag(optimum) - np.outer(optimum, optimum)
    return 0.5 * np.trace(fisher @ np.linalg.pinv(info, rcond=1e-10), axis1=-2, axis2=-1)


@pytest.mark.parametrize("eta", [1.0, 2.0])
def test_bandit_bound_matches_brute_force_over_the_simplex(eta):
    rewards = np.array([1.0, 0.5, 0.0])
    optimum = np.exp(rewards / eta) / np.exp(rewards / eta).sum()
    pairs = [(0, 1), (0, 2), (1, 2)]
    steps = 400
    i, j = np.meshgrid(np.arange(1, steps), np.arange(1, steps), indexing="ij")
    inside = i + j < steps
    grid = (i[inside] / steps, j[inside] / steps, (steps - i[inside] - j[inside]) / steps)
    best = _raw_bandit_risk(dict(zip(pairs, grid, strict=True)), rewards, eta, optimum).min()
    every = list(itertools.product(range(3), repeat=2))
    static = _raw_bandit_risk({p: 1 / 9 for p in every}, rewards, eta, optimum)
    on_policy = _raw_bandit_risk(
        {(a, b): optimum[a] * optimum[b] for a, b in every}, rewards, eta, optimum
    )
    result = bench.bandit_bound(tuple(rewards), eta)
    assert result["values"]["static"] == pytest.approx(static, rel=1e-9)
    assert result["values"]["on_policy"] == pytest.approx(on_policy, rel=1e-9)
    # the grid's minimum is above the optimum, by little: the risk is smooth near it
    assert result["values"]["best"] <= best * (1 + 1e-9)
    assert result["values"]["best"] == pytest.approx(best, rel=1e-3)
    assert result["best_lower"] <= result["values"]["best"]
    if eta == 1.0:  # the numbers quoted in benchmarks/RESULTS.md
        assert round(result["ratios"]["static"], 3) == 0.653
        assert round(result["ratios"]["on_policy"], 3) == 0.599


def test_two_arms_the_best_design_is_the_one_distinct_pair():
    rewards, reference, eta = (0.3, -0.4), (0.7, 0.3), 1.5
    optimum = np.array(reference) * np.exp(np.array(rewards) / eta)
    optimum /= optimum.sum()
    result = bench.bandit_bound(rewards, eta, reference)
    # every design's information is its mass on the distinct pairs times one rank-one term
    assert result["ratios"]["static"] == pytest.approx(2 * reference[0] * reference[1], rel=1e-9)
    assert result["ratios"]["on_policy"] == pytest.approx(2 * optimum[0] * optimum[1], rel=1e-9)
    assert result["design"][0, 1] == pytest.approx(1.0)


def test_a_spanning_tree_of_pairs_has_the_closed_form_optimum():
    """Two candidate pairs for two identifiable directions: Φ(w) = Σ c_i / w_i, minimized by
    w_i ∝ √c_i at (Σ √c_i)²."""
    rewards, eta = np.array([0.2, 1.1, -0.6]), 0.7
    optimum = np.exp(rewards / eta) / np.exp(rewards / eta).sum()
    fisher = np.diag(optimum) - np.outer(optimum, optimum)
    u = eta * np.array([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0]]).T  # (0, 1) and (1, 2)
    slopes = _sigmoid_slope(np.array([rewards[0] - rewards[1], rewards[1] - rewards[2]]))
    left = np.linalg.pinv(u)
    c = np.diag(left @ fisher @ left.T) / slopes
    mask = np.zeros((3, 3), dtype=bool)
    mask[0, 1] = mask[1, 2] = True
    features = bench.whitened_features(np.eye(3), optimum)
    result = bench.optimal_design(features, rewards, candidates=mask, scale=eta, tol=1e-8)
    assert result["value"] == pytest.approx(0.5 * np.sqrt(c).sum() ** 2, rel=1e-6)
    expected = np.sqrt(c) / np.sqrt(c).sum()
    assert [result["design"][0, 1], result["design"][1, 2]] == pytest.approx(expected, abs=1e-4)


def test_whitened_features_give_the_raw_parameters_risk():
    """For a generic Jacobian, ½·tr(G·I(w)⁻¹) in whitened coordinates equals the same computed in
    the raw parameters with G = Cov_π[J]."""
    rng = np.random.default_rng(0)
    k, p = 7, 3
    jacobian = rng.normal(size=(k, p))
    masses = rng.dirichlet(np.ones(k))
    logits = rng.normal(size=k)
    design = rng.dirichlet(np.ones(k * k)).reshape(k, k)
    scale = 1.7
    features = bench.whitened_features(jacobian, masses)
    assert features.T @ np.diag(masses) @ features == pytest.approx(np.eye(p), abs=1e-10)
    centred = jacobian - masses @ jacobian
    fisher = centred.T @ np.diag(masses) @ centred
    info = np.zeros((p, p))
    for a in range(k):
        for b in range(k):
            u = scale * (jacobian[a] - jacobian[b])
            info += design[a, b] * _sigmoid_slope(logits[a] - logits[b]) * np.outer(u, u)
    expected = 0.5 * np.trace(fisher @ np.linalg.inv(info))
    assert bench.expected_kl(features, logits, design, scale=scale) == pytest.approx(
        expected, rel=1e-9
    )


def test_optimal_design_agrees_with_scipy_on_a_random_problem():
    rng = np.random.default_rng(1)
    k, p = 6, 3
    features = bench.whitened_features(rng.normal(size=(k, p)), rng.dirichlet(np.ones(k)))
    logits = 2 * rng.normal(size=k)
    upper = [(a, b) for a in range(k) for b in range(a + 1, k)]

    def risk(v):
        w = np.zeros((k, k))
        w[tuple(np.array(upper).T)] = np.exp(v - v.max()) / np.exp(v - v.max()).sum()
        return bench.expected_kl(features, logits, w)

    reference = scipy.optimize.minimize(risk, np.zeros(len(upper)), method="BFGS").fun
    result = bench.optimal_design(features, logits, tol=1e-6)
    assert result["lower"] <= reference * (1 + 1e-6)
    assert result["value"] == pytest.approx(reference, rel=1e-4)
