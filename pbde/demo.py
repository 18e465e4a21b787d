"""The built-in example: DPO on the paper's 1-D toy, with theory next to the fit.

Dumoulin et al., Fig. 3 at laptop scale: a Luce annotator with p* of eq. 10 labels pairs drawn
from a pretrained energy model π_ref; a copy of π_ref is fitted with the DPO behavior (β);
eq. 16 predicts the result, π ∝ π_ref · p*^{1/β}, which :func:`pbde.optimal_density` computes.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

import pbde
from pbde import densities
from pbde.experiments.toy import paper_p_star, pretrain_prior


@dataclass
class DemoSettings:
    beta: float = 4.0
    pairs: int = 2**13
    steps: int = 300
    lr: float = 1e-2
    pretrain_steps: int = 500
    grid_size: int = 2**11
    seed: int = 0
    device: str = "cpu"


def run_demo(settings: DemoSettings, out: Path | None = None, *, progress: bool | None = None):
    """Run the demo; write ``demo.json`` and ``demo.png`` into ``out`` if given.

    Returns:
        dict: the settings, the metrics (KL and TV between the fitted density and the
            theoretical optimum, and between π_ref and the optimum, for scale) and the wall
            time.
    """
    began = time.perf_counter()
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    p_star = paper_p_star()
    pi_pre = densities.EnergyModel(-10.0, 10.0, grid_size=settings.grid_size)
    pi_pre.pretrain_to(
        pretrain_prior().log_prob, steps=settings.pretrain_steps, lr=3e-3, progress=progress
    )

    xa, xb = pbde.sample_pairs(pi_pre, settings.pairs, generator=generator)
    annotator = pbde.Annotator(p_star, pbde.luce())
    prefs = annotator.label(xa, xb, generator=generator)

    behavior = pbde.dpo(settings.beta, pi_pre)
    model = pbde.Annotator(copy.deepcopy(pi_pre), behavior)
    result = pbde.fit(
        model,
        prefs,
        steps=settings.steps,
        lr=settings.lr,
        progress=progress,
        device=settings.device,
    )

    grid = pbde.Grid(-10.0, 10.0, 2001)
    theory = pbde.optimal_density(annotator, behavior, grid)
    metrics = {
        "kl_theory_learned": pbde.kl(theory, model.density, grid),
        "tv_theory_learned": pbde.tv(theory, model.density, grid),
        "tv_theory_pretrained": pbde.tv(theory, pi_pre, grid),
        "final_loss": result.final_loss,
    }
    report = {
        "experiment": "demo (DPO under a Luce annotator, Dumoulin et al. Fig. 3, eq. 16)",
        "settings": asdict(settings),
        "metrics": metrics,
        "seconds": time.perf_counter() - began,
    }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "demo.json").write_text(json.dumps(report, indent=2) + "\n")
        _plot(grid, p_star, pi_pre, theory, model.density, settings.beta, out / "demo.png")
    return report


def _plot(grid, p_star, pi_pre, theory, learned, beta, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = grid.points
    with torch.no_grad():
        curves = [
            (p_star, "p* (annotator, eq. 10)", dict(color="tab:blue", ls="--")),
            (pi_pre, "π_ref (pre-trained)", dict(color="tab:orange", ls=":")),
            (theory, f"theory: π_ref · p*^{{1/{beta:g}}} (eq. 16)", dict(color="tab:red", ls="-.")),
            (learned, "learned (DPO)", dict(color="tab:green", lw=2, alpha=0.8)),
        ]
        fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
        for density, label, style in curves:
            ax.plot(x.numpy(), density.prob(x).double().cpu().numpy(), label=label, **style)
    ax.set_xlabel("x")
    ax.set_ylabel("density")
    ax.set_title(f"DPO (β={beta:g}) under a Luce annotator converges to eq. 16")
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
