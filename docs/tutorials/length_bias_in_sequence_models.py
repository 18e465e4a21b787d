# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Length bias in sequence models
#
# For a language model the Luce choice rule (Dumoulin et al., eq. 9),
#
# $$
# P(x_A \succ x_B) = \frac{p^*(x_A)}{p^*(x_A) + p^*(x_B)} = \sigma\big(\log p^*(x_A) - \log p^*(x_B)\big),
# $$
#
# is a poor model of an annotator. An autoregressive density is a product of one probability
# per token, $\log p(x) = \sum_t \log p(x_t \mid x_{<t})$, so every extra token costs a few nats: a longer
# sentence has a *much* lower likelihood than a shorter one, whatever the annotator's taste. An
# annotator whose $p^*$ only ever produces long sentences still prefers short ones under eq. 9
# (§5.2 and Table 2 of the paper). The length-normalized rule (eq. 26) compares the mean
# log-likelihood per token instead,
#
# $$
# P(x_A \succ x_B) = \sigma\big(\log p^*(x_A)/\lvert x_A\rvert - \log p^*(x_B)/\lvert x_B\rvert\big),
# $$
#
# a PBDE (eq. 11) with $f(x) = 1/\lvert x\rvert$ and $g = 0$ (`pbde.length_normalized`), so Theorem 2 still
# says that a model with the same behavior recovers $p^*$.
#
# This tutorial (1) trains three small GRU language models (`pbde.densities.Autoregressive`)
# on English text, (2) shows why eq. 9 prefers short sentences and eq. 26 does not, computing
# the paper's Table 2, and (3) fits DPO to the preferences of the annotator who likes long
# sentences and looks at the lengths of the sentences the fitted model writes.
#
# The models are those of `pbde reproduce length-bias` (`pbde.experiments.length_bias`) at a
# smaller size: its *fast* recipe (vocabulary 300, GRU state 64, 800 maximum-likelihood steps)
# instead of the default (vocabulary 500, state 128, 1500 steps), which takes several minutes
# on a CPU. The numbers are therefore a little different from `docs/reproduce.md`'s.
#
# Run it with `python docs/tutorials/length_bias_in_sequence_models.py` (the time measured
# for this page is under the title); `PBDE_SMOKE=1` shrinks it to seconds, with models too small to mean much.
# Figures go to `PBDE_FIGURES_DIR` (default `docs/images/tutorials`).

# %%
import os
import time
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import pbde  # noqa: E402
from pbde.densities.sequence import sequence_lengths  # noqa: E402
from pbde.experiments import length_bias  # noqa: E402
from pbde.experiments.lm_mixture import label_in_chunks  # noqa: E402

SMOKE = os.environ.get("PBDE_SMOKE") == "1"
FIGURES = Path(
    os.environ.get("PBDE_FIGURES_DIR", Path(__file__).resolve().parents[1] / "images" / "tutorials")
)
FIGURES.mkdir(parents=True, exist_ok=True)

if SMOKE:
    LM_SETTINGS = replace(
        length_bias.quick_language_models(), steps=60, length_steps=60, batch_size=32
    )
else:
    LM_SETTINGS = length_bias.fast_language_models()
SAMPLES = 300 if SMOKE else 2000  # sentences sampled from each model
PAIRS = 256 if SMOKE else 4096  # preference pairs for the DPO fits
FIT_STEPS = 10 if SMOKE else 200
BATCH = 64 if SMOKE else 256
SEED = 0
torch.manual_seed(SEED)
began = time.perf_counter()

# %% [markdown]
# ## Three language models: *whole*, *short* and *long*
#
# The corpus is the English prose of Python's documentation, which ships with CPython
# (`pbde.text.english_sentences`, no download), split into words by `pbde.text.WordTokenizer`.
# `length_bias.pretrained_language_models` trains *whole* by maximum likelihood on every
# sentence of at most 50 tokens (the end-of-sentence token EOS counts as one). *short*
# (≤ 20 tokens) and *long* (30–50 tokens) are, as in the paper, language models of the short
# and of the long sentences; with only ≈ 2 800 sentences they are built as copies of *whole*
# whose per-position stopping probabilities (`eos_bias`) alone are fitted to the short and to
# the long sentences (the module docstring says why). All three share one next-token
# distribution and differ only in when they stop, which is what this tutorial is about.

