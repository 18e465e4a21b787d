"""Active preference queries against random pairs: queries to reach a KL, and the time they cost.

Runs :func:`pbde.experiments.online.run` (the experiment behind ``pbde reproduce online``) with
the strategies alternating within each seed — static pairs from π_0, on-policy pairs, active
selection by BALD and by the policy criterion (:mod:`pbde.posterior`), and uncertainty sampling
— on the 1-D toy (DPO β = 4) and the 3-armed bandit (r = (1, .5, 0), η = 1), and prints, per
strategy, the median over seeds of the queries after which KL(optimum ‖ model) stays ≤ 0.05
(and ≤ 0.005 on the bandit), the per-seed values, and the wall time per round spent choosing
the pairs and re-fitting.

It also prints a bound on what any choice of pairs could save (``--bound``: only that). Near
the optimum θ*, the maximum-likelihood fit from N labels of pairs drawn from a design w has
E[KL(π* ‖ π_θ̂)] ≈ ½·tr(G·I(w)⁻¹)/N (I(w) the Fisher information of one query, G the policy's
Fisher matrix at the optimum), so the best design over a candidate set needs
tr(G·I(w*)⁻¹)/tr(G·I(w)⁻¹) of design w's queries for the same expected KL. On the bandit θ is
the table of logits and the candidates are the three distinct pairs; on the 1-D toy θ* is the
experiment's network regressed onto the optimum, the candidates every pair of 201 points of
[−10, 10], and the local approximation either the last layer (what the posterior of
:class:`pbde.online.Active` covers) or all parameters, cut to the r leading directions of its
tangent space. The optimal w is found by a multiplicative algorithm that certifies how close it
is (:func:`optimal_design`).

``--fine`` runs the 1-D toy alone with budgets growing by √2 (32, 45, 64, 91, … 1024 queries)
instead of doubling, so queries-to-threshold ratios are resolved to a factor √2; its default
strategies are static, on-policy, the policy criterion, and the policy criterion choosing among
candidates drawn from the model tempered at T = 2 (``policy_wide``, a wider proposal);
``policy_pool32`` is the policy criterion with four times the pool.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_active.py [--repeats 5] [--json out.json]
    OMP_NUM_THREADS=1 python benchmarks/bench_active.py --fine --repeats 6 [--seed 1]
    OMP_NUM_THREADS=1 python benchmarks/bench_active.py --bound
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import platform
import time

import numpy as np
import torch

import pbde
from pbde import online, posterior
from pbde.experiments import online as experiment
from pbde.experiments import toy

STRATEGIES = ("static", "on_policy", "bald", "policy", "uncertainty")
FINE_STRATEGIES = ("static", "on_policy", "policy", "policy_wide")
WIDE_TEMPERATURE = 2.0


class _TemperedPairs:
    """Both items from the current model tempered at T (wider than on-policy for T > 1)."""

    def __init__(self, temperature: float):
        self.policy = online.Tempered(temperature)

    def __call__(self, model, n: int, generator=None):
        both = self.policy(model, 2 * n, generator)
        return both[:n], both[n:]


def fine_budgets(first: int = 32, last: int = 1024, factor: float = 2**0.5) -> tuple[int, ...]:
    """Per-round query counts whose running totals grow by ``factor``: 32, 45, 64, 91, … ."""
    totals = []
    total = float(first)
    while round(total) <= last:
        totals.append(round(total))
        total *= factor
    return tuple(b - a for a, b in zip([0, *totals[:-1]], totals, strict=True))


# -- the design bound: what the best possible choice of pairs could save, asymptotically -------
#
# Near the optimum θ*, the maximum-likelihood fit from N labels of pairs drawn from a design w
# (a distribution over pairs) is θ̂ ≈ N(θ*, I(w)⁻¹/N), I(w) = Σ_ab w_ab·σ'(z_ab)·u_ab·u_abᵀ,
# u_ab = ∇Ω(a) − ∇Ω(b) at θ*, z_ab the annotator's logit; so E[KL(π* ‖ π_θ̂)] ≈ ½·tr(G·I(w)⁻¹)/N,
# G = Cov_π*[∇ log π] the policy's Fisher matrix. The queries a design needs for a given expected
# KL are proportional to tr(G·I(w)⁻¹): the ratio of two designs' values is their query ratio.


def whitened_features(jacobian, masses, *, rtol: float = 1e-10) -> np.ndarray:
    """Rows ∂ log π(x)/∂θ at the optimum, in coordinates where G = I.

    Args:
        jacobian: ∂ log π̃(x_k)/∂θ (π̃ unnormalized: a row shift cancels), shape ``(K, P)``.
        masses: π*'s masses on the K items, shape ``(K,)``.
        rtol: directions of θ whose singular value of diag(√π*)·(J − π*ᵀJ) is ≤ rtol × the
            largest are dropped (they do not move π where π* has mass).

    Returns:
        Shape ``(K, r)``: F with Fᵀ·diag(π*)·F = I_r and F_a − F_b = the projection of
        ∇ log π(a) − ∇ log π(b) onto the kept directions.
    """
    jacobian = np.asarray(jacobian, dtype=np.float64)
    masses = np.asarray(masses, dtype=np.float64) / np.sum(masses)
    centred = jacobian - masses @ jacobian
    _, singular, vt = np.linalg.svd(np.sqrt(masses)[:, None] * centred, full_matrices=False)
    keep = singular > rtol * singular[0]
    return centred @ vt[keep].T / singular[keep]


def _slopes(item_logits) -> np.ndarray:
    """σ'(s_a − s_b) for every ordered pair, shape ``(K, K)``: the Fisher weight of its label."""
    s = np.asarray(item_logits, dtype=np.float64)
    p = 1 / (1 + np.exp(-(s[:, None] - s[None, :])))
    return p * (1 - p)


