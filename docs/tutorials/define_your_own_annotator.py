# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Define your own annotator
#
# In Dumoulin et al. an annotator is a density $p^*$ plus a *preference behavior distribution
# equation* (PBDE, eq. 11):
#
# $$
# P(x_A \succ x_B) = \sigma\big(\Omega(x_A) - \Omega(x_B)\big), \qquad
# \Omega(x) = f(x)\log p^*(x) + g(x), \qquad f(x) > 0.
# $$
#
# `pbde.PBDE(f, g)` is that equation with your own $f$ and $g$. When the model you fit assumes a
# different behavior (here: the Luce rule, $f = 1$, $g = 0$ — what a reward model assumes), the
# fit does not converge to $p^*$. Lemma 1 and Theorem 2 say where it converges instead, and
# `pbde.optimal_density` computes it *before* you train. This tutorial writes three annotators,
# predicts the optimum of a Luce model for each, fits a categorical model on 20 items, and
# compares.
#
# Run it with `python docs/tutorials/define_your_own_annotator.py`; `PBDE_SMOKE=1` shrinks it.
# Figures go to `PBDE_FIGURES_DIR` (default `docs/images/tutorials`).

# %%
import os
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import pbde  # noqa: E402
from pbde.densities import Categorical  # noqa: E402

SMOKE = os.environ.get("PBDE_SMOKE") == "1"
FIGURES = Path(
    os.environ.get("PBDE_FIGURES_DIR", Path(__file__).resolve().parents[1] / "images" / "tutorials")
)
FIGURES.mkdir(parents=True, exist_ok=True)

ITEMS = 20
PAIRS = 4000 if SMOKE else 100_000
STEPS = 150 if SMOKE else 1000
SEED = 0
began = time.perf_counter()

# %% [markdown]
# ## The annotator's taste
#
# Twenty items (think: twenty responses, item k of "length" k) and a bimodal taste $p^*$.

# %%
k = torch.arange(ITEMS, dtype=torch.float64)
p_star_probs = torch.exp(-0.5 * ((k - 5) / 2.0) ** 2) + 0.6 * torch.exp(
    -0.5 * ((k - 14) / 1.5) ** 2
)
p_star = Categorical(probs=p_star_probs / p_star_probs.sum())
support = torch.arange(ITEMS)

# %% [markdown]
# ## Three annotators
#
# 1. **Tempered**: $f = 1/T$ with $T = 2$, $g = 0$. Preferences are noisier than Luce:
#    $P = \sigma ((\log p^*(x_A) - \log p^*(x_B))/T)$. A Luce model absorbs the temperature into its density:
#    Lemma 1 gives $\log \pi = \log p^*/T + C$, i.e. $\pi \propto {p^*}^{1/T}$, flatter than $p^*$.
# 2. **Likes large $x$** (a length bias): $f = 1$, $g(x) = c\, x$ with $c = 0.15$. Lemma 1 gives
#    $\log \pi = \log p^* + c\, x + C$, i.e. $\pi \propto p^*\, e^{c\, x}$: the model mistakes the bias for taste.
# 3. **A population with a random clicker**: 80 % of comparisons come from the Luce annotator
#    with density $p^*$, 20 % from a clicker whose $P$ is always ½ (an `Annotator` whose density is
#    uniform). This is a `pbde.MixtureAnnotator` (eq. 25), not one annotator, so Lemma 1 does
#    not apply; `optimal_density` minimizes the expected loss numerically (Newton's method) and
#    needs the distribution of pairs, here uniform.

# %%
T, c = 2.0, 0.15
tempered = pbde.Annotator(p_star, pbde.PBDE(f=1.0 / T, name="tempered"))
likes_large = pbde.Annotator(
    p_star, pbde.PBDE(f=1.0, g=lambda x: c * x.to(torch.get_default_dtype()), name="likes large x")
)
random_clicker = pbde.Annotator(Categorical(size=ITEMS))  # uniform density: P(x_A ≻ x_B) = 1/2
population = pbde.MixtureAnnotator([pbde.Annotator(p_star), random_clicker], [0.8, 0.2])
annotators = {
    f"tempered, T = {T:g}": tempered,
    f"likes large x, g = {c:g}·x": likes_large,
    "80% Luce + 20% random clicker": population,
}

