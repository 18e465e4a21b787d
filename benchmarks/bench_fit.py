"""Per-step cost of pbde.fit against a plain PyTorch DPO loop written as a notebook would.

Both train the same energy model (4×64 tanh MLP on [−10, 10], trapezoid normalizer on a grid)
with the DPO behavior (β = 4) on the same Luce-labelled pairs, full batch, Adam + cosine decay.
The plain loop evaluates log π_θ(x_A) and log π_θ(x_B) separately and π_ref's log-density (with
its normalizer) at every step — the straightforward transcription of eq. 14. pbde evaluates the
density once on the concatenated batch (one normalizer per step) and caches the frozen
reference's normalizer. The two are run alternately, A B A B …, in one process, and the ratio is
taken round by round.

Usage:
    python benchmarks/bench_fit.py [--rounds 5] [--steps 20] [--pairs 8192] [--grid 4096]
"""

from __future__ import annotations

import argparse
import copy
import math
import platform
import statistics
import time

import torch
import torch.nn.functional as F

import pbde
from pbde import densities


def plain_dpo_steps(model, reference, xa, xb, y, beta, steps, lr):
    """The notebook version: a hand-written loop around the same network."""
    grid = torch.linspace(-10.0, 10.0, model.grid.size)
    step = 20.0 / (model.grid.size - 1)
    trapezoid = torch.full_like(grid, step)
    trapezoid[0] = trapezoid[-1] = step / 2

    def log_prob(net, x):
        energy = net(((x + 10.0) / 10.0 - 1.0)[:, None]).squeeze(-1)
        grid_energy = net(((grid + 10.0) / 10.0 - 1.0)[:, None]).squeeze(-1)
        log_z = torch.logsumexp(-grid_energy + trapezoid.log(), 0)
        return -energy - log_z

    net, ref_net = model.energy_net, reference.energy_net
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=0.0)
    for _ in range(steps):
        optimizer.zero_grad()
        with torch.no_grad():
            ref_a, ref_b = log_prob(ref_net, xa), log_prob(ref_net, xb)
        h = beta * (log_prob(net, xa) - ref_a) - beta * (log_prob(net, xb) - ref_b)
        loss = -(y * F.logsigmoid(h) + (1 - y) * F.logsigmoid(-h)).mean()
        loss.backward()
        optimizer.step()
        scheduler.step()
    return float(loss.detach())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--pairs", type=int, default=2**13)
    parser.add_argument("--grid", type=int, default=2**12)
    args = parser.parse_args()

    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    p_star = densities.TruncatedNormalMixture(
        [-2.5, 2.5], [0.25, 1.0], [0.4, 0.6], low=-10, high=10
    )
    pi_pre = densities.EnergyModel(-10.0, 10.0, grid_size=args.grid)
    xa, xb = pbde.sample_pairs(pi_pre, args.pairs, generator=generator)
    prefs = pbde.Annotator(p_star).label(xa, xb, generator=generator)
    beta, lr = 4.0, 1e-3

    def run_pbde():
        model = pbde.Annotator(copy.deepcopy(pi_pre), pbde.dpo(beta, pi_pre))
        began = time.perf_counter()
        pbde.fit(model, prefs, steps=args.steps, lr=lr, progress=False)
        return (time.perf_counter() - began) / args.steps

    def run_plain():
        model = copy.deepcopy(pi_pre)
        began = time.perf_counter()
        plain_dpo_steps(model, pi_pre, prefs.xa, prefs.xb, prefs.y, beta, args.steps, lr)
        return (time.perf_counter() - began) / args.steps

    run_pbde(), run_plain()  # warm-up (imports, allocator)
    pbde_times, plain_times, ratios = [], [], []
    for _ in range(args.rounds):
        a, b = run_pbde(), run_plain()
        pbde_times.append(a)
        plain_times.append(b)
        ratios.append(a / b)

    def summary(values, scale=1e3, digits=1):
        low, mid, high = (v * scale for v in (min(values), statistics.median(values), max(values)))
        return f"{low:.{digits}f} / {mid:.{digits}f} / {high:.{digits}f}"

    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(
        f"setting: {args.pairs} pairs, grid {args.grid}, {args.steps} steps per round, {args.rounds} rounds"
    )
    print(f"pbde.fit    ms/step min/median/max: {summary(pbde_times)}")
    print(f"plain loop  ms/step min/median/max: {summary(plain_times)}")
    print(f"ratio pbde/plain  min/median/max: {summary(ratios, 1, 2)}")
    assert all(math.isfinite(r) for r in ratios)


if __name__ == "__main__":
    main()
