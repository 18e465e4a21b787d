# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # What will DPO do to my language model?
#
# Dumoulin et al. show that a preference-fitting rule is density estimation: with enough data
# and a flexible enough model, DPO with parameter $\beta$ ends at
#
# $$
# \pi(x) \propto \pi_{\mathrm{ref}}(x)\, p^*(x)^{1/\beta} \qquad \text{(eq. 16)}
# $$
#
# when the annotator follows the Luce rule with density $p^*$ (eq. 9), and the length-normalized
# rule (eq. 26) ends at $\pi (x) = \exp(\lvert x\rvert \, (\log p^*(x) - C))$ (Theorem 2), which is not $p^*$. These
# optima can be computed *before any training*, when the set of all sequences is small enough
# to enumerate: a vocabulary of $V = 5$ tokens (EOS included) and at most $L = 5$ tokens give
# $1 + 4 + 16 + 64 + 256 = 341$ sequences (`pbde.SequenceSupport`).
#
# This tutorial (1) pre-trains a small GRU language model $\pi_{\mathrm{ref}}$ on a known distribution,
# (2) defines an annotator with a known $p^*$, (3) computes with `pbde.optimal_density` what DPO at
# several $\beta$ and the length-normalized rule will do — how mass moves between lengths and which
# sequences come out on top — and (4) fits DPO for one $\beta$ and compares the fit with the
# prediction.
#
# Run it with `python docs/tutorials/what_will_dpo_do.py` (the time measured for this page is
# under the title);
# `PBDE_SMOKE=1` shrinks it to seconds. Figures go to `PBDE_FIGURES_DIR` (default
# `docs/images/tutorials`). `pbde reproduce lm-theory` does the same with a tiny GPT-2 and more
# members (IPO too).

# %%
import copy
import os
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import pbde  # noqa: E402
from pbde.densities import Autoregressive, Precomputed, Tabulated  # noqa: E402
from pbde.experiments import lm_theory  # noqa: E402

SMOKE = os.environ.get("PBDE_SMOKE") == "1"
FIGURES = Path(
    os.environ.get("PBDE_FIGURES_DIR", Path(__file__).resolve().parents[1] / "images" / "tutorials")
)
FIGURES.mkdir(parents=True, exist_ok=True)

VOCAB, MAX_LENGTH = 5, 5  # tokens 1-4 (written a-d) and EOS = 0 (written ·)
PRETRAIN_STEPS = 40 if SMOKE else 600
PAIRS = 2000 if SMOKE else 40000
FIT_STEPS = 30 if SMOKE else 1500
BETAS = (0.25, 1.0, 4.0)
FITTED_BETA = 1.0
SEED = 0
torch.manual_seed(SEED)
began = time.perf_counter()

# %% [markdown]
# ## The sample space and the reference policy
#
# `pbde.SequenceSupport(5, 5)` enumerates every EOS-terminated sequence of at most 5 tokens as
# padded token rows. $\pi_{\mathrm{ref}}$ is an `Autoregressive` GRU with EOS forced at the maximum length, so
# its probabilities sum to exactly 1 on the support (a language model without that limit would
# leak mass to longer sequences: see `pbde.mass_beyond`). It is trained by maximum likelihood on
# a known distribution over the sequences (`lm_theory.data_distribution`, a Markov chain over
# tokens), with the exact cross-entropy summed over the support.

# %%
support = pbde.SequenceSupport(VOCAB, MAX_LENGTH)
print(f"{len(support)} sequences")
reference = Autoregressive(VOCAB, MAX_LENGTH, embedding_dim=32, hidden_size=32)
data = lm_theory.data_distribution(support, SEED).exp().float()
optimizer = torch.optim.Adam(reference.parameters(), lr=1e-2)
for _ in range(PRETRAIN_STEPS):
    optimizer.zero_grad()
    loss = -(data * reference.log_prob(support.points)).sum()
    loss.backward()
    optimizer.step()
reference.requires_grad_(False)
with torch.no_grad():
    log_ref = reference.log_prob(support.points).double()
pi_ref = Tabulated(support, log_ref, normalize=True)
data_table = Tabulated(support, data.double().log(), normalize=True)
print(f"KL(data ‖ π_ref) = {pbde.kl(data_table, pi_ref, support):.4f} nats")


def text(index: int) -> str:
    """A sequence as letters, EOS as ·."""
    tokens = support.points[index].tolist()
    return "".join("·" if t == 0 else "abcd"[t - 1] for t in tokens if t >= 0)


