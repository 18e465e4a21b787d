"""The annotator in the loop: online and iterative preference learning (Xiong et al., 2024).

Dumoulin et al. (§6, "Stationarity") draw every pair up front, from π_ref, and leave open whether
alternating between querying the annotator on pairs drawn from the current model and re-fitting
is better, and whether active learning saves queries. Xiong et al. study the same loop for the
KL-regularised bandit, whose optimal policy is the Gibbs policy

    π*(x) ∝ π_ref(x) · exp(r(x)/η)

(Dumoulin et al., eq. 13 with β = η): iterative DPO re-fits a main policy on all the data so far,
each round querying pairs whose second response comes from an exploring "enhancer". A
Bradley–Terry annotator with reward r is the Luce annotator ``pbde.Annotator(Categorical(logits=r))``
(p* ∝ exp(r)), so a DPO model with β = η has exactly this optimum (eq. 16).

:func:`run` is that loop for any model :class:`~pbde.Annotator`, any annotator and any proposal
of pairs. Each round it draws pairs from the proposal, asks the annotator for labels, pools them
with the earlier rounds' data, re-fits with :func:`pbde.fit` and records the divergence between
the model density and the target against the cumulative number of queries.

**Which optimum?** Pooling the rounds' data means fitting to the *mixture* of the rounds'
proposals, and that mixture moves with the model. For a single PBDE annotator and the BCE loss
this does not matter: by Lemma 1 the population optimum is Ω_π = Ω_{p*} + C for *every*
proposal whose pairs connect the support, so a Luce annotator and a DPO model give eq. 16,
π ∝ π_ref · p*^{1/β}, whatever the proposals were (given a model family that can represent
it); that is the default target, and the proposal then only decides how fast the finite-sample
fit gets there — what ``pbde reproduce online`` measures. Otherwise (a
:class:`~pbde.MixtureAnnotator`, the IPO loss) the optimum depends on the pair distribution, and
``target="pooled"`` recomputes it after every round for the query-weighted mixture of the
proposals actually used. A deterministic annotator has no finite optimum under BCE (the logits
run off to infinity); pass the density you hoped to learn as ``target``.

**Language models.** The model density may be a sequence policy (an
:class:`~pbde.densities.Autoregressive` GRU, or a :class:`~pbde.densities.ForcedEOS` GRU or
Hugging Face :class:`~pbde.densities.CausalLM`) with ``support`` a :class:`~pbde.SequenceSupport`:
the policy then labels pairs of its own completions, drawn by enumerating the support (a pair
shares its prompt), and the target is eq. 16 per prompt, computed on the support.

Proposals are callables ``(model, n, generator) -> (xa, xb)``: :class:`Static`,
:class:`OnPolicy`, :class:`MainEnhancer` (with :class:`Tempered`, :class:`BestOfN` or
:class:`RejectionSampled` enhancers), :class:`BestVsWorst` (the RLHFlow recipe) and
:class:`Active`. :func:`rejection_sample` and :func:`multistep_rejection_sample` draw exactly from
π_0 · exp(r/η) for any base density π_0 the library can sample.

**Active queries.** :class:`Active` (``proposal="active"``) chooses, from a pool of candidate
pairs (from the current model, a reference policy, or pairs the user already has), a greedy
batch of the pairs a Laplace posterior over the model says are most informative
(:mod:`pbde.posterior`); :func:`run` passes it the data pooled so far, and records per round the
wall time spent choosing the pairs next to the time spent re-fitting, so the saving in queries
can be weighed against its compute. ``offline`` adds a data set the user already has (Xiong et
al.'s hybrid setting): pooled with the queries in every fit, seen by the posterior, not counted
as queries. How much selection can save is bounded by the problem: on a 3-armed bandit even the
best possible design of pairs needs about 0.65 of the queries of uniform random pairs for the
same expected KL (``benchmarks/bench_active.py`` prints the bound).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Real

import torch
from tqdm.auto import tqdm

from pbde import posterior
from pbde._validation import check_positive_number
from pbde.annotators import Annotator, DeterministicAnnotator, PreferenceProcess
from pbde.data import Preferences
from pbde.densities.base import Density, check_density
from pbde.fit import FitResult, fit
from pbde.support import Grid, SequenceSupport, Support, as_support
from pbde.theory import kl, optimal_density, tv

__all__ = [
    "run",
    "OnlineResult",
    "RoundRecord",
    "Static",
    "OnPolicy",
    "MainEnhancer",
    "Tempered",
    "BestOfN",
    "RejectionSampled",
    "BestVsWorst",
    "Active",
    "RejectionSample",
    "rejection_sample",
    "multistep_rejection_sample",
]

Reward = Callable[[torch.Tensor], torch.Tensor]


# -- rewards, supports, policies ---------------------------------------------------------------


def _as_reward(name: str, reward) -> Reward:
    """A callable ``x -> (batch,)`` from a reward given as a callable, a 1-D tensor of rewards
    of integer item ids, an :class:`~pbde.Annotator` (its Ω) or a
    :class:`~pbde.DeterministicAnnotator` (its score)."""
    if isinstance(reward, Annotator):
        return reward.omega
    if isinstance(reward, DeterministicAnnotator):
        return reward.score
    if isinstance(reward, PreferenceProcess):
        raise TypeError(
            f"'{name}' must be an Annotator or DeterministicAnnotator to be read as a reward "
            f"(a mixture of annotators has no single reward). Got {type(reward).__name__}."
        )
    if isinstance(reward, torch.Tensor):
        if reward.ndim != 1 or not bool(torch.isfinite(reward).all()):
            raise ValueError(
                f"'{name}' as a tensor must be 1-D and finite (one reward per item id). Got "
                f"shape {tuple(reward.shape)}."
            )
        table = reward.detach().clone()
        return lambda x: table.to(x.device)[x]
    if callable(reward):
        return reward
    raise TypeError(
        f"'{name}' must be a callable of x, a 1-D tensor of rewards per item id, or an "
        f"annotator. Got {type(reward).__name__}."
    )


def _reward_of(reward: Reward, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        value = torch.as_tensor(reward(x))
    if value.shape != (x.shape[0],):
        raise ValueError(
            f"The reward must map a batch of {x.shape[0]} items to shape ({x.shape[0]},). Got "
            f"{tuple(value.shape)}."
        )
    return value.to(torch.float64)


def _reward_levels(mu: torch.Tensor, reward: torch.Tensor):
    """The distinct reward levels of a support with masses ``mu``: each item's level index,
    each level's mass, and the cumulative masses F_l = P(level <= l), F_{-1} = 0 first."""
    _, level = torch.unique(reward, return_inverse=True)
    level_mass = torch.zeros(int(level.max()) + 1, dtype=torch.float64).index_add(0, level, mu)
    below = torch.cat([level_mass.new_zeros(1), level_mass.cumsum(0)])
    return level, level_mass, below


