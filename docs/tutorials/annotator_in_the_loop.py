# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # The annotator in the loop
#
# Dumoulin et al. draw every pair up front, from $\pi_{\mathrm{ref}}$, and fit once. Their §6
# ("Stationarity") leaves two questions open: is it better to *alternate* — query the
# annotator on pairs drawn from the current model, re-fit, repeat, as RLHF does — and can
# *active learning* reduce the number of annotator queries? Xiong et al. (ICML 2024) study
# the same loop for the KL-regularised bandit: iterative DPO re-fits a *main* policy on all the
# data so far and, each round, asks the annotator about pairs whose second response comes
# from an exploring *enhancer*.
#
# `pbde.online.run` is that loop against a known ground truth. Each round it draws pairs from
# a *proposal*, has the annotator label them, pools them with the earlier rounds' data,
# re-fits the model and records $\mathrm{KL}(\text{target} \,\|\, \pi_\theta)$ against the cumulative number of queries.
# This tutorial compares five proposals at equal query budgets on two small bandits that
# share the same optimal policy, and shows when iterating pays, when it does not, and what
# `target="pooled"` is for.
#
# Run it with `python docs/tutorials/annotator_in_the_loop.py` (the time measured for this page
# is under the title); `PBDE_SMOKE=1` shrinks it to seconds. Figures go to `PBDE_FIGURES_DIR` (default
# `docs/images/tutorials`).

# %%
import math
import os
import statistics
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import pbde  # noqa: E402
from pbde import online  # noqa: E402
from pbde.densities import Categorical  # noqa: E402

SMOKE = os.environ.get("PBDE_SMOKE") == "1"
FIGURES = Path(
    os.environ.get("PBDE_FIGURES_DIR", Path(__file__).resolve().parents[1] / "images" / "tutorials")
)
FIGURES.mkdir(parents=True, exist_ok=True)

ITEMS = 8
ETA = 1.0  # η of the bandit, β of DPO
# pairs queried in each round: the budget doubles, so the rounds are evenly spaced on a log axis
ROUNDS = (64, 64, 128) if SMOKE else (64, 64, 128, 256, 512, 1024, 2048)
SEEDS = 1 if SMOKE else 5
STEPS = 50 if SMOKE else 150  # Adam steps per re-fit (warm start)
LR = 0.1
KL_THRESHOLD = 0.05
began = time.perf_counter()

# %% [markdown]
# ## The KL-regularised bandit and its optimum
#
# The RLHF objective (Dumoulin et al., eq. 12; Xiong et al.'s reverse-KL regularised bandit)
# trades reward against staying close to a reference policy:
#
# $$
# \begin{aligned}
# &\max_\pi \; \mathbb{E}_{x \sim \pi}[r(x)] - \eta\, \mathrm{KL}(\pi \,\|\, \pi_{\mathrm{ref}}) && \text{(eq. 12)} \\
# \Longrightarrow \quad &\pi^*(x) \propto \pi_{\mathrm{ref}}(x)\, \exp(r(x)/\eta) && \text{(eq. 13)}
# \end{aligned}
# $$
#
# A Bradley–Terry annotator with reward $r$ is the Luce annotator (eq. 9) whose density is
# $p^* \propto \exp(r)$, and DPO is the PBDE with $\Omega_\theta = \beta \log \pi_\theta - \beta \log \pi_{\mathrm{ref}}$ (eqs. 14–15). Lemma 1
# puts the DPO model's optimum at $\pi \propto \pi_{\mathrm{ref}}\,{p^*}^{1/\beta}$ (eq. 16), which for $\beta = \eta$ *is* eq. 13.
# On a finite support `pbde.optimal_density` gives it exactly, and it does not depend on the
# pairs that were queried (as long as they connect the items), so every proposal below chases
# the same target.
#
# Two bandits on eight items share the optimum $\pi^* \propto \exp(x/2)$:
#
# * **$\pi_{\mathrm{ref}}$ covers $\pi^*$**: $\pi_{\mathrm{ref}}$ uniform, the annotator's reward $r(x) = x/2$;
# * **$\pi_{\mathrm{ref}}$ misses $\pi^*$**: $\pi_{\mathrm{ref}} \propto \exp(-x/2)$ puts 40 % of its mass on item 0 and 1 % on item
#   7, where $\pi^*$ puts 1 % and 40 %; the annotator's reward $r(x) = x$ is steeper to compensate.

