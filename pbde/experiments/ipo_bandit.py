"""IPO against DPO on a three-armed bandit (Azar et al. §5.3–5.4).

A softmax policy over {a, b, c}, uniform π_ref, is fitted to a data set of three comparisons,
by DPO (``pbde.dpo(τ, π_ref)`` with the logistic loss: Azar et al. eq. 4) and by IPO
(``pbde.dpo(1, π_ref)`` with :func:`pbde.losses.ipo`: eq. 13/17), with Adam (lr 0.01, constant),
18 000 steps, mini-batches of 9 drawn with replacement, 10 seeds:

- D1 = {a ≻ b, b ≻ c, a ≻ c}, a total order: DPO goes greedy (π(a) → 1) for every τ; IPO stops
  at π ∝ (e^{2/(3τ)}, e^{1/(3τ)}, 1), the least-squares solution of its loss.
- D2 = {a ≻ b, b ≻ a, b ≻ c}: c never wins, and DPO drives π(c) → 0 for every τ; IPO keeps it at
  π ∝ (e^{1/(2τ)}, e^{1/(2τ)}, 1).

The IPO theory drawn is :func:`pbde.optimal_density` with ``loss="ipo"`` for a
:class:`~pbde.DeterministicAnnotator` ranking the arms as the data do (a tie where the data
disagree), under the data set's pair distribution — equal to the ΨPO optimum
(:func:`pbde.psipo_optimum`, Ψ = identity, eq. 9) in that population sense.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import torch

import pbde
from pbde.densities import Categorical
from pbde.experiments.base import PAGE_WIDTH, Result, page_style, pyplot

ARMS = ("a", "b", "c")
# (winners, losers, the deterministic scores of an annotator agreeing with the data)
DATASETS = {
    "D1 (a≻b, b≻c, a≻c)": ([0, 1, 0], [1, 2, 2], [2.0, 1.0, 0.0]),
    "D2 (a≻b, b≻a, b≻c)": ([0, 1, 1], [1, 0, 2], [1.0, 1.0, 0.0]),
}


@dataclass
class Settings:
    """Azar et al. §5.4's settings."""

    taus: tuple[float, ...] = (0.1, 0.5, 1.0)
    steps: int = 18_000
    lr: float = 0.01
    batch_size: int | None = 9  # drawn with replacement; None: full batch (no sampling noise)
    seeds: int = 10
    seed: int = 0
    methods: tuple[str, ...] = field(default=("DPO", "IPO"))


def quick() -> Settings:
    """Full batch (the expected mini-batch): no sampling noise, so one seed and exact optima."""
    return Settings(steps=1500, seeds=1, batch_size=None)


def fast() -> Settings:
    """As :func:`quick` with more steps: full batch removes the mini-batch noise, so one seed."""
    return Settings(steps=3000, seeds=1, batch_size=None)


def closed_form(dataset: str, tau: float) -> torch.Tensor:
    """IPO's optimum on the data set, solved by hand (least squares in the logits, see the
    module docstring)."""
    if dataset.startswith("D1"):
        theta = torch.tensor([2 / (3 * tau), 1 / (3 * tau), 0.0], dtype=torch.float64)
    else:
        theta = torch.tensor([1 / (2 * tau), 1 / (2 * tau), 0.0], dtype=torch.float64)
    return torch.softmax(theta, 0)


def run(settings: Settings | None = None, *, progress: bool | None = None) -> Result:
    """Fit DPO and IPO on both data sets for every τ and seed.

    Metrics, per data set: ``dpo_min_top`` (the smallest, over τ and seeds, final probability of
    the arm DPO is expected to go greedy on: a in D1; for D2, 1 − π(c)), ``ipo_max_error``
    (largest |π_IPO − theory| over arms, τ and seeds: with mini-batches and a constant learning
    rate the policy keeps jittering around the optimum), ``ipo_mean_error`` (the same for the
    mean policy over seeds), ``ipo_theory_vs_closed_form`` (the library's optimum against the
    hand-solved one) and the mean final policies.
    """
    settings = settings or Settings()
    began = time.perf_counter()
    reference = Categorical(size=3)
    support = torch.arange(3)
    finals: dict = {}
    metrics: dict = {}
    for name, (winners, losers, scores) in DATASETS.items():
        prefs = pbde.Preferences(torch.tensor(winners), torch.tensor(losers), torch.ones(3))
        annotator = pbde.DeterministicAnnotator(torch.tensor(scores))
        pairs = torch.zeros(3, 3, dtype=torch.float64)
        for w, loser in zip(winners, losers, strict=True):
            pairs[w, loser] += 1.0
        finals[name] = {}
        entry = {"dpo_min_top": 1.0, "ipo_max_error": 0.0, "ipo_mean_error": 0.0,
                 "ipo_theory_vs_closed_form": 0.0}  # fmt: skip
        # DPO's theory (ΨPO with Ψ = logit, eq. 9): no finite optimum under deterministic
        # preferences, whatever τ — the library says so instead of returning one
        try:
            pbde.psipo_optimum(annotator, "logit", 1.0, reference, None, support)
            entry["dpo_optimum_exists"] = True
        except ValueError:
            entry["dpo_optimum_exists"] = False
        for tau in settings.taus:
            theory = pbde.optimal_density(
                annotator, pbde.dpo(1.0, reference), support, proposal=pairs, loss="ipo", tau=tau
            ).prob(support)
            entry["ipo_theory_vs_closed_form"] = max(
                entry["ipo_theory_vs_closed_form"],
                float((theory - closed_form(name, tau)).abs().max()),
            )
            for method in settings.methods:
                policies = []
                for s in range(settings.seeds):
                    if method == "DPO":
                        behavior, loss, kwargs = pbde.dpo(tau, reference), "bce", {}
                    else:
                        behavior, loss, kwargs = pbde.dpo(1.0, reference), "ipo", {"tau": tau}
                    model = pbde.Annotator(Categorical(size=3), behavior)
                    with warnings.catch_warnings():
                        # the point of the experiment: DPO's optimum does not exist on these
                        # data (reported as dpo_optimum_exists), so its warning says nothing new
                        warnings.simplefilter("ignore", pbde.SeparationWarning)
                        pbde.fit(
                            model, prefs, loss=loss, steps=settings.steps, lr=settings.lr,
                            batch_size=settings.batch_size, replacement=True,
                            schedule="constant", seed=settings.seed + s, progress=progress,
                            **kwargs,
                        )  # fmt: skip
                    with torch.no_grad():
                        policies.append(model.density.prob(support).double())
                policies = torch.stack(policies)
                finals[name][(method, tau)] = (policies, theory)
                if method == "DPO":
                    top = policies[:, 0] if name.startswith("D1") else 1 - policies[:, 2]
                    entry["dpo_min_top"] = min(entry["dpo_min_top"], float(top.min()))
                else:
                    error = float((policies - theory).abs().max())
                    entry["ipo_max_error"] = max(entry["ipo_max_error"], error)
                    error = float((policies.mean(0) - theory).abs().max())
                    entry["ipo_mean_error"] = max(entry["ipo_mean_error"], error)
                entry[f"{method.lower()}_tau_{tau:g}_mean_policy"] = policies.mean(0).tolist()
            entry[f"ipo_theory_tau_{tau:g}"] = theory.tolist()
        metrics[name] = entry

    return Result("ipo-bandit", settings, metrics, time.perf_counter() - began, data=finals,
                  figure=_figure(settings, finals), draw=draw)  # fmt: skip