def information(features, slopes, design) -> np.ndarray:
    """I(w) = Σ_ab w_ab·σ'_ab·(F_a − F_b)(F_a − F_b)ᵀ, by the weighted graph Laplacian of w."""
    c = design * slopes
    c = c + c.T
    return features.T @ (np.diag(c.sum(1)) - c) @ features


def expected_kl(features, item_logits, design, *, scale: float = 1.0) -> float:
    """½·tr(I(w)⁻¹) for whitened ``features`` (G = I): N × the asymptotic E[KL(π* ‖ π_θ̂)].

    Args:
        features: :func:`whitened_features`, shape ``(K, r)``.
        item_logits: s with the annotator's logit of (a, b) = s_a − s_b, shape ``(K,)``.
        design: w over ordered pairs, shape ``(K, K)``, summing to 1.
        scale: f, ∇Ω = f·∇ log π (β for DPO).
    """
    info = scale**2 * information(features, _slopes(item_logits), design)
    if np.linalg.matrix_rank(info) < info.shape[0]:
        return math.inf
    return 0.5 * float(np.trace(np.linalg.inv(info)))


def optimal_design(
    features, item_logits, *, candidates=None, scale: float = 1.0, tol=1e-4, max_iter=100_000
) -> dict:
    """The design minimizing ½·tr(I(w)⁻¹) over the candidate pairs (A-optimality; G = I).

    The multiplicative algorithm w_ab ← w_ab·√(d_ab / Φ(w)), d_ab = σ'_ab·u_abᵀI⁻²u_ab the
    decrease of Φ = tr(I⁻¹) per unit weight (Σ w·d = Φ; monotone for this power, Yu 2010), from
    the uniform design. Stops when max d / Φ ≤ 1 + ``tol``: by convexity and Φ's homogeneity,
    Φ(w*) ≥ Φ(w)² / max d, so the value is within that factor of the optimum (``lower``).

    Args:
        features: :func:`whitened_features`, shape ``(K, r)``.
        item_logits: as in :func:`expected_kl`.
        candidates: boolean ``(K, K)`` mask of the allowed pairs; default every a < b.
        scale: as in :func:`expected_kl`.

    Returns:
        A dict: ``design`` (K, K), ``value`` = ½·tr(I(w)⁻¹), ``lower`` (a lower bound on the
        optimal value), ``iterations``.
    """
    k = features.shape[0]
    mask = np.triu(np.ones((k, k), dtype=bool), 1) if candidates is None else candidates
    slopes = _slopes(item_logits)
    w = mask / mask.sum()
    iterations = 0
    while True:
        iterations += 1
        inverse = np.linalg.inv(scale**2 * information(features, slopes, w))
        phi = float(np.trace(inverse))
        q = features @ (inverse @ inverse) @ features.T * scale**2
        diagonal = np.diag(q)
        d = np.where(mask, slopes * (diagonal[:, None] + diagonal[None, :] - 2 * q), 0.0)
        if d.max() <= phi * (1 + tol) or iterations == max_iter:
            break
        w = w * np.sqrt(np.clip(d, 0.0, None) / phi)
        w /= w.sum()
    return {
        "design": w,
        "value": 0.5 * phi,
        "lower": 0.5 * phi**2 / d.max(),
        "iterations": iterations,
    }


