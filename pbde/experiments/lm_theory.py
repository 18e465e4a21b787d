"""What will DPO do to my language model? The exact optimum on a sequence space, and fits to it.

With a small vocabulary and a maximum length the set of all sequences is finite
(:class:`~pbde.SequenceSupport`: V = 5 tokens, EOS included, at most 5 tokens, 341 sequences),
so the theory of Dumoulin et al. is exact there:

1. **π_ref.** A tiny GPT-2 built from a ``transformers`` config (nothing downloaded; without
   ``transformers``, the :class:`~pbde.densities.Autoregressive` GRU) is trained by maximum
   likelihood on a known sequence distribution (a Markov chain over tokens), with EOS forced at
   the maximum length (:class:`~pbde.densities.ForcedEOS`) so that it is normalized on the
   support. The mass the raw model puts beyond the maximum length is reported.
2. **The annotator.** A Luce annotator (eq. 9) with a known p* over sequences, p*(x) ∝
   exp(reward(x)), labels pairs drawn from π_ref.
3. **The fits.** DPO (β ∈ {0.5, 1, 4}), IPO (τ) and the length-normalized rule (eq. 26)
   fitted through :func:`pbde.fit`, each from a copy of π_ref.
4. **The theory.** Each member's optimum, computed before training by
   :func:`pbde.optimal_density` on the support: eq. 16 for DPO (π ∝ π_ref·p*^{1/β}), the
   population IPO minimizer under π_ref × π_ref pairs, and for the length-normalized rule
   Theorem 2's π = exp(|x|·(log p* − C)), which is not p*. The metric is KL(optimum ‖ fit).

The labels are the annotator's preference probabilities P(x_A ≻ x_B) (soft labels, the
expectation of its Bernoulli label) by default: the same population objective without the
label noise, so that the distance to the optimum measures the optimization and the pair sample,
not the coin flips (``labels="sampled"`` draws them).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch

import pbde
from pbde.densities import Autoregressive, ForcedEOS, Precomputed, Tabulated
from pbde.experiments.base import PAGE_WIDTH, Result, page_style, pyplot, rounded

MEMBERS = ("DPO β=0.5", "DPO β=1", "DPO β=4", "IPO", "length-normalized")


@dataclass
class Settings:
    """Settings of the sequence-space experiment.

    Attributes:
        vocab_size: tokens, EOS (id 0) included.
        max_length: most tokens of a sequence, EOS included.
        backbone: ``"gpt2"`` (a ``transformers`` GPT-2 from a config) or ``"gru"``; ``None``:
            GPT-2 when ``transformers`` is installed.
        width: embedding (GPT-2) or state (GRU) size.
        layers: transformer layers (GPT-2).
        pretrain_steps: full-batch maximum-likelihood steps of π_ref on the known distribution.
        pretrain_lr: their learning rate.
        pairs: comparisons drawn from π_ref × π_ref.
        labels: ``"soft"`` (P(x_A ≻ x_B)) or ``"sampled"`` (Bernoulli draws).
        steps: optimization steps of each preference fit.
        lr: their peak learning rate (Adam, cosine decay).
        batch_size: pairs per step.
        tau: IPO's τ.
        temperature: p* ∝ exp(reward / temperature).
        data_scale: spread of the random logits of the known distribution's transitions.
        seed: seed of the models, the pairs and the batches.
    """

    vocab_size: int = 5
    max_length: int = 5
    backbone: str | None = None
    width: int = 32
    layers: int = 2
    pretrain_steps: int = 600
    pretrain_lr: float = 1e-2
    pairs: int = 40000
    labels: str = "soft"
    steps: int = 1500
    lr: float = 3e-3
    batch_size: int = 512
    tau: float = 1.0
    temperature: float = 2.0
    data_scale: float = 0.5
    seed: int = 0


def quick() -> Settings:
    """Fewer pairs and steps: what the test suite runs (under a minute on a CPU)."""
    # π_ref pre-trained as long as at full size: with 300 steps the length-normalized member
    # ended 0.089 from its optimum (0.011 with 600, measured)
    return Settings(pretrain_steps=600, pairs=8000, steps=300, lr=1e-2, batch_size=256)


def fast() -> Settings:
    """Half the steps of the full run."""
    return Settings(pairs=20000, steps=750, lr=5e-3)


def reward(support: pbde.SequenceSupport) -> torch.Tensor:
    """The annotator's reward, log p*(x) + const, shape ``(n,)`` (float64): +1 per token 1,
    −1 per token 2, +0.5 for each repeated consecutive token, and a preference for length 3."""
    x = support.points if support.prompts is None else support.points[:, 1]
    ones = (x == 1).sum(1).double()
    twos = (x == 2).sum(1).double()
    repeats = ((x[:, 1:] == x[:, :-1]) & (x[:, 1:] > 0)).sum(1).double()
    length = support.lengths.double()
    return ones - twos + 0.5 * repeats - 0.5 * (length - 3).abs()


def data_distribution(support: pbde.SequenceSupport, seed: int, scale: float = 0.5) -> torch.Tensor:
    """The known distribution π_ref is trained on: a Markov chain over tokens (random
    transitions, EOS stops), with EOS forced at the maximum length; log-masses ``(n,)``."""
    generator = torch.Generator().manual_seed(seed + 1000)
    v = support.vocab_size
    transitions = torch.log_softmax(
        scale * torch.randn(v + 1, v, generator=generator, dtype=torch.float64), -1
    )
    x = support.points if support.prompts is None else support.points[:, 1]
    previous = torch.cat([torch.full_like(x[:, :1], v), x[:, :-1]], 1).clamp_min(0)
    positions = torch.arange(x.shape[1])
    scored = (positions < support.lengths[:, None]) & (positions < support.max_length - 1)
    terms = transitions[previous, x.clamp_min(0)]
    return torch.where(scored, terms, torch.zeros_like(terms)).sum(1)


def run(settings: Settings | None = None, *, progress: bool | None = None) -> Result:
    """Pre-train π_ref, label pairs, fit every member, and compare each with its optimum.

    Returns:
        :class:`~pbde.experiments.base.Result` with metrics ``kl_to_optimum`` (per member),
        ``kl_optimum_to_p_star`` and ``kl_optimum_to_reference`` (how far each optimum moved),
        ``optimum_mass_by_length`` and ``learned_mass_by_length`` (per member, lengths
        1…max_length), ``mass_beyond_reference`` (the raw π_ref's mass beyond the maximum
        length), ``kl_data_to_reference`` (the pre-training fit), ``support_size``,
        ``backbone``, ``max_kl_to_optimum``.
    """
    settings = settings or Settings()
    start = time.perf_counter()
    torch.manual_seed(settings.seed)
    backbone = settings.backbone or _default_backbone()
    reference, support = _pretrained_reference(settings, backbone, progress)
    n = len(support)
    with torch.no_grad():
        log_ref = reference.log_prob(support.points).double()
    reference_table = Tabulated(support, log_ref, normalize=True)
    log_data = data_distribution(support, settings.seed, settings.data_scale)
    p_star = Tabulated(support, reward(support) / settings.temperature, normalize=True)
    annotator = pbde.Annotator(p_star)

    generator = torch.Generator().manual_seed(settings.seed + 1)
    xa, xb = pbde.sample_pairs(reference_table, settings.pairs, generator=generator)
    if settings.labels == "soft":
        with torch.no_grad():
            prefs = pbde.Preferences(xa, xb, annotator.prob(xa, xb).float())
    elif settings.labels == "sampled":
        prefs = annotator.label(xa, xb, generator=generator)
    else:
        raise ValueError(f"'labels' must be 'soft' or 'sampled'. Got {settings.labels!r}.")

    frozen_ref = Precomputed(support.points, log_ref)  # π_ref looked up, not recomputed
    members = _members(settings, frozen_ref)
    metrics = {"kl_to_optimum": {}, "kl_optimum_to_p_star": {}, "kl_optimum_to_reference": {}}
    metrics["optimum_mass_by_length"], metrics["learned_mass_by_length"] = {}, {}
    curves = {}
    for name, (behavior_of, loss, loss_kwargs) in members.items():
        policy = copy.deepcopy(reference)
        policy.requires_grad_(True)
        behavior = behavior_of(policy)
        optimum = pbde.optimal_density(
            annotator, behavior, support, proposal=reference_table, loss=loss, **loss_kwargs
        )
        pbde.fit(
            pbde.Annotator(policy, behavior),
            prefs,
            loss=loss,
            steps=settings.steps,
            lr=settings.lr,
            batch_size=settings.batch_size,
            seed=settings.seed,
            progress=progress,
            **loss_kwargs,
        )
        with torch.no_grad():
            learned = Tabulated(support, policy.log_prob(support.points).double(), normalize=True)
        metrics["kl_to_optimum"][name] = pbde.kl(optimum, learned, support)
        metrics["kl_optimum_to_p_star"][name] = pbde.kl(optimum, p_star, support)
        metrics["kl_optimum_to_reference"][name] = pbde.kl(optimum, reference_table, support)
        metrics["optimum_mass_by_length"][name] = _by_length(optimum, support)
        metrics["learned_mass_by_length"][name] = _by_length(learned, support)
        curves[name] = (optimum.values.exp().numpy(), learned.values.exp().numpy())
    metrics["max_kl_to_optimum"] = max(metrics["kl_to_optimum"].values())
    data_table = Tabulated(support, log_data, normalize=True)
    metrics["kl_data_to_reference"] = pbde.kl(data_table, reference_table, support)
    metrics["mass_beyond_reference"] = pbde.mass_beyond(reference, support)
    metrics["support_size"] = n
    metrics["backbone"] = backbone
    seconds = time.perf_counter() - start
    tables = {"π_ref": log_ref.exp().numpy(), "p*": p_star.values.exp().numpy()}

    figure = {
        "sequences": [_text(support, i) for i in range(n)],
        "lengths": support.lengths.tolist(),
        "max_length": support.max_length,
        "vocab_size": support.vocab_size,
        "pi_ref": rounded(tables["π_ref"], 6),
        "p_star": rounded(tables["p*"], 6),
        "members": {
            name: {"optimum": rounded(optimum, 6), "learned": rounded(learned, 6)}
            for name, (optimum, learned) in curves.items()
        },  # fmt: skip
    }
    return Result("lm-theory", settings, metrics, seconds, data={"support": support},
                  figure=figure, draw=draw)  # fmt: skip


# -- pieces ------------------------------------------------------------------------------------


def _default_backbone() -> str:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return "gru"
    return "gpt2"


def _pretrained_reference(settings: Settings, backbone: str, progress):
    """π_ref with EOS forced at the maximum length, fitted by full-batch maximum likelihood
    (the exact cross-entropy to the known distribution, summed over the support)."""
    v, length = settings.vocab_size, settings.max_length
    if backbone == "gpt2":
        import transformers

        config = transformers.GPT2Config(
            vocab_size=v,
            n_positions=length + 2,
            n_embd=settings.width,
            n_layer=settings.layers,
            n_head=2,
            bos_token_id=0,
            eos_token_id=0,
        )
        model = pbde.densities.CausalLM(transformers.GPT2LMHeadModel(config))
        support = pbde.SequenceSupport(v, length, prompts=[[0]])  # prompt: BOS (= EOS id)
        reference = ForcedEOS(model, length, eos=0)
    elif backbone == "gru":
        support = pbde.SequenceSupport(v, length)
        reference = Autoregressive(
            v, length, embedding_dim=settings.width, hidden_size=settings.width
        )
    else:
        raise ValueError(f"'backbone' must be 'gpt2', 'gru' or None. Got {backbone!r}.")
    target = data_distribution(support, settings.seed, settings.data_scale).exp().float()
    points = support.points

    def cross_entropy(generator):
        return -(target * reference.log_prob(points)).sum()

    from pbde.fit import optimize

    optimize(
        reference,
        cross_entropy,
        steps=settings.pretrain_steps,
        lr=settings.pretrain_lr,
        seed=settings.seed,
        progress=progress,
        description="mle",
    )
    reference.requires_grad_(False)
    return reference, support


def _members(settings: Settings, reference):
    def length(policy):
        return policy.length

    return {
        "DPO β=0.5": (lambda p: pbde.dpo(0.5, reference), "bce", {}),
        "DPO β=1": (lambda p: pbde.dpo(1.0, reference), "bce", {}),
        "DPO β=4": (lambda p: pbde.dpo(4.0, reference), "bce", {}),
        "IPO": (lambda p: pbde.dpo(1.0, reference), "ipo", {"tau": settings.tau}),
        "length-normalized": (lambda p: pbde.length_normalized(length(p)), "bce", {}),
    }


def _by_length(density: Tabulated, support) -> list[float]:
    masses = density.values.exp()
    return [float(masses[support.lengths == n].sum()) for n in range(1, support.max_length + 1)]


def draw(report: dict, path) -> None:
    """Draw the figure from a report (:meth:`Result.report` or the JSON file): five panels of
    the optimum's top sequences (optimum, fit, π_ref) and one of the mass by length of every
    optimum and fit."""
    import numpy as np

    plt = pyplot()
    metrics, figure = report["metrics"], report["figure"]
    members = figure["members"]
    names = list(members)
    top = 10
    sequence_lengths = np.asarray(figure["lengths"])
    lengths = np.arange(1, figure["max_length"] + 1)
    reference = np.asarray(figure["pi_ref"], dtype=float)

    def by_length(masses):
        return [float(np.asarray(masses)[sequence_lengths == n].sum()) for n in lengths]

    with page_style():
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        fig, axes = plt.subplots(2, 3, figsize=(PAGE_WIDTH, 7.4), layout="constrained")
        for ax, name in zip(axes.flat, names, strict=False):
            optimum = np.asarray(members[name]["optimum"], dtype=float)
            learned = np.asarray(members[name]["learned"], dtype=float)
            order = np.argsort(-optimum, kind="stable")[:top]
            at = np.arange(len(order))
            ax.bar(at - 0.2, optimum[order], 0.4, label="optimum (theory)", color="tab:blue")
            ax.bar(at + 0.2, learned[order], 0.4, label="learned", color="tab:orange")
            ax.bar(at, reference[order], 0.15, label=r"$\pi_{\rm ref}$", color="0.3")
            ax.set_xticks(at, [figure["sequences"][int(i)] for i in order], rotation=90)
            ax.set_title(f"{name}\nKL(optimum ‖ fit) = {metrics['kl_to_optimum'][name]:.2g}")
        axes.flat[0].set_ylabel("mass (the optimum's top sequences)")
        axes.flat[0].legend(loc="upper right", fontsize=9)
        last = axes.flat[len(names)]
        last.plot(lengths, by_length(reference), "k:", lw=2, label=r"$\pi_{\rm ref}$")
        last.plot(lengths, by_length(figure["p_star"]), "k-", lw=1, label="$p^*$")
        for color, name in zip(colors, names, strict=False):
            last.plot(lengths, metrics["optimum_mass_by_length"][name], "o-", color=color, ms=4)
            last.plot(lengths, metrics["learned_mass_by_length"][name], "x--", color=color, ms=6)
            last.plot([], [], "s", color=color, label=name)
        last.plot([], [], "ko-", label="optimum")
        last.plot([], [], "kx--", label="learned")
        last.set_xticks(lengths)
        last.set_xlabel("length in tokens (end included)")
        last.set_title("mass by length")
        last.set_ylim(0, 1.15 * last.get_ylim()[1] + 0.3)  # room for the legend
        last.legend(fontsize=8.5, ncol=2, loc="upper left", handlelength=1.5, columnspacing=0.8)
        for ax in axes.flat[len(names) + 1 :]:
            ax.axis("off")
        backbone = {"gpt2": "GPT-2", "gru": "GRU"}.get(metrics["backbone"], metrics["backbone"])
        fig.suptitle(
            f"Each fit next to its optimum, on all {metrics['support_size']} sequences of at most "
            f"{figure['max_length']} tokens\n(a vocabulary of {figure['vocab_size']} tokens, "
            f"· = end of sequence; " + r"$\pi_{\rm ref}$" + f": a tiny {backbone})"
        )
        fig.savefig(path)
        plt.close(fig)


def _text(support, index: int) -> str:
    row = support.points[index]
    row = row[1] if row.ndim == 2 else row
    return "".join("·" if t == support.eos else "abcdefghij"[t - 1] for t in row.tolist() if t >= 0)