# %%
support = torch.arange(ITEMS)
x = support.to(torch.float64)
problems = {
    "π_ref covers π*": {
        "reference": Categorical(probs=torch.full((ITEMS,), 1.0 / ITEMS, dtype=torch.float64)),
        "reward": x / 2,
    },
    "π_ref misses π*": {"reference": Categorical(probs=torch.softmax(-x / 2, 0)), "reward": x},
}
closed_form = torch.softmax(x / 2, 0)  # eq. 13 for both problems
for name, problem in problems.items():
    problem["annotator"] = pbde.Annotator(Categorical(logits=problem["reward"]))  # Bradley–Terry
    problem["behavior"] = pbde.dpo(ETA, problem["reference"])
    problem["target"] = pbde.optimal_density(problem["annotator"], problem["behavior"], support)
    gap = (problem["target"].prob(support) - closed_form).abs().max().item()
    start = pbde.kl(problem["target"], problem["reference"], support)
    print(f"{name}: max |optimal_density − eq. 13| = {gap:.1e}, KL(π* ‖ π_ref) = {start:.3f}")
print("π* =", np.round(closed_form.numpy(), 3))

# %% [markdown]
# ## Five ways to choose the pairs
#
# A proposal is a callable `(model, n, generator) -> (x_A, x_B)`:
#
# * `Static(π_ref)` (`"static"`): both items from $\pi_{\mathrm{ref}}$, the paper's stationary setting —
#   the same as drawing every pair up front, only queried in instalments;
# * `OnPolicy()` (`"on_policy"`): both items from the current model $\pi_\theta$ — iterative DPO;
# * `MainEnhancer(Tempered(3))`: $x_A$ from the main policy $\pi_\theta$, $x_B$ from the enhancer
#   $\pi_\theta^{1/3}$ (normalized), a flatter copy of the model that keeps exploring (Xiong et al.;
#   `BestOfN` and `RejectionSampled` are other enhancers);
# * `Active(pool=8)` (`"active"`): draw 8 on-policy candidate pairs per query and keep a batch
#   of those a posterior over the model says are most informative. `pbde.posterior` keeps a
#   Laplace approximation of the posterior over the model's logits, built from the pairs
#   labelled so far (which `run` hands to the proposal), and scores a candidate by how much one
#   label of it is expected to shrink $\mathbb{E}_\theta[\mathrm{KL}(\pi_{\hat\theta} \,\|\, \pi_\theta)]$, the posterior's spread measured on
#   the policy (`criterion="bald"` scores the mutual information between the label and the
#   parameters instead); the batch is chosen greedily, the posterior updated after each pick as
#   if that pair had been labelled, so it does not repeat itself;
# * `Active(pool=8, criterion="label_entropy")`: uncertainty sampling — keep the candidates
#   whose *label* the current model is least sure of, the smallest $\lvert \Omega_\theta(x_A) - \Omega_\theta(x_B)\rvert$.

# %%
strategies = {
    "static": lambda: "static",
    "on-policy": online.OnPolicy,
    "main + enhancer (T = 3)": lambda: online.MainEnhancer(online.Tempered(3.0)),
    "active (pool 8)": lambda: online.Active(pool=8),
    "uncertainty (pool 8)": lambda: online.Active(pool=8, criterion="label_entropy"),
}