def _figure(settings, finals) -> dict:
    """The final policies (one row per seed) and the IPO theory, for the JSON; τ as text keys
    in the order of ``taus``."""
    figure: dict = {"taus": list(settings.taus), "datasets": {}}
    for name, runs in finals.items():
        entry: dict = {"theory": {}}
        for (method, tau), (policies, theory) in runs.items():
            entry.setdefault(method, {})[f"{tau:g}"] = policies.tolist()
            entry["theory"][f"{tau:g}"] = theory.tolist()
        figure["datasets"][name] = entry
    return figure


def draw(report: dict, path) -> None:
    """Draw the bandit figure from a report (:meth:`Result.report` or the JSON file): each
    arm's final probability under DPO and IPO for every τ, next to IPO's optimum."""
    from matplotlib.lines import Line2D

    plt = pyplot()
    figure = report["figure"]
    taus = [f"{t:g}" for t in figure["taus"]]
    colors = dict(zip(ARMS, ("tab:blue", "tab:orange", "tab:green"), strict=True))
    seeds = len(next(iter(figure["datasets"].values()))["IPO"][taus[0]])
    with page_style():
        fig, axes = plt.subplots(1, 2, figsize=(PAGE_WIDTH, 4.6), sharey=True,
                                 layout="constrained")  # fmt: skip
        for ax, (name, runs) in zip(axes, figure["datasets"].items(), strict=True):
            for arm_index, arm in enumerate(ARMS):
                color = colors[arm]
                for method, marker, offset in (("DPO", "s", -0.2), ("IPO", "o", 0.2)):
                    if method not in runs:
                        continue
                    finals = [torch.tensor(runs[method][t])[:, arm_index] for t in taus]
                    # arms side by side, so that equal probabilities stay visible
                    at = [i + offset + 0.07 * (arm_index - 1) for i in range(len(taus))]
                    means = [float(v.mean()) for v in finals]
                    if seeds > 1:  # bars from the lowest to the highest seed
                        low = [m - float(v.min()) for m, v in zip(means, finals, strict=True)]
                        high = [float(v.max()) - m for m, v in zip(means, finals, strict=True)]
                        ax.errorbar(at, means, yerr=[low, high], fmt="none", color=color,
                                    capsize=3)  # fmt: skip
                    ax.plot(at, means, marker, color=color, ms=8, mew=1.5,
                            mfc="white" if method == "DPO" else color)  # fmt: skip
                theory = [runs["theory"][t][arm_index] for t in taus]
                at = [i + 0.2 + 0.07 * (arm_index - 1) for i in range(len(taus))]
                ax.plot(at, theory, "_", color="black", ms=14, mew=1.8)
            ax.set_xticks(range(len(taus)), [f"τ = {t}" for t in taus])
            ax.set_xlim(-0.5, len(taus) - 0.5)
            ax.set_title(name)
            ax.set_ylim(-0.03, 1.03)
            ax.grid(axis="y", alpha=0.3)
        what = ("one seed, full batch" if seeds == 1
                else f"mean over {seeds} seeds; bars: lowest to highest")  # fmt: skip
        axes[0].set_ylabel(f"final probability of the arm\n({what})")
        handles = [Line2D([], [], ls="", marker="s", color="0.3", mfc="white", ms=8, label="DPO"),
                   Line2D([], [], ls="", marker="o", color="0.3", ms=8, label="IPO"),
                   Line2D([], [], ls="", marker="_", color="black", ms=14, mew=1.8,
                          label="IPO's optimum (theory)")]  # fmt: skip
        handles += [Line2D([], [], ls="", marker="o", color=colors[arm], ms=8, label=f"arm {arm}")
                    for arm in ARMS]  # fmt: skip
        fig.legend(handles=handles, loc="outside lower center", ncol=6, handletextpad=0.3)
        fig.suptitle("Azar et al. §5.4: DPO goes greedy for every τ; IPO stays at its optimum")
        fig.savefig(path)
        plt.close(fig)