def _within_level(mu: torch.Tensor, level: torch.Tensor, level_mass: torch.Tensor):
    """P(item | its level) = μ(a) / μ(level of a): among tied candidates the samplers keep the
    first drawn, whose item is a draw from μ restricted to the level."""
    return torch.where(level_mass[level] > 0, mu / level_mass[level].clamp_min(1e-300), 0.0)


def _own_support(density: Density) -> Support | None:
    """The finite support or grid a density is normalized on (Categorical, Tabulated,
    EnergyModel), or ``None`` (a continuous or sequence density)."""
    support = getattr(density, "support", None)
    if isinstance(support, Support):
        return support
    grid = getattr(density, "grid", None)
    if isinstance(grid, Grid):
        return grid
    return None


def _support_of(density: Density) -> Support:
    """The finite support or grid of a density, for samplers that need to enumerate it."""
    support = _own_support(density)
    if support is not None:
        return support
    raise ValueError(
        f"A {type(density).__name__} has no finite support or grid to enumerate; this needs a "
        "Categorical, Tabulated or EnergyModel density (or give a 'bound' where one is asked; "
        "for a sequence model, give 'support', a pbde.SequenceSupport, where one is asked)."
    )


def _model_density(model) -> Density:
    if not isinstance(model, Annotator):
        raise TypeError(
            f"'model' must be a pbde.Annotator (a density and a behavior). Got "
            f"{type(model).__name__}."
        )
    return model.density


def _sample_tempered(density: Density, temperature: float, n: int, generator) -> torch.Tensor:
    """n draws from density^{1/T}, normalized on the density's support."""
    support = _support_of(density)
    with torch.no_grad():
        log_p = density.log_prob(support.points).to(torch.float64)
        masses = support.masses(log_p / temperature - (log_p / temperature).max()).cpu()
    index = torch.multinomial(masses / masses.sum(), n, replacement=True, generator=generator)
    return support.points[index.to(support.points.device)]


def _tempered_masses(density: Density, temperature: float, support: Support) -> torch.Tensor:
    with torch.no_grad():
        log_p = density.log_prob(support.points).to(torch.float64).cpu() / temperature
    masses = support.masses(log_p - log_p.max())
    return masses / masses.sum()


class _CurrentModel:
    """The policy that samples the model's own density."""

    def __call__(self, model, n, generator):
        return _model_density(model).sample(n, generator=generator)

    def masses(self, model, support):
        return _tempered_masses(_model_density(model), 1.0, support)


class _FixedDensity:
    def __init__(self, density: Density):
        self.density = density

    def __call__(self, model, n, generator):
        return self.density.sample(n, generator=generator)

    def masses(self, model, support):
        return _tempered_masses(self.density, 1.0, support)


def _as_policy(name: str, policy):
    """A policy is a callable ``(model, n, generator) -> items``; a Density samples itself."""
    if policy is None:
        return _CurrentModel()
    if isinstance(policy, Density):
        return _FixedDensity(policy)
    if callable(policy):
        return policy
    raise TypeError(
        f"'{name}' must be None (the current model), a Density or a callable "
        f"(model, n, generator) -> items. Got {type(policy).__name__}."
    )


def _check_count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"'{name}' must be an int >= 1. Got {value!r}.")
    return value


# -- policies for the enhancer -----------------------------------------------------------------


class Tempered:
    """The current model tempered: draws from π_θ^{1/T}, normalized on its support or grid.

    T > 1 flattens (explores), T < 1 sharpens. Needs a Categorical, Tabulated or EnergyModel
    model density.

    Args:
        temperature: T > 0.
    """

    def __init__(self, temperature: float):
        self.temperature = check_positive_number("temperature", temperature)

    def __call__(self, model, n: int, generator=None) -> torch.Tensor:
        return _sample_tempered(_model_density(model), self.temperature, n, generator)

    def masses(self, model, support: Support) -> torch.Tensor:
        """Probability of each support point, shape ``(len(support),)``."""
        return _tempered_masses(_model_density(model), self.temperature, support)

    def __repr__(self) -> str:
        return f"Tempered(temperature={self.temperature:g})"


class BestOfN:
    """Best-of-n: draw n items from the current model and keep the one of highest reward.

    Args:
        n: candidates per draw, >= 1.
        reward: a callable of x, a 1-D tensor of rewards per item id, or an annotator (an
            :class:`~pbde.Annotator`'s Ω, a :class:`~pbde.DeterministicAnnotator`'s score).
    """

    def __init__(self, n: int, reward):
        self.n = _check_count("n", n)
        self.reward = _as_reward("reward", reward)

    def __call__(self, model, n: int, generator=None) -> torch.Tensor:
        candidates = _model_density(model).sample(n * self.n, generator=generator)
        scores = _reward_of(self.reward, candidates).reshape(n, self.n)
        grouped = candidates.reshape(n, self.n, *candidates.shape[1:])
        return grouped[torch.arange(n), scores.argmax(1).to(grouped.device)]

    def masses(self, model, support: Support) -> torch.Tensor:
        """Probability of each support point being the best of n draws from π_θ, exactly:
        with F the distribution function of the reward under π_θ, the best lies on level r
        with probability F(r)^n − F(r⁻)^n, and among tied items in proportion to π_θ."""
        mu = _tempered_masses(_model_density(model), 1.0, support)
        level, level_mass, below = _reward_levels(mu, _reward_of(self.reward, support.points).cpu())
        best_level = below[1:] ** self.n - below[:-1] ** self.n
        return best_level[level] * _within_level(mu, level, level_mass)

    def __repr__(self) -> str:
        return f"BestOfN(n={self.n})"


class RejectionSampled:
    """The current model tilted by a reward: exact draws from π_θ · exp(r/η) by
    :func:`rejection_sample` (the policy-improvement oracle of Xiong et al.).

    Args:
        reward: as for :class:`BestOfN`.
        eta: η > 0.
        bound: an upper bound of the reward; default: its maximum over the model's support.
    """

    def __init__(self, reward, eta: float, *, bound: float | None = None):
        self.reward = _as_reward("reward", reward)
        self.eta = check_positive_number("eta", eta)
        self.bound = bound

    def __call__(self, model, n: int, generator=None) -> torch.Tensor:
        density = _model_density(model)
        return rejection_sample(
            density, self.reward, self.eta, n, bound=self.bound, generator=generator
        ).samples

    def masses(self, model, support: Support) -> torch.Tensor:
        """Probability of each support point under π_θ · exp(r/η), normalized."""
        density = _model_density(model)
        with torch.no_grad():
            log_p = density.log_prob(support.points).to(torch.float64).cpu()
        log_p = log_p + _reward_of(self.reward, support.points).cpu() / self.eta
        masses = support.masses(log_p - log_p.max())
        return masses / masses.sum()

    def __repr__(self) -> str:
        return f"RejectionSampled(eta={self.eta:g})"