def mass_by_length(density: Tabulated) -> np.ndarray:
    masses = density.values.exp().numpy()
    lengths = support.lengths.numpy()
    return np.array([masses[lengths == n].sum() for n in range(1, MAX_LENGTH + 1)])


def top(density: Tabulated, k: int = 5) -> str:
    masses = density.values.exp()
    order = masses.argsort(descending=True)[:k]
    return ", ".join(f"{text(int(i))} {float(masses[i]):.3f}" for i in order)


# %% [markdown]
# ## The annotator
#
# A Luce annotator (eq. 9) with $p^*(x) \propto \exp(\text{reward}(x) / 2)$, where the reward
# (`lm_theory.reward`) pays $+1$ per token *a*, $-1$ per token *b*, $+0.5$ per repeated token and
# $-0.5$ per token of distance from length 3. It prefers $x_A$ to $x_B$ with probability
# $p^*(x_A) / (p^*(x_A) + p^*(x_B))$.

# %%
p_star = Tabulated(support, lm_theory.reward(support) / 2.0, normalize=True)
annotator = pbde.Annotator(p_star)
print("top of π_ref:", top(pi_ref))
print("top of p*:   ", top(p_star))

# %% [markdown]
# ## The optima, before any training
#
# `pbde.optimal_density(annotator, behavior, support)` solves the population problem on the
# support. For DPO (`pbde.dpo(beta, reference)`) it is eq. 16; for the length-normalized rule
# (`pbde.length_normalized`, $f(x) = 1/\lvert x\rvert$) it is Theorem 2's density, whatever $\pi_{\mathrm{ref}}$ is. Both
# hold for any distribution of pairs that connects the support (Lemma 1); pairs drawn from
# $\pi_{\mathrm{ref}}$ do.

# %%
frozen = Precomputed(support.points, log_ref)  # π_ref looked up, not recomputed
behaviors = {f"DPO β={beta:g}": pbde.dpo(beta, frozen) for beta in BETAS}
behaviors["length-normalized"] = pbde.length_normalized(reference.length)
optima = {
    name: pbde.optimal_density(annotator, behavior, support, proposal=pi_ref)
    for name, behavior in behaviors.items()
}
lengths = np.arange(1, MAX_LENGTH + 1)
print(f"{'':>18} " + " ".join(f"|x|={n}" for n in lengths) + "   mean |x|  KL(·‖π_ref)")
for name, density in {"π_ref": pi_ref, "p*": p_star, **optima}.items():
    by_length = mass_by_length(density)
    print(
        f"{name:>18} "
        + " ".join(f"{m:5.3f}" for m in by_length)
        + f"   {float(by_length @ lengths):8.2f}  {pbde.kl(density, pi_ref, support):10.3f}"
    )
for name, density in optima.items():
    print(f"top of {name}: {top(density)}")

# %% [markdown]
# Small $\beta$ trusts the annotator: DPO at $\beta = 0.25$ is $\pi_{\mathrm{ref}}\,{p^*}^4$, which piles mass on the few
# sequences $p^*$ likes most (`aaaa·`); $\beta = 4$ barely leaves $\pi_{\mathrm{ref}}$, whose favourite is the empty
# answer (EOS alone), and $\beta = 1$ sits in between. The length-normalized rule does not depend on
# $\pi_{\mathrm{ref}}$ at all, and it does not recover $p^*$: $\pi = \exp(\lvert x\rvert \, (\log p^*(x) - C))$ raises $p^*$ to the
# power $\lvert x\rvert$, which sharpens it most on the longest sequences, so the best long sequence takes
# most of the mass.
#
# ![mass by length and top sequences of each optimum](../images/tutorials/what_will_dpo_do.png)

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
ax = axes[0]
ax.plot(lengths, mass_by_length(pi_ref), "k:", lw=2, label="π_ref")
ax.plot(lengths, mass_by_length(p_star), "k-", lw=1, label="p* (annotator)")
for name, density in optima.items():
    ax.plot(lengths, mass_by_length(density), "o-", label=name)
ax.set_xticks(lengths)
ax.set_xlabel("length (tokens, EOS included)")
ax.set_ylabel("mass")
ax.set_title("mass by length of each optimum")
ax.legend(fontsize=9)
ax = axes[1]
# the three most likely sequences of each optimum and of π_ref, once each
order = []
for density in [pi_ref, *optima.values()]:
    for i in density.values.argsort(descending=True)[:3].tolist():
        order += [i] if i not in order else []