# %%
lms = length_bias.pretrained_language_models(LM_SETTINGS, progress=False)
models = lms.models  # {"whole", "short", "long"}: pbde.densities.Autoregressive
print(f"corpus: {lms.corpus.shape[0]} sentences, vocabulary {lms.tokenizer.vocab_size} words")
for name in models:
    print(
        f"{name:>5}: trained in {lms.seconds[name]:5.1f} s, "
        f"final NLL {lms.losses[name]:6.1f} nats per sentence"
    )

generator = torch.Generator().manual_seed(SEED)
samples = models["whole"].sample(SAMPLES, generator=generator)  # the pretrained model's sentences
lengths = sequence_lengths(samples)
bins = length_bias.length_bins(lengths, LM_SETTINGS)  # S ≤ 20 < M < 30 ≤ L
print("sentences sampled from whole, by bin:", {k: int(v.sum()) for k, v in bins.items()})
for name, model in models.items():
    drawn = model.sample(SAMPLES, generator=generator)
    share = length_bias.bin_fractions(drawn, LM_SETTINGS)
    print(
        f"{name:>5} samples: short / medium / long = "
        f"{share['short']:.2f} / {share['medium']:.2f} / {share['long']:.2f}"
    )

# %% [markdown]
# ## Why longer sentences have lower likelihood
#
# Each model becomes a synthetic annotator twice: with the Luce rule (eq. 9, `pbde.luce()`,
# $\Omega = \log p$) and with the length-normalized rule (eq. 26, $\Omega = \log p / \lvert x\rvert$).
# `length_bias.behaviors(lm)` returns both; `pbde.Annotator(lm, behavior)` is the annotator and
# `annotator.omega(x)` its score $\Omega (x)$. We score the sentences sampled from *whole*.

# %%
RULES = {"luce": "eq. 9 (Luce)", "length_normalized": "eq. 26 (length-normalized)"}
annotators = {
    (name, rule): pbde.Annotator(model, behavior)
    for name, model in models.items()
    for rule, behavior in length_bias.behaviors(model).items()
}
omega = {
    key: length_bias.omega_in_chunks(annotator, samples).double()
    for key, annotator in annotators.items()
}

x_len = lengths.double()
design = torch.stack([x_len, torch.ones_like(x_len)], 1)
slope = float(torch.linalg.lstsq(design, omega[("whole", "luce")][:, None]).solution[0, 0])
print(f"whole: log p(x) falls by {-slope:.2f} nats per token (least-squares slope)")
penalty = omega[("long", "luce")] - omega[("whole", "luce")]
gap = float(lengths[bins["L"]].double().mean() - lengths[bins["S"]].double().mean())
print(
    f"log p_long(x) − log p_whole(x): {float(penalty[bins['S']].mean()):.1f} nats on short "
    f"sentences, {float(penalty[bins['L']].mean()):+.1f} on long ones"
)
print(
    f"long sentences are {gap:.1f} tokens longer than short ones on average: "
    f"≈ {-slope * gap:.0f} nats less likely"
)

# %% [markdown]
# Every token costs a few nats (about 3.4 at full size), for *long* as much as for *whole*:
# the three share their next-token distribution. What *long* adds is a penalty for stopping
# before 30 tokens (about 20 nats), and it is small next to the price of the 25 extra tokens
# of a long sentence (about 85 nats). So *long* never *samples* a short sentence, yet it gives
# each short sentence a higher likelihood than each long one: there are vastly fewer short
# sentences than long ones, and the little mass it leaves them is shared among few. The paper's
# point: an annotator should not prefer short sentences because there are fewer of them.
#
# One pair makes it concrete: a short and a long sentence sampled from *whole*, judged by the
# *long* annotator under both rules (`annotator.prob(x_A, x_B)`).

# %%
short_one = int(torch.argmin((lengths - 10).abs()))
long_one = int(torch.argmin((lengths - 36).abs()))
xa, xb = samples[short_one : short_one + 1], samples[long_one : long_one + 1]
for label, index in (("x_A", short_one), ("x_B", long_one)):
    text = lms.tokenizer.decode(samples[index : index + 1])[0]
    log_p = float(omega[("long", "luce")][index])
    print(f"{label} ({int(lengths[index])} tokens): {text!r}")
    print(f"     log p_long = {log_p:.1f} nats, per token {log_p / int(lengths[index]):.2f} nats")