# -- proposals of pairs ------------------------------------------------------------------------


class Static:
    """Both items drawn independently from a fixed density, e.g. π_ref (the paper's setting).

    Args:
        density: the density q the pairs are drawn from (x_A, x_B ~ q independently).
    """

    def __init__(self, density: Density):
        self.density = check_density("density", density)

    def __call__(self, model, n: int, generator=None):
        both = self.density.sample(2 * n, generator=generator)
        return both[:n], both[n:]

    def pair_masses(self, model, support: Support) -> torch.Tensor:
        """Q[a, b] = q(a)·q(b) on the support, shape ``(m, m)``."""
        mu = _tempered_masses(self.density, 1.0, support)
        return mu[:, None] * mu[None, :]

    def __repr__(self) -> str:
        return f"Static({type(self.density).__name__})"


class OnPolicy:
    """Both items drawn independently from the current model density π_θ (iterative DPO).

    Without ``support`` the model density samples itself. With a finite ``support`` the pairs are
    drawn from π_θ's masses on it, computed by enumeration: the same law for a density
    normalized there, and the way to draw from one that cannot sample itself (a
    :class:`~pbde.densities.ForcedEOS` language model on a :class:`~pbde.SequenceSupport`). On a
    conditional support (a SequenceSupport with prompts) a pair is a prompt drawn uniformly and
    two completions drawn from π_θ(· | prompt), as in DPO data: its items never mix prompts.

    Args:
        support: optional finite :class:`~pbde.Support` (or tensor of items) to draw from.

    Example:
        >>> import torch, pbde
        >>> support = pbde.SequenceSupport(3, 3)
        >>> lm = pbde.densities.Autoregressive(3, 3)
        >>> xa, xb = pbde.online.OnPolicy(support)(pbde.Annotator(lm), 4)
        >>> xa.shape, xb.shape
        (torch.Size([4, 3]), torch.Size([4, 3]))
    """

    def __init__(self, support: Support | torch.Tensor | None = None):
        self.support = None if support is None else as_support(support)

    def __call__(self, model, n: int, generator=None):
        density = _model_density(model)
        if self.support is None:
            both = density.sample(2 * n, generator=generator)
            return both[:n], both[n:]
        mu = _conditional_masses(density, self.support)
        group = self.support.group_index.cpu()
        first = torch.multinomial(mu, n, replacement=True, generator=generator)
        second = torch.empty_like(first)
        for g in range(self.support.num_groups):  # the second item shares the first's prompt
            rows = torch.nonzero(group[first] == g).reshape(-1)
            if rows.numel():
                within = torch.where(group == g, mu, torch.zeros_like(mu))
                second[rows] = torch.multinomial(
                    within, rows.numel(), replacement=True, generator=generator
                )
        points = self.support.points
        return points[first.to(points.device)], points[second.to(points.device)]

    def pair_masses(self, model, support: Support) -> torch.Tensor:
        """Q[a, b] = π_θ(a)·π_θ(b) on the support, shape ``(m, m)``; on a conditional support
        Q[a, b] = π_θ(a | g)·π_θ(b | g) / G for a and b of the same prompt g (of G), else 0."""
        mu = _conditional_masses(_model_density(model), support)
        if support.num_groups == 1:
            return mu[:, None] * mu[None, :]
        group = support.group_index.cpu()
        same = group[:, None] == group[None, :]
        return torch.where(same, mu[:, None] * mu[None, :] * support.num_groups, 0.0)

    def __repr__(self) -> str:
        return "OnPolicy()" if self.support is None else f"OnPolicy(support={self.support!r})"


def _conditional_masses(density: Density, support: Support) -> torch.Tensor:
    """π(a | group of a) / G on a support of G groups (π(a) on a plain one), float64 on the CPU:
    each group carries 1/G of the mass, whatever the density's own normalization."""
    with torch.no_grad():
        log_p = density.log_prob(support.points).to(torch.float64).cpu()
    log_mass = log_p + support.log_weights.to(log_p.dtype)
    log_total = support.log_integral_by_group(log_p)
    if not bool(torch.isfinite(log_total).all()):
        raise ValueError(
            f"The model density puts no finite mass on some group of the support {support!r}."
        )
    group = support.group_index.cpu()
    return torch.exp(log_mass - log_total[group]) / support.num_groups


class MainEnhancer:
    """x_A from the main agent, x_B from an exploring enhancer (Xiong et al.'s online setting).

    Args:
        enhancer: the policy of the second response: a :class:`Tempered`, :class:`BestOfN` or
            :class:`RejectionSampled` policy, a fixed Density, or any callable
            ``(model, n, generator) -> items``.
        main: the policy of the first response; default the current model.
    """

    def __init__(self, enhancer, main=None):
        if enhancer is None:
            raise TypeError("'enhancer' must be a policy or a Density. Got None.")
        self.enhancer = _as_policy("enhancer", enhancer)
        self.main = _as_policy("main", main)

    def __call__(self, model, n: int, generator=None):
        return self.main(model, n, generator), self.enhancer(model, n, generator)

    def pair_masses(self, model, support: Support) -> torch.Tensor:
        """Q[a, b] = main(a)·enhancer(b), when both policies can tell their masses."""
        for name, policy in (("main", self.main), ("enhancer", self.enhancer)):
            if not callable(getattr(policy, "masses", None)):
                raise ValueError(
                    f"The {name} policy {policy!r} cannot give its masses on the support, so the "
                    "pooled optimum cannot be computed; pass 'target' explicitly."
                )
        return self.main.masses(model, support)[:, None] * self.enhancer.masses(model, support)

    def __repr__(self) -> str:
        return f"MainEnhancer(enhancer={self.enhancer!r})"


