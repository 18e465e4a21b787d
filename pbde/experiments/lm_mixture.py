"""Annotator mixture vs density mixture for a language model (Dumoulin et al. §5.2, Fig. 6).

The *whole*, *short* and *long* language models of :mod:`pbde.experiments.length_bias` are
trained by maximum likelihood; ``pairs`` pairs of sentences are sampled from *whole* (π_pre)
and labelled in two ways, both with the length-normalized rule (eq. 26):

* **annotator mixture** (eq. 27): for each pair, *short* or *long* is drawn with probability ½
  and labels it — two annotators, :class:`pbde.MixtureAnnotator`;
* **density mixture** (eq. 28): one annotator whose density is π_mix = ½ (π_short + π_long) —
  :class:`pbde.Annotator` of :class:`pbde.densities.Mixture`.

A copy of *whole* is adapted on each data set under the single-annotator length-normalized model
(Ω_θ = log π_θ(x) / |x|, BCE; :func:`pbde.fit`). On the density-mixture data the model is well
specified and Theorem 2 says the optimum is π_mix itself: medium lengths, which neither
*short* nor *long* produces, disappear and the lengths become bimodal. On the annotator-mixture
data it is misspecified and, as with the "lukewarm coffee" of §5.1, it keeps producing medium
lengths that neither annotator samples. The metrics are the fractions of sampled sentences in
the short / medium / long bins of Table 2 for each model.

By default (``adapt="length"``) the adaptation trains only *whole*'s length parameters
(:attr:`~pbde.densities.Autoregressive.eos_bias`): the next-token distribution stays *whole*'s,
which is also that of *short* and *long* (see :mod:`pbde.experiments.length_bias`), so π_mix is
(nearly) in the model family and the question is only which lengths the preferences select.
With ``adapt="all"`` every parameter is trained, as in the paper; at this corpus size the model
then fits the content of the sentence pairs better than the true process does and its length
distribution drifts.

Two properties of eq. 26 that this experiment runs into, worth knowing when fitting length-
normalized preferences:

* The split of mass between short and long sentences is only weakly identified: moving mass
  ``a`` between them changes a preference logit by about log(a)/|x_A| − log(1 − a)/|x_B|, a
  few hundredths, so it drifts with the number of steps, while the removal of medium lengths is
  a strong signal.
* Mass on lengths that the pairs never show is free, and it is not neutral: raising the
  probability of stopping at position 1 adds log(1 − h_1)/|x| to Ω of every longer sentence, a
  −c/|x| term that fits the *long* annotator's dislike of short sentences. Without a minimum
  length, 300 steps of the eq. 27 fit moved 95% of the samples to sentences of 1 to 3 tokens
  (mean length 3.1), none of which the proposal produces. The models therefore have
  ``min_length`` set to the corpus's shortest sentence (3 tokens with EOS).

The paper's open problem — fitting the eq. 27 data with a latent-annotator mixture, without and
with annotator IDs — is :mod:`pbde.experiments.lm_latent` (``pbde reproduce lm-mixture-latent``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

import pbde
from pbde.densities import Mixture
from pbde.densities.sequence import sequence_lengths
from pbde.experiments.base import PAGE_WIDTH, Result, page_style, pyplot
from pbde.experiments.length_bias import (
    MODELS,
    LanguageModelSettings,
    bin_fractions,
    fast_language_models,
    pretrained_language_models,
    quick_language_models,
    trainable_copy,
)

ADAPTED = ("annotator_mixture", "density_mixture")


@dataclass
class Settings:
    """Settings of the Fig. 6 experiment.

    Attributes:
        models: the corpus and the three language models (shared with ``length-bias``).
        pairs: pairs sampled from *whole* and labelled (the paper: 2^15).
        adapt: which parameters of *whole* the adaptation trains: ``"length"`` (its
            ``eos_bias`` alone, the default; see the module docstring) or ``"all"``.
        steps: Adam steps of each adaptation.
        lr: peak learning rate of the adaptations (cosine decay).
        batch_size: pairs per step.
        samples: sentences sampled from each model for the length histograms.
        label_chunk: pairs labelled at a time (bounds the memory of the labelling).
        seed: seed of the pairs, the labels, the mini-batches and the samples.
    """

    models: LanguageModelSettings = field(default_factory=LanguageModelSettings)
    pairs: int = 2**15
    adapt: str = "length"
    steps: int = 300
    lr: float = 0.1
    batch_size: int = 512
    samples: int = 4000
    label_chunk: int = 2048
    seed: int = 2


def quick() -> Settings:
    """Small models, 2^12 pairs and few steps (tens of seconds on a CPU)."""
    return Settings(
        models=quick_language_models(), pairs=2**12, steps=150, lr=0.1, batch_size=256, samples=2000
    )


def fast() -> Settings:
    """A faster recipe (about a third of the default's time): the fast models of
    :func:`pbde.experiments.length_bias.fast`, 2^13 pairs."""
    return Settings(models=fast_language_models(), pairs=2**13, batch_size=256, samples=2000)


def label_in_chunks(
    annotator: pbde.PreferenceProcess,
    xa: torch.Tensor,
    xb: torch.Tensor,
    *,
    chunk: int,
    generator: torch.Generator,
) -> pbde.Preferences:
    """``annotator.label`` over many pairs, ``chunk`` pairs at a time (same randomness as one
    call per chunk), joined into one :class:`~pbde.Preferences`."""
    parts = [
        annotator.label(xa[i : i + chunk], xb[i : i + chunk], generator=generator)
        for i in range(0, xa.shape[0], chunk)
    ]
    ids = None
    if parts[0].annotator_id is not None:
        ids = torch.cat([p.annotator_id for p in parts])
    return pbde.Preferences(xa, xb, torch.cat([p.y for p in parts]), annotator_id=ids)


def check_adapt(adapt: str) -> None:
    """Raise ``ValueError`` unless ``adapt`` names what an adaptation trains."""
    if adapt not in ("length", "all"):
        raise ValueError(f"'adapt' must be 'length' or 'all'. Got {adapt!r}.")


def eq26(density) -> pbde.PBDE:
    """The length-normalized Luce rule (eq. 26) for ``density``'s sequences."""
    return pbde.length_normalized(density.length)


def length_statistics(draws: dict, models: LanguageModelSettings) -> dict:
    """``bin_fractions``, ``mean_length`` and ``length_histogram`` (counts of each length
    1 … ``models.max_length``) of each set of sampled sequences in ``draws``."""
    lengths = {name: sequence_lengths(x) for name, x in draws.items()}
    return {
        "bin_fractions": {name: bin_fractions(x, models) for name, x in draws.items()},
        "mean_length": {name: float(n.double().mean()) for name, n in lengths.items()},
        "length_histogram": {
            name: torch.bincount(n, minlength=models.max_length + 1)[1:].tolist()
            for name, n in lengths.items()
        },
    }


def shares_text(shares: dict) -> str:
    """A legend's "S/M/L .59/.24/.17": the fractions in the short, medium and long bins."""
    return "S/M/L " + "/".join(
        f"{shares[b]:.2f}".removeprefix("0") for b in ("short", "medium", "long")
    )


def step_lengths(ax, histogram: list, samples: int, **style) -> None:
    """Draw a length histogram (counts of lengths 1, 2, …) as fractions of ``samples``."""
    share = torch.tensor(histogram, dtype=torch.float64) / samples
    ax.step(torch.arange(1, len(histogram) + 1).numpy(), share.numpy(), where="mid", **style)


def finish_length_axes(ax, models: dict, title: str) -> None:
    """The short | medium | long bin edges in grey (``models``: the report's
    ``settings["models"]``), the x label, the title and the legend."""
    for edge in (models["short_max"] + 0.5, models["long_min"] - 0.5):
        ax.axvline(edge, color="0.75", lw=1, zorder=0)
    ax.set_xlabel("sentence length (tokens, end of sentence included)")
    ax.set_title(title)
    ax.set_ylim(0, 1.4 * ax.get_ylim()[1])  # room for the legend above the bars
    ax.legend(loc="upper right")


def run(settings: Settings | None = None, *, progress: bool | None = None) -> Result:
    """Pretrain (or reuse) the three models, label pairs by eq. 27 and eq. 28, adapt *whole* on
    each, and compare the sampled lengths (default settings: the module's :class:`Settings`).

    Returns:
        :class:`~pbde.experiments.base.Result` whose ``metrics`` hold, for ``whole``, ``short``,
        ``long``, ``density_mixture_target`` (π_mix, eq. 28's optimum), ``annotator_mixture``
        and ``density_mixture`` (the two adapted models): ``bin_fractions[model]`` (fractions
        of samples in the ``short`` / ``medium`` / ``long`` bins) and ``mean_length[model]``;
        also ``fit_loss`` (final BCE of each adaptation), ``fit_seconds``, ``mean_label`` and
        ``length_histogram[model]`` (counts of each length 1 … max_length).
    """
    settings = settings if settings is not None else Settings()
    check_adapt(settings.adapt)
    began = time.perf_counter()
    lms = pretrained_language_models(settings.models, progress=progress)
    whole, short, long = (lms.models[name] for name in MODELS)
    generator = torch.Generator().manual_seed(settings.seed)
    xa, xb = pbde.sample_pairs(whole, settings.pairs, generator=generator)

    annotators = {
        # eq. 27: two annotators, one drawn per comparison
        "annotator_mixture": pbde.MixtureAnnotator(
            [pbde.Annotator(short, eq26(short)), pbde.Annotator(long, eq26(long))], [0.5, 0.5]
        ),
        # eq. 28: one annotator whose density is the mixture
        "density_mixture": pbde.Annotator(
            Mixture([short, long], [0.5, 0.5]), pbde.length_normalized(sequence_lengths)
        ),
    }
    adapted, fit_loss, fit_seconds, mean_label = {}, {}, {}, {}
    for name, annotator in annotators.items():
        prefs = label_in_chunks(annotator, xa, xb, chunk=settings.label_chunk, generator=generator)
        mean_label[name] = float(prefs.y.double().mean())
        density = trainable_copy(whole, only_length=settings.adapt == "length")
        model = pbde.Annotator(density, eq26(density))
        result = pbde.fit(
            model,
            prefs,
            steps=settings.steps,
            lr=settings.lr,
            batch_size=settings.batch_size,
            seed=settings.seed,
            progress=progress,
        )
        density.requires_grad_(False)
        adapted[name] = density
        fit_loss[name] = float(result.losses[-min(20, settings.steps) :].mean())
        fit_seconds[name] = result.seconds
    target = Mixture([short, long], [0.5, 0.5])
    densities = {**lms.models, "density_mixture_target": target, **adapted}
    draws = {
        name: density.sample(settings.samples, generator=generator)
        for name, density in densities.items()
    }
    metrics = {
        **length_statistics(draws, settings.models),
        "fit_loss": fit_loss,
        "fit_seconds": fit_seconds,
        "mean_label": mean_label,
        "mle_seconds": lms.seconds,
    }

    return Result(
        experiment="lm-mixture",
        settings=settings,
        metrics=metrics,
        seconds=time.perf_counter() - began,
        data={"models": densities, "samples": draws, "pairs": (xa, xb)},
        draw=draw,
    )


_STYLES = {
    "whole": (r"whole ($\pi_{\rm ref}$, all sentences)", "0.45", "-"),
    "short": ("short", "tab:blue", "-"),
    "long": ("long", "tab:red", "-"),
    "density_mixture_target": (
        r"$\pi_{\rm mix}$ = ½ (short + long), the eq. 28 optimum",
        "black",
        ":",
    ),
    "annotator_mixture": ("whole adapted on annotator-mixture data (eq. 27)", "tab:orange", "-"),
    "density_mixture": ("whole adapted on density-mixture data (eq. 28)", "tab:green", "-"),
}


def draw(report: dict, path) -> None:
    """Draw Fig. 6 from a report (:meth:`Result.report` or the JSON file): the length
    histograms of the pre-trained models (top) and of the adapted ones (bottom)."""
    plt = pyplot()
    metrics, settings = report["metrics"], report["settings"]
    panels = (
        (("whole", "short", "long"), "The pre-trained models (maximum likelihood)"),
        (("annotator_mixture", "density_mixture", "density_mixture_target"),
         "whole adapted by the length-normalized loss"),
    )  # fmt: skip
    with page_style():
        fig, axes = plt.subplots(2, 1, figsize=(PAGE_WIDTH, 7.8), sharex=True,
                                 layout="constrained")  # fmt: skip
        for ax, (names, title) in zip(axes, panels, strict=True):
            for name in names:
                label, color, linestyle = _STYLES[name]
                label += ": " + shares_text(metrics["bin_fractions"][name])
                step_lengths(ax, metrics["length_histogram"][name], settings["samples"],
                             color=color, ls=linestyle, lw=1.8, label=label)  # fmt: skip
            finish_length_axes(ax, settings["models"], title)
            ax.set_ylabel(f"fraction of {settings['samples']} samples")
        axes[0].set_xlabel("")
        fig.suptitle("Sentence lengths (Dumoulin et al., Fig. 6)\nS/M/L: the fractions of short, "
                     "medium and long sentences (bins between the grey lines)")  # fmt: skip
        fig.savefig(path)
        plt.close(fig)