with torch.no_grad():
    for rule, rule_name in RULES.items():
        p = float(annotators[("long", rule)].prob(xa, xb)[0])
        print(f"long annotator, {rule_name}: P(x_A ≻ x_B) = {p:.4f}")

# %% [markdown]
# ## Table 2: which lengths each annotator prefers
#
# $P(X \succ Y)$ averages $P(x_A \succ x_B) = \sigma (\Omega (x_A) - \Omega (x_B))$ over every sentence $x_A$ of bin $X$ and
# $x_B$ of bin $Y$ (S: at most 20 tokens, M: 21–29, L: 30 or more). `length_bias.table` prints it with the
# paper's LM1B numbers in brackets.

# %%
table = {}
for rule in RULES:
    table[rule] = {}
    for name in models:
        scores = omega[(name, rule)]
        table[rule][name] = {
            f"P({x}>{y})": float(torch.sigmoid(scores[bins[x]][:, None] - scores[bins[y]]).mean())
            for x, y in length_bias.COMPARISONS
        }
print(length_bias.table({"table": table}))

# %% [markdown]
# Under eq. 9 every annotator prefers short sentences, the *long* one included ($P(S \succ L)$ near
# 1, as in the paper's 0.97). Under eq. 26 the *long* annotator prefers long sentences
# ($P(S \succ L)$ well below ½), *whole* is close to indifferent, and *short* prefers short ones. The
# eq. 26 effects are weaker than in the paper: here the three annotators share their next-token
# model and differ only in their stopping probabilities, so $P(S \succ L)$ of *short* under eq. 26
# comes from one stopping penalty spread over 30 or more tokens.
#
# ## What DPO learns from the annotator who likes long sentences
#
# Now the *long* annotator labels pairs of sentences sampled from *whole* ($\pi_{\mathrm{ref}}$), once with
# eq. 9 and once with eq. 26 (`label_in_chunks` calls `annotator.label` a chunk at a time). A
# copy of *whole* is fitted with DPO (`pbde.dpo(1, reference)`, eq. 15: $f = \beta, g = -\beta \log \pi_{\mathrm{ref}}$, a
# Luce rule on the ratio $\pi /\pi_{\mathrm{ref}}$) and, for comparison, with the length-normalized behavior
# (eq. 26), the annotator's own process when it labels with eq. 26. As in
# `pbde reproduce lm-mixture`, only the stopping probabilities are trained
# (`length_bias.trainable_copy(whole, only_length=True)`): the fit can change how long the
# sentences are and nothing else.

# %%
whole, long = models["whole"], models["long"]
xa_pairs, xb_pairs = pbde.sample_pairs(whole, PAIRS, generator=generator)
labels = {
    rule: label_in_chunks(
        annotators[("long", rule)], xa_pairs, xb_pairs, chunk=2048, generator=generator
    )
    for rule in RULES
}
fits = {
    "DPO on eq. 9 labels": ("luce", lambda density: pbde.dpo(1.0, whole)),
    "DPO on eq. 26 labels": ("length_normalized", lambda density: pbde.dpo(1.0, whole)),
    "eq. 26 model on eq. 26 labels": (
        "length_normalized",
        lambda density: pbde.length_normalized(density.length),
    ),
}
adapted = {}
for fit_name, (rule, make_behavior) in fits.items():
    density = length_bias.trainable_copy(whole, only_length=True)
    result = pbde.fit(
        pbde.Annotator(density, make_behavior(density)),
        labels[rule],
        steps=FIT_STEPS,
        lr=0.1,
        batch_size=BATCH,
        seed=SEED,
        progress=False,
    )
    density.requires_grad_(False)
    adapted[fit_name] = density
    print(f"{fit_name}: final BCE {float(result.losses[-10:].mean()):.3f}, {result.seconds:.1f} s")

histogram_models = {"whole (π_ref)": whole, "long (the annotator's p*)": long, **adapted}
drawn_lengths = {
    name: sequence_lengths(model.sample(SAMPLES, generator=generator))
    for name, model in histogram_models.items()
}
print(f"{'model':<30} {'mean length':>11}  short / medium / long  most common length")
for name, drawn in drawn_lengths.items():
    share = {
        k: float(v.double().mean()) for k, v in length_bias.length_bins(drawn, LM_SETTINGS).items()
    }
    counts = torch.bincount(drawn)
    print(
        f"{name:<30} {float(drawn.double().mean()):>11.1f}  "
        f"{share['S']:.2f} / {share['M']:.2f} / {share['L']:.2f}     "
        f"{int(counts.argmax())} ({float(counts.max()) / SAMPLES:.0%} of samples)"
    )

