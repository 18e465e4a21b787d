"""Annotator misspecification (Dumoulin et al. §5, Figs. 4 and 5): "lukewarm coffee".

Two annotators, p*_1 = N_trunc(−2.5, 0.25) and p*_2 = N_trunc(2.5, 1), label pairs drawn from
π_pre, each comparison by one of them (weights 0.4 / 0.6, eq. 25). A single-annotator Luce model
(the misspecified one) fitted to those labels converges to the optimum that
:func:`pbde.optimal_density` computes for that data (Newton's method on the population
likelihood, pairs from π_pre) — a density that puts its mass between the annotators' modes,
where neither likes it. A two-annotator model (eq. 30, weights learned; well specified) fits the
comparison statistics. Fig. 4 shows P(x_A ≻ x_B) as heatmaps: one annotator whose density is the
mixture (eq. 24), the two annotators (eq. 25), the misspecified and the well-specified model.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch

import pbde
from pbde.experiments import toy
from pbde.experiments.base import PAGE_WIDTH, Result, page_style, pyplot, rounded


@dataclass
class Settings(toy.TrainingSettings):
    """The paper's settings (:class:`~pbde.experiments.toy.TrainingSettings`); ``quick()``
    shrinks them."""

    eval_points: int = 2001  # the misspecified optimum needs an n×n Newton solve
    heatmap_points: int = 121
    init_noise: float = 0.05  # symmetry breaking of the two-annotator model (noisy π_pre copies)


def quick() -> Settings:
    return Settings(steps=400, lr=1e-2, grid_size=2**11, pretrain_steps=300, eval_points=801,
                    heatmap_points=61)  # fmt: skip


def fast() -> Settings:
    return Settings(steps=1024, lr=5e-3, grid_size=2**12)


def run(settings: Settings | None = None, *, progress: bool | None = None) -> Result:
    """Fit the misspecified and the well-specified model to eq. 25 data; compare with theory.

    Metrics: ``kl_theory_learned`` / ``tv_theory_learned`` (misspecified model against its
    optimum), ``kl_annotator1_learned``, ``kl_annotator2_learned`` and ``kl_p_star_learned``
    (how far the single model is from each annotator and from their mixture),
    ``mean_abs_prob_error`` of each model's P(x_A ≻ x_B) against the annotators' on the heatmap
    grid, and the learned weights of the two-annotator model.
    """
    settings = settings or Settings()
    began = time.perf_counter()
    p1, p2 = toy.annotator_components()
    weights = torch.tensor(toy.ANNOTATOR_WEIGHTS)
    population = pbde.MixtureAnnotator([pbde.Annotator(p1), pbde.Annotator(p2)], weights)
    one_annotator = pbde.Annotator(toy.paper_p_star())  # eq. 24: one annotator, mixed taste
    pi_pre = toy.pretrained_reference(
        grid_size=settings.grid_size, steps=settings.pretrain_steps, lr=settings.pretrain_lr,
        seed=settings.seed, progress=progress,
    )  # fmt: skip
    xa, xb = toy.draw_pairs(pi_pre, settings.pairs, settings.seed + 1)
    prefs = population.label(xa, xb, generator=torch.Generator().manual_seed(settings.seed + 2))

    single = pbde.Annotator(copy.deepcopy(pi_pre))
    torch.manual_seed(settings.seed + 3)
    components = []
    for _ in range(2):
        density = copy.deepcopy(pi_pre)
        with torch.no_grad():
            for p in density.parameters():
                if p.requires_grad:
                    p.add_(settings.init_noise * torch.randn_like(p))
        components.append(pbde.Annotator(density))
    two = pbde.MixtureAnnotator(components, learn_weights=True)
    options = dict(steps=settings.steps, lr=settings.lr, batch_size=settings.batch_size,
                   progress=progress, device=settings.device, seed=settings.seed)  # fmt: skip
    fit_began = time.perf_counter()
    pbde.fit(single, prefs, **options)
    pbde.fit(two, prefs, **options)
    fit_seconds = time.perf_counter() - fit_began
    single.cpu(), two.cpu(), pi_pre.cpu()

    grid = toy.evaluation_grid(settings.eval_points)
    theory = pbde.optimal_density(population, pbde.luce(), grid, proposal=pi_pre)
    learned = single.density
    heat = torch.linspace(-6.0, 6.0, settings.heatmap_points)
    ha, hb = torch.meshgrid(heat, heat, indexing="ij")
    ha, hb = ha.reshape(-1), hb.reshape(-1)
    with torch.no_grad():
        panels = {
            "one annotator (eq. 24)": one_annotator.prob(ha, hb),
            "two annotators (eq. 25)": population.prob(ha, hb),
            "misspecified model (eq. 9)": single.prob(ha, hb),
            "well-specified model (eq. 30)": two.prob(ha, hb),
        }
        truth = panels["two annotators (eq. 25)"]
        component_kl = [[pbde.kl(p, c.density, grid) for c in two.annotators] for p in (p1, p2)]
        metrics = {
            "kl_theory_learned": pbde.kl(theory, learned, grid),
            "tv_theory_learned": pbde.tv(theory, learned, grid),
            "kl_annotator1_learned": pbde.kl(p1, learned, grid),
            "kl_annotator2_learned": pbde.kl(p2, learned, grid),
            "kl_p_star_learned": pbde.kl(toy.paper_p_star(), learned, grid),
            "kl_annotator1_theory": pbde.kl(p1, theory, grid),
            "kl_annotator2_theory": pbde.kl(p2, theory, grid),
            "mean_abs_prob_error": {
                "misspecified": float((panels["misspecified model (eq. 9)"] - truth).abs().mean()),
                "well_specified": float(
                    (panels["well-specified model (eq. 30)"] - truth).abs().mean()
                ),
                "one_annotator_eq24": float(
                    (panels["one annotator (eq. 24)"] - truth).abs().mean()
                ),
            },
            "two_annotator_model": {
                "weights": two.weights.tolist(),
                # best matching of components to annotators (2 components: 2 matchings)
                "kl_annotator_component": min(
                    [component_kl[0][0], component_kl[1][1]],
                    [component_kl[0][1], component_kl[1][0]],
                    key=max,
                ),
            },
            "fit_seconds": fit_seconds,
        }

    figure = _figure(p1, p2, pi_pre, theory, learned, heat, panels)
    data = {"single": single, "two": two, "theory": theory, "prefs": prefs, "pi_pre": pi_pre}
    return Result("misspecification", settings, metrics, time.perf_counter() - began, data=data,
                  figure=figure, draw=draw)  # fmt: skip


def _figure(p1, p2, pi_pre, theory, learned, heat, panels) -> dict:
    """The numbers the figure shows, for the JSON: the heat maps' probabilities (3 decimals)
    and the densities on :func:`toy.plot_points`."""
    x = toy.plot_points()
    n = heat.shape[0]
    with torch.no_grad():
        curves = {name: rounded(d.prob(x).double()) for name, d in
                  [("annotator1", p1), ("annotator2", p2), ("pi_pre", pi_pre),
                   ("theory", theory), ("learned", learned)]}  # fmt: skip
    return {
        "heat": rounded(heat),
        "heatmaps": {
            title: [[round(float(v), 3) for v in row] for row in probs.reshape(n, n).T]
            for title, probs in panels.items()
        },  # fmt: skip
        "x": rounded(x),
        "curves": curves,
    }


def draw(report: dict, path) -> None:
    """Draw Figs. 4 and 5 from a report (:meth:`Result.report` or the JSON file): the four heat
    maps of P(x_A ≻ x_B) in a 2 × 2 grid, the densities below."""
    plt = pyplot()
    figure, metrics = report["figure"], report["metrics"]
    heat, maps = figure["heat"], figure["heatmaps"]
    extent = (heat[0], heat[-1], heat[0], heat[-1])
    with page_style():
        fig = plt.figure(figsize=(PAGE_WIDTH, 12.4), layout="constrained")
        top, bottom = fig.subfigures(2, 1, height_ratios=(2, 1.15))
        axes = top.subplots(2, 2, sharex=True, sharey=True)
        image = None
        for ax, (title, probs) in zip(axes.flat, maps.items(), strict=True):
            image = ax.imshow(probs, origin="lower", extent=extent, vmin=0, vmax=1,
                              cmap="RdBu_r")  # fmt: skip
            ax.set_title(title)
        for ax in axes[-1]:
            ax.set_xlabel("$x_A$")
        for ax in axes[:, 0]:
            ax.set_ylabel("$x_B$")
        top.colorbar(image, ax=axes, shrink=0.8, label=r"$P(x_A \succ x_B)$")
        top.suptitle("Fig. 4: how each process labels a pair")
        ax = bottom.subplots()
        x, curves = figure["x"], figure["curves"]
        for name, label, style in [
            ("annotator1", "annotator 1: mean −2.5, sd 0.25, weight 0.4", dict(color="tab:blue", ls="--")),
            ("annotator2", "annotator 2: mean 2.5, sd 1, weight 0.6", dict(color="tab:pink", ls="-.")),
            ("pi_pre", r"$\pi_{\rm ref}$ (the pre-trained model)", dict(color="tab:orange", ls=":", lw=1.6)),
            ("learned", "learned: the single-annotator model", dict(color="tab:green", lw=3.2, alpha=0.55)),
            ("theory", "theory: that model's optimum", dict(color="black", ls=(0, (3, 2)), lw=1.3)),
        ]:  # fmt: skip
            ax.plot(x, curves[name], label=label, **style)
        ax.set_xlim(-7.5, 7.5)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("x (coffee temperature)")
        ax.set_ylabel("density")
        ax.set_title(
            f"KL(theory ‖ learned) = {metrics['kl_theory_learned']:.4f};  "
            f"KL(annotator 1 ‖ learned) = {metrics['kl_annotator1_learned']:.2f},  "
            f"KL(annotator 2 ‖ learned) = {metrics['kl_annotator2_learned']:.2f}",
            fontsize=10,
        )
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
        bottom.suptitle("Fig. 5: the single-annotator model serves lukewarm coffee")
        fig.savefig(path)
        plt.close(fig)
