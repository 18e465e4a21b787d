"""Per-step cost at the paper's settings: pbde against a naive eager PyTorch step.

The setting is Dumoulin et al.'s Fig. 3 (Table 1): a 4×64 tanh MLP energy, 2^15 pairs drawn from
π_pre (normalized, and sampled, on a 2^16-point grid), DPO with β = 4, Adam, full batch.

Contenders, run in turn in one process (A B C … A B C …), each for ``--steps`` steps per round:

- ``naive``: the step as a notebook writes it — a plain ``nn.Sequential`` MLP on the 2^16 pair
  items (x_A and x_B concatenated), BCE on the pairwise difference (the normalizer cancels and is
  not computed; π_ref's term is precomputed once), ``loss.backward()``, Adam.
- ``naive+chunks``: the same, the MLP applied to chunks of 8192 points (cache-sized activations).
- ``naive+dedup``: the same, the MLP applied once to each distinct item, gathered into pairs.
- ``naive+σ-tanh``: the naive step with tanh written as 2σ(2z) − 1 (plain autograd): how much
  of the gap is ``torch.tanh``'s cost on this build.
- ``pbde.fit``: the library (distinct items, chunks, the frozen π_ref answering from memory,
  no normalizer when f is constant, the energy network as plain tensor operations:
  ``pbde.densities.energy._mlp``; the fused Adam step, no device read per step; on a GPU the
  step recorded as a CUDA graph), measured as the wall time of ``pbde.fit`` / steps (its
  ``FitResult.seconds``: the loop, which ends by reading every step's value from the device).
- ``pbde.fit, no CUDA graph`` (on a GPU only): the same with ``cuda_graph=False``.
- sweep β ∈ {1, 4, 16}: ``pbde.fit_ensemble`` (one batched model) against the three
  ``pbde.fit`` calls one after another; reported per step of the whole sweep.

With ``--slic``, only the SLiC-HF sweep of Fig. 9 (δ ∈ {0, .25, .5, 1, 2} × λ ∈ {0, 1}, hinge
loss, λ weighting −log π_θ on 2^15 samples of π_pre) as one ``fit_ensemble``, against the same
with every member on the grid (each λ = 0 member given a regularizer that adds 0 times its
normalized log-likelihood of one sample: the cost before the stack evaluated the grid only for
the members that need it).

Usage:
    python -m benchmarks.bench_step [--rounds 5] [--steps 20] [--pairs 32768] [--grid 65536]
    python -m benchmarks.bench_step --rounds 5 --steps 200 --pairs 64 --grid 256 --no-sweep
        # a tiny problem: arithmetic is negligible, the loop's own cost per step shows
    python -m benchmarks.bench_step --slic [--rounds 3] [--steps 6]
    python -m benchmarks.bench_step --device cuda   # every contender on a GPU
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import pbde
from pbde.experiments import toy


class SigmoidTanh(nn.Module):
    """tanh(z) written as 2σ(2z) − 1 in plain autograd (to separate the activation's cost)."""

    def forward(self, z):
        return 2.0 * torch.sigmoid(2.0 * z) - 1.0


def naive_steps(start, x, ref_diff, y, beta, steps, lr, *, chunk=None, dedup=False, tanh=nn.Tanh):
    """``steps`` Adam steps of the naive DPO objective (on ``x``'s device); returns seconds per
    step."""
    net = nn.Sequential(
        nn.Linear(1, 64), tanh(), nn.Linear(64, 64), tanh(), nn.Linear(64, 64), tanh(),
        nn.Linear(64, 64), tanh(), nn.Linear(64, 1),
    )  # fmt: skip
    net.load_state_dict(start.energy_net.state_dict())
    net.to(x.device)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    n = x.shape[0] // 2
    inputs = x[:, None]  # the domain is [−10, 10]: the MLP sees x itself, as in pbde
    if dedup:
        inputs, inverse = torch.unique(inputs, return_inverse=True)
        inputs = inputs[:, None]
    began = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad()
        if chunk is None:
            energy = net(inputs).squeeze(-1)
        else:
            energy = torch.cat([net(part) for part in inputs.split(chunk)]).squeeze(-1)
        if dedup:
            energy = energy[inverse.reshape(-1)]
        logits = beta * (energy[n:] - energy[:n]) - ref_diff
        loss = F.binary_cross_entropy_with_logits(logits, y)
        loss.backward()
        optimizer.step()
    _synchronize(x.device)
    return (time.perf_counter() - began) / steps


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--pairs", type=int, default=2**15)
    parser.add_argument("--grid", type=int, default=2**16)
    parser.add_argument("--no-sweep", action="store_true", help="skip the β-sweep contenders")
    parser.add_argument("--slic", action="store_true", help="only the SLiC sweep (see above)")
    parser.add_argument("--device", default="cpu", help="where every contender trains, e.g. cuda")
    args = parser.parse_args()

    torch.manual_seed(0)
    pi_pre = toy.pretrained_reference(grid_size=args.grid, steps=300, progress=False)
    xa, xb = toy.draw_pairs(pi_pre, args.pairs, seed=1)
    prefs = pbde.Annotator(toy.paper_p_star()).label(
        xa, xb, generator=torch.Generator().manual_seed(2)
    )
    beta, lr, device = 4.0, 5e-4, torch.device(args.device)
    x = torch.cat([prefs.xa, prefs.xb])
    with torch.no_grad():
        log_ref = pi_pre.log_prob(x)
    ref_diff = beta * (log_ref[: args.pairs] - log_ref[args.pairs :])
    x, ref_diff, y = x.to(device), ref_diff.to(device), prefs.y.to(device)
    distinct = torch.unique(x).numel()

    def run_pbde(cuda_graph=True):
        model = pbde.Annotator(copy.deepcopy(pi_pre), pbde.dpo(beta, pi_pre))
        result = pbde.fit(
            model, prefs, steps=args.steps, lr=lr, progress=False, device=device,
            check_convergence=False, cuda_graph=cuda_graph,
        )  # fmt: skip
        return result.seconds / args.steps

    def sweep_models():
        return [
            pbde.Annotator(copy.deepcopy(pi_pre), pbde.dpo(b, pi_pre)) for b in (1.0, 4.0, 16.0)
        ]

    def run_ensemble():
        results = pbde.fit_ensemble(
            sweep_models(), prefs, steps=args.steps, lr=lr, progress=False, device=device
        )
        return results[0].seconds / args.steps

    def run_sequential():
        began = time.perf_counter()
        for model in sweep_models():
            pbde.fit(model, prefs, steps=args.steps, lr=lr, progress=False, device=device,
                     check_convergence=False)  # fmt: skip
        return (time.perf_counter() - began) / args.steps

    if args.slic:
        slic(pi_pre, prefs, args)
        return
    contenders = {
        "naive": lambda: naive_steps(pi_pre, x, ref_diff, y, beta, args.steps, lr),
        "naive+chunks": lambda: naive_steps(
            pi_pre, x, ref_diff, y, beta, args.steps, lr, chunk=8192
        ),
        "naive+dedup": lambda: naive_steps(
            pi_pre, x, ref_diff, y, beta, args.steps, lr, dedup=True
        ),
        "naive+σ-tanh": lambda: naive_steps(
            pi_pre, x, ref_diff, y, beta, args.steps, lr, tanh=SigmoidTanh
        ),
        "pbde.fit": run_pbde,
    }
    if device.type == "cuda":
        contenders["pbde.fit, no CUDA graph"] = lambda: run_pbde(cuda_graph=False)
    if not args.no_sweep:
        contenders["sweep: fit_ensemble"] = run_ensemble
        contenders["sweep: 3 x fit"] = run_sequential
    for run in contenders.values():  # warm-up: imports, allocator, first Adam step
        run()
    times = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, run in contenders.items():
            times[name].append(run())

    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
          f"threads, torch {torch.__version__}, device {_device_name(device)}")  # fmt: skip
    print(f"setting: {args.pairs} pairs on a {args.grid}-point grid ({distinct} distinct items), "
          f"{args.steps} steps per round, {args.rounds} rounds")  # fmt: skip
    for name, values in times.items():
        low, mid, high = (1e3 * v for v in (min(values), statistics.median(values), max(values)))
        print(f"{name:22s} ms/step min / median / max: {low:7.1f} / {mid:7.1f} / {high:7.1f}")

    def ratio(a, b):
        per_round = [x / y for x, y in zip(times[a], times[b], strict=True)]
        return statistics.median(per_round), min(per_round), max(per_round)

    pairs = [("naive", "pbde.fit"), ("naive", "naive+chunks"), ("naive", "naive+dedup")]
    pairs += [("naive", "naive+σ-tanh"), ("naive+dedup", "pbde.fit")]
    if device.type == "cuda":
        pairs += [("naive", "pbde.fit, no CUDA graph"), ("pbde.fit, no CUDA graph", "pbde.fit")]
    for a, b in pairs:
        mid, low, high = ratio(a, b)
        print(f"speed-up {b} over {a}: {mid:.2f}x (rounds: {low:.2f}-{high:.2f})")
    if not args.no_sweep:
        mid, low, high = ratio("sweep: fit_ensemble", "sweep: 3 x fit")
        print(f"time fit_ensemble / sequential fits: {mid:.2f} (rounds: {low:.2f}-{high:.2f})")


