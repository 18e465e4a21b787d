"""A latent-annotator mixture recovers both annotators (Dumoulin et al., appendix A.4, Fig. 11).

The §5 population: two Luce annotators, p*_1 = N_trunc(−2.5, 0.25) and p*_2 = N_trunc(2.5, 1),
each comparison made by one of them with probability 0.4 / 0.6 (eq. 25), on pairs drawn from
π_pre, without annotator IDs. The model is :class:`pbde.mixture.LatentMixture` with two Luce
components, energy models initialised as copies of π_pre plus Gaussian noise (eq. 29), the
latent annotator of each comparison summed out by Pyro's enumeration — its likelihood is the
paper's eq. 30. Each component should recover one annotator, the weights (0.4, 0.6), and the
weighted mixture of the components p* of eq. 10, which a single-annotator model cannot
(:mod:`pbde.experiments.misspecification`).
"""

from __future__ import annotations

import copy
import itertools
import time
from dataclasses import dataclass

import torch

import pbde
from pbde.experiments import toy
from pbde.experiments.base import PAGE_WIDTH, Result, page_style, pyplot, rounded
from pbde.mixture import LatentMixture


@dataclass
class Settings(toy.TrainingSettings):
    """The paper's settings (:class:`~pbde.experiments.toy.TrainingSettings`, appendix A.4);
    ``quick()`` and ``fast()`` shrink them."""

    hidden: tuple[int, ...] = (64, 64, 64, 64)
    init_noise: float = 1e-4  # std of the noise added to the copies of π_pre (appendix A.4)
    restarts: int = 1
    eval_points: int = 4001


def quick() -> Settings:
    """Seconds on a CPU: fewer pairs and steps, a smaller MLP, a coarser normalizer, a larger
    learning rate."""
    return Settings(pairs=2**11, steps=500, lr=1e-2, grid_size=2**10, hidden=(32, 32),
                    pretrain_steps=200, eval_points=2001)  # fmt: skip


def fast() -> Settings:
    """The paper's data with a coarser normalizer (2^12 points) and half the steps at a 10×
    learning rate. Measured (seed 0, 2-core CPU shared with other jobs, 22 min): KL 0.027 and
    0.003 per component, weights (0.408, 0.592), KL(p* ‖ mixture) 0.013. With 1024 steps:
    0.088, 0.002, (0.409, 0.591), 0.036 in 9 min."""
    return Settings(steps=4096, lr=1e-3, grid_size=2**12)


def run(settings: Settings | None = None, *, progress: bool | None = None) -> Result:
    """Fit a two-component :class:`~pbde.mixture.LatentMixture` to eq. 25 data without IDs.

    Metrics (components matched to annotators by the matching with the smaller total KL):

    * ``kl_annotator1_component`` / ``kl_annotator2_component``: KL(p*_i ‖ its component) on the
      evaluation grid (trapezoid rule, :func:`pbde.kl`);
    * ``kl_annotator_pi_pre``: KL(p*_i ‖ π_pre) for both annotators — where the components
      started;
    * ``weights``: the learned weights, in the annotators' order (truth 0.4, 0.6), and
      ``weight_error``: the largest absolute error;
    * ``kl_p_star_mixture``: KL(p* ‖ w_1 π_1 + w_2 π_2), p* of eq. 10 (the marginal);
    * ``responsibility_accuracy``: fraction of comparisons whose most probable annotator
      (posterior responsibility) is the one who made it — uninformative pairs (both
      annotators agree) cap it well below 1;
    * ``restart_objectives`` (the final objective of each restart, −(log p(y | w) + log Dir(w))
      per comparison) beside ``truth_objective``, the same objective of the two annotators with
      their weights: a fit above it has not reached the likelihood of the truth;
    * ``fit_seconds``.
    """
    settings = settings or Settings()
    began = time.perf_counter()
    p1, p2 = toy.annotator_components()
    truth_weights = toy.ANNOTATOR_WEIGHTS
    population = pbde.MixtureAnnotator(
        [pbde.Annotator(p1), pbde.Annotator(p2)], torch.tensor(truth_weights)
    )
    pi_pre = toy.pretrained_reference(
        grid_size=settings.grid_size, steps=settings.pretrain_steps, lr=settings.pretrain_lr,
        seed=settings.seed, hidden=tuple(settings.hidden), progress=progress,
    )  # fmt: skip
    xa, xb = toy.draw_pairs(pi_pre, settings.pairs, settings.seed + 1)
    labelled = population.label(xa, xb, generator=torch.Generator().manual_seed(settings.seed + 2))
    who = labelled.annotator_id  # kept to score "who is who"; the model never sees it
    prefs = pbde.Preferences(labelled.xa, labelled.xb, labelled.y)

    model = LatentMixture.copies(pbde.Annotator(copy.deepcopy(pi_pre)), 2).to(settings.device)
    fit = model.fit(
        prefs,
        steps=settings.steps,
        lr=settings.lr,
        batch_size=settings.batch_size,
        restarts=settings.restarts,
        noise=settings.init_noise,
        seed=settings.seed,
        progress=progress,
    )
    model.cpu()
    pi_pre.cpu()

    grid = toy.evaluation_grid(settings.eval_points)
    annotators = (p1, p2)
    with torch.no_grad():
        weights = model.weights.double()
        components = model.densities
        kl = [[pbde.kl(p, c, grid) for c in components] for p in annotators]
        order = min(itertools.permutations(range(2)), key=lambda o: kl[0][o[0]] + kl[1][o[1]])
        marginal = pbde.densities.Mixture(components, weights)
        posterior = model.responsibilities(prefs)  # (n, 2), columns in component order
        guessed = torch.tensor(order).argsort()[posterior.argmax(-1)]  # component → annotator
        metrics = {
            "kl_annotator1_component": kl[0][order[0]],
            "kl_annotator2_component": kl[1][order[1]],
            "kl_annotator_pi_pre": [pbde.kl(p, pi_pre, grid) for p in annotators],
            "weights": [float(weights[i]) for i in order],
            "weight_error": max(
                abs(float(weights[i]) - t) for i, t in zip(order, truth_weights, strict=True)
            ),
            "kl_p_star_mixture": pbde.kl(toy.paper_p_star(), marginal, grid),
            "responsibility_accuracy": float((guessed == who).double().mean()),
            "restart_objectives": list(fit.restart_objectives),
            # the two annotators themselves, weights 0.4 / 0.6, scored by the same objective
            "truth_objective": float(
                LatentMixture(list(population.annotators), weights=list(truth_weights))
                .to(prefs.device)
                .objective(prefs)
            ),
            "fit_seconds": fit.seconds,
        }

        figure = _figure(annotators, pi_pre, [components[i] for i in order], marginal)
    data = {"model": model, "prefs": prefs, "annotator_id": who, "pi_pre": pi_pre, "order": order}
    return Result("mixture", settings, metrics, time.perf_counter() - began, data=data,
                  figure=figure, draw=draw)  # fmt: skip


