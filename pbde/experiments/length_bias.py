"""Length bias of the Luce rule for autoregressive models (Dumoulin et al. §5.2, Table 2).

Three GRU language models (:class:`~pbde.densities.Autoregressive`) are trained by maximum
likelihood on English sentences of Python's documentation (:mod:`pbde.text`: offline, ships with
CPython): *whole* (all sentences of at most ``max_length`` tokens, EOS included), *short* (at
most ``short_max`` tokens) and *long* (``long_min`` to ``max_length`` tokens) — the paper's
LM1B split (< 50, 1–20, 30–50 tokens), at laptop scale.

One deviation from the paper, forced by the corpus size (≈ 2 800 sentences here, 30 million in
LM1B): *short* and *long* are not trained from scratch. Trained so on 1 600 and 500 sentences
they are much worse language models than *whole*, and the annotators' preferences are then
driven by how fluent each sentence is rather than by its length. Instead they are copies of
*whole* whose length parameters (:attr:`~pbde.densities.Autoregressive.eos_bias`, the log-odds
of stopping at each position) alone are fitted by maximum likelihood to the short and to the
long sentences, with a large learning rate so that they get close to the MLE of lengths never
seen (probability → 0: going on past 20 tokens for *short*, stopping before 30 for *long*). The three models share one next-token distribution and differ in when
they stop — the property the experiment is about.

Sequences sampled from *whole* are binned by length into S (≤ ``short_max``), M (between) and L
(≥ ``long_min``). For each model as a synthetic annotator and each behavior — the Luce rule
(eq. 9, Ω = log p) and the length-normalized rule (eq. 26, Ω = log p / |x|) — the table holds
P(X ≻ Y), the average of P(x_A ≻ x_B) = σ(Ω(x_A) − Ω(x_B)) over all x_A in bin X and x_B in
bin Y. The paper's finding: under eq. 9 *every* annotator prefers short sequences (a product of
more per-token probabilities is smaller), even *long*, which never samples one; under eq. 26
the *long* annotator prefers long sequences and the *short* annotator short ones.

:class:`LanguageModelSettings` and :func:`pretrained_language_models` are shared with
:mod:`pbde.experiments.lm_mixture`.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field

import torch

import pbde
from pbde.densities.sequence import Autoregressive, sequence_lengths
from pbde.experiments.base import Result
from pbde.text import WordTokenizer, english_sentences

MODELS = ("whole", "short", "long")
BINS = ("short", "medium", "long")
BEHAVIORS = ("luce", "length_normalized")  # eq. 9 and eq. 26
COMPARISONS = (("S", "M"), ("S", "L"), ("M", "L"))

#: Table 2 of Dumoulin et al. (LM1B), for comparison in the printed table.
PAPER_TABLE_2 = {
    "luce": {
        "whole": {"P(S>M)": 0.9094, "P(S>L)": 0.9928, "P(M>L)": 0.9175},
        "short": {"P(S>M)": 0.9906, "P(S>L)": 1.0000, "P(M>L)": 0.9945},
        "long": {"P(S>M)": 0.9190, "P(S>L)": 0.9729, "P(M>L)": 0.7873},
    },
    "length_normalized": {
        "whole": {"P(S>M)": 0.4042, "P(S>L)": 0.3621, "P(M>L)": 0.4554},
        "short": {"P(S>M)": 0.9540, "P(S>L)": 1.0000, "P(M>L)": 0.9783},
        "long": {"P(S>M)": 0.2489, "P(S>L)": 0.0533, "P(M>L)": 0.1575},
    },
}


@dataclass
class LanguageModelSettings:
    """The corpus and the three language models *whole*, *short*, *long*.

    Attributes:
        vocab_size: word vocabulary, ``<eos>`` and ``<unk>`` included (:class:`~pbde.text.WordTokenizer`).
        max_length: longest sentence kept, in tokens with EOS (the paper: < 50); also the
            models' maximum length.
        short_max: *short* is trained on sentences of at most this many tokens (paper: 20); the
            S bin is ``length ≤ short_max``.
        long_min: *long* is trained on sentences of at least this many tokens (paper: 30); the L
            bin is ``length ≥ long_min``, M is in between.
        embedding_dim: token and position embedding size of the GRUs.
        hidden_size: GRU state size.
        steps: optimization steps of *whole*'s maximum-likelihood training.
        lr: its peak learning rate (Adam, cosine decay).
        length_steps: steps of *short*'s and *long*'s maximum-likelihood training, which
            fits only the length parameters (``eos_bias``) of a copy of *whole*.
        length_lr: their peak learning rate.
        batch_size: sentences per step.
        seed: seed of the initializations and of the mini-batches.
    """

    vocab_size: int = 500
    max_length: int = 50
    short_max: int = 20
    long_min: int = 30
    embedding_dim: int = 64
    hidden_size: int = 128
    steps: int = 1500
    lr: float = 3e-3
    length_steps: int = 300
    length_lr: float = 3.0
    batch_size: int = 64
    seed: int = 0


@dataclass
class Settings:
    """Settings of the Table 2 experiment.

    Attributes:
        models: the corpus and the three language models.
        samples: sequences sampled from *whole* and binned by length; P(X ≻ Y) averages over
            every pair of a bin X sample and a bin Y sample.
        seed: seed of the sampling.
    """

    models: LanguageModelSettings = field(default_factory=LanguageModelSettings)
    samples: int = 3000
    seed: int = 1


def quick() -> Settings:
    """Small models and few steps (tens of seconds on a CPU); the qualitative pattern holds."""
    return Settings(models=quick_language_models(), samples=1000)


def fast() -> Settings:
    """A faster recipe (about a third of the default's time): smaller models, fewer steps."""
    return Settings(models=fast_language_models(), samples=2000)


def fast_language_models() -> LanguageModelSettings:
    """The language models of both fast experiments."""
    return LanguageModelSettings(vocab_size=300, embedding_dim=32, hidden_size=64, steps=800)


def quick_language_models() -> LanguageModelSettings:
    """The reduced language models used by both quick experiments."""
    return LanguageModelSettings(
        vocab_size=120, embedding_dim=16, hidden_size=32, steps=200, lr=1e-2, batch_size=64
    )


# -- the three language models --------------------------------------------------------------


@dataclass
class LanguageModels:
    """What :func:`pretrained_language_models` returns.

    Attributes:
        tokenizer: the word tokenizer of the corpus.
        corpus: every sentence of at most ``max_length`` tokens, shape ``(n, width)``.
        models: ``{"whole": …, "short": …, "long": …}`` trained language models.
        losses: final mean negative log-likelihood per sentence of each model (nats).
        seconds: wall time of the training of each model.
    """

    tokenizer: WordTokenizer
    corpus: torch.Tensor
    models: dict[str, Autoregressive]
    losses: dict[str, float]
    seconds: dict[str, float]


_CACHE: dict[tuple, LanguageModels] = {}


def pretrained_language_models(
    settings: LanguageModelSettings, *, progress: bool | None = None
) -> LanguageModels:
    """Train *whole*, *short* and *long* by maximum likelihood (or reuse them).

    The result of the last call is kept in memory, keyed by ``settings``: the two experiments
    run in one process (the tests, ``pbde reproduce``) train the models once. Callers must not
    train the returned models in place (copy them first).
    """
    key = tuple(sorted(asdict(settings).items()))
    if key in _CACHE:
        return _CACHE[key]
    if not 1 <= settings.short_max < settings.long_min <= settings.max_length:
        raise ValueError(
            "The lengths must satisfy 1 <= short_max < long_min <= max_length. Got "
            f"short_max={settings.short_max}, long_min={settings.long_min}, "
            f"max_length={settings.max_length}."
        )
    sentences = english_sentences()
    tokenizer = WordTokenizer(sentences, settings.vocab_size)
    corpus = tokenizer.encode(sentences, max_length=settings.max_length)
    lengths = sequence_lengths(corpus)
    subsets = {
        "whole": corpus,
        "short": corpus[lengths <= settings.short_max],
        "long": corpus[lengths >= settings.long_min],
    }
    models, losses, seconds = {}, {}, {}
    for index, (name, data) in enumerate(subsets.items()):
        if name == "whole":
            torch.manual_seed(settings.seed)
            model = Autoregressive(
                tokenizer.vocab_size,
                settings.max_length,
                eos=tokenizer.EOS,
                min_length=int(lengths.min()),  # the shortest sentence: no mass below it
                embedding_dim=settings.embedding_dim,
                hidden_size=settings.hidden_size,
            )
            steps = settings.steps
        else:  # whole's content model, the length distribution of the subset
            model = trainable_copy(models["whole"], only_length=True)
            steps = settings.length_steps
        result = model.fit_mle(
            data,
            steps=steps,
            lr=settings.lr if name == "whole" else settings.length_lr,
            batch_size=settings.batch_size,
            seed=settings.seed + index,
            progress=progress,
        )
        model.requires_grad_(False)
        models[name] = model
        losses[name] = float(result.losses[-min(20, steps) :].mean())
        seconds[name] = result.seconds
    _CACHE.clear()
    _CACHE[key] = LanguageModels(tokenizer, corpus, models, losses, seconds)
    return _CACHE[key]


def trainable_copy(model: Autoregressive, *, only_length: bool = False) -> Autoregressive:
    """A copy of a pretrained model whose parameters can be trained: all of them, or with
    ``only_length`` its ``eos_bias`` alone (the length distribution; the next-token
    distribution given that the sentence goes on stays the same)."""
    clone = copy.deepcopy(model)
    clone.requires_grad_(not only_length)
    clone.eos_bias.requires_grad_(True)
    return clone


def length_bins(lengths: torch.Tensor, settings: LanguageModelSettings) -> dict[str, torch.Tensor]:
    """Boolean masks ``{"S", "M", "L"}`` of the length bins of Table 2."""
    return {
        "S": lengths <= settings.short_max,
        "M": (lengths > settings.short_max) & (lengths < settings.long_min),
        "L": lengths >= settings.long_min,
    }


def bin_fractions(x: torch.Tensor, settings: LanguageModelSettings) -> dict[str, float]:
    """Fractions of the sequences ``x`` in the short, medium and long bins."""
    bins = length_bins(sequence_lengths(x), settings)
    return {name: float(bins[key].double().mean()) for name, key in zip(BINS, "SML", strict=True)}


def behaviors(density: Autoregressive) -> dict[str, pbde.PBDE]:
    """Eq. 9 (Luce) and eq. 26 (length-normalized, f = 1/|x|) for ``density``'s sequences."""
    return {"luce": pbde.luce(), "length_normalized": pbde.length_normalized(density.length)}


def omega_in_chunks(annotator: pbde.Annotator, x: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Ω(x) of an annotator over many sequences, a chunk at a time, without gradient."""
    with torch.no_grad():
        return torch.cat([annotator.omega(x[i : i + chunk]) for i in range(0, x.shape[0], chunk)])


# -- the experiment ---------------------------------------------------------------------------


def run(settings: Settings | None = None, *, progress: bool | None = None) -> Result:
    """Train the three models, sample from *whole*, and compute Table 2 (default settings: the
    module's :class:`Settings`).

    Returns:
        :class:`~pbde.experiments.base.Result` whose ``metrics`` hold
        ``table[behavior][annotator]["P(S>M)" | "P(S>L)" | "P(M>L)"]`` for behavior ``"luce"``
        (eq. 9) and ``"length_normalized"`` (eq. 26) and annotators ``"whole"``, ``"short"``,
        ``"long"``; ``bin_counts`` of the samples; each model's sampled ``bin_fractions`` and
        ``mean_length``; the final training ``mle_loss`` and ``mle_seconds``; ``paper`` (the
        paper's Table 2). No figure: :func:`table` formats the numbers.
    """
    settings = settings if settings is not None else Settings()
    began = time.perf_counter()
    lms = pretrained_language_models(settings.models, progress=progress)
    generator = torch.Generator().manual_seed(settings.seed)
    samples = lms.models["whole"].sample(settings.samples, generator=generator)
    bins = length_bins(sequence_lengths(samples), settings.models)
    empty = [name for name, mask in bins.items() if not bool(mask.any())]
    if empty:
        raise RuntimeError(
            f"No sample of 'whole' fell in the bin(s) {empty}; raise 'samples' or train longer."
        )
    table = {}
    for behavior_name in BEHAVIORS:
        table[behavior_name] = {}
        for name in MODELS:
            density = lms.models[name]
            annotator = pbde.Annotator(density, behaviors(density)[behavior_name])
            omega = omega_in_chunks(annotator, samples).double()
            row = {}
            for x_bin, y_bin in COMPARISONS:
                logits = omega[bins[x_bin]][:, None] - omega[bins[y_bin]][None, :]
                row[f"P({x_bin}>{y_bin})"] = float(torch.sigmoid(logits).mean())
            table[behavior_name][name] = row
    fractions, mean_length = {}, {}
    for name in MODELS:
        drawn = lms.models[name].sample(settings.samples, generator=generator)
        fractions[name] = bin_fractions(drawn, settings.models)
        mean_length[name] = float(sequence_lengths(drawn).double().mean())
    metrics = {
        "table": table,
        "bin_counts": {key: int(mask.sum()) for key, mask in bins.items()},
        "bin_fractions": fractions,
        "mean_length": mean_length,
        "mle_loss": lms.losses,
        "mle_seconds": lms.seconds,
        "corpus_sentences": int(lms.corpus.shape[0]),
        "paper": PAPER_TABLE_2,
    }
    return Result(
        experiment="length-bias",
        settings=settings,
        metrics=metrics,
        seconds=time.perf_counter() - began,
        plot=None,
        data={"models": lms.models, "tokenizer": lms.tokenizer, "samples": samples},
    )


def table(metrics: dict) -> str:
    """Table 2 as text: one row per annotator, eq. 9 and eq. 26 side by side (paper in [ ])."""
    head = ["annotator"] + [f"P({x}>{y}) eq.{eq}" for x, y in COMPARISONS for eq in ("9", "26")]
    lines = ["  ".join(f"{h:>20}" if i else f"{h:<9}" for i, h in enumerate(head))]
    for name in MODELS:
        cells = [f"{name:<9}"]
        for x, y in COMPARISONS:
            for behavior_name in BEHAVIORS:
                key = f"P({x}>{y})"
                ours = metrics["table"][behavior_name][name][key]
                paper = PAPER_TABLE_2[behavior_name][name][key]
                cells.append(f"{ours:>11.4f} [{paper:.4f}]")
        lines.append("  ".join(cells))
    return "\n".join(lines)