class BestVsWorst:
    """The RLHFlow recipe: draw n items from the current model, pair the best with the worst
    under a reward (x_A = best, x_B = worst).

    With the reward model itself as the annotator (a :class:`~pbde.DeterministicAnnotator`) the
    labels are deterministic, the BCE optimum lies at infinite logits and DPO goes greedy
    instead of reaching π_ref · exp(r/η). With a stochastic Bradley–Terry annotator the pairs
    still connect the support and Lemma 1's optimum is unchanged.

    Args:
        n: candidates per pair, >= 2.
        reward: as for :class:`BestOfN`.
    """

    def __init__(self, n: int, reward):
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise ValueError(f"'n' must be an int >= 2. Got {n!r}.")
        self.n = n
        self.reward = _as_reward("reward", reward)

    def __call__(self, model, n: int, generator=None):
        candidates = _model_density(model).sample(n * self.n, generator=generator)
        scores = _reward_of(self.reward, candidates).reshape(n, self.n)
        grouped = candidates.reshape(n, self.n, *candidates.shape[1:])
        rows = torch.arange(n)
        best = grouped[rows, scores.argmax(1).to(grouped.device)]
        worst = grouped[rows, scores.argmin(1).to(grouped.device)]
        return best, worst

    def pair_masses(self, model, support: Support) -> torch.Tensor:
        """Q[a, b] = P(x_A = a, x_B = b), exactly. With levels i <= j of the reward and
        H(i, j) = (F_j − F_{i−1})^n the probability that all n draws lie in levels i … j, the
        worst lies on level i and the best on level j with probability
        H(i, j) − H(i+1, j) − H(i, j−1) + H(i+1, j−1) for i < j; when every draw ties (all on
        level i, probability H(i, i)) both are the first draw, a pair (a, a). Within a level
        the item is drawn in proportion to π_θ."""
        mu = _tempered_masses(_model_density(model), 1.0, support)
        level, level_mass, below = _reward_levels(mu, _reward_of(self.reward, support.points).cpu())
        # H[i, j] = P(all draws in levels i..j) = (F_j − F_{i−1})^n, 0 for i > j
        spans = (below[None, 1:] - below[:-1, None]).clamp_min(0.0)
        h = torch.where(
            torch.ones_like(spans, dtype=torch.bool).triu(), spans**self.n, spans.new_zeros(())
        )
        padded = torch.nn.functional.pad(h, (1, 0, 0, 1))  # H[i+1, ·] and H[·, j−1] as zeros
        exact = h - padded[1:, 1:] - padded[:-1, :-1] + padded[1:, :-1]  # [worst i, best j]
        within = _within_level(mu, level, level_mass)
        q = exact.triu(1)[level][:, level].T * within[:, None] * within[None, :]
        return q + torch.diag(exact.diagonal()[level] * within)

    def __repr__(self) -> str:
        return f"BestVsWorst(n={self.n})"


class Active:
    """Active selection: from a pool of candidate pairs, query those a posterior over the model
    says are worth most (:mod:`pbde.posterior`).

    Each call builds a Laplace posterior over the model density's parameters (every logit of a
    tabular model; the last layer of a network) from the pairs labelled so far (:func:`run`
    passes them), scores the candidates and picks a batch greedily, updating the posterior after
    each pick so that the batch does not repeat itself (no candidate is picked twice).

    Criteria:

    * ``"policy"`` (default): the expected decrease of E_θ[KL(π_θ̂ ‖ π_θ)] from one more label,
      the posterior's spread measured on the policy (:func:`pbde.posterior.policy_gain`);
    * ``"bald"``: the mutual information between the label and the parameters
      (:func:`pbde.posterior.bald`);
    * ``"label_entropy"``: uncertainty sampling, the pairs whose *label* the current model is
      least sure of (the smallest |Ω_θ(x_A) − Ω_θ(x_B)|, identical items last). It needs no
      posterior, and it loses: it keeps asking about nearly identical items.

    When it helps and when it cannot: active selection pays when the pool holds pairs of very
    different value — some whose label is nearly certain or redundant with the data, others that
    pin down directions of the model the data have not; it saves compute-cheap queries only if
    choosing them costs less than asking (each call differentiates the model on every distinct
    item of the pool, the data and the support). How much any choice of pairs can save is a
    property of the problem: near the optimum, the queries a design (a distribution over pairs)
    needs for a given expected KL are proportional to tr(G·I⁻¹), G the policy's Fisher matrix
    and I the Fisher information of one query. On the three-armed bandit of ``pbde reproduce
    online`` (r = (1, .5, 0), η = 1) the best design needs 0.65× the queries of uniform pairs,
    so no rule halves them at small KL. Where the optimum puts mass on items whose labels
    against the bulk are nearly certain (DPO with β > 1 widens the annotator's density: the
    optimum is π_ref times its 1/β-th power, as on the 1-D toy of ``pbde reproduce online`` at β
    = 4), pairs from π_ref or from the model rarely compare two such items, and the best design
    needs a quarter or less of π_ref's queries; there the ``"policy"`` criterion, choosing among
    on-policy candidates, was measured to need about a third of π_ref's queries to KL ≤ 0.05
    (``benchmarks/RESULTS.md``). It cannot help with a deterministic annotator (noise-free
    labels carry only a ranking; the BCE fit and its posterior run off to infinite logits), on a
    tiny support (two items have one distinct pair: nothing to choose), or with a pool that
    holds nothing better than random pairs.

    Args:
        pool: candidate pairs per query, >= 1 (``pool * n`` pairs are drawn to pick ``n``);
            ignored for a fixed pool.
        base: where the candidates come from: a proposal (default :class:`OnPolicy`, the
            current model; ``"static"``-like :class:`Static` or a Density for a reference
            policy), or a fixed pool of pairs the user already has — a
            :class:`~pbde.Preferences` (its labels are not read) or a tuple ``(xa, xb)`` — all
            of which are candidates in every round.
        criterion: ``"policy"``, ``"bald"`` or ``"label_entropy"``.
        score: optional callable ``(model, xa, xb) -> (n,)``, higher = query first, used
            instead of ``criterion`` (top ``n``, no posterior).
        support: where the ``"policy"`` criterion measures the policy's Fisher matrix;
            default: the model density's support or grid.
        prior_precision: τ > 0, the Gaussian prior's precision on the parameters.
        max_parameters: the posterior covers at most this many numbers of the model's
            parameters (its trailing trainable tensors), >= 1.
    """

    #: :func:`run` passes the pooled data (offline and queried) to proposals that read it
    uses_data = True

    def __init__(
        self,
        pool: int = 8,
        base=None,
        *,
        criterion: str = "policy",
        score=None,
        support: Support | torch.Tensor | None = None,
        prior_precision: float = 1.0,
        max_parameters: int = 512,
    ):
        self.pool = _check_count("pool", pool)
        if criterion not in (*posterior.CRITERIA, "label_entropy"):
            raise ValueError(
                f"'criterion' must be one of {[*posterior.CRITERIA, 'label_entropy']}. Got "
                f"{criterion!r}."
            )
        self.criterion = criterion
        self.fixed = None
        if isinstance(base, Preferences):
            self.fixed = (base.xa, base.xb)
        elif isinstance(base, tuple):
            if len(base) != 2 or not all(isinstance(x, torch.Tensor) for x in base):
                raise TypeError("'base' as a tuple must be two tensors (xa, xb).")
            if base[0].shape != base[1].shape or base[0].shape[0] == 0:
                raise ValueError(
                    f"'base' as a tuple (xa, xb) must hold two non-empty tensors of one shape. "
                    f"Got {tuple(base[0].shape)} and {tuple(base[1].shape)}."
                )
            self.fixed = base
        self.base = (
            None
            if self.fixed is not None
            else (OnPolicy() if base is None else _as_proposal("base", base, None))
        )
        if score is not None and not callable(score):
            raise TypeError(f"'score' must be a callable (model, xa, xb) -> (n,). Got {score!r}.")
        self.score = score
        self.support = None if support is None else as_support(support)
        self.prior_precision = check_positive_number("prior_precision", prior_precision)
        self.max_parameters = _check_count("max_parameters", max_parameters)

    def __call__(self, model, n: int, generator=None, *, data: Preferences | None = None):
        support = self.support or _own_support(_model_density(model))
        if self.criterion == "policy" and support is None and self.score is None:
            raise ValueError(
                f"criterion='policy' measures the policy on a finite support or grid, and a "
                f"{type(model.density).__name__} has none: give Active a 'support' or use "
                "criterion='bald'."
            )
        if self.fixed is not None:
            xa, xb = self.fixed
            if xa.shape[0] < n:
                raise ValueError(
                    f"The fixed pool holds {xa.shape[0]} pairs, fewer than the {n} asked for."
                )
        else:
            xa, xb = self.base(model, n * self.pool, generator)
        same = (xa.reshape(xa.shape[0], -1) == xb.reshape(xb.shape[0], -1)).all(-1)
        if self.score is not None or self.criterion == "label_entropy":
            with torch.no_grad():
                if self.score is None:
                    score = -model.logits(xa, xb).abs().to(torch.float64)
                else:
                    score = torch.as_tensor(self.score(model, xa, xb)).to(torch.float64)
            score = torch.where(same.to(score.device), -math.inf, score)
            chosen = torch.topk(score, n).indices.to(xa.device)
            return xa[chosen], xb[chosen]
        belief = posterior.LaplacePosterior(
            model,
            data,
            (xa, xb),
            support=support if self.criterion == "policy" else None,
            prior_precision=self.prior_precision,
            max_parameters=self.max_parameters,
        )
        # identical items say nothing; take them only when nothing else is left
        available = ~same.cpu() if int((~same).sum()) >= n else None
        chosen = posterior.select_pairs(belief, n, self.criterion, available).to(xa.device)
        return xa[chosen], xb[chosen]

    def __repr__(self) -> str:
        source = "fixed pool" if self.fixed is not None else repr(self.base)
        return f"Active(criterion={self.criterion!r}, pool={self.pool}, base={source})"