# %% [markdown]
# ## The re-fit: DPO with a weak prior
#
# After each round the model — a `Categorical` density started at $\pi_{\mathrm{ref}}$ — is re-fitted, from
# where it was, on all the data so far. With a few dozen comparisons the DPO likelihood often
# has no maximum: an item that won every comparison it took part in has an infinite optimal
# logit, and one that lost every comparison is sent to probability 0 (Azar et al.'s
# over-fitting argument). We therefore fit the maximum a posteriori under a weak Gaussian
# prior on the implicit rewards $u(x) = \log \pi_\theta(x) - \log \pi_{\mathrm{ref}}(x)$:
#
# $$
# \begin{aligned}
# \text{minimise} \quad & \frac{1}{N} \sum_i \ell_{\mathrm{BCE}}\big(\Omega_\theta(x_{A,i}) - \Omega_\theta(x_{B,i}),\, y_i\big) \\
# & + \frac{1}{2 \sigma^2 N} \sum_x \big(u(x) - \bar u\big)^2, \qquad \sigma = 3,
# \end{aligned}
# $$
#
# with `pbde.fit`'s `regularizer`. In the summed objective the prior adds a precision of
# $1/\sigma^2 \approx 0.11$ per item, less than the Fisher information of one comparison between items of
# similar reward ($p(1 - p) \approx 0.2$–$0.25$), and it does not grow with $N$: the optimum is still
# eq. 16 as the data grow. A callable `refit`
# receives `(model, data)` and trains the model in place; `run` then assumes the BCE loss
# when it picks the target.

# %%
PRIOR_SCALE = 3.0


def map_refit(reference):
    """A re-fit for `online.run`: DPO's BCE loss plus a Gaussian prior on log π_θ/π_ref."""
    log_reference = reference.log_prob(support).detach()

    def refit(model, data):
        def prior(m):
            u = m.density.log_prob(support) - log_reference
            return ((u - u.mean()) ** 2).sum() / (2 * PRIOR_SCALE**2 * len(data))

        return pbde.fit(model, data, steps=STEPS, lr=LR, regularizer=prior, progress=False)

    return refit


def start_model(problem):
    """A DPO model whose density starts at π_ref."""
    return pbde.Annotator(
        Categorical(probs=problem["reference"].prob(support).detach()), problem["behavior"]
    )


# %% [markdown]
# ## The loop at equal budgets
#
# Every strategy gets the same schedule of queries (64, 64, 128, …, 2048: 4096 in all) and
# the same seeds, so their first round is identical wherever the first proposal is ($\pi_{\mathrm{ref}}$
# for the static, on-policy and active loops). `result.kl` holds $\mathrm{KL}(\pi^* \,\|\, \pi_\theta)$ after each round;
# `result.queries_to_reach(kl=..., stay=True)` is the cumulative budget from which the KL stays
# below a threshold.


# %%
def median_queries(values):
    """Median over seeds; a seed that never reached the threshold counts as +∞."""
    median = statistics.median(math.inf if v is None else v for v in values)
    return "never" if math.isinf(median) else f"{median:g}"


curves = {}
for name, problem in problems.items():
    curves[name] = {}
    for label, make_proposal in strategies.items():
        results = [
            online.run(
                start_model(problem),
                problem["annotator"],
                rounds=len(ROUNDS),
                queries_per_round=list(ROUNDS),
                proposal=make_proposal(),
                refit=map_refit(problem["reference"]),
                seed=seed,
                progress=False,
            )
            for seed in range(SEEDS)
        ]
        kls = np.array([r.kl for r in results])  # (seeds, rounds)
        gaps = torch.cat([(r.data.xa - r.data.xb).abs() for r in results])
        curves[name][label] = {
            "queries": results[0].queries,
            "initial": results[0].initial_kl,
            "median": np.median(kls, 0),
            "low": kls.min(0),
            "high": kls.max(0),
            "neighbours": (gaps == 1).double().mean().item(),
            "choosing": sum(r.selection_seconds for r in results) / (SEEDS * len(ROUNDS)),
            "reached": median_queries(
                [r.queries_to_reach(kl=KL_THRESHOLD, stay=True) for r in results]
            ),
        }

print(f"{SEEDS} seed(s); budget {sum(ROUNDS)} queries in {len(ROUNDS)} rounds of {ROUNDS}")
print(
    f"queries until KL(π* ‖ π_θ) stays ≤ {KL_THRESHOLD} (median) | final KL (median) | "
    "pairs of neighbours |x_A − x_B| = 1 | seconds per round choosing the pairs"
)
for name in problems:
    print(f"  {name}  (KL at the start: {curves[name]['static']['initial']:.3f})")
    for label, curve in curves[name].items():
        final = curve["median"][-1]
        print(
            f"    {label:<24} {curve['reached']:>6} | {final:.4f} | {curve['neighbours']:6.1%} | "
            f"{curve['choosing']:.3f}"
        )

