"""Latent-annotator mixtures fitted to the eq. 27 sequence data.

``pbde reproduce lm-mixture-latent``. The models, corpus and pairs are those of
:mod:`pbde.experiments.lm_mixture` (Fig. 6). The paper's appendix A.4 recipe — two noisy
copies of π_pre in the mixture of eqs. 29–30 — recovered both annotators of the 1-D toy without
IDs and "proved unsuccessful" here. For these fits the pairs are labelled by a population: ``pairs / m`` annotators (m =
``comparisons_per_annotator``), each a *short* or a *long* annotator with probability ½, each
labelling m pairs with eq. 26 — per comparison exactly eq. 27. Four K = 2 fits of
:class:`pbde.mixture.LatentMixture` (copies of *whole*, eq. 26 behavior), with annotator IDs
(``latent="annotator"``) or without (``latent="comparison"``): ``"ids_copies"`` and
``"no_ids_copies"``, the paper's recipe (noise 1e-4, learned weights); ``"ids"`` and
``"no_ids"``, weights held at ½ (``learn_weights=False``) and the copies' stop logits shifted by
±``spread`` (one copy stops earlier, the other later). ``ml_weights`` are the maximum-
likelihood weights of the fitted components (EM on the weights alone).

Measured with the quick models and 2^15 pairs (``docs/reproduce.md`` and
``benchmarks/RESULTS.md`` have the numbers and commands): the paper's recipe collapses with IDs
— one weight goes to 1 and the survivor is a one-annotator fit — and without IDs its weights
run toward a corner (.17 / .83, a mostly-long mixture); holding the
weights and spreading the stop logits gives, with IDs, the two annotators (who-is-who at the
Bayes ceiling, π_mix's lengths), and, without IDs, a mixture without medium lengths whose
components are *not* the two annotators. Why:

* *A label identifies only the average probability.* One comparison is one Bernoulli draw, so
  the data constrain only p̄ = Σ_k w_k σ(h_k(x_A, x_B)). Eq. 26 divides log p by the length:
  the logits are small (mean |h| 0.66 for *short*, 1.28 for *long*), σ is nearly linear, and
  p̄ ≈ σ(Σ_k w_k h_k) — to first order the annotator mixture *is* one annotator, whose Ω is the
  average Ω (a normalized geometric mean of π_short and π_long: lukewarm). Only the curvature
  of σ tells them apart, a fourth-order effect in the spread of the logits
  (:func:`label_identifiability`): ``gap_to_average_annotator`` is 0.008 nats per comparison
  against 0.057 of information in a label, and the true model names the annotator of one
  comparison only 63% of the time.
* *The weights of near-identical copies run to a corner.* With components ε apart the
  log-likelihood is linear in w to first order (slope O(ε), curvature O(ε²)): its maximum is at
  a corner; a component of weight 0 has responsibilities 0 and gets no gradient, so the corner
  is absorbing. Adam moves the weight logits by about the learning rate per step however small
  their gradient, while the components split only through the second-order term. Holding the
  weights stops the collapse; the copies must also start apart (``spread``).
* *The bimodal answer must also win in-sample.* With fewer pairs a mixture that is not the
  two annotators fits the labels better than they do: at 2^13 pairs (one restart) the no-ID
  fit ended 0.0015 nats per comparison *below* the truth's objective with lengths
  .74 / .04 / .21; at 2^15 it matches the truth's objective.
* *IDs pool an annotator's comparisons*: the evidence for a type grows as m × 0.34 nats (the KL
  between the two annotators' labels), and the true model names the annotator's type in 77%
  and 99.8% of cases for m = 4 and 64. The fits with IDs follow: at m = 4 (who-is-who .761,
  ceiling .766) the mixture keeps 20% medium lengths.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

import pbde
from pbde.densities import Mixture
from pbde.experiments import lm_mixture
from pbde.experiments.base import PAGE_WIDTH, Result, page_style, pyplot
from pbde.experiments.length_bias import (
    MODELS,
    LanguageModelSettings,
    omega_in_chunks,
    pretrained_language_models,
    quick_language_models,
    trainable_copy,
)
from pbde.experiments.lm_mixture import (
    check_adapt,
    eq26,
    finish_length_axes,
    label_in_chunks,
    length_statistics,
    shares_text,
    step_lengths,
)
from pbde.mixture import LatentMixture

#: The latent-annotator mixture fits of the eq. 27 data (see the module docstring).
FITS = ("ids_copies", "no_ids_copies", "ids", "no_ids")
_LABELS = {
    "ids_copies": "with annotator IDs, the paper's recipe",
    "no_ids_copies": "without IDs, the paper's recipe",
    "ids": "with annotator IDs, weights held at ½",
    "no_ids": "without IDs, weights held at ½",
}
_COLORS = {
    "ids_copies": "tab:purple",
    "no_ids_copies": "tab:brown",
    "ids": "tab:red",
    "no_ids": "tab:blue",
}


@dataclass
class Settings(lm_mixture.Settings):
    """Settings of the latent-annotator mixture fits: those of
    :class:`pbde.experiments.lm_mixture.Settings` (models, pairs, ``adapt``, and ``steps``,
    ``lr``, ``batch_size`` now of each mixture fit) with the quick models and a larger learning
    rate by default — the run measured in ``docs/reproduce.md`` (18 minutes on a shared 2-core
    CPU, one thread) — and:

    Attributes:
        fits: which K = 2 fits to run, a non-empty subset of :data:`FITS`:
            ``"ids_copies"`` / ``"no_ids_copies"`` — the paper's recipe (appendix A.4: copies
            of π_pre, noise 1e-4, learned weights) with / without annotator IDs; ``"ids"`` /
            ``"no_ids"`` — weights held at ½ and the copies' stop logits shifted by ±``spread``.
        comparisons_per_annotator: m, comparisons labelled by each annotator of the population
            (``pairs / m`` annotators). Mini-batches with IDs hold ``batch_size // m``
            annotators.
        restarts: restarts of each fit (new noise and mini-batches; the restart with the lowest
            final objective is kept).
        spread: the ``"ids"`` and ``"no_ids"`` fits start from *whole* with every stop logit
            (``eos_bias``) raised by this much in one component and lowered in the other.
    """

    models: LanguageModelSettings = field(default_factory=quick_language_models)
    lr: float = 1.0
    samples: int = 2000
    fits: tuple[str, ...] = FITS
    comparisons_per_annotator: int = 64
    restarts: int = 3
    spread: float = 1.0


def quick() -> Settings:
    """The test suite's run: 2^12 pairs, 128 annotators × 32 comparisons, the ``"ids"`` and
    ``"no_ids"`` fits, 100 steps, one restart (half a minute on a CPU). At 2^12 pairs only the
    fit with IDs separates the annotators; the no-ID mixture needs about 2^15 (module
    docstring)."""
    return Settings(
        pairs=2**12,
        batch_size=256,
        samples=1000,
        fits=("ids", "no_ids"),
        comparisons_per_annotator=32,
        steps=100,
        restarts=1,
    )


def fast() -> Settings:
    """The measured run with one restart per fit instead of three (the restarts are most of its
    time); the kept restart is then whichever one ran, not the best of three."""
    return Settings(restarts=1)


def population_labels(
    short: pbde.densities.Density,
    long: pbde.densities.Density,
    xa: torch.Tensor,
    xb: torch.Tensor,
    *,
    comparisons_per_annotator: int,
    chunk: int,
    generator: torch.Generator,
) -> tuple[pbde.Preferences, torch.Tensor]:
    """Eq. 27 data made by a population of annotators, with their IDs.

    Pair i is labelled by annotator ``i // comparisons_per_annotator``; each annotator is a
    *short* (type 0) or a *long* (type 1) annotator with probability ½ and labels with eq. 26.
    The pairs are i.i.d., so each comparison's annotator type is ½/½ as in eq. 27.

    Returns:
        ``(prefs, types)``: the comparisons with ``annotator_id`` and each annotator's type.
    """
    owner = torch.arange(xa.shape[0]) // comparisons_per_annotator
    types = torch.randint(0, 2, (int(owner[-1]) + 1,), generator=generator)
    kind = types[owner]
    y = torch.empty(xa.shape[0])
    for t, density in enumerate((short, long)):
        index = (kind == t).nonzero().squeeze(-1)
        if index.numel():
            annotator = pbde.Annotator(density, eq26(density))
            labelled = label_in_chunks(
                annotator, xa[index], xb[index], chunk=chunk, generator=generator
            )
            y[index] = labelled.y
    return pbde.Preferences(xa, xb, y, annotator_id=owner), types


def label_identifiability(
    logits: torch.Tensor, prefs: pbde.Preferences, types: torch.Tensor
) -> dict:
    """What eq. 27 labels can tell about the two annotators who made them.

    The returned dict holds floats (nats are per comparison):

    * ``label_information``: mean KL(Bern(p̄) ‖ Bern(½)), p̄ = ½ Σ_k σ(h_k): what a label
      says at all;
    * ``gap_to_average_annotator``: mean KL(Bern(p̄) ‖ Bern(σ(½ Σ_k h_k))), the expected
      log-likelihood advantage of the annotator mixture over a *single* annotator whose Ω is
      the two annotators' average Ω: all that tells the mixture apart from that lukewarm
      annotator without IDs. For logits a ± δ it is σ''(a)² δ⁴ / (8 σ(a)(1 − σ(a))) + O(δ⁶):
      small logits hide the mixture;
    * ``kl_between_annotators``: mean KL(Bern(σ(h_0)) ‖ Bern(σ(h_1))), the evidence about a
      type that one comparison carries when the labels of an annotator are pooled (IDs);
    * ``bayes_comparison_accuracy`` and ``bayes_annotator_accuracy``: how often the true
      model's posterior names the right type, per comparison (no IDs) and per annotator
      (IDs) — ceilings for any fitted model's "who is who";
    * ``truth_objective``: ``{"comparison": …, "annotator": …}``, −log p(y) / n of the true
      annotators with weights ½ under each latent structure, as
      :meth:`pbde.mixture.LatentMixture.objective` computes it (flat prior, α = 1);
    * ``mean_abs_logit``: mean |h_k| of each annotator.

    Args:
        logits: the true annotators' preference logits h_k(x_A, x_B) of every comparison,
            shape ``(n, 2)`` (the two annotators weigh ½ each, as in eq. 27).
        prefs: the labels, with ``annotator_id`` (annotator j of type ``types[j]``).
        types: each annotator's type, 0 or 1, shape ``(J,)``.

    Returns:
        The dict above.
    """
    h = logits.double()
    ids = prefs.annotator_id
    kind = types[ids]
    y = prefs.y.double()[:, None]
    log_lik = y * F.logsigmoid(h) + (1 - y) * F.logsigmoid(-h)  # (n, 2): y under each type
    per_annotator = log_lik.new_zeros(types.shape[0], 2).index_add(0, ids, log_lik)
    log_half = math.log(0.5)

    def bernoulli_kl(p_logit, q_logit):
        """KL(Bern(σ(p_logit)) ‖ Bern(σ(q_logit))) in log space (saturated logits are fine)."""
        terms = [(F.logsigmoid(p_logit), F.logsigmoid(q_logit))]
        terms.append((F.logsigmoid(-p_logit), F.logsigmoid(-q_logit)))
        return sum(log_p.exp() * (log_p - log_q) for log_p, log_q in terms)

    # logit of p̄ = ½ Σ_k σ(h_k), from log p̄ and log(1 − p̄)
    average = torch.logsumexp(F.logsigmoid(h), -1) - torch.logsumexp(F.logsigmoid(-h), -1)
    return {
        "label_information": float(bernoulli_kl(average, torch.zeros_like(average)).mean()),
        "gap_to_average_annotator": float(bernoulli_kl(average, h.mean(-1)).mean()),
        "kl_between_annotators": float(bernoulli_kl(h[:, 0], h[:, 1]).mean()),
        "bayes_comparison_accuracy": float((log_lik.argmax(-1) == kind).double().mean()),
        "bayes_annotator_accuracy": float((per_annotator.argmax(-1) == types).double().mean()),
        "truth_objective": {
            "comparison": -float(torch.logsumexp(log_lik + log_half, -1).mean()),
            "annotator": -float(torch.logsumexp(per_annotator + log_half, -1).sum()) / len(prefs),
        },
        "mean_abs_logit": [float(v) for v in h.abs().mean(0)],
    }


def _who_is_who(assigned: torch.Tensor, truth: torch.Tensor) -> float:
    """Accuracy of ``assigned`` against ``truth`` for the best permutation of the labels."""
    return max(
        float((torch.tensor(perm)[assigned] == truth).double().mean())
        for perm in itertools.permutations(range(2))
    )


def _ml_weights(
    responsibilities: torch.Tensor, weights: torch.Tensor, iterations: int = 1000
) -> torch.Tensor:
    """The maximum-likelihood weights of fitted components, held fixed: EM on the weights
    alone (w ← mean responsibility), the per-unit likelihoods being responsibilities / weights
    up to a per-unit constant."""
    likelihood = responsibilities.double() / weights.double()
    w = weights.double()
    for _ in range(iterations):
        posterior = w * likelihood
        w = (posterior / posterior.sum(-1, keepdim=True)).mean(0)
    return w


def _check_settings(settings: Settings) -> None:
    unknown = [name for name in settings.fits if name not in FITS]
    if isinstance(settings.fits, str) or unknown or not settings.fits:
        raise ValueError(
            f"'fits' must be a non-empty tuple of names from {FITS}. Got {settings.fits!r}."
        )
    m = settings.comparisons_per_annotator
    if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= settings.pairs:
        raise ValueError(
            f"'comparisons_per_annotator' must be an int in [1, pairs={settings.pairs}]. Got {m!r}."
        )
    if not settings.spread >= 0:
        raise ValueError(f"'spread' must be >= 0. Got {settings.spread!r}.")
    check_adapt(settings.adapt)


def _latent_fits(
    settings: Settings, whole, short, long, xa, xb, progress
) -> tuple[dict, dict, dict]:
    """The latent-annotator mixture fits of eq. 27 data (module docstring): their metrics,
    their mixture densities Σ_k w_k π_k, and ``settings.samples`` draws of each component
    (keyed ``"<fit>/<k>"``; :func:`run` adds their ``component_bin_fractions``)."""
    generator = torch.Generator().manual_seed(settings.seed + 1)  # labels: a stream of their own
    m = settings.comparisons_per_annotator
    prefs, types = population_labels(
        short,
        long,
        xa,
        xb,
        comparisons_per_annotator=m,
        chunk=settings.label_chunk,
        generator=generator,
    )
    kind = types[prefs.annotator_id]
    annotators = [pbde.Annotator(d, eq26(d)) for d in (short, long)]
    logits = torch.stack(
        [omega_in_chunks(a, xa) - omega_in_chunks(a, xb) for a in annotators], dim=-1
    )
    identifiability = label_identifiability(logits, prefs, types)
    identifiability["annotators"] = int(types.shape[0])
    identifiability["long_annotators"] = int(types.sum())

    def component(shift: float) -> pbde.Annotator:
        density = trainable_copy(whole, only_length=settings.adapt == "length")
        with torch.no_grad():
            density.eos_bias.add_(shift)
        return pbde.Annotator(density, eq26(density))

    spread = settings.spread
    recipes = {  # latent structure, initial stop-logit shifts, learned weights
        "ids_copies": ("annotator", (0.0, 0.0), True),
        "no_ids_copies": ("comparison", (0.0, 0.0), True),
        "ids": ("annotator", (spread, -spread), False),
        "no_ids": ("comparison", (spread, -spread), False),
    }
    fits, mixtures, component_draws = {}, {}, {}
    for name in settings.fits:
        latent, shifts, learn_weights = recipes[name]
        model = LatentMixture(
            [component(shift) for shift in shifts], latent=latent, learn_weights=learn_weights
        )
        with_ids = latent == "annotator"
        data = prefs if with_ids else pbde.Preferences(xa, xb, prefs.y)
        result = model.fit(
            data,
            steps=settings.steps,
            lr=settings.lr,
            batch_size=max(1, settings.batch_size // m) if with_ids else settings.batch_size,
            restarts=settings.restarts,
            noise=1e-4,  # the paper's symmetry breaking (appendix A.4)
            seed=settings.seed,
            progress=progress,
        )
        model.requires_grad_(False)
        with torch.no_grad():
            responsibilities = model.responsibilities(data)
        assigned = responsibilities.argmax(-1)
        mixtures[name] = Mixture(model.densities, model.weights.detach())
        for k, density in enumerate(model.densities):
            component_draws[f"{name}/{k}"] = density.sample(settings.samples, generator=generator)
        fits[name] = {
            "latent": latent,
            "learn_weights": learn_weights,
            "initial_shifts": list(shifts),
            "weights": model.weights.detach().tolist(),
            "ml_weights": _ml_weights(responsibilities, model.weights.detach()).tolist(),
            "objective": result.restart_objectives[result.best_restart],
            "restart_objectives": list(result.restart_objectives),
            "truth_objective": identifiability["truth_objective"][latent],
            "who_is_who_accuracy": _who_is_who(assigned, types if with_ids else kind),
            "fit_seconds": result.seconds,
        }
    return {"fits": fits, "identifiability": identifiability}, mixtures, component_draws


def run(settings: Settings | None = None, *, progress: bool | None = None) -> Result:
    """Pretrain (or reuse) the three models, label pairs from *whole* by a population of eq. 26
    annotators (eq. 27 per comparison), and fit the K = 2 latent-annotator mixtures of
    ``settings.fits`` (default settings: the module's :class:`Settings`).

    Returns:
        :class:`~pbde.experiments.base.Result` named ``lm-mixture-latent`` whose ``metrics``
        hold ``fits[fit]``: ``weights``, ``ml_weights`` (the maximum-likelihood weights of the
        fitted components), ``objective`` (final −(log p(y | w) + log Dir(w)) / n of the kept
        restart; ``restart_objectives``) beside ``truth_objective`` (the true pair of
        annotators, weights ½), ``who_is_who_accuracy`` (argmax responsibility against the
        true type, per comparison without IDs and per annotator with IDs, best label
        permutation), ``component_bin_fractions`` and ``fit_seconds``; ``identifiability``:
        what the labels can tell, from the true annotators' logits
        (:func:`label_identifiability`); and ``bin_fractions``, ``mean_length`` and
        ``length_histogram`` of each fitted mixture Σ_k w_k π_k (keyed by fit), of ``whole``
        and of π_mix (``density_mixture_target``). Its plot shows the mixtures' and the
        components' length distributions.
    """
    settings = settings if settings is not None else Settings()
    _check_settings(settings)
    began = time.perf_counter()
    lms = pretrained_language_models(settings.models, progress=progress)
    whole, short, long = (lms.models[name] for name in MODELS)
    generator = torch.Generator().manual_seed(settings.seed)
    xa, xb = pbde.sample_pairs(whole, settings.pairs, generator=generator)
    metrics, mixtures, component_draws = _latent_fits(
        settings, whole, short, long, xa, xb, progress
    )
    densities = {"whole": whole, "density_mixture_target": Mixture([short, long], [0.5, 0.5])}
    densities.update(mixtures)
    # the components' draws are those their bin fractions were computed from
    draws = {name: d.sample(settings.samples, generator=generator) for name, d in densities.items()}
    draws.update(component_draws)
    stats = length_statistics(draws, settings.models)  # of the mixtures and their components
    for key, values in stats.items():
        metrics[key] = {name: values[name] for name in densities}
    for name, fit in metrics["fits"].items():
        fit["component_bin_fractions"] = [stats["bin_fractions"][f"{name}/{k}"] for k in range(2)]

    # the components' histograms are drawn, not kept in the metrics
    figure = {"component_histograms": {
        f"{name}/{k}": stats["length_histogram"][f"{name}/{k}"] for name in mixtures for k in range(2)
    }}  # fmt: skip
    return Result(
        experiment="lm-mixture-latent",
        settings=settings,
        metrics=metrics,
        seconds=time.perf_counter() - began,
        data={"mixtures": mixtures, "pairs": (xa, xb)},
        figure=figure,
        draw=draw,
    )


def draw(report: dict, path) -> None:
    """Draw the fits from a report (:meth:`Result.report` or the JSON file): one panel per fit,
    with the length histograms of the fitted mixture, of its two components and of π_mix."""
    plt = pyplot()
    metrics, settings = report["metrics"], report["settings"]
    histograms = {**metrics["length_histogram"], **report["figure"]["component_histograms"]}
    samples, fits = settings["samples"], list(metrics["fits"])
    columns = min(len(fits), 2)
    rows = -(-len(fits) // columns)
    with page_style():
        fig, axes = plt.subplots(rows, columns, figsize=(PAGE_WIDTH, 3.9 * rows + 0.9),
                                 squeeze=False, sharex=True, layout="constrained")  # fmt: skip
        for ax, name in zip(axes.flat, fits, strict=False):
            fit = metrics["fits"][name]
            color = _COLORS[name]
            step_lengths(ax, histograms["density_mixture_target"], samples, color="black",
                         ls=":", lw=1.5, label=r"$\pi_{\rm mix}$ = ½(short + long): "
                         + shares_text(metrics["bin_fractions"]["density_mixture_target"]))  # fmt: skip
            step_lengths(ax, histograms[name], samples, color=color, lw=3, alpha=0.6,
                         label="fitted mixture: " + shares_text(metrics["bin_fractions"][name]))  # fmt: skip
            for k, (shade, linestyle) in enumerate((("0.15", "-"), ("0.5", "--"))):
                step_lengths(ax, histograms[f"{name}/{k}"], samples, color=shade, ls=linestyle,
                             lw=1.1, label=f"component {k + 1} (w = {fit['weights'][k]:.2f}): "
                             + shares_text(fit["component_bin_fractions"][k]))  # fmt: skip
            finish_length_axes(ax, settings["models"], _LABELS[name])
            ax.legend(loc="upper left", fontsize=9)
        for ax in axes.flat[len(fits) :]:
            ax.axis("off")
        for ax in axes[:-1].flat:
            ax.set_xlabel("")
        for ax in axes[:, 0]:
            ax.set_ylabel(f"fraction of {samples} samples")
        identifiability = metrics["identifiability"]
        fig.suptitle(
            f"Two-annotator latent mixtures fitted to eq. 27 data: {settings['pairs']} pairs, "
            f"{identifiability['annotators']} annotators × {settings['comparisons_per_annotator']} "
            "comparisons\nS/M/L: the fractions of short, medium and long sentences (bins between "
            "the grey lines)"
        )
        fig.savefig(path)
        plt.close(fig)
