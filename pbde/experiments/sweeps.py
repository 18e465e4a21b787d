"""The 1-D fine-tuning experiments of Dumoulin et al.: one model per hyperparameter value, each
next to the density the theory says it converges to.

- ``reward`` (Fig. 1/7): a reward model from a fresh initialization on Luce labels; e^r ∝ p*.
- ``dpo-wellspecified`` (Fig. 2): annotator and model both DPO (β = 4) → p*.
- ``dpo`` (Fig. 3): Luce annotator, DPO model, β ∈ {1, 4, 16} → π_pre·p*^{1/β} (eq. 16).
- ``geometric`` (Fig. 8): α ∈ {1, 1/4, 1/16} → π_pre^{1−α}·p*^α (eq. 18).
- ``slic`` (Fig. 9): SLiC-HF-direct (eq. 20), δ ∈ {0, .25, .5, 1, 2} × λ ∈ {0, 1}; no closed
  form, so the metrics are the divergences to p* and to π_pre.
- ``ipo`` (Fig. 10): τ ∈ {0.1, 0.5, 1} → the minimizer of the population IPO loss under the
  pair distribution π_pre × π_pre (:func:`pbde.optimal_density` with ``loss="ipo"``).

All members of a sweep are trained together by :func:`pbde.fit_ensemble` (same data, same
batches, the result of fitting each alone). Divergences are computed on
``toy.evaluation_grid(settings.eval_points)``: both densities are evaluated at the grid points,
normalized there by the trapezoid rule, and KL(p ‖ q) = ∫ p (log p − log q) dx by the trapezoid
rule (:func:`pbde.kl`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

import pbde
from pbde.experiments import toy
from pbde.experiments.base import PAGE_WIDTH, Result, page_style, pyplot, rounded


@dataclass
class Settings(toy.TrainingSettings):
    """The paper's settings (:class:`~pbde.experiments.toy.TrainingSettings`); ``quick()`` and
    ``fast()`` shrink them."""

    eval_points: int = 4001
    ensemble: bool = True
    #: the swept values (β, α, τ or δ); ``None``: the paper's
    sweep: tuple[float, ...] | None = None


def quick(name: str | None = None) -> Settings:
    """Seconds per experiment: what the test suite runs (SLiC: δ ∈ {0, 1} only, × λ ∈ {0, 1})."""
    return Settings(steps=400, lr=1e-2, grid_size=2**11, pretrain_steps=300, eval_points=1001,
                    sweep=(0.0, 1.0) if name == "slic" else None)  # fmt: skip


def fast(name: str | None = None) -> Settings:
    """The faster recipe: the paper's data, a 2^12-point grid, a larger learning rate and 1/8 of
    the steps. Items drawn on a coarser grid repeat more, so a step scores fewer points."""
    return Settings(steps=1024, lr=5e-3, grid_size=2**12)


@dataclass
class _Run:
    label: str
    behavior: Callable  # π_pre -> PBDE
    loss: str = "bce"
    loss_kwargs: dict = field(default_factory=dict)
    nll_weight: float = 0.0  # SLiC-HF's λ: weight of −log π_θ on samples of π_pre
    theory: bool = True  # is there a closed-form / computable optimum?


@dataclass
class _Spec:
    name: str
    title: str
    annotator: Callable  # (p*, π_pre) -> annotator
    runs: list[_Run]
    fresh_start: bool = False  # reward model: fresh init instead of π_pre
    uniform_pairs: bool = False  # reward model: pairs uniform on the domain


def _specs(sweep: tuple[float, ...] | None = None) -> dict[str, _Spec]:
    luce = lambda p_star, pi_pre: pbde.Annotator(p_star)  # noqa: E731

    def values(paper):
        return paper if sweep is None else tuple(sweep)

    def fraction(a):
        return f"1/{1 / a:g}" if 0 < a < 1 and float(1 / a).is_integer() else f"{a:g}"

    return {
        "reward": _Spec(
            "reward", r"A reward model learns $p^*$ up to normalization (Fig. 1 / 7)", luce,
            [_Run("reward model (Luce, fresh init)", lambda pre: pbde.luce())],
            fresh_start=True, uniform_pairs=True,
        ),
        "dpo-wellspecified": _Spec(
            "dpo-wellspecified", r"DPO annotator, DPO model (β = 4): the fit recovers $p^*$ (Fig. 2)",
            lambda p_star, pi_pre: pbde.Annotator(p_star, pbde.dpo(4.0, pi_pre)),
            [_Run("DPO model, β = 4", lambda pre: pbde.dpo(4.0, pre))],
        ),
        "dpo": _Spec(
            "dpo", r"Luce annotator, DPO model: $\pi \propto \pi_{\rm ref}\, (p^*)^{1/\beta}$ (Fig. 3, eq. 16)", luce,
            [_Run(f"β = {b:g}", lambda pre, b=b: pbde.dpo(b, pre))
             for b in values((1.0, 4.0, 16.0))],
        ),
        "geometric": _Spec(
            "geometric", r"Geometric behavior: $\pi \propto \pi_{\rm ref}^{1-\alpha}\, (p^*)^{\alpha}$ (Fig. 8, eq. 18)", luce,
            [_Run(f"α = {fraction(a)}", lambda pre, a=a: pbde.geometric(a, pre))
             for a in values((1.0, 1 / 4, 1 / 16))],
        ),
        "slic": _Spec(
            "slic", "SLiC-HF-direct (eq. 20): margin δ (rows) and regularization λ (columns), Fig. 9", luce,
            [_Run(f"δ = {d:g}, λ = {lam:g}", lambda pre: pbde.luce(), "hinge", {"delta": d},
                  nll_weight=lam, theory=False)
             for lam in (0.0, 1.0) for d in values((0.0, 0.25, 0.5, 1.0, 2.0))],
        ),
        "ipo": _Spec(
            "ipo", "IPO (Azar et al., eq. 17) on Luce labels, τ sweep (Fig. 10)", luce,
            [_Run(f"τ = {t:g}", lambda pre: pbde.dpo(1.0, pre), "ipo", {"tau": t})
             for t in values((0.1, 0.5, 1.0))],
        ),
    }  # fmt: skip


NAMES = tuple(_specs())


def run(name: str, settings: Settings | None = None, *, progress: bool | None = None) -> Result:
    """Run the experiment ``name`` (one of :data:`NAMES`) and compare each fit with its theory.

    Metrics: per run, ``kl_theory_learned`` and ``tv_theory_learned`` (where a theory exists),
    ``kl_p_star_learned`` and ``kl_pre_learned``; at the top level the worst (largest) KL and
    TV to theory over the runs.
    """
    settings = settings or Settings()
    specs = _specs(settings.sweep)
    if name not in specs:
        raise ValueError(f"'name' must be one of {sorted(specs)}. Got {name!r}.")
    spec = specs[name]
    if settings.sweep is not None and len(spec.runs) == 1:
        raise ValueError(f"'sweep' does not apply to {name!r}, which fits one model.")
    began = time.perf_counter()
    torch.manual_seed(settings.seed)
    p_star = toy.paper_p_star()
    pi_pre = toy.pretrained_reference(
        grid_size=settings.grid_size, steps=settings.pretrain_steps, lr=settings.pretrain_lr,
        seed=settings.seed, progress=progress,
    )  # fmt: skip
    annotator = spec.annotator(p_star, pi_pre)
    if spec.uniform_pairs:
        xa, xb = toy.draw_uniform_pairs(pi_pre.grid, settings.pairs, settings.seed + 1)
    else:
        xa, xb = toy.draw_pairs(pi_pre, settings.pairs, settings.seed + 1)
    prefs = annotator.label(xa, xb, generator=torch.Generator().manual_seed(settings.seed + 2))

    models = []
    for i, r in enumerate(spec.runs):
        if spec.fresh_start:
            torch.manual_seed(settings.seed + 100 + i)
            density = pbde.densities.EnergyModel(toy.LOW, toy.HIGH, grid_size=settings.grid_size)
        else:
            density = copy.deepcopy(pi_pre)
        models.append(pbde.Annotator(density, r.behavior(pi_pre)))
    samples = pi_pre.sample(
        settings.pairs, generator=torch.Generator().manual_seed(settings.seed + 3)
    )
    regularizers = [
        pbde.nll_regularizer(samples, r.nll_weight) if r.nll_weight > 0 else None for r in spec.runs
    ]
    options = dict(steps=settings.steps, lr=settings.lr, batch_size=settings.batch_size,
                   progress=progress, device=settings.device, seed=settings.seed)  # fmt: skip
    fit_began = time.perf_counter()
    if settings.ensemble:
        pbde.fit_ensemble(
            models, prefs, loss=[r.loss for r in spec.runs],
            loss_kwargs=[r.loss_kwargs for r in spec.runs], regularizer=regularizers, **options,
        )  # fmt: skip
    else:
        for model, r, reg in zip(models, spec.runs, regularizers, strict=True):
            pbde.fit(model, prefs, loss=r.loss, regularizer=reg, **r.loss_kwargs, **options)
    fit_seconds = time.perf_counter() - fit_began

    grid = toy.evaluation_grid(settings.eval_points)
    pi_pre.cpu()
    runs, theories = {}, []
    for model, r in zip(models, spec.runs, strict=True):
        learned = model.density.cpu()
        theory = None
        if r.theory:
            theory = pbde.optimal_density(
                annotator.cpu(), model.behavior, grid, proposal=pi_pre, loss=r.loss,
                **r.loss_kwargs,
            )  # fmt: skip
        with torch.no_grad():
            entry = {
                "kl_p_star_learned": pbde.kl(p_star, learned, grid),
                "kl_pre_learned": pbde.kl(pi_pre, learned, grid),
            }
            if theory is not None:
                entry["kl_theory_learned"] = pbde.kl(theory, learned, grid)
                entry["tv_theory_learned"] = pbde.tv(theory, learned, grid)
                entry["tv_theory_pretrained"] = pbde.tv(theory, pi_pre, grid)
        runs[r.label] = entry
        theories.append(theory)
    metrics: dict = {}
    with_theory = [m for m in runs.values() if "kl_theory_learned" in m]
    if with_theory:
        metrics["kl_theory_learned"] = max(m["kl_theory_learned"] for m in with_theory)
        metrics["tv_theory_learned"] = max(m["tv_theory_learned"] for m in with_theory)
    metrics["runs"] = runs
    metrics["fit_seconds"] = fit_seconds

    figure = _figure(p_star, pi_pre, models, theories, list(runs))
    data = {"models": models, "theories": theories, "pi_pre": pi_pre, "prefs": prefs}
    return Result(name, settings, metrics, time.perf_counter() - began, data=data, figure=figure,
                  draw=draw)  # fmt: skip


def _figure(p_star, pi_pre, models, theories, labels) -> dict:
    """The curves the figure shows, on :func:`toy.plot_points`, for the JSON."""
    x = toy.plot_points()
    with torch.no_grad():
        figure = {
            "x": rounded(x),
            "p_star": rounded(p_star.prob(x).double()),
            "pi_pre": rounded(pi_pre.prob(x).double()),
            "runs": {},
        }
        for model, theory, label in zip(models, theories, labels, strict=True):
            entry = {"learned": rounded(model.density.prob(x).double())}
            if theory is not None:
                entry["theory"] = rounded(theory.prob(x).double())
            figure["runs"][label] = entry
    return figure


def draw(report: dict, path) -> None:
    """Draw a sweep's figure from its report (:meth:`Result.report` or the JSON file): one panel
    per fitted model, the theory dashed on top of the learned density; SLiC's δ × λ grid as
    rows δ and columns λ."""
    plt = pyplot()
    spec = _specs()[report["experiment"]]
    figure, metrics = report["figure"], report["metrics"]["runs"]
    labels = list(figure["runs"])
    n = len(labels)
    if spec.name == "slic":  # the runs are λ-major: one column per λ, one row per δ
        columns = 2 if n % 2 == 0 else 1
        rows = n // columns
        cells = [(i % rows, i // rows) for i in range(n)]
    else:
        columns = min(n, 3)
        rows = -(-n // columns)
        cells = [divmod(i, columns) for i in range(n)]
    width = PAGE_WIDTH if n > 1 else 0.75 * PAGE_WIDTH
    height = (2.3 if rows > 2 else 3.1) * rows + 1.3
    x = figure["x"]
    separator = ":  " if columns < 3 else "\n"  # narrow panels: the KL under the name
    with page_style():
        fig, axes = plt.subplots(rows, columns, figsize=(width, height), squeeze=False,
                                 sharex=True, sharey="row" if spec.name == "slic" else True,
                                 layout="constrained")  # fmt: skip
        for label, (row, column) in zip(labels, cells, strict=True):
            ax, curves, m = axes[row, column], figure["runs"][label], metrics[label]
            ax.plot(x, figure["p_star"], color="tab:blue", ls="--", lw=1.3,
                    label=r"$p^*$ (the annotator's density, eq. 10)")  # fmt: skip
            ax.plot(x, figure["pi_pre"], color="tab:orange", ls=":", lw=1.6,
                    label=r"$\pi_{\rm ref}$ (the pre-trained model)")  # fmt: skip
            ax.plot(x, curves["learned"], color="tab:green", lw=3.2, alpha=0.55, label="learned")
            if "theory" in curves:
                ax.plot(x, curves["theory"], color="black", ls=(0, (3, 2)), lw=1.3, zorder=3,
                        label="theory (the optimum)")  # fmt: skip
                note = f"KL(theory ‖ learned) = {m['kl_theory_learned']:.4f}"
            else:
                note = f"KL($p^*$ ‖ learned) = {m['kl_p_star_learned']:.3f}"
            ax.set_title(label + separator + note)
            ax.set_xlim(-7.5, 7.5)
            ax.set_xticks([-5, 0, 5])
            ax.set_ylim(bottom=0)
        for ax in axes[-1]:
            ax.set_xlabel("x")
        for ax in axes[:, 0]:
            ax.set_ylabel("density")
        handles, names = axes[0, 0].get_legend_handles_labels()
        fig.legend(handles, names, loc="outside lower center", ncol=2)
        fig.suptitle(spec.title)
        fig.savefig(path)
        plt.close(fig)