def _design_ratios(features, item_logits, designs: dict, scale: float) -> dict:
    """Each design's expected KL per query, the optimum's, and the query ratios best / design."""
    best = optimal_design(features, item_logits, scale=scale)
    values = {
        name: expected_kl(features, item_logits, w, scale=scale) for name, w in designs.items()
    }
    return {
        "dimension": features.shape[1],
        "values": values | {"best": best["value"]},
        "best_lower": best["lower"],
        "iterations": best["iterations"],
        "ratios": {name: best["value"] / v for name, v in values.items()},
        "design": best["design"],
    }


def bandit_bound(rewards=(1.0, 0.5, 0.0), eta=1.0, reference=None) -> dict:
    """The design bound on the bandit: θ = the logits of a Categorical, DPO with β = η from π_0
    (uniform by default), a Bradley–Terry annotator in r; static = pairs from π_0, on-policy =
    pairs from the optimum π* ∝ π_0·exp(r/η), best = over every pair of distinct arms."""
    r = np.asarray(rewards, dtype=np.float64)
    k = len(r)
    pi_0 = np.full(k, 1 / k) if reference is None else np.asarray(reference, dtype=np.float64)
    optimum = pi_0 * np.exp(r / eta)
    optimum /= optimum.sum()
    features = whitened_features(np.eye(k), optimum)  # ∂ log π̃(a)/∂θ = e_a
    designs = {"static": np.outer(pi_0, pi_0), "on_policy": np.outer(optimum, optimum)}
    return _design_ratios(features, r, designs, eta)