# %% [markdown]
# ## The picture
#
# Left, the two references and the common optimum. Middle and right, $\mathrm{KL}(\pi^* \,\|\, \pi_\theta)$ against
# the cumulative number of queries for each strategy: the median over the seeds, the band
# from the best to the worst seed.

# %%
colors = dict(
    zip(strategies, ("tab:gray", "tab:blue", "tab:green", "tab:orange", "tab:olive"), strict=True)
)
fig, axes = plt.subplots(
    1, 3, figsize=(14, 5.6), dpi=120, gridspec_kw={"width_ratios": [0.8, 1, 1]}
)
axes[2].sharey(axes[1])  # the two KL panels on one scale
ax = axes[0]
width = 0.27
for offset, (label, values, color) in enumerate(
    (
        ("π_ref (covers π*)", problems["π_ref covers π*"]["reference"], "tab:purple"),
        ("π_ref (misses π*)", problems["π_ref misses π*"]["reference"], "tab:brown"),
        ("π* ∝ π_ref·exp(r/η)", problems["π_ref covers π*"]["target"], "tab:red"),
    )
):
    probs = values.prob(support).detach().double().numpy()
    ax.bar(x.numpy() + (offset - 1) * width, probs, width, color=color, label=label)
ax.set_xlabel("item x")
ax.set_ylabel("probability")
ax.set_xticks(x.numpy())
ax.set_title("The two references and the common optimum", fontsize=10)
ax.legend(frameon=False, fontsize=9)