def _as_proposal(name: str, proposal, reference, support: Support | None = None):
    """A proposal from its name, a Density or a callable; ``support``: where the named on-policy
    proposals draw by enumeration (:class:`OnPolicy` with a support)."""
    if isinstance(proposal, str):
        if proposal == "static":
            if reference is None:
                raise ValueError(
                    "proposal='static' needs a 'reference' density (or a model behavior with "
                    "one reference, like pbde.dpo)."
                )
            return Static(reference)
        if proposal == "on_policy":
            return OnPolicy(support)
        if proposal == "active":
            return Active(base=OnPolicy(support), support=support)
        raise ValueError(
            f"'{name}' as a string must be 'static', 'on_policy' or 'active'. Got {proposal!r}."
        )
    if isinstance(proposal, Density):
        return Static(proposal)
    if callable(proposal):
        return proposal
    raise TypeError(
        f"'{name}' must be 'static', 'on_policy', 'active', a Density or a callable "
        f"(model, n, generator) -> (xa, xb). Got {type(proposal).__name__}."
    )


# -- rejection sampling ------------------------------------------------------------------------


@dataclass
class RejectionSample:
    """What :func:`rejection_sample` and :func:`multistep_rejection_sample` return.

    Attributes:
        samples: exact draws from π_0 · exp(r/η), shape ``(n, *event_shape)``.
        proposals: draws taken from the base density π_0.
        acceptance_rate: the fraction of the draws from π_0 that passed every stage (the
            product of ``stage_acceptance_rates``).
        stage_acceptance_rates: the fraction of each stage's inputs it accepted (one entry for
            the single-step sampler).
        etas: the temperatures of the stages.
    """

    samples: torch.Tensor
    proposals: int
    acceptance_rate: float
    stage_acceptance_rates: tuple[float, ...]
    etas: tuple[float, ...]


def rejection_sample(
    base: Density,
    reward,
    eta: float,
    n: int,
    *,
    bound: float | None = None,
    generator: torch.Generator | None = None,
    max_proposals: int = 10**8,
) -> RejectionSample:
    """Exact draws from π(x) ∝ π_0(x) · exp(r(x)/η) by rejection sampling.

    Proposes x ~ π_0 and accepts it with probability exp((r(x) − M)/η), M ≥ max r: the accepted
    draws follow π_0 · exp(r/η) (the KL-regularised optimum, Dumoulin et al., eq. 13;
    Xiong et al.). The acceptance rate is E_{π_0}[exp((r − M)/η)] = Z_η · e^{−M/η}, which falls
    exponentially as η shrinks.

    Args:
        base: π_0, a density the library can sample.
        reward: a callable of x, a 1-D tensor of rewards per item id, or an annotator (its Ω,
            or a deterministic annotator's score).
        eta: η > 0.
        n: number of samples, >= 1.
        bound: M, an upper bound of the reward on π_0's support; default: the maximum over the
            support of a Categorical / Tabulated / EnergyModel base. A reward above it raises.
        generator: optional ``torch.Generator``.
        max_proposals: stop with ``RuntimeError`` beyond this many draws from π_0.

    Returns:
        :class:`RejectionSample`.

    Example:
        >>> import torch, pbde
        >>> pi_0 = pbde.densities.Categorical(size=3)
        >>> out = pbde.online.rejection_sample(pi_0, torch.tensor([1.0, 0.5, 0.0]), 1.0, 1000,
        ...                                    generator=torch.Generator().manual_seed(0))
        >>> out.samples.shape, abs(out.acceptance_rate - 0.66) < 0.05  # (e + e^½ + 1)/(3e)
        (torch.Size([1000]), True)
    """
    eta = check_positive_number("eta", eta)
    return multistep_rejection_sample(
        base, reward, (eta,), n, bound=bound, generator=generator, max_proposals=max_proposals
    )