# %% [markdown]
# ## The picture
#
# Top: the two scores $\Omega(x)$ of each annotator, averaged over the sampled sentences of each
# length.
# Middle: $P(\text{short} \succ \text{long})$ of Table 2.
# Bottom left and right: the lengths of
# sentences sampled from *whole*, from *long* and from the fitted models, for the eq. 9 and the
# eq. 26 labels.

# %%
COLORS = {"whole": "tab:gray", "short": "tab:blue", "long": "tab:red"}
# 900 px wide, the page's width: scores on top, Table 2 in the middle, lengths at the bottom
fig = plt.figure(figsize=(9, 13), dpi=100, layout="constrained")
grid = fig.add_gridspec(3, 2, height_ratios=(1, 0.8, 1.3))
top = [fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])]
bars_ax = fig.add_subplot(grid[1, :])
histogram_axes = [fig.add_subplot(grid[2, 0])]
histogram_axes.append(fig.add_subplot(grid[2, 1], sharey=histogram_axes[0]))
edges = (LM_SETTINGS.short_max + 0.5, LM_SETTINGS.long_min - 0.5)

observed = torch.unique(lengths)
observed = observed[[int((lengths == n).sum()) >= 3 for n in observed]]  # ≥ 3 sentences
for ax, rule in zip(top, RULES, strict=True):
    for name in models:
        mean_score = [float(omega[(name, rule)][lengths == n].mean()) for n in observed]
        wide = name == "whole"  # drawn wide and light: short and long lie on it in part
        ax.plot(
            observed.numpy(),
            mean_score,
            "-",
            color=COLORS[name],
            lw=5 if wide else 1.8,
            alpha=0.45 if wide else 1.0,
            label=name,
        )
    for edge in edges:
        ax.axvline(edge, color="0.75", lw=0.8, zorder=0)
    ax.set_xlabel("sentence length |x| (tokens)")
top[0].legend(title="annotator", frameon=False, loc="upper right")
top[0].set_ylabel("mean log p(x)  (nats)")
top[0].set_title("Eq. 9 scores Ω = log p(x):\nevery annotator favours short", fontsize=11)
top[1].set_ylabel("mean log p(x) / |x|  (nats per token)")
top[1].set_title("Eq. 26 scores Ω = log p(x) / |x|:\nlong favours long", fontsize=11)

position = np.arange(len(models))
width = 0.38
for offset, (rule, rule_name) in zip((-width / 2, width / 2), RULES.items(), strict=True):
    values = [table[rule][name]["P(S>L)"] for name in models]
    bars = bars_ax.bar(
        position + offset,
        values,
        width,
        color="tab:orange" if rule == "luce" else "tab:green",
        label=rule_name,
    )
    bars_ax.bar_label(bars, fmt="%.2f", fontsize=9)
bars_ax.axhline(0.5, color="black", lw=0.8, ls=":", label="indifferent")
bars_ax.set_xticks(position, list(models))
bars_ax.set_xlabel("annotator")
bars_ax.set_ylim(0, 1.25)
bars_ax.set_yticks(np.linspace(0, 1, 6))
bars_ax.set_ylabel("P(short ≻ long)")
bars_ax.set_title("P(S ≻ L), sentences sampled from whole", fontsize=11)
bars_ax.legend(frameon=False, loc="upper center", ncol=3, fontsize=9.5)