floor = 1e-4  # a KL can touch 0 on a log axis
for ax, (name, by_strategy) in zip(axes[1:], curves.items(), strict=True):
    for label, curve in by_strategy.items():
        queries = [0.5 * ROUNDS[0], *curve["queries"]]  # the start, drawn half a round early
        median = np.maximum([curve["initial"], *curve["median"]], floor)
        ax.plot(queries, median, marker="o", ms=4, color=colors[label], label=label)
        if SEEDS > 1:
            ax.fill_between(
                queries,
                np.maximum([curve["initial"], *curve["low"]], floor),
                np.maximum([curve["initial"], *curve["high"]], floor),
                color=colors[label],
                alpha=0.15,
                linewidth=0,
            )
    ax.axhline(KL_THRESHOLD, color="black", ls="--", lw=1, label=f"KL = {KL_THRESHOLD:g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ticks = [0.5 * ROUNDS[0], *np.cumsum(ROUNDS)]
    ax.set_xticks(ticks, ["start", *(f"{t:g}" for t in ticks[1:])])
    ax.minorticks_off()
    ax.set_xlabel("annotator queries (cumulative)")
    start = next(iter(by_strategy.values()))["initial"]
    ax.set_title(f"{name}  (KL(π* ‖ π_ref) = {start:.2f})", fontsize=10)
axes[1].set_ylabel("KL(π* ‖ π_θ)")
handles, labels = axes[1].get_legend_handles_labels()
fig.legend(  # below the panels, off the bands
    handles,
    labels,
    loc="lower center",
    ncol=len(labels),
    title=f"median of {SEEDS} seeds" + (" (band: min–max)" if SEEDS > 1 else ""),
    frameon=False,
    fontsize=9,
    title_fontsize=9,
)
fig.suptitle(
    f"Iterative DPO on a bandit (β = η = 1): each proposal of pairs at a budget of {sum(ROUNDS)}"
    " queries"
)
fig.tight_layout(rect=(0, 0.1, 1, 1))
fig.savefig(FIGURES / "annotator_in_the_loop.png")
plt.close(fig)
print(f"wrote {FIGURES / 'annotator_in_the_loop.png'} in {time.perf_counter() - began:.1f} s")

# %% [markdown]
# ![KL to the optimum against annotator queries](../images/tutorials/annotator_in_the_loop.png)
#
# **What the numbers show.** When $\pi_{\mathrm{ref}}$ covers $\pi^*$, *iterating buys nothing.* The static,
# on-policy and main + enhancer loops stay below $\mathrm{KL} = 0.05$ after 256 queries (medians), and
# after 4096 the static loop (0.0022) and main + enhancer (0.0021) end lower than on-policy
# (0.0063, within the spread of the seeds). Pairs from a uniform $\pi_{\mathrm{ref}}$ compare every item with
# every other equally often, which is already a good design; drawing them from the model moves
# queries away from the low-reward items, whose logits then rest on fewer comparisons.
#
# When $\pi_{\mathrm{ref}}$ misses $\pi^*$, *iterating needs eight times fewer queries.* The static loop needs
# the whole budget (median 4096 queries) to stay below 0.05 and ends at 0.023, with a seed
# still above 0.1 (the grey band); on-policy and main + enhancer get there after 512 queries
# and end at 0.0044 and 0.0038. The KL weighs each item by $\pi^*$, so what matters is how well
# the logits of items 5–7 are pinned down. Under $\pi_{\mathrm{ref}}$ those items are 3 %, 2 % and 1 % of
# the draws, so most static queries compare items 0–3, which $\pi^*$ barely cares about, and the
# few that involve item 7 set it against items 0–2, which it beats with probability $\sigma(5)$ to
# $\sigma(7)$, 0.993 to 0.999: a label that is almost certain carries almost no information (one
# comparison's Fisher information about $\Omega(x_A) - \Omega(x_B)$ is $p(1 - p)$ under eq. 9). Iterating
# moves the queries to where the current model — and soon $\pi^*$ — puts its mass, and compares
# items of similar reward, whose labels are informative. This is the case RLHF is in: the
# pretrained model rarely writes the responses the annotator likes best.
#
# *Active selection saves queries where random pairs waste them; uncertainty sampling stalls.*
# Choosing from the same on-policy candidates by what the posterior expects to learn reaches
# $\mathrm{KL} = 0.05$ after 256 queries on both bandits (medians): no sooner than the random
# proposals when $\pi_{\mathrm{ref}}$ covers $\pi^*$, where uniform pairs are already a good design,
# and after half the queries of on-policy and main + enhancer when $\pi_{\mathrm{ref}}$ misses $\pi^*$.
# It ends lowest or level with the best (0.0012; and 0.0037 against 0.0038 after 4096 queries).
# The budgets double from round to round, so a median moves by a whole round on small
# differences: an earlier run of this page, different only in floating-point rounding, reached
# 0.05 after 128 queries on the first bandit. Choosing costs a fraction of a second per round
# here (the last column: 0.17 and 0.36 s on a busy 2-core CPU) against milliseconds for the
# others: worth it when a query costs a person's attention, not
# when labels are free. Uncertainty sampling also gets to 0.05 early (128 and 256 queries) but then
# flattens out near 0.01 (0.0105 and 0.0098 at the end). The last column of the table but one
# shows why: 95–97 % of its queries compare neighbours, the pairs whose label the model finds
# closest to a coin flip, against 22–31 % for the random proposals. Neighbour comparisons
# chain the items along a path, and the error in $\log \pi(7) - \log \pi(0)$ is the sum of seven
# estimated steps: the most uncertain label is not the most informative query about $\pi$ as a
# whole. The posterior's criterion asks about neighbours somewhat more often than random pairs
# (35 % and 43 %), but it also asks about the long-range pairs that fix the chain's ends, and
# once a pair's direction is pinned down it stops asking about it.
#
# Active selection cannot do much when there is little to choose between. On two items there
# is one distinct pair. On the three-armed bandit of `pbde reproduce online` ($r = (1, 0.5, 0)$,
# $\eta = 1$) even the best possible design needs about 0.65 of the queries of uniform random pairs
# for the same expected KL once the fit is close (`benchmarks/bench_active.py` prints this
# bound), so halving the queries to a small KL is out of reach there. And with a deterministic
# annotator the labels carry only a ranking: the BCE fit runs off to infinite logits, and so
# does the posterior built around it.
#
# ## Why the enhancer explores: on-policy without the prior
#
# Take away the prior (a plain `refit` dict: `pbde.fit` keyword arguments) and run on-policy
# DPO once on the hard problem. Maximum likelihood on a few dozen pairs sends the items that
# lost their comparisons to (nearly) zero mass; the on-policy sampler then hardly draws them
# again, so no later query corrects them.

# %%
hard = problems["π_ref misses π*"]
for label in ("on-policy", "main + enhancer (T = 3)"):
    result = online.run(
        start_model(hard),
        hard["annotator"],
        rounds=len(ROUNDS),
        queries_per_round=list(ROUNDS),
        proposal=strategies[label](),
        refit={"steps": STEPS, "lr": LR},
        seed=0,
        progress=False,
    )
    counts = torch.bincount(torch.cat([result.data.xa, result.data.xb]), minlength=ITEMS)
    first = slice(0, ROUNDS[0])  # the data are pooled in order: round 1 comes first
    first_counts = torch.bincount(
        torch.cat([result.data.xa[first], result.data.xb[first]]), minlength=ITEMS
    )
    learned = result.model.density.prob(support).detach().double().numpy()
    print(f"{label}, no prior: KL per round {np.round(result.kl, 3).tolist()}")
    print(f"  appearances of each item in round 1: {first_counts.tolist()}")
    print(f"  appearances of each item in all {sum(ROUNDS)} queries: {counts.tolist()}")
    print(f"  learned π_θ = {np.round(learned, 4).tolist()}")

# %% [markdown]
# Without the prior, on-policy DPO gets stuck. The first fit, on 64 pairs from $\pi_{\mathrm{ref}}$ in which
# items 5–7 turn up only seven times, already puts almost all the mass on the highest items;
# from then on the sampler hardly draws the low ones (50 of item 0's 51 appearances and 36 of
# item 1's 37 are in round 1), their logits are never corrected, and items 0–4 end with a
# total mass of about 0.001 where $\pi^*$ puts 0.21. After 128 queries the KL *rises*, to 1.17
# after 4096. The same loop with the enhancer ($T = 3$) and the same plain fit keeps proposing
# the neglected items from the flattened $\pi_\theta^{1/3}$ (361 and 330 appearances of items 0 and 1)
# and recovers (KL 0.004). This is why Xiong et al. pair a main agent that exploits with an
# enhancer that explores — and why the comparison above used a prior, so that it measures the
# proposals rather than a fit that does not exist.
#
# ## When the optimum depends on the pairs: `target="pooled"`
#
# Everything above relied on Lemma 1: for one PBDE annotator and the BCE loss the optimum is
# the same for every proposal, so pooling data from a proposal that moves with the model does
# not move the target. That is not true for a `MixtureAnnotator` (eq. 25) or for the IPO loss.
# IPO's optimum is the ΨPO optimum with $\Psi$ the identity (Azar et al., eqs. 6–9),
#
# $$
# \pi(x) \propto \pi_{\mathrm{ref}}(x)\, \exp\big(\tau^{-1}\, \mathbb{E}_{x' \sim \mu}[p^*(x \succ x')]\big),
# $$
#
# which depends on $\mu$, the distribution of the other item of the pair. With `target=None`,
# `run` refuses (Lemma 1 does not apply); `target="pooled"` recomputes, after every round,
# the optimum for the query-weighted mixture of the pair distributions the proposals actually
# used (from each proposal's `pair_masses`; `Active` and `BestVsWorst` have none). We fit IPO
# ($\tau = 0.1$) on the hard bandit, static and on-policy.

# %%
TAU = 0.1
ipo_refit = {"loss": "ipo", "tau": TAU, "steps": STEPS, "lr": LR}
try:
    online.run(start_model(hard), hard["annotator"], rounds=1, queries_per_round=8, refit=ipo_refit)
except ValueError as error:
    print(f"target=None: ValueError: {str(error)[:90]}…")

pooled = {}
for label in ("static", "on-policy"):
    pooled[label] = online.run(
        start_model(hard),
        hard["annotator"],
        rounds=len(ROUNDS),
        queries_per_round=list(ROUNDS),
        proposal=strategies[label](),
        refit=ipo_refit,
        target="pooled",
        seed=0,
        progress=False,
    )

# an independent reference for the static loop: the ΨPO closed form with μ = π_ref
static_optimum = pbde.psipo_optimum(
    hard["annotator"], "identity", TAU, hard["reference"], hard["reference"], support
)
for label, result in pooled.items():
    print(
        f"IPO, {label}: pooled target {np.round(result.target.prob(support).numpy(), 3).tolist()}"
    )
    print(f"  KL(pooled target ‖ π_θ) per round {np.round(result.kl, 4).tolist()}")
print(
    f"TV(static pooled target, ΨPO optimum for μ = π_ref) = "
    f"{pbde.tv(pooled['static'].target, static_optimum, support):.1e}"
)
print(
    f"TV(static pooled target, on-policy pooled target) = "
    f"{pbde.tv(pooled['static'].target, pooled['on-policy'].target, support):.3f}"
)

# %%
fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=120)
width = 0.38
for offset, label, color in ((-0.5, "static", "tab:gray"), (0.5, "on-policy", "tab:blue")):
    result = pooled[label]
    learned = result.model.density.prob(support).detach().double().numpy()
    ax.bar(
        x.numpy() + offset * width,
        learned,
        width,
        color=color,
        alpha=0.6,
        label=f"{label}: learned π_θ",
    )
    ax.plot(
        x.numpy() + offset * width,
        result.target.prob(support).numpy(),
        "o",
        color=color,
        mec="black",
        label=f"{label}: pooled target",
    )