def multistep_rejection_sample(
    base: Density,
    reward,
    etas: Sequence[float],
    n: int,
    *,
    bound: float | None = None,
    generator: torch.Generator | None = None,
    max_proposals: int = 10**8,
) -> RejectionSample:
    """Multi-step rejection sampling through tempered targets η_1 > η_2 > … > η_K = η.

    Stage k turns draws from π_{k−1} ∝ π_0 · exp(r/η_{k−1}) (π_0 itself for k = 1) into draws
    from π_k ∝ π_0 · exp(r/η_k) by accepting each with probability
    exp((r − M)·(1/η_k − 1/η_{k−1})). Its acceptance rate E_{π_{k−1}}[exp((r − M)Δ_k)] is higher
    than the single-step rate E_{π_0}[exp((r − M)/η)] (each stage takes a smaller step, from a
    proposal already tilted towards high reward); the rates telescope, so their product — the
    fraction of draws from π_0 that survive every stage — equals the single-step rate. The final
    draws are exact.

    Args:
        base: π_0, a density the library can sample.
        reward: as for :func:`rejection_sample`.
        etas: the stage temperatures, strictly decreasing, all > 0; the last is η.
        n: number of samples, >= 1.
        bound: as for :func:`rejection_sample`.
        generator: optional ``torch.Generator``.
        max_proposals: stop with ``RuntimeError`` beyond this many draws from π_0.

    Returns:
        :class:`RejectionSample` with one acceptance rate per stage.
    """
    check_density("base", base)
    reward_fn = _as_reward("reward", reward)
    if isinstance(etas, (str, bytes)) or not isinstance(etas, Sequence) or len(etas) == 0:
        raise TypeError(f"'etas' must be a non-empty sequence of numbers. Got {etas!r}.")
    etas = tuple(check_positive_number("etas", eta) for eta in etas)
    if any(a <= b for a, b in zip(etas, etas[1:], strict=False)):
        raise ValueError(f"'etas' must be strictly decreasing. Got {list(etas)!r}.")
    n = _check_count("n", n)
    max_proposals = _check_count("max_proposals", max_proposals)
    if bound is None:
        bound = float(_reward_of(reward_fn, _support_of(base).points).max())
    elif isinstance(bound, bool) or not isinstance(bound, Real) or not math.isfinite(bound):
        raise ValueError(f"'bound' must be a finite number or None. Got {bound!r}.")
    bound = float(bound)
    steps = [1.0 / etas[0]] + [1.0 / b - 1.0 / a for a, b in zip(etas, etas[1:], strict=False)]
    inputs = [0] * len(etas)
    outputs = [0] * len(etas)
    accepted: list[torch.Tensor] = []
    proposals = 0
    count = 0
    batch = max(n, 256)
    while count < n:
        if proposals >= max_proposals:
            raise RuntimeError(
                f"Rejection sampling drew {proposals} proposals (max_proposals={max_proposals}) "
                f"and accepted {count} of the {n} samples asked for; the acceptance rate is too "
                "low (a small eta or a loose bound)."
            )
        x = base.sample(batch, generator=generator)
        proposals += batch
        r = _reward_of(reward_fn, x)
        if bool((r > bound + 1e-9 * max(1.0, abs(bound))).any()):
            raise ValueError(
                f"The reward exceeds 'bound'={bound!r}: got {float(r.max())!r}. Give a larger "
                "bound."
            )
        for stage, delta in enumerate(steps):
            inputs[stage] += x.shape[0]
            if x.shape[0] == 0:
                break
            u = torch.rand(x.shape[0], generator=generator, dtype=torch.float64)
            keep = u < torch.exp((r - bound) * delta).cpu()
            x, r = x[keep.to(x.device)], r[keep.to(r.device)]
            outputs[stage] += x.shape[0]
        accepted.append(x)
        count += x.shape[0]
        # aim the next batch at what is still missing, from the rate seen so far
        rate = count / proposals
        batch = int(min(max(256, 1.2 * (n - count) / max(rate, 1e-6)), 10**6))
    samples = torch.cat(accepted)[:n]
    rates = tuple(o / i if i else math.nan for o, i in zip(outputs, inputs, strict=True))
    return RejectionSample(samples, proposals, count / proposals, rates, etas)


# -- the loop ----------------------------------------------------------------------------------


@dataclass
class RoundRecord:
    """One round of :func:`run`.

    Attributes:
        round: its index, from 1.
        queries: annotator queries so far (cumulative).
        kl: KL(target ‖ π_θ) after the round's fit.
        tv: total variation between target and π_θ after the round's fit.
        seconds: wall time since the loop started.
        fit_loss: the fit's final objective (``None`` if the refit callable returned no
            :class:`~pbde.FitResult`).
        selection_seconds: wall time this round spent choosing its pairs (drawing candidates
            and, for :class:`Active`, the posterior and the greedy batch).
        fit_seconds: wall time of this round's re-fit.
    """

    round: int
    queries: int
    kl: float
    tv: float
    seconds: float
    fit_loss: float | None = None
    selection_seconds: float = 0.0
    fit_seconds: float = 0.0