STYLES = {
    "whole (π_ref)": ("tab:gray", "-"),
    "long (the annotator's p*)": ("tab:red", ":"),
    "DPO on eq. 9 labels": ("tab:orange", "-"),
    "DPO on eq. 26 labels": ("tab:purple", "-"),
    "eq. 26 model on eq. 26 labels": ("tab:green", "-"),
}
PANELS = {
    "long annotator's\neq. 9 labels": ["DPO on eq. 9 labels"],
    "long annotator's\neq. 26 labels": ["DPO on eq. 26 labels", "eq. 26 model on eq. 26 labels"],
}
TOP = 0.16  # a fit may put a large share on one length: clip it and say so
support = np.arange(1, LM_SETTINGS.max_length + 1)
for ax, (title, fitted) in zip(histogram_axes, PANELS.items(), strict=True):
    for name in ["whole (π_ref)", "long (the annotator's p*)", *fitted]:
        drawn = drawn_lengths[name]
        share = torch.bincount(drawn, minlength=LM_SETTINGS.max_length + 1)[1:].double() / SAMPLES
        color, linestyle = STYLES[name]
        ax.step(
            support,
            share.numpy(),
            where="mid",
            color=color,
            ls=linestyle,
            lw=1.6,
            label=f"{name}, mean {float(drawn.double().mean()):.1f}",
        )
        peak = int(share.argmax())
        if float(share[peak]) > TOP:
            ax.annotate(
                f"{float(share[peak]):.2f} at\n{peak + 1} tokens",
                xy=(peak + 1, TOP),
                xytext=(peak + 3, 0.72 * TOP),
                color=color,
                fontsize=9,
                arrowprops={"arrowstyle": "->", "color": color},
            )
    for edge in edges:
        ax.axvline(edge, color="0.75", lw=0.8, zorder=0)
    ax.set_ylim(0, TOP)
    ax.set_xlabel("sentence length |x| (tokens)")
    ax.set_title(f"Fitted to the {title}", fontsize=11)
    ax.legend(frameon=False, fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.13))
histogram_axes[0].set_ylabel(f"fraction of {SAMPLES} samples")
fig.suptitle(
    "Length bias (Dumoulin et al. §5.2): the Luce rule (eq. 9) vs the length-normalized\n"
    "rule (eq. 26); lengths count EOS; bins S | M | L in grey",
    fontsize=12,
)
fig.savefig(FIGURES / "length_bias.png")
plt.close(fig)
print(f"wrote {FIGURES / 'length_bias.png'} in {time.perf_counter() - began:.1f} s")

# %% [markdown]
# ![length bias](../images/tutorials/length_bias.png)
#
# **What the picture shows.** Top left: log p(x) falls in a straight line with the length, at
# the same rate for the three annotators; *long*'s curve lies below *whole*'s only on short
# sentences (its stopping penalty), and not far enough to turn the slope around. So under
# eq. 9 short sentences win (middle row, orange), whichever annotator judges. Top right:
# divided by |x| the slope is gone, and *long*'s penalty, spread over few tokens, makes its
# short sentences the worst; under eq. 26 (green) *long* prefers long sentences and *short*
# short ones, which is what their samples say they like.
#
# Bottom left: the annotator whose own sentences are all long teaches DPO to write *shorter*
# sentences when it labels by eq. 9: the mean length falls from about 20 to about 14 tokens,
# and 90 % of the samples are short. The eq. 9 labels say that short beats long, and DPO (a
# Luce rule on $\pi /\pi_{\mathrm{ref}}$) takes them at their word: over all densities, Lemma 1 puts its optimum
# at $\pi \propto \pi_{\mathrm{ref}}\, {p^*}^{1/\beta}$ (eq. 16), and a product of two sequence densities favours short
# sentences even more than one does. After 200 steps the fit is still on its way: it has made
# the model stop at 16 tokens for 39 % of the samples (the clipped peak) and rarely go on
# past that.
#
# Bottom right: with eq. 26 labels the same annotator moves the models towards long sentences,
# DPO a little (mean about 23 tokens), the length-normalized model further (about 27), first by
# removing the shortest sentences, the ones *long* likes least per token (top right). The
# length-normalized model's behavior is the annotator's, so Theorem 2 puts its optimum at
# $p^*$ = *long* itself (mean about 38; *long* is in the model family, since it differs from
# *whole* only by its stop logits). DPO has no such guarantee: its logits compare
# whole-sentence log-ratios where the annotator compares per-token averages. Neither fit is at
# its optimum after 200 steps: under eq. 26 a change of the length distribution moves each
# logit by a log-ratio divided by the sentence's length, a weak signal, so the lengths move
# slowly (`pbde.experiments.lm_mixture` runs into the same).
#
# The lesson for sequence models: what preference data teach about length depends on how the
# annotator turns likelihoods into choices. If your annotators judge sentences by their quality
# per token, fit with the behavior that says so (`pbde.length_normalized`, eq. 26; RRHF's length
# normalization is the same idea).
