"""Per-step cost of the Pyro latent-annotator mixture against the plain eq. 30 BCE fit.

Both fit the same two-component mixture of Luce annotators — energy models (4×64 tanh MLP on
[−10, 10], trapezoid normalizer on a grid), copies of one π_pre — to the same eq. 25 labels
(two annotators, weights 0.4 / 0.6, Dumoulin et al. §5), full batch, Adam + cosine decay:

* A, the Pyro path: ``pbde.mixture.LatentMixture.fit`` — ``TraceEnum_ELBO.differentiable_loss``
  of the model with the latent annotator of each comparison enumerated, Dirichlet prior on the
  weights, via ``pbde.fit.optimize``;
* B, the paper's approach: ``pbde.fit`` of ``pbde.MixtureAnnotator(..., learn_weights=True)``,
  the BCE of the marginal eq. 30 logits.

The two compute the same likelihood (tests/test_mixture.py checks it); the difference is Pyro's
tracing, enumeration and contraction. They alternate A B A B … in one process and the ratio is
taken round by round. Two clocks: wall time per step of the optimization loop (``FitResult.seconds``
/ steps; what a user waits for, but inflated by anything else running on the machine), and this
process's CPU time per step over the whole call (less sensitive to other processes; for the
Pyro path it includes one extra full-data forward pass, the final objective that picks the best
restart, about 1/(3·steps) of the total).

Usage:
    python benchmarks/bench_mixture.py [--rounds 3] [--steps 10] [--pairs 32768] [--grid 65536]
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import statistics
import time

import torch

import pbde
from pbde import densities
from pbde.mixture import LatentMixture


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--pairs", type=int, default=2**15)
    parser.add_argument("--grid", type=int, default=2**16)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    load = _load_average()
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    low, high = -10.0, 10.0
    annotators = [
        pbde.Annotator(densities.TruncatedNormalMixture([-2.5], [0.25], low=low, high=high)),
        pbde.Annotator(densities.TruncatedNormalMixture([2.5], [1.0], low=low, high=high)),
    ]
    population = pbde.MixtureAnnotator(annotators, [0.4, 0.6])
    pi_pre = densities.EnergyModel(low, high, grid_size=args.grid)
    xa, xb = pbde.sample_pairs(pi_pre, args.pairs, generator=generator)
    labelled = population.label(xa, xb, generator=generator)
    prefs = pbde.Preferences(labelled.xa, labelled.xb, labelled.y)  # no annotator IDs
    lr = 1e-4

    def run_pyro():
        model = LatentMixture.copies(pbde.Annotator(copy.deepcopy(pi_pre)), 2)
        began = time.process_time()
        result = model.to(args.device).fit(prefs, steps=args.steps, lr=lr, progress=False)
        return result.seconds / args.steps, (time.process_time() - began) / args.steps

    def run_bce():
        components = [pbde.Annotator(copy.deepcopy(pi_pre)) for _ in range(2)]
        with torch.no_grad():  # the same symmetry-breaking noise as the Pyro path
            for component in components:
                for p in component.parameters():
                    p.add_(1e-4 * torch.randn_like(p))
        model = pbde.MixtureAnnotator(components, learn_weights=True)
        began = time.process_time()
        result = pbde.fit(model, prefs, steps=args.steps, lr=lr, progress=False, device=args.device)
        return result.seconds / args.steps, (time.process_time() - began) / args.steps

    run_pyro(), run_bce()  # warm-up (imports, allocator)
    times = {key: [] for key in ("pyro wall", "bce wall", "pyro cpu", "bce cpu")}
    for _ in range(args.rounds):
        (pyro_wall, pyro_cpu), (bce_wall, bce_cpu) = run_pyro(), run_bce()
        times["pyro wall"].append(pyro_wall)
        times["bce wall"].append(bce_wall)
        times["pyro cpu"].append(pyro_cpu)
        times["bce cpu"].append(bce_cpu)
    ratios = {
        clock: [a / b for a, b in zip(times[f"pyro {clock}"], times[f"bce {clock}"], strict=True)]
        for clock in ("wall", "cpu")
    }

    def summary(values, scale=1e3, digits=1):
        low, mid, high = (v * scale for v in (min(values), statistics.median(values), max(values)))
        return f"{low:.{digits}f} / {mid:.{digits}f} / {high:.{digits}f}"

    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
        f"threads, torch {torch.__version__}, device {args.device}"
    )
    print(
        f"setting: K=2 energy components, {args.pairs} pairs, grid {args.grid}, "
        f"{args.steps} steps per round, {args.rounds} rounds"
    )
    print(f"load average before the run: {load}")
    for clock in ("wall", "cpu"):
        print(f"[{clock}] Pyro LatentMixture.fit     ms/step min/median/max: "
              f"{summary(times[f'pyro {clock}'])}")  # fmt: skip
        print(f"[{clock}] pbde.fit MixtureAnnotator  ms/step min/median/max: "
              f"{summary(times[f'bce {clock}'])}")  # fmt: skip
        print(f"[{clock}] ratio Pyro/BCE  min/median/max: {summary(ratios[clock], 1, 2)}")
    assert all(math.isfinite(r) for values in ratios.values() for r in values)


def _load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


if __name__ == "__main__":
    main()