@dataclass
class OnlineResult:
    """What :func:`run` returns.

    Attributes:
        model: the model, trained in place.
        data: all the comparisons queried, pooled.
        history: one :class:`RoundRecord` per round.
        target: the density the divergences are measured to (the last one, for
            ``target="pooled"``).
        initial_kl: KL(target ‖ π_θ) before the first query (to the first target).
        initial_tv: the same in total variation.
        seconds: wall time of the whole loop.
        offline_pairs: comparisons of the ``offline`` data set, pooled with the queries in
            every fit but not counted as queries (0 without one).
    """

    model: Annotator
    data: Preferences
    history: list[RoundRecord]
    target: Density
    initial_kl: float
    initial_tv: float
    seconds: float
    offline_pairs: int = 0

    @property
    def selection_seconds(self) -> float:
        """Wall time spent choosing the pairs, all rounds together."""
        return sum(r.selection_seconds for r in self.history)

    @property
    def fit_seconds(self) -> float:
        """Wall time spent re-fitting, all rounds together."""
        return sum(r.fit_seconds for r in self.history)

    @property
    def queries(self) -> list[int]:
        """Cumulative queries after each round."""
        return [r.queries for r in self.history]

    @property
    def kl(self) -> list[float]:
        """KL(target ‖ π_θ) after each round."""
        return [r.kl for r in self.history]

    @property
    def tv(self) -> list[float]:
        """Total variation to the target after each round."""
        return [r.tv for r in self.history]

    def queries_to_reach(
        self, *, kl: float | None = None, tv: float | None = None, stay: bool = False
    ) -> int | None:
        """The cumulative queries after the first round whose KL (or TV) is ≤ the threshold, or
        ``None`` if no round reached it. Give exactly one of ``kl``, ``tv``.

        With ``stay=True``: the first round from which every later round stays ≤ the threshold
        (small data sets can dip below it by luck and climb back).
        """
        if (kl is None) == (tv is None):
            raise ValueError("Give exactly one of 'kl' and 'tv'.")
        name, threshold = ("kl", kl) if kl is not None else ("tv", tv)
        threshold = check_positive_number(name, threshold, allow_zero=True)
        values = self.kl if kl is not None else self.tv
        below = [value <= threshold for value in values]
        for index, record in enumerate(self.history):
            if below[index] and (not stay or all(below[index:])):
                return record.queries
        return None


DEFAULT_REFIT = {"steps": 300, "lr": 1e-2}


def run(
    model: Annotator,
    annotator: PreferenceProcess,
    *,
    rounds: int,
    queries_per_round: int | Sequence[int],
    proposal="on_policy",
    refit: dict | Callable | None = None,
    reference: Density | None = None,
    support: Support | torch.Tensor | None = None,
    target: Density | str | None = None,
    offline: Preferences | None = None,
    seed: int = 0,
    progress: bool | None = None,
) -> OnlineResult:
    """Online preference learning: query, pool, re-fit, measure — ``rounds`` times.

    Each round t draws ``queries_per_round`` pairs from ``proposal`` (given the current model),
    labels them with ``annotator.label``, appends them to the data of the earlier rounds
    (:meth:`pbde.Preferences.concat`), re-fits the model on all of it (warm start) and records
    KL(target ‖ π_θ) and TV against the cumulative number of queries. With an on-policy
    proposal and a DPO model this is iterative DPO (Xiong et al.); with a static π_ref proposal
    it is the paper's offline setting, queried in instalments.

    The default target is the optimum of Lemma 1 (eq. 16 for a DPO model under a Luce
    annotator), the same for every proposal whose pairs connect the support, so pooling
    rounds from changing proposals does not move it. For a process where the optimum depends
    on the pairs (a :class:`~pbde.MixtureAnnotator`, the IPO loss), ``target="pooled"`` uses
    the query-weighted mixture of the rounds' pair distributions (each proposal's
    ``pair_masses`` at the model it drew from).

    Args:
        model: the :class:`~pbde.Annotator` being fitted (its density π_θ and behavior).
        annotator: who labels the pairs: an :class:`~pbde.Annotator`,
            :class:`~pbde.MixtureAnnotator` or :class:`~pbde.DeterministicAnnotator`.
        rounds: number of query-and-refit rounds, >= 1.
        queries_per_round: pairs per round, an int >= 1, or one int per round.
        proposal: ``"on_policy"`` (default), ``"static"`` (pairs from ``reference``),
            ``"active"`` (:class:`Active`: the pairs a posterior over the model says are
            worth most, among on-policy candidates), a Density (static), or a
            callable ``(model, n, generator) -> (xa, xb)`` such as :class:`MainEnhancer`,
            :class:`BestVsWorst`. A callable with ``uses_data = True`` (as :class:`Active`) is
            also given ``data=``, the comparisons pooled so far (``offline`` included; ``None``
            before the first).
        refit: how to re-fit after each round: a dict of :func:`pbde.fit` keyword arguments
            (default ``{"steps": 300, "lr": 1e-2}``; round t uses ``seed + t``), or a callable
            ``(model, data) -> anything`` that trains ``model`` in place (taken to use the BCE
            loss when choosing the target; pass ``target`` otherwise).
        reference: π_ref, the density ``proposal="static"`` draws both items from; default:
            the model behavior's reference (``reference`` of :func:`pbde.dpo`), if it has
            exactly one.
        support: where densities are compared; default: the model density's support or grid.
            For a language model, a :class:`~pbde.SequenceSupport`; the named on-policy
            proposals (``"on_policy"``, ``"active"``) then draw by enumerating it
            (:class:`OnPolicy` with a support), and on one with prompts a pair shares a prompt.
        target: ``None`` (Lemma 1's optimum; needs a single :class:`~pbde.Annotator` and the
            BCE loss), ``"pooled"`` (the optimum for the pooled proposals, recomputed each
            round, for the loss of a refit dict, or BCE when ``refit`` is a callable; needs
            proposals with ``pair_masses``), or a Density.
        offline: comparisons the user already has (the hybrid setting of Xiong et al.: an
            offline data set plus online queries): pooled with the queries in every fit and
            seen by :class:`Active`'s posterior, not counted as queries. The model is taken as
            it is (fit it on ``offline`` first if it should start from there).
        seed: seed of the draws and labels (and of the fits, ``seed + t``).
        progress: show a progress bar over rounds; default: when standard error is a terminal.

    Returns:
        :class:`OnlineResult`.

    Raises:
        TypeError: bad argument types (e.g. a model that is not an :class:`~pbde.Annotator`).
        ValueError: bad values; ``target=None`` where Lemma 1 does not apply.

    Example:
        >>> import torch, pbde
        >>> truth = pbde.Annotator(pbde.densities.Categorical(logits=torch.tensor([1.0, .5, 0.])))
        >>> pi_0 = pbde.densities.Categorical(size=3)
        >>> model = pbde.Annotator(pbde.densities.Categorical(size=3), pbde.dpo(1.0, pi_0))
        >>> result = pbde.online.run(model, truth, rounds=2, queries_per_round=64,
        ...                          refit={"steps": 50, "lr": 0.1}, progress=False)
        >>> result.queries
        [64, 128]
    """
    density = _model_density(model)
    if not isinstance(annotator, PreferenceProcess):
        raise TypeError(
            f"'annotator' must be a pbde.Annotator, MixtureAnnotator or DeterministicAnnotator. "
            f"Got {type(annotator).__name__}."
        )
    rounds = _check_count("rounds", rounds)
    sizes = _round_sizes(queries_per_round, rounds)
    if reference is None and len(model.behavior.references) == 1:
        reference = model.behavior.references[0]
    elif reference is not None:
        check_density("reference", reference)
    refit_fn = _as_refit(refit, seed)
    support = _support_of(density) if support is None else as_support(support)
    # a language model on a SequenceSupport: the named on-policy proposals draw from its masses
    # there (exact for a ForcedEOS model, which may not sample itself; pairs share a prompt)
    enumerated = support if isinstance(support, SequenceSupport) else None
    proposal = _as_proposal("proposal", proposal, reference, enumerated)
    loss, loss_kwargs = _refit_loss(refit)
    pooled = isinstance(target, str) and target == "pooled"
    if pooled:
        if not callable(getattr(proposal, "pair_masses", None)):
            raise ValueError(
                f"target='pooled' needs a proposal that gives its pair masses (Static, OnPolicy, "
                f"BestVsWorst, MainEnhancer of Tempered / BestOfN / RejectionSampled / Density). "
                f"Got {proposal!r}."
            )
        pooled_weights = torch.zeros(len(support), len(support), dtype=torch.float64)
    elif target is None:
        if not isinstance(annotator, Annotator) or loss != "bce":
            raise ValueError(
                "target=None uses Lemma 1's optimum, which needs a single pbde.Annotator and "
                f"the BCE loss; got {type(annotator).__name__} with loss {loss!r}. Pass "
                "target='pooled' (the optimum for the pooled proposals) or a Density."
            )
        target = optimal_density(annotator, model.behavior, support)
    elif isinstance(target, str):
        raise ValueError(f"'target' must be None, 'pooled' or a Density. Got {target!r}.")
    else:
        check_density("target", target)
    if offline is not None and not isinstance(offline, Preferences):
        raise TypeError(
            f"'offline' must be a pbde.Preferences or None. Got {type(offline).__name__}."
        )
    if offline is not None and offline.weight is not None:
        raise ValueError(
            "'offline' must have no weights: the queried comparisons carry none, and the pooled "
            "data are fitted as one set."
        )
    if offline is not None and len(offline) == 0:
        offline = None

    generator = torch.Generator().manual_seed(seed)
    if progress is None:
        progress = sys.stderr.isatty()
    began = time.perf_counter()
    first_target = target
    if pooled:  # the first target: the optimum for the first round's proposal
        first_target = _pooled_optimum(
            annotator, model, support, proposal.pair_masses(model, support), loss, loss_kwargs
        )
    initial_kl, initial_tv = _divergences(first_target, density, support)
    parts: list[Preferences] = [] if offline is None else [offline]
    history: list[RoundRecord] = []
    queries = 0
    reads_data = getattr(proposal, "uses_data", False)
    with tqdm(total=rounds, desc="online", disable=not progress) as bar:
        for t, size in enumerate(sizes, start=1):
            if pooled:
                pooled_weights += size * proposal.pair_masses(model, support)
            chosen_at = time.perf_counter()
            if reads_data:
                data = None if not parts else Preferences.concat(parts)
                xa, xb = proposal(model, size, generator, data=data)
            else:
                xa, xb = proposal(model, size, generator)
            selection_seconds = time.perf_counter() - chosen_at
            parts.append(annotator.label(xa, xb, generator=generator))
            queries += size
            data = parts[0] if len(parts) == 1 else Preferences.concat(parts)
            fit_at = time.perf_counter()
            outcome = refit_fn(model, data, t)
            fit_seconds = time.perf_counter() - fit_at
            if pooled:
                target = _pooled_optimum(
                    annotator, model, support, pooled_weights, loss, loss_kwargs
                )
            divergence_kl, divergence_tv = _divergences(target, density, support)
            history.append(
                RoundRecord(
                    t,
                    queries,
                    divergence_kl,
                    divergence_tv,
                    time.perf_counter() - began,
                    outcome.final_loss if isinstance(outcome, FitResult) else None,
                    selection_seconds,
                    fit_seconds,
                )
            )
            bar.update(1)
            if progress:
                bar.set_postfix(queries=queries, kl=f"{divergence_kl:.4f}")
    return OnlineResult(
        model,
        data,
        history,
        target,
        initial_kl,
        initial_tv,
        time.perf_counter() - began,
        0 if offline is None else len(offline),
    )