def toy_bound(settings, *, items: int = 201, rtols=(1e-1, 1e-2, 1e-3, 1e-4)) -> dict:
    """The design bound on the 1-D toy, in the experiment's setting (π_pre, β, the network).

    θ* is π_pre's network regressed onto log π* = log π_pre + log p* / β (eq. 16); the items
    are ``items`` evenly spaced points of [−10, 10] (every pair of distinct points a candidate).
    Two local approximations: the *last layer* (the trailing parameters
    :class:`pbde.online.Active`'s posterior covers) and *all* parameters, the tangent space cut
    at each relative singular value in ``rtols`` (its dimension r grows as the cut falls).
    Static = pairs from π_pre, on-policy = pairs from π*.
    """
    pi_pre = experiment.toy_reference(settings)
    p_star = toy.paper_p_star()
    beta = settings.toy_beta
    x = pbde.Grid(toy.LOW, toy.HIGH, items).points
    with torch.no_grad():
        log_pre = pi_pre.log_prob(x).double()
        log_star = p_star.log_prob(x).double()
    target = log_pre + log_star / beta
    model = copy.deepcopy(pi_pre).requires_grad_(True)
    model.energy_net[-1].bias.requires_grad_(False)

    def log_target(points):
        return pi_pre.log_prob(points) + p_star.log_prob(points) / beta

    model.pretrain_to(log_target, steps=2000, lr=1e-2, progress=False)
    optimum = torch.softmax(target, 0).numpy()
    with torch.no_grad():
        fitted = torch.softmax(model.log_prob(x).double(), 0).numpy()
    fit_kl = float(np.sum(optimum * np.log(optimum / fitted)))
    pre = torch.softmax(log_pre, 0).numpy()
    designs = {"static": np.outer(pre, pre), "on_policy": np.outer(optimum, optimum)}
    points = x.numpy()
    cumulative = np.cumsum(optimum)
    tails = (cumulative < 0.025) | (cumulative > 0.975)  # outside π*'s central 95 %
    trainable = [p for p in model.parameters() if p.requires_grad]
    with torch.enable_grad():
        values = model.unnormalized_log_prob(x)
        jacobians = {
            "last layer": posterior._jacobian(
                values, posterior._trailing_parameters(model, 512)
            ).numpy(),
            "all": posterior._jacobian(values, trainable).numpy(),
        }
    # how much wider π* is than p*: masses where p* is below e^{−c} of its maximum
    star = torch.softmax(log_star, 0).numpy()
    far = {c: (log_star < log_star.max() - c).numpy() for c in (5, 10)}
    out = {
        "fit_kl": fit_kl,
        "items": items,
        "parameters": {},
        "approximations": {},
        "masses_where_p_star_below": {
            f"e^-{c}": {
                "optimum": optimum[m].sum(),
                "p_star": star[m].sum(),
                "pi_pre": pre[m].sum(),
            }
            for c, m in far.items()
        },
    }
    cuts = [("last layer", 1e-10)] + [("all", rtol) for rtol in rtols]
    for name, rtol in cuts:
        out["parameters"][name] = jacobians[name].shape[1]
        features = whitened_features(jacobians[name], optimum, rtol=rtol)
        result = _design_ratios(features, log_star.numpy(), designs, beta)
        design = result.pop("design")
        result["best_pair_distance"] = float(np.sum(design * np.abs(points[:, None] - points)))
        result["best_in_tails"] = float(design[tails[:, None] | tails[None, :]].sum())
        out["approximations"][f"{name}, rtol {rtol:g}"] = result
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    parser.add_argument("--json", default=None, help="write the metrics here")
    parser.add_argument(
        "--fine",
        action="store_true",
        help="the 1-D toy only, cumulative budgets growing by √2 from 32 to 1024 queries",
    )
    parser.add_argument("--pool", type=int, default=8, help="candidates per query (active)")
    parser.add_argument("--seed", type=int, default=0, help="base seed (π_pre's as well)")
    parser.add_argument("--bound", action="store_true", help="print the design bounds only")
    args = parser.parse_args()
    # the policy criterion choosing among candidates from a wider proposal than the model itself
    experiment.PROPOSALS["policy_wide"] = lambda pool: online.Active(
        pool=pool, base=_TemperedPairs(WIDE_TEMPERATURE)
    )
    # the policy criterion with four times the candidates per query
    experiment.PROPOSALS["policy_pool32"] = lambda pool: online.Active(pool=4 * pool)
    if args.bound:
        return _report_bounds(experiment.Settings(), args.json)
    if args.fine:
        strategies = FINE_STRATEGIES if args.strategies == list(STRATEGIES) else args.strategies
        settings = experiment.Settings(
            strategies=tuple(strategies),
            repeats=args.repeats,
            active_pool=args.pool,
            seed=args.seed,
            toy_queries=fine_budgets(),
            bandit_queries=(16,),  # not reported
        )
        began = time.perf_counter()
        result = experiment.run(settings, progress=False)
        return _report_fine(result, settings, time.perf_counter() - began, args.json)
    settings = experiment.Settings(
        strategies=tuple(args.strategies),
        repeats=args.repeats,
        active_pool=args.pool,
        seed=args.seed,
    )
    began = time.perf_counter()
    result = experiment.run(settings, progress=False)
    seconds = time.perf_counter() - began
    m = result.metrics
    print(
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), {seconds:.0f} s, {args.repeats} seeds"
    )
    rows = [("1-D toy", "toy", f"{settings.kl_threshold:g}")] + [
        ("bandit", "bandit", f"{t:g}")
        for t in (settings.kl_threshold, settings.bandit_kl_threshold)
    ]
    for title, key, level in rows:
        print(f"\n{title}, queries until KL stays <= {level} (median; per seed)")
        for strategy in settings.strategies:
            s = m[key][strategy]
            print(
                f"  {strategy:<12} {s['queries_to'][level]!s:>6}  {s['queries_to_per_seed'][level]}"
            )
    for key in ("toy", "bandit"):
        print(f"\n{key}: seconds per round (choosing | re-fitting), final KL (median)")
        for strategy in settings.strategies:
            s = m[key][strategy]
            print(
                f"  {strategy:<12} {s['selection_seconds_per_round']:.3f} | "
                f"{s['fit_seconds_per_round']:.3f}   {s['final_kl']:.5f}"
            )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"metrics": m, "seconds": seconds}, handle, indent=1)
    print()
    _report_bounds(settings, None)