ax.plot(
    x.numpy(),
    hard["reference"].prob(support).detach().numpy(),
    "--",
    color="tab:brown",
    label="π_ref",
)
ax.set_xlabel("item x")
ax.set_ylabel("probability")
ax.plot(
    x.numpy(), closed_form.numpy(), "-", color="tab:red", lw=1, label="π* (DPO's optimum, eq. 13)"
)
ax.set_xticks(x.numpy())
ax.legend(frameon=False, fontsize=9)
ax.set_title(
    f"IPO (τ = {TAU:g}) after {sum(ROUNDS)} queries on the hard bandit: the optimum "
    "depends on the proposal",
    fontsize=10,
)
fig.tight_layout()
fig.savefig(FIGURES / "annotator_in_the_loop_pooled.png")
plt.close(fig)
print(
    f"wrote {FIGURES / 'annotator_in_the_loop_pooled.png'} in {time.perf_counter() - began:.1f} s"
)

# %% [markdown]
# ![IPO's optimum moves with the proposal](../images/tutorials/annotator_in_the_loop_pooled.png)
#
# **What the numbers show.** The static loop's pooled target is the ΨPO closed form for
# $\mu = \pi_{\mathrm{ref}}$ to $10^{-15}$ (an independent check of `target="pooled"`), and it is not the reward's
# ranking: it peaks at item 5 (0.226) and gives item 7 only 0.151, though the annotator prefers
# 7 to 5 with probability $\sigma(2) = 0.88$. Under $\mu = \pi_{\mathrm{ref}}$ four opponents in five are items 0–2,
# so the win rate $\mathbb{E}_\mu[p^*(x \succ x')]$ saturates: 0.92, 0.96 and 0.98 for items 5, 6 and 7. With
# $\tau = 0.1$ the gap between items 5 and 7 is worth $\tau^{-1} \cdot 0.06 = 0.6$ nats, less than the 1 nat by
# which $\pi_{\mathrm{ref}}$ favours item 5, so item 5 wins. On-policy, the opponents come from the model
# itself, more and more items 6 and 7, and the pooled target puts 0.693 on item 7. The two
# destinations are 0.55 apart in total variation, and each fit lands on its own (final KL
# 0.0083 and 0.0044; the on-policy curve is a single seed and not monotone). Neither is $\pi^*$
# (the red line): IPO estimates a different density than DPO.
#
# So, with IPO or with a population of annotators, *iterating changes where you end up*, not
# only how fast: measure against `target="pooled"` — the optimum for the pairs actually
# queried — or you will score the loop against a target it was never aiming at. With one
# Luce annotator and a likelihood loss (DPO, a reward model), Lemma 1 makes the target the
# same for every proposal, and the proposal is purely a matter of query efficiency: draw pairs
# where the target puts its mass, and keep exploring.