def _round_sizes(queries_per_round, rounds: int) -> list[int]:
    if isinstance(queries_per_round, int) and not isinstance(queries_per_round, bool):
        return [_check_count("queries_per_round", queries_per_round)] * rounds
    if isinstance(queries_per_round, Sequence) and not isinstance(queries_per_round, str):
        sizes = [_check_count("queries_per_round", q) for q in queries_per_round]
        if len(sizes) != rounds:
            raise ValueError(
                f"'queries_per_round' as a sequence must have one entry per round ({rounds}). "
                f"Got {len(sizes)}."
            )
        return sizes
    raise TypeError(
        f"'queries_per_round' must be an int or a sequence of ints. Got {queries_per_round!r}."
    )


def _as_refit(refit, seed: int):
    if refit is None:
        refit = DEFAULT_REFIT
    if isinstance(refit, dict):
        kwargs = dict(refit)
        base_seed = kwargs.pop("seed", seed)
        kwargs.setdefault("progress", False)

        def refit_fn(model, data, t):
            return fit(model, data, seed=base_seed + t, **kwargs)

        return refit_fn
    if callable(refit):
        return lambda model, data, t: refit(model, data)
    raise TypeError(
        f"'refit' must be a dict of pbde.fit arguments or a callable (model, data). Got "
        f"{type(refit).__name__}."
    )


_FIT_ARGUMENTS = {
    "steps",
    "lr",
    "batch_size",
    "schedule",
    "seed",
    "progress",
    "regularizer",
    "device",
    "checkpoint",
    "checkpoint_every",
}


def _refit_loss(refit):
    """The loss (and its parameters) a refit dict trains with."""
    if refit is None:
        return "bce", {}
    if not isinstance(refit, dict):  # a callable is taken to train with the BCE loss
        return "bce", {}
    loss = refit.get("loss", "bce")
    kwargs = {k: v for k, v in refit.items() if k not in _FIT_ARGUMENTS and k != "loss"}
    return loss, kwargs


def _pooled_optimum(annotator, model, support, weights, loss, loss_kwargs) -> Density:
    return optimal_density(
        annotator, model.behavior, support, proposal=weights, loss=loss, **loss_kwargs
    )


def _divergences(target: Density, density: Density, support: Support) -> tuple[float, float]:
    with torch.no_grad():
        return kl(target, density, support), tv(target, density, support)