def _report_bounds(settings, json_path):
    """Print the design bounds of both problems: the best design's queries / each design's."""
    began = time.perf_counter()
    bandit = bandit_bound(settings.bandit_rewards, settings.bandit_eta)
    design = bandit.pop("design")
    pairs = {
        f"({a}, {b})": round(float(design[a, b]), 3)
        for a, b in zip(*np.nonzero(design > 0), strict=True)
    }
    print(
        "asymptotic queries of the best possible design for the same expected KL, "
        "as a fraction of static's and on-policy's"
    )
    print(
        f"bandit: {bandit['ratios']['static']:.3f}, {bandit['ratios']['on_policy']:.3f} "
        f"(best design {pairs}; bound within {bandit['values']['best'] / bandit['best_lower']:.5f})"
    )
    toy_result = toy_bound(settings)
    print(
        f"1-D toy (θ* regressed onto the optimum: KL(π* ‖ π_θ*) = {toy_result['fit_kl']:.1e} on "
        f"{toy_result['items']} items; parameters: {toy_result['parameters']})"
    )
    for level, masses in toy_result["masses_where_p_star_below"].items():
        print(
            f"  masses where p* < {level} × its maximum: π* {masses['optimum']:.4f}, "
            f"p* {masses['p_star']:.2e}, π_pre {masses['pi_pre']:.4f}"
        )
    print(
        "  approximation            r   best/static  best/on-policy  N·KL: best static on-policy"
        "   |a−b| tails  bound within"
    )
    for name, r in toy_result["approximations"].items():
        v = r["values"]
        print(
            f"  {name:<24} {r['dimension']:>3}  {r['ratios']['static']:>10.4f}  "
            f"{r['ratios']['on_policy']:>12.3g}  {v['best']:>9.3g} {v['static']:>8.3g} "
            f"{v['on_policy']:>9.3g}  {r['best_pair_distance']:>6.2f} {r['best_in_tails']:>5.2f}"
            f"  {v['best'] / r['best_lower']:.5f}"
        )
    print(f"({time.perf_counter() - began:.0f} s)")
    if json_path:
        with open(json_path, "w") as handle:
            json.dump({"bandit": bandit, "toy": toy_result}, handle, indent=1, default=float)


def _report_fine(result, settings, seconds, json_path):
    m = result.metrics["toy"]
    level = f"{settings.kl_threshold:g}"
    print(
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), {seconds:.0f} s, {settings.repeats} seeds"
    )
    totals = list(itertools.accumulate(settings.toy_queries))
    print(f"1-D toy, cumulative budgets {totals}")
    print(f"queries until KL stays <= {level} (median; per seed), final KL, s/round choose|fit")
    for strategy in settings.strategies:
        s = m[strategy]
        print(
            f"  {strategy:<12} {s['queries_to'][level]!s:>6}  {s['queries_to_per_seed'][level]}"
            f"  {s['final_kl']:.4f}  {s['selection_seconds_per_round']:.2f}|"
            f"{s['fit_seconds_per_round']:.2f}"
        )
    print("ratios of medians (and median of the per-seed ratios)")
    for active in [s for s in settings.strategies if s.startswith(("policy", "bald", "active"))]:
        for other in ("static", "on_policy"):
            if other not in settings.strategies:
                continue
            a, b = m[active]["queries_to"][level], m[other]["queries_to"][level]
            per_seed = [
                x / y
                for x, y in zip(
                    m[active]["queries_to_per_seed"][level],
                    m[other]["queries_to_per_seed"][level],
                    strict=True,
                )
                if x is not None and y is not None
            ]
            ratio = "n/a" if a is None or b is None else f"{a / b:.3f}"
            print(
                f"  {active} / {other}: {ratio} ({np.median(per_seed):.3f} over "
                f"{len(per_seed)} seeds)"
            )
    for strategy in settings.strategies:
        print(
            f"  KL per round, median, {strategy}: "
            + " ".join(f"{v:.4f}" for v in m[strategy]["kl_per_round"])
        )
    if json_path:
        with open(json_path, "w") as handle:
            json.dump({"metrics": m, "budgets": totals, "seconds": seconds}, handle, indent=1)


if __name__ == "__main__":
    main()