# %% [markdown]
# ## Predict, then fit
#
# The model is a Luce annotator with a learnable `Categorical` density, started uniform. The
# prediction uses the model's behavior (`pbde.luce()`), the annotator, and — for the population
# — the proposal of pairs (uniform, which is also the default).

# %%
model_behavior = pbde.luce()
generator = torch.Generator().manual_seed(SEED)
rows = []
for name, annotator in annotators.items():
    predicted = pbde.optimal_density(annotator, model_behavior, support)
    xa, xb = pbde.sample_pairs(Categorical(size=ITEMS), PAIRS, generator=generator)
    prefs = annotator.label(xa, xb, generator=generator)
    model = pbde.Annotator(Categorical(size=ITEMS), model_behavior)
    pbde.fit(model, prefs, steps=STEPS, lr=0.05, progress=False)
    rows.append(
        {
            "name": name,
            "predicted": predicted.prob(support).numpy(),
            "learned": model.density.prob(support).detach().double().numpy(),
            "TV(p*, predicted)": pbde.tv(p_star, predicted, support),
            "TV(predicted, learned)": pbde.tv(predicted, model.density, support),
        }
    )

print(f"{PAIRS} uniform pairs per annotator, {STEPS} steps")
print(f"{'annotator':<32} {'TV(p*, predicted)':>18} {'TV(predicted, learned)':>23}")
for row in rows:
    print(
        f"{row['name']:<32} {row['TV(p*, predicted)']:>18.4f} {row['TV(predicted, learned)']:>23.4f}"
    )

# %% [markdown]
# The first column is how wrong a Luce model is *by construction* for that annotator: the
# distance between the annotator's taste and the best the model can do. The second is the
# estimation error of the fit; it is much smaller than the first, so the misspecification,
# not the finite data, is what moves the model away from $p^*$.
#
# ## The picture

# %%
p_values = p_star.prob(support).detach().double().numpy()
# one panel under the other, 900 px wide: the page's width
fig, axes = plt.subplots(len(rows), 1, figsize=(9, 10), dpi=100, sharex=True, layout="constrained")
width = 0.28
for ax, row in zip(axes, rows, strict=True):
    ax.bar(k.numpy() - width, p_values, width, color="tab:blue", label="p* (taste)")
    ax.bar(k.numpy(), row["predicted"], width, color="tab:red", label="predicted optimum")
    ax.bar(k.numpy() + width, row["learned"], width, color="tab:green", label="learned")
    ax.set_title(
        f"{row['name']}: TV(predicted, learned) = {row['TV(predicted, learned)']:.3f}", fontsize=11
    )
    ax.set_ylabel("probability")
    ax.set_xticks(np.arange(ITEMS))
axes[-1].set_xlabel("item x")
axes[0].legend(frameon=False, loc="upper right")
fig.suptitle("A Luce (reward) model fitted to three annotators: predicted vs learned")
fig.savefig(FIGURES / "custom_annotators.png")
plt.close(fig)
print(f"wrote {FIGURES / 'custom_annotators.png'} in {time.perf_counter() - began:.1f} s")

# %% [markdown]
# ![predicted vs learned](../images/tutorials/custom_annotators.png)
#
# **What the picture shows.** The tempered annotator's optimum is ${p^*}^{1/2}$, renormalized: the
# same modes, flatter. The length-biased annotator's optimum shifts mass to large $x$, so the
# second mode overtakes the first — a reward model fitted to such labels "prefers long
# answers" even though the annotator's taste $p^*$ does not. The random clicker squeezes every
# preference probability into $[0.1, 0.9]$ ($P = 0.8\, P_{\text{Luce}} + 0.2\, \tfrac12$), so the largest log-ratios
# of $p^*$ are compressed the most; the model reads the noise as a flatter taste. In all three,
# the fitted model lands on the prediction, not on $p^*$.