order = np.array(order)
at = np.arange(len(order))
width = 0.8 / (len(optima) + 1)
ax.bar(at - 0.4 + width / 2, log_ref.exp().numpy()[order], width, color="0.3", label="π_ref")
for k, (name, density) in enumerate(optima.items(), start=1):
    ax.bar(at - 0.4 + (k + 0.5) * width, density.values.exp().numpy()[order], width, label=name)
ax.set_xticks(at, [text(int(i)) for i in order], rotation=90)
ax.set_title("the top 3 sequences of π_ref and of each optimum")
ax.set_ylabel("mass")
fig.tight_layout()
fig.savefig(FIGURES / "what_will_dpo_do.png", dpi=80)
plt.close(fig)

# %% [markdown]
# ## Fit DPO and compare
#
# Now train: pairs drawn from $\pi_{\mathrm{ref}}$, labelled by the annotator (Bernoulli labels), and
# `pbde.fit` with DPO at $\beta = 1$ from a copy of $\pi_{\mathrm{ref}}$. The fit should land near its optimum,
# the gap being the finite sample of pairs and the optimization.

# %%
policy = copy.deepcopy(reference).requires_grad_(True)
model = pbde.Annotator(policy, pbde.dpo(FITTED_BETA, frozen))
generator = torch.Generator().manual_seed(SEED + 1)
xa, xb = pbde.sample_pairs(pi_ref, PAIRS, generator=generator)
prefs = annotator.label(xa, xb, generator=generator)
result = pbde.fit(model, prefs, steps=FIT_STEPS, lr=3e-3, batch_size=512, seed=SEED, progress=False)
with torch.no_grad():
    learned = Tabulated(support, policy.log_prob(support.points).double(), normalize=True)
optimum = optima[f"DPO β={FITTED_BETA:g}"]
print(f"KL(optimum ‖ fit)   = {pbde.kl(optimum, learned, support):.4f} nats")
print(f"KL(optimum ‖ π_ref) = {pbde.kl(optimum, pi_ref, support):.4f} nats (where the fit began)")
print(f"TV(optimum, fit)    = {pbde.tv(optimum, learned, support):.4f}")
print("mass by length, optimum:", np.round(mass_by_length(optimum), 3))
print("mass by length, fit:    ", np.round(mass_by_length(learned), 3))
print("top of the fit:", top(learned))

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
ax = axes[0]
order = optimum.values.argsort(descending=True)[:12].numpy()
at = np.arange(len(order))
ax.bar(at - 0.2, optimum.values.exp().numpy()[order], 0.4, label="optimum (eq. 16)")
ax.bar(at + 0.2, learned.values.exp().numpy()[order], 0.4, label="DPO fit")
ax.bar(at, log_ref.exp().numpy()[order], 0.15, color="0.3", label="π_ref")
ax.set_xticks(at, [text(int(i)) for i in order], rotation=90)
ax.set_ylabel("mass")
ax.set_title(f"DPO β={FITTED_BETA:g}: KL(optimum ‖ fit) = {pbde.kl(optimum, learned, support):.2g}")
ax.legend(fontsize=9)
ax = axes[1]
ax.plot(lengths, mass_by_length(pi_ref), "k:", lw=2, label="π_ref")
ax.plot(lengths, mass_by_length(optimum), "o-", label="optimum (eq. 16)")
ax.plot(lengths, mass_by_length(learned), "x--", ms=8, label="DPO fit")
ax.set_xticks(lengths)
ax.set_xlabel("length (tokens, EOS included)")
ax.set_title("mass by length")
ax.legend(fontsize=9)
fig.tight_layout()
fig.savefig(FIGURES / "what_will_dpo_do_fit.png", dpi=80)
plt.close(fig)
print(f"done in {time.perf_counter() - began:.0f} s")

# %% [markdown]
# The fit (orange) next to its optimum (blue), computed before training:
#
# ![DPO fit against its optimum](../images/tutorials/what_will_dpo_do_fit.png)
#
# ## What to take away
#
# * On a support small enough to enumerate, what a preference rule will do is a computation:
#   `pbde.optimal_density` gives the optimum of DPO, IPO (`loss="ipo"`) or any PBDE behavior
#   before a single gradient step, and `pbde.kl` measures how far a fit is from it.
# * $\beta$ sets how far DPO moves from $\pi_{\mathrm{ref}}$ towards $p^*$; the length-normalized rule moves mass to
#   long sequences whatever $\pi_{\mathrm{ref}}$ does.
# * For a real model the support is not enumerable, but the same optimum holds per prompt; the
#   small case tells which way the mass will go.