def slic(pi_pre, prefs, args) -> None:
    """The SLiC-HF sweep as one ensemble: λ = 1 members alone on the grid, or every member."""
    runs = [(d, lam) for lam in (0.0, 1.0) for d in (0.0, 0.25, 0.5, 1.0, 2.0)]
    samples = pi_pre.sample(args.pairs, generator=torch.Generator().manual_seed(3))

    def zero(model):  # the normalized log-likelihood, times 0: puts the member on the grid
        return 0.0 * model.density.log_prob(samples[:1]).sum()

    def run(all_on_grid):
        models = [pbde.Annotator(copy.deepcopy(pi_pre), pbde.luce()) for _ in runs]
        regularizers = [
            pbde.nll_regularizer(samples, lam) if lam > 0 else (zero if all_on_grid else None)
            for _, lam in runs
        ]
        results = pbde.fit_ensemble(
            models, prefs, loss="hinge", loss_kwargs=[{"delta": d} for d, _ in runs],
            regularizer=regularizers, steps=args.steps, lr=5e-4, progress=False,
            device=torch.device(args.device),
        )  # fmt: skip
        return results[0].seconds / args.steps

    contenders = {
        "λ = 1 members on the grid": lambda: run(False),
        "all on the grid": lambda: run(True),
    }
    for f in contenders.values():
        f()  # warm-up
    times = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, f in contenders.items():
            times[name].append(f())
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
          f"threads, torch {torch.__version__}, device {args.device}; SLiC sweep, 10 members, "
          f"{args.steps} steps per round, {args.rounds} rounds")  # fmt: skip
    for name, values in times.items():
        print(f"{name:26s} ms/step per round: " + ", ".join(f"{1e3 * v:.0f}" for v in values))
    a, b = times.values()
    ratios = sorted(x / y for x, y in zip(a, b, strict=True))
    print(
        f"ratio: median {statistics.median(ratios):.2f} (rounds {ratios[0]:.2f}-{ratios[-1]:.2f})"
    )


if __name__ == "__main__":
    main()
