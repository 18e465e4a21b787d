"""Active preference queries against random pairs: queries to reach a KL, and the time they cost.

Runs :func:`pbde.experiments.online.run` (the experiment behind ``pbde reproduce online``) with
the strategies alternating within each seed — static pairs from π_0, on-policy pairs, active
selection by BALD and by the policy criterion (:mod:`pbde.posterior`), and uncertainty sampling
— on the 1-D toy (DPO β = 4) and the 3-armed bandit (r = (1, .5, 0), η = 1), and prints, per
strategy, the median over seeds of the queries after which KL(optimum ‖ model) stays ≤ 0.05
(and ≤ 0.005 on the bandit), the per-seed values, and the wall time per round spent choosing
the pairs and re-fitting.

It also prints a bound no selection rule can beat on the bandit: the asymptotic expected KL of
the maximum-likelihood fit is ½·tr(G·I(w)⁻¹)/N for a design w over pairs (I(w) the Fisher
information of one query, G the policy's Fisher matrix at the optimum), so the best design over
the three distinct pairs needs tr(G·I(w*)⁻¹)/tr(G·I(static)⁻¹) of static's queries for the same
expected KL — computed here in numpy, independently of pbde.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_active.py [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import time

import numpy as np
import scipy.optimize
import torch

from pbde.experiments import online as experiment

STRATEGIES = ("static", "on_policy", "bald", "policy", "uncertainty")


def design_bound(rewards=(1.0, 0.5, 0.0), eta=1.0) -> dict:
    """Asymptotic query ratios, best design / static and best design / on-policy, on the bandit
    with uniform π_0 and a DPO model (β = η): pair (a, b) gives Fisher information
    σ'(Δr)·u·uᵀ about the logits, u = (e_a − e_b)/η."""
    r = np.asarray(rewards) / eta
    pi = np.exp(r) / np.exp(r).sum()  # the optimum, where the fit ends
    k = len(r)
    fisher_policy = np.diag(pi) - np.outer(pi, pi)
    pairs = list(itertools.product(range(k), repeat=2))

    def risk(weights):
        info = 1e-12 * np.eye(k)
        for (a, b), w in zip(pairs, weights, strict=True):
            u = (np.eye(k)[a] - np.eye(k)[b]) / eta
            p = 1 / (1 + np.exp(-(r[a] - r[b])))
            info += w * p * (1 - p) * np.outer(u, u)
        return 0.5 * np.trace(fisher_policy @ np.linalg.pinv(info, rcond=1e-9))

    distinct = [i for i, (a, b) in enumerate(pairs) if a < b]

    def design(v):
        w = np.zeros(len(pairs))
        w[distinct] = np.exp(v) / np.exp(v).sum()
        return w

    best = scipy.optimize.minimize(lambda v: risk(design(v)), np.zeros(len(distinct)))
    static = risk(np.full(len(pairs), 1 / len(pairs)))
    on_policy = risk(np.array([pi[a] * pi[b] for a, b in pairs]))  # at the optimum
    return {
        "best_over_static": best.fun / static,
        "best_over_on_policy": best.fun / on_policy,
        "best_design": {
            f"{pairs[i]}": float(w) for i, w in zip(distinct, design(best.x)[distinct], strict=True)
        },
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    parser.add_argument("--json", default=None, help="write the metrics here")
    args = parser.parse_args()
    settings = experiment.Settings(strategies=tuple(args.strategies), repeats=args.repeats)
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
    bound = design_bound(settings.bandit_rewards, settings.bandit_eta)
    print(
        "\nbandit, asymptotic queries of the best possible design for the same expected KL: "
        f"{bound['best_over_static']:.3f} × static's, {bound['best_over_on_policy']:.3f} × "
        f"on-policy's (design {bound['best_design']})"
    )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"metrics": m, "bound": bound, "seconds": seconds}, handle, indent=1)


if __name__ == "__main__":
    main()