def _figure(annotators, pi_pre, components, marginal) -> dict:
    """The densities the figure shows, on :func:`toy.plot_points`, for the JSON (components in
    the annotators' order)."""
    x = toy.plot_points()
    named = [("annotator1", annotators[0]), ("annotator2", annotators[1]), ("pi_pre", pi_pre),
             ("component1", components[0]), ("component2", components[1]),
             ("p_star", toy.paper_p_star()), ("mixture", marginal)]  # fmt: skip
    with torch.no_grad():
        return {"x": rounded(x), "curves": {k: rounded(d.prob(x).double()) for k, d in named}}


def draw(report: dict, path) -> None:
    """Draw Fig. 11 from a report (:meth:`Result.report` or the JSON file): each component
    next to its annotator (top), the weighted mixture next to p* (bottom)."""
    plt = pyplot()
    metrics, x, curves = report["metrics"], report["figure"]["x"], report["figure"]["curves"]
    w1, w2 = metrics["weights"]
    with page_style():
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(PAGE_WIDTH, 7.6), sharex=True,
                                          layout="constrained")  # fmt: skip
        for axis, name, label, style in [
            (top, "annotator1", "annotator 1: mean −2.5, sd 0.25, weight 0.4", dict(color="tab:blue", ls="--", zorder=3)),
            (top, "annotator2", "annotator 2: mean 2.5, sd 1, weight 0.6", dict(color="tab:pink", ls="--", zorder=3)),
            (top, "pi_pre", r"$\pi_{\rm ref}$ (both components start here)", dict(color="tab:orange", ls=":", lw=1.6)),
            (top, "component1", f"component 1 (learned weight {w1:.3f})", dict(color="tab:green", lw=3, alpha=0.6)),
            (top, "component2", f"component 2 (learned weight {w2:.3f})", dict(color="tab:purple", lw=3, alpha=0.6)),
            (bottom, "mixture", r"learned mixture $w_1 \pi_1 + w_2 \pi_2$", dict(color="tab:red", lw=3, alpha=0.6)),
            (bottom, "p_star", r"$p^* = 0.4\, p^*_1 + 0.6\, p^*_2$ (eq. 10)", dict(color="black", ls=(0, (3, 2)), lw=1.3, zorder=3)),
            (bottom, "pi_pre", r"$\pi_{\rm ref}$", dict(color="tab:orange", ls=":", lw=1.6)),
        ]:  # fmt: skip
            axis.plot(x, curves[name], label=label, **style)
        top.set_title(
            "Fig. 11: each component recovers one annotator: KL(annotator ‖ component) = "
            f"{metrics['kl_annotator1_component']:.3f}, {metrics['kl_annotator2_component']:.3f}"
        )
        bottom.set_title(
            f"the weighted mixture recovers $p^*$: KL($p^*$ ‖ mixture) = "
            f"{metrics['kl_p_star_mixture']:.3f}"
        )
        for axis in (top, bottom):
            axis.set_xlim(-7.5, 7.5)
            axis.set_ylim(bottom=0)
            axis.set_ylabel("density")
            axis.legend(loc="upper right")
        bottom.set_xlabel("x (coffee temperature)")
        fig.savefig(path)
        plt.close(fig)
