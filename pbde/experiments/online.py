"""Online preference learning: how many annotator queries does each proposal strategy need?

Dumoulin et al. (§6, "Stationarity") ask whether drawing every pair up front from π_ref is better
than alternating between querying pairs drawn from the current model and re-fitting, and whether
active learning reduces the number of queries. This experiment answers with numbers, with
:func:`pbde.online.run` and these proposals:

* ``static``: both items from π_ref, the paper's setting, queried in instalments;
* ``on_policy``: both items from the current model (iterative DPO, Xiong et al.);
* ``active``: :class:`pbde.online.Active` with its default criterion — from ``active_pool``
  on-policy candidates per query, a greedy batch of the pairs a Laplace posterior over the model
  says are worth most (:mod:`pbde.posterior`);
* ``bald`` and ``policy``: the same with each of its two criteria named (the mutual information
  between the label and the parameters; the expected drop of the policy's posterior KL);
* ``uncertainty``: the pairs whose *label* the current model is least sure of (uncertainty
  sampling, ``Active(criterion="label_entropy")``).

Strategies alternate within each seed (seed k runs every strategy before seed k + 1), so a
slow stretch of a shared machine does not land on one of them.

on two problems with a known optimum (Lemma 1: eq. 16, the same for every proposal, so the pooled
data of every strategy share it):

* the 1-D toy (§4): p* of eq. 10 with a Luce annotator, an
  :class:`~pbde.densities.EnergyModel` started at π_ref and fitted with DPO (β = ``toy_beta``);
  target π_ref · p*^{1/β};
* a finite bandit: a Bradley–Terry annotator with rewards ``bandit_rewards`` (a Luce annotator
  with p* ∝ exp(r)), a Categorical model started at π_ref and fitted with DPO (β = η); target
  π* ∝ π_ref · exp(r/η).

KL(target ‖ π_θ) is recorded after every round against the cumulative number of queries, for
``repeats`` seeds; the metrics give, per strategy, the queries after which KL stays ≤ each
threshold for every later round (median over seeds, a seed that never gets there counting as
+∞; ``None`` if the median is not reached within the budget), and the wall time per round spent
choosing the pairs and re-fitting.

The paper has no online experiment, so the defaults are chosen to answer the question on a
small CPU in a few minutes rather than copied from it: the paper's fits take 8192 steps on 2^16
grid points; here each round warm-starts the previous fit and takes ``toy_fit_steps`` Adam steps
on a 1025-point normalization grid (the target is smooth at β = 4, one of the paper's values),
and the query budget doubles every round (32 … 2048 pairs), so the curves are evenly spaced on
the log axis.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from dataclasses import dataclass

import torch

import pbde
from pbde import online
from pbde.experiments import toy
from pbde.experiments.base import PAGE_WIDTH, Result, page_style, pyplot, rounded

STRATEGIES = ("static", "on_policy", "active", "uncertainty")
PROPOSALS = {
    "static": lambda pool: "static",
    "on_policy": lambda pool: "on_policy",
    "active": lambda pool: online.Active(pool=pool),
    "bald": lambda pool: online.Active(pool=pool, criterion="bald"),
    "policy": lambda pool: online.Active(pool=pool, criterion="policy"),
    "uncertainty": lambda pool: online.Active(pool=pool, criterion="label_entropy"),
}


@dataclass
class Settings:
    """Settings of the online experiment (see the module docstring for why these sizes).

    Attributes:
        strategies: proposal strategies to compare, names of :data:`PROPOSALS`
            (``"static"``, ``"on_policy"``, ``"active"``, ``"bald"``, ``"policy"``,
            ``"uncertainty"``).
        repeats: seeds per strategy and problem.
        kl_threshold: the KL(target ‖ π_θ) whose query count is reported (both problems).
        bandit_kl_threshold: a second, smaller threshold on the bandit (whose π_ref is at KL
            0.078 from π* with the default rewards, so 0.05 tells the strategies apart little).
        active_pool: candidate pairs per query for ``"active"``.
        toy_beta: DPO's β on the 1-D toy.
        toy_queries: pairs queried in each round on the 1-D toy.
        toy_fit_steps: Adam steps per round (warm start) on the 1-D toy.
        toy_lr: peak learning rate of those fits.
        toy_grid_size: normalization grid of the energy models.
        toy_hidden: hidden layers of the energy models (the paper's 4 × 64).
        toy_pretrain_steps: steps regressing π_ref onto N_trunc(0, 5).
        toy_eval_points: points of the grid on which KL is computed.
        bandit_rewards: the bandit's rewards r (the annotator is Bradley–Terry in r).
        bandit_reference: π_ref's probabilities; ``None`` for uniform.
        bandit_eta: η of the KL-regularised bandit (DPO's β).
        bandit_queries: pairs queried in each round on the bandit.
        bandit_fit_steps: Adam steps per round on the bandit.
        bandit_lr: peak learning rate of those fits.
        seed: base seed (repeat k uses ``seed + 1000·k``).
    """

    strategies: tuple[str, ...] = STRATEGIES
    repeats: int = 5
    kl_threshold: float = 0.05
    bandit_kl_threshold: float = 0.005
    active_pool: int = 8
    toy_beta: float = 4.0
    toy_queries: tuple[int, ...] = (32, 32, 64, 128, 256, 512, 1024)
    toy_fit_steps: int = 200
    toy_lr: float = 3e-3
    toy_grid_size: int = 1025
    toy_hidden: tuple[int, ...] = (64, 64, 64, 64)
    toy_pretrain_steps: int = 1000
    toy_eval_points: int = 2001
    bandit_rewards: tuple[float, ...] = (1.0, 0.5, 0.0)
    bandit_reference: tuple[float, ...] | None = None
    bandit_eta: float = 1.0
    bandit_queries: tuple[int, ...] = (16, 16, 32, 64, 128, 256, 512, 1024, 2048)
    bandit_fit_steps: int = 150
    bandit_lr: float = 0.1
    seed: int = 0


def quick() -> Settings:
    """Reduced sizes for the test suite (seconds): one seed, a small energy model, fewer rounds."""
    return Settings(
        repeats=1,
        toy_queries=(64, 128, 256),
        toy_fit_steps=60,
        toy_lr=1e-2,
        toy_grid_size=257,
        toy_hidden=(32, 32),
        toy_pretrain_steps=300,
        toy_eval_points=1001,
        bandit_queries=(64, 192, 768, 3072),
        bandit_fit_steps=100,
    )


def fast() -> Settings:
    """A faster recipe (about a third of the default's time): 2 seeds, budgets of 1024 queries on
    the toy and 2048 on the bandit."""
    return Settings(
        repeats=2,
        toy_queries=(32, 32, 64, 128, 256, 512),
        bandit_queries=(16, 16, 32, 64, 128, 256, 512, 1024),
    )


def _proposal(strategy: str, pool: int):
    if strategy not in PROPOSALS:
        raise ValueError(f"'strategies' must hold names of {list(PROPOSALS)}. Got {strategy!r}.")
    return PROPOSALS[strategy](pool)


def _median_queries(values: list[int | None]) -> int | float | None:
    """Median over seeds, a seed that never reached the threshold counting as +∞."""
    ordered = sorted(math.inf if v is None else v for v in values)
    median = statistics.median(ordered)
    if math.isinf(median):
        return None
    return int(median) if float(median).is_integer() else float(median)


def _study(make_model, annotator, support, sizes, refit, thresholds, settings, progress):
    """Every strategy × repeat on one problem, the strategies alternating within each seed: KL
    curves, queries to each threshold, and the time per round."""
    runs = {strategy: [] for strategy in settings.strategies}
    for k in range(settings.repeats):
        for strategy in settings.strategies:
            runs[strategy].append(
                online.run(
                    make_model(),
                    annotator,
                    rounds=len(sizes),
                    queries_per_round=list(sizes),
                    proposal=_proposal(strategy, settings.active_pool),
                    refit=refit,
                    support=support,
                    seed=settings.seed + 1000 * k,
                    progress=progress,
                )
            )
    curves, metrics = {}, {}
    for strategy, results in runs.items():
        kls = torch.tensor([r.kl for r in results], dtype=torch.float64)  # (repeats, rounds)
        xa = torch.cat([r.data.xa for r in results])
        xb = torch.cat([r.data.xb for r in results])
        rounds = len(results) * len(sizes)
        curves[strategy] = {
            "queries": results[0].queries,
            "median": kls.median(0).values.tolist(),
            "low": kls.min(0).values.tolist(),
            "high": kls.max(0).values.tolist(),
        }
        metrics[strategy] = {"queries_to": {}, "queries_to_per_seed": {}}
        for threshold in thresholds:
            reached = [r.queries_to_reach(kl=threshold, stay=True) for r in results]
            metrics[strategy]["queries_to"][f"{threshold:g}"] = _median_queries(reached)
            metrics[strategy]["queries_to_per_seed"][f"{threshold:g}"] = reached
        metrics[strategy].update(
            {
                "final_kl": float(kls[:, -1].median()),
                "kl_per_round": curves[strategy]["median"],
                "identical_pair_fraction": float((xa == xb).double().mean()),
                "seconds": sum(r.seconds for r in results),
                "selection_seconds_per_round": sum(r.selection_seconds for r in results) / rounds,
                "fit_seconds_per_round": sum(r.fit_seconds for r in results) / rounds,
            }
        )
        if xa.is_floating_point():  # how far apart the queried items are (1-D toy)
            metrics[strategy]["median_pair_distance"] = float((xa - xb).abs().double().median())
        metrics[strategy]["initial_kl"] = results[0].initial_kl
    return curves, metrics


def toy_reference(settings: Settings, progress: bool = False):
    """The 1-D toy's π_ref: the energy model pre-trained with the settings' grid, steps, network
    and seed (cached by :func:`pbde.experiments.toy.pretrained_reference`)."""
    return toy.pretrained_reference(
        grid_size=settings.toy_grid_size,
        steps=settings.toy_pretrain_steps,
        hidden=tuple(settings.toy_hidden),
        seed=settings.seed,
        progress=progress,
    )


def run(settings: Settings, *, progress: bool | None = None) -> Result:
    """Run the experiment: KL to the optimum vs queries for each strategy, on both problems."""
    began = time.perf_counter()
    for strategy in settings.strategies:
        _proposal(strategy, settings.active_pool)  # fail before the slow part
    refit_toy = {"steps": settings.toy_fit_steps, "lr": settings.toy_lr}
    refit_bandit = {"steps": settings.bandit_fit_steps, "lr": settings.bandit_lr}

    # the 1-D toy: π_pre, p* (eq. 10), DPO
    pi_pre = toy_reference(settings, progress)
    behavior = pbde.dpo(settings.toy_beta, pi_pre)
    toy_annotator = pbde.Annotator(toy.paper_p_star())
    grid = toy.evaluation_grid(settings.toy_eval_points)

    def toy_model():
        return pbde.Annotator(copy.deepcopy(pi_pre).requires_grad_(True).train(), behavior)

    toy_curves, toy_metrics = _study(
        toy_model,
        toy_annotator,
        grid,
        settings.toy_queries,
        refit_toy,
        (settings.kl_threshold,),
        settings,
        progress,
    )

    # the finite bandit: Bradley–Terry in r, uniform (or given) π_0, DPO with β = η
    rewards = torch.tensor(settings.bandit_rewards, dtype=torch.float64)
    size = rewards.shape[0]
    if settings.bandit_reference is None:
        reference_probs = torch.full((size,), 1.0 / size, dtype=torch.float64)
    else:
        reference_probs = torch.tensor(settings.bandit_reference, dtype=torch.float64)
    pi_0 = pbde.densities.Categorical(probs=reference_probs)
    bandit_behavior = pbde.dpo(settings.bandit_eta, pi_0)
    bandit_annotator = pbde.Annotator(pbde.densities.Categorical(logits=rewards))

    def bandit_model():
        return pbde.Annotator(pbde.densities.Categorical(probs=reference_probs), bandit_behavior)

    bandit_curves, bandit_metrics = _study(
        bandit_model,
        bandit_annotator,
        torch.arange(size),
        settings.bandit_queries,
        refit_bandit,
        (settings.kl_threshold, settings.bandit_kl_threshold),
        settings,
        progress,
    )
    optimum = torch.softmax(reference_probs.log() + rewards / settings.bandit_eta, 0)

    metrics = {
        "kl_threshold": settings.kl_threshold,
        "bandit_kl_threshold": settings.bandit_kl_threshold,
        "toy_queries_to_threshold": {
            s: m["queries_to"][f"{settings.kl_threshold:g}"] for s, m in toy_metrics.items()
        },
        "bandit_queries_to_threshold": {
            s: m["queries_to"][f"{settings.bandit_kl_threshold:g}"]
            for s, m in bandit_metrics.items()
        },
        "toy_initial_kl": next(iter(toy_metrics.values()))["initial_kl"],
        "bandit_initial_kl": next(iter(bandit_metrics.values()))["initial_kl"],
        "bandit_optimum": optimum.tolist(),
        "toy": toy_metrics,
        "bandit": bandit_metrics,
    }
    for part in (toy_metrics, bandit_metrics):
        for m in part.values():
            del m["initial_kl"]

    return Result(
        experiment="online",
        settings=settings,
        metrics=metrics,
        seconds=time.perf_counter() - began,
        data={"toy_curves": toy_curves, "bandit_curves": bandit_curves},
        figure=_figure(settings, toy_curves, bandit_curves),
        draw=draw,
    )


#: the strategies' names in the figure
LABELS = {
    "static": r"static pairs (from $\pi_{\rm ref}$)",
    "on_policy": "on-policy pairs",
    "active": "active (posterior, policy criterion)",
    "bald": "active: BALD",
    "policy": "active: policy criterion",
    "uncertainty": "uncertainty sampling",
}


def _figure(settings: Settings, toy_curves: dict, bandit_curves: dict) -> dict:
    """The numbers the figure is drawn from, for the JSON: per panel its title's parameters, its
    KL thresholds and, per strategy, the cumulative query counts and the median, lowest and
    highest KL over seeds after each round."""

    def curves(panel: dict) -> dict:
        return {
            strategy: {"queries": list(curve["queries"])}
            | {key: rounded(curve[key]) for key in ("median", "low", "high")}
            for strategy, curve in panel.items()
        }

    return {
        "seeds": settings.repeats,
        "toy": {
            "beta": settings.toy_beta,
            "thresholds": [settings.kl_threshold],
            "curves": curves(toy_curves),
        },
        "bandit": {
            "rewards": list(settings.bandit_rewards),
            "eta": settings.bandit_eta,
            "thresholds": [settings.kl_threshold, settings.bandit_kl_threshold],
            "curves": curves(bandit_curves),
        },
    }


def draw(report: dict, path) -> None:
    """Draw the online figure from a report (:meth:`Result.report` or the JSON file): KL to the
    optimum against the cumulative number of annotator queries, one line per strategy (the
    median over seeds, a band from the lowest to the highest seed), on the 1-D toy and on the
    bandit, with the KL thresholds of the metrics."""
    from matplotlib.ticker import NullLocator

    plt = pyplot()
    figure = report["figure"]
    seeds = figure["seeds"]
    toy_panel, bandit_panel = figure["toy"], figure["bandit"]
    rewards = ", ".join(f"{r:g}" for r in bandit_panel["rewards"])
    titles = (
        rf"1-D toy: Luce annotator $p^*$ (eq. 10), DPO, $\beta = {toy_panel['beta']:g}$",
        rf"bandit: $r$ = ({rewards}), DPO, $\beta = \eta = {bandit_panel['eta']:g}$",
    )
    floor = 1e-5  # KL can touch 0 on a log axis
    with page_style():
        fig, axes = plt.subplots(1, 2, figsize=(PAGE_WIDTH, 4.9), layout="constrained")
        for ax, panel, title in zip(axes, (toy_panel, bandit_panel), titles, strict=True):
            for strategy, curve in panel["curves"].items():
                queries = curve["queries"]
                median = [max(v, floor) for v in curve["median"]]
                label = LABELS.get(strategy, strategy)
                (line,) = ax.plot(queries, median, marker="o", ms=4, label=label)
                if seeds > 1:
                    ax.fill_between(queries, [max(v, floor) for v in curve["low"]],
                                    [max(v, floor) for v in curve["high"]],
                                    color=line.get_color(), alpha=0.12, linewidth=0)  # fmt: skip
            for level, style in zip(panel["thresholds"], ("--", ":"), strict=False):
                ax.axhline(level, color="black", linestyle=style, linewidth=1,
                           label=f"KL = {level:g}")  # fmt: skip
            ax.set_xscale("log")
            ax.set_yscale("log")
            ticks = next(iter(panel["curves"].values()))["queries"]
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xlabel("annotator queries (cumulative)")
            ax.set_title(title)
        axes[0].set_ylabel("KL(optimum ‖ model)")
        handles, labels = axes[1].get_legend_handles_labels()  # the bandit has both levels
        what = "one seed" if seeds == 1 else f"median over {seeds} seeds, band: lowest to highest"
        fig.legend(handles, labels, loc="outside lower center", ncol=3, title=what)
        fig.suptitle("Online preference learning: KL to the optimum vs number of queries")
        fig.savefig(path)
        plt.close(fig)
