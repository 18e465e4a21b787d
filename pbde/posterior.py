"""A Laplace posterior over an annotator model, and what it says about which pairs to query.

Choosing the pairs an annotator is asked about is the one lever an online loop has over a
static data set. Asking about the pair whose *label* is least certain (the largest binary
entropy of σ(Ω_θ(x_A) − Ω_θ(x_B))) is not that lever: for a model that is sure of nothing yet,
every pair of nearly identical items is a coin flip, and its label says almost nothing about
the model. What a query should reduce is the uncertainty about the *model*. This module keeps a
Gaussian posterior over (some of) the model density's parameters θ and scores candidate pairs
by two criteria:

* **BALD** (Houlsby et al., 2011): the mutual information between the pair's label and θ,
  I(y; θ) = H(E_θ[σ(z)]) − E_θ[H(σ(z))], z = Ω_θ(x_A) − Ω_θ(x_B); high for pairs whose label
  the *posterior members disagree* about, not for pairs every member finds a coin flip;
* **policy** (an expected-improvement criterion, in the spirit of EUBO for preference GPs in
  BoTorch, but measured on the learned density): the expected decrease, from one more label,
  of E_θ[KL(π_θ̂ ‖ π_θ)] ≈ ½·tr(G·Σ), the posterior's spread measured in the KL that the loop
  reports (G = the policy's Fisher matrix on its support). It favours pairs that pin down
  directions of θ that move π where π has mass.

**The posterior.** The Laplace approximation of the BCE likelihood (Dumoulin et al., eq. 11)
at the current fit θ̂, in its Gauss–Newton form: the precision is

    Σ⁻¹ = τ·I + Σ_i w_i·σ'(z_i)·u_i·u_iᵀ,    u_i = ∇_θ Ω(x_A,i) − ∇_θ Ω(x_B,i),

over the pairs already labelled (the labels themselves do not enter, only where the fit is),
with a Gaussian prior of precision τ. ∇_θ Ω(x) = f(x)·∇_θ log π_θ(x), since g does not depend
on θ. For a tabular model (:class:`~pbde.densities.Categorical`) θ is every logit and the
approximation is the usual one; for a network it is a *last-layer* Laplace approximation (the
trailing trainable tensors, up to ``max_parameters`` numbers), the rest held at θ̂.

**Batches.** :func:`select_pairs` picks a batch greedily: after each pick the posterior is
updated as if the pair had been labelled (a rank-one update with its expected Fisher weight),
so a second copy of a pair is worth less than the first and the batch spreads over the
directions the data have not pinned down yet.

When it cannot help: with a **deterministic annotator** the labels have no noise, the BCE
optimum sits at infinite logits and σ'(z) → 0 at the fit, so the posterior stops learning from
the data it has; with a **tiny support** (two items have one distinct pair) there is nothing to
choose; and the criteria are only as good as the posterior — a last-layer approximation of a
network that is far from the target can be confidently wrong.

References:
    Houlsby, Huszár, Ghahramani, Lengyel (2011), Bayesian active learning for classification
    and preference learning, arXiv:1112.5745. Astudillo, Lin, Bakshy, Frazier (2023), qEUBO: a
    decision-theoretic acquisition function for preferential Bayesian optimization.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from pbde._validation import check_positive_number
from pbde.annotators import Annotator
from pbde.data import Preferences
from pbde.support import Support

__all__ = ["LaplacePosterior", "bald", "policy_gain", "select_pairs", "CRITERIA"]

CRITERIA = ("policy", "bald")

# E[h(z)], z ~ N(m, s²), for h of the logistic (σ, σ', H∘σ: functions of scale 1 that are
# constant beyond |z| ≈ 40 to double precision). For s <= 1: Gauss–Hermite,
# Σ_k w_k h(m + √2·s·t_k) / √π. For s > 1 the Hermite nodes, s·√2 apart near the mode, step over
# the logistic's transition: Gauss–Legendre on [−L, L] against the Gaussian density there, and
# the limits of h times the Gaussian mass beyond ±L.
_HERMITE = [torch.as_tensor(a, dtype=torch.float64) for a in np.polynomial.hermite.hermgauss(40)]
_SPAN = 40.0
_LEGENDRE = [torch.as_tensor(a, dtype=torch.float64) for a in np.polynomial.legendre.leggauss(240)]


def _gaussian_expectation(fn, mean: torch.Tensor, variance: torch.Tensor, limits=(0.0, 0.0)):
    """E[fn(z)] for z ~ N(mean, variance), elementwise (see the note above); ``limits``: fn at
    −∞ and +∞."""
    s = variance.clamp_min(0.0).sqrt()
    nodes, weights = _HERMITE
    narrow = (fn(mean[..., None] + math.sqrt(2.0) * s[..., None] * nodes) * weights).sum(-1)
    narrow = narrow / math.sqrt(math.pi)
    wide_rows = s > 1.0
    if not bool(wide_rows.any()):
        return narrow
    m, sw = mean[wide_rows], s[wide_rows]
    z, weights = _LEGENDRE[0] * _SPAN, _LEGENDRE[1] * _SPAN
    standard = (z - m[..., None]) / sw[..., None]
    density = torch.exp(-0.5 * standard**2) / (sw[..., None] * math.sqrt(2 * math.pi))
    normal = torch.distributions.Normal(m, sw)
    below, above = normal.cdf(torch.tensor(-_SPAN)), 1 - normal.cdf(torch.tensor(_SPAN))
    wide = (fn(z) * density * weights).sum(-1) + limits[0] * below + limits[1] * above
    return narrow.masked_scatter(wide_rows, wide)


def _binary_entropy(p: torch.Tensor) -> torch.Tensor:
    return -(torch.xlogy(p, p) + torch.xlogy(1 - p, 1 - p))


def _sigmoid_slope(z: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(z)
    return s * (1 - s)


def bald(mean: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    """I(y; θ) in nats for y ~ Bernoulli(σ(z)), z ~ N(mean, variance): H(E[σ(z)]) − E[H(σ(z))].

    Args:
        mean: the logits' posterior means, any shape.
        variance: their posterior variances, the same shape, >= 0.

    Returns:
        The mutual information, the same shape, in [0, log 2].
    """
    mean, variance = mean.to(torch.float64), variance.to(torch.float64)
    p = _gaussian_expectation(torch.sigmoid, mean, variance, (0.0, 1.0))
    expected_entropy = _gaussian_expectation(
        lambda z: _binary_entropy(torch.sigmoid(z)), mean, variance
    )
    return (_binary_entropy(p) - expected_entropy).clamp_min(0.0)


def policy_gain(mean: torch.Tensor, variance: torch.Tensor, spread: torch.Tensor) -> torch.Tensor:
    """The expected decrease of ½·tr(G·Σ) from one label of a pair: ½·λ·uᵀΣGΣu / (1 + λ·uᵀΣu).

    One label of a pair with feature u adds λ·u·uᵀ to the precision, λ = E[σ'(z)] its expected
    Fisher weight; by the Sherman–Morrison formula Σ drops by λ·Σu·uᵀΣ / (1 + λ·uᵀΣu), and
    ½·tr(G·Σ) — the second-order E_θ[KL(π_θ̂ ‖ π_θ)] — by the value returned.

    Args:
        mean: the pairs' logits at the fit, any shape.
        variance: uᵀΣu, their posterior variances, the same shape.
        spread: uᵀΣGΣu, the same shape.
    """
    mean, variance = mean.to(torch.float64), variance.to(torch.float64)
    weight = _gaussian_expectation(_sigmoid_slope, mean, variance)
    return 0.5 * weight * spread.to(torch.float64) / (1 + weight * variance)


def _trailing_parameters(density, max_parameters: int) -> list[torch.nn.Parameter]:
    """The last trainable tensors of the density, as many as fit in ``max_parameters`` numbers
    (all of them for a small table; the last layer for a network)."""
    chosen: list[torch.nn.Parameter] = []
    total = 0
    for p in reversed([p for p in density.parameters() if p.requires_grad]):
        if chosen and total + p.numel() > max_parameters:
            break
        chosen.append(p)
        total += p.numel()
    if not chosen:
        raise ValueError(
            f"The model density ({type(density).__name__}) has no trainable parameters; a "
            "posterior over it has nothing to describe."
        )
    if total > max_parameters:
        raise ValueError(
            f"The last trainable tensor of the model density has {total} numbers, more than "
            f"'max_parameters'={max_parameters}; raise 'max_parameters'."
        )
    return chosen[::-1]


def _jacobian(values: torch.Tensor, parameters: list[torch.Tensor], chunk: int = 256):
    """∂values/∂parameters, shape ``(len(values), total numbers)``, by batched backward passes."""
    m = values.shape[0]
    rows = []
    for start in range(0, m, chunk):
        size = min(chunk, m - start)
        seeds = torch.zeros(size, m, dtype=values.dtype, device=values.device)
        seeds[torch.arange(size), start + torch.arange(size)] = 1.0
        grads = torch.autograd.grad(
            values,
            parameters,
            grad_outputs=seeds,
            is_grads_batched=True,
            retain_graph=True,
            allow_unused=True,
        )
        rows.append(
            torch.cat(
                [
                    (torch.zeros(size, p.numel()) if g is None else g.reshape(size, -1))
                    .detach()
                    .to(torch.float64)
                    .cpu()
                    for g, p in zip(grads, parameters, strict=True)
                ],
                dim=1,
            )
        )
    return torch.cat(rows)


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


class LaplacePosterior:
    """A Gaussian posterior N(θ̂, Σ) over the model density's trailing parameters, from the
    pairs labelled so far (see the module docstring).

    Args:
        model: the fitted :class:`~pbde.Annotator` (θ̂ is where it is now).
        data: the pairs labelled so far (only ``xa``, ``xb`` and ``weight`` are read), or
            ``None`` for the prior.
        candidates: ``(xa, xb)`` pairs to score, shapes ``(c, *event_shape)``.
        support: where the policy Fisher matrix G is computed (the support or grid the loop
            measures KL on), or ``None`` (the ``"policy"`` criterion is then unavailable).
        prior_precision: τ > 0.
        max_parameters: at most this many numbers of θ (the trailing trainable tensors).

    Attributes:
        covariance: Σ, shape ``(d, d)``, float64.
        features: u = ∇Ω(x_A) − ∇Ω(x_B) of each candidate, shape ``(c, d)``.
        logits: Ω_θ̂(x_A) − Ω_θ̂(x_B) of each candidate, shape ``(c,)``.
        fisher: G = Cov_π[∇ log π] on the support, shape ``(d, d)``, or ``None``.
    """

    def __init__(
        self,
        model: Annotator,
        data: Preferences | None,
        candidates: tuple[torch.Tensor, torch.Tensor],
        *,
        support: Support | None = None,
        prior_precision: float = 1.0,
        max_parameters: int = 512,
    ):
        if not isinstance(model, Annotator):
            raise TypeError(
                f"'model' must be a pbde.Annotator (a density and a behavior). Got "
                f"{type(model).__name__}."
            )
        prior_precision = check_positive_number("prior_precision", prior_precision)
        if isinstance(max_parameters, bool) or not isinstance(max_parameters, int):
            raise ValueError(f"'max_parameters' must be an int >= 1. Got {max_parameters!r}.")
        if max_parameters < 1:
            raise ValueError(f"'max_parameters' must be an int >= 1. Got {max_parameters!r}.")
        if data is not None and not isinstance(data, Preferences):
            raise TypeError(
                f"'data' must be a pbde.Preferences or None. Got {type(data).__name__}."
            )
        xa, xb = candidates
        density, behavior = model.density, model.behavior
        parameters = _trailing_parameters(density, max_parameters)
        blocks = [xa, xb]
        if data is not None:
            blocks += [data.xa.to(xa.device), data.xb.to(xa.device)]
        if support is not None:
            blocks.append(support.points.to(xa.device))
        items, index = torch.unique(_flat(torch.cat(blocks)), dim=0, return_inverse=True)
        items = items.reshape(-1, *xa.shape[1:])
        # ∇ log π(x) = ∇ log π̃(x) − ∇ log Z: the per-item part by batched backward passes
        # through the unnormalized density, the normalizer's gradient once (it cancels in the
        # differences of a constant f and in G, a covariance)
        with torch.enable_grad():
            jacobian = _jacobian(density.unnormalized_log_prob(items), parameters)
        with torch.no_grad():
            log_p = density.log_prob(items)
            f = behavior.constant_f
            f = behavior.f(items).to(torch.float64).cpu() if f is None else torch.tensor(f)
            omega = behavior.omega(log_p, items).to(torch.float64).cpu()
        if behavior.constant_f is None:
            with torch.enable_grad():
                first = items[:1]
                log_z = density.unnormalized_log_prob(first) - density.log_prob(first)
                grads = torch.autograd.grad(log_z.sum(), parameters, allow_unused=True)
            jacobian = jacobian - torch.cat(
                [
                    (torch.zeros(p.numel()) if g is None else g.reshape(-1)).to(torch.float64).cpu()
                    for g, p in zip(grads, parameters, strict=True)
                ]
            )
        features = f.reshape(-1, 1) * jacobian  # ∇Ω(item) = f·∇ log π
        sizes = [b.shape[0] for b in blocks]
        offsets = np.cumsum([0, *sizes])
        ia, ib = index[offsets[0] : offsets[1]].cpu(), index[offsets[1] : offsets[2]].cpu()
        self.features = features[ia] - features[ib]
        self.logits = omega[ia] - omega[ib]
        precision = prior_precision * torch.eye(features.shape[1], dtype=torch.float64)
        if data is not None:
            da, db = index[offsets[2] : offsets[3]].cpu(), index[offsets[3] : offsets[4]].cpu()
            u = features[da] - features[db]
            weight = _sigmoid_slope(omega[da] - omega[db])
            if data.weight is not None:
                weight = weight * data.weight.to(torch.float64).cpu()
            precision = precision + (u * weight[:, None]).T @ u
        self.covariance = torch.linalg.inv(precision)
        self.covariance = 0.5 * (self.covariance + self.covariance.T)
        self.fisher = None
        if support is not None:
            s = index[offsets[-2] : offsets[-1]].cpu()
            with torch.no_grad():
                masses = support.masses(log_p.to(torch.float64).cpu()[s])
            masses = masses / masses.sum()
            score = jacobian[s] - masses @ jacobian[s]
            self.fisher = (score * masses[:, None]).T @ score

    def variance(self) -> torch.Tensor:
        """uᵀΣu of each candidate, shape ``(c,)``: the posterior variance of its logit."""
        return ((self.features @ self.covariance) * self.features).sum(1)


_LAZY = 32  # candidates re-scored per pick before trusting the stored scores


def select_pairs(
    posterior: LaplacePosterior, n: int, criterion: str = "policy", available=None
) -> torch.Tensor:
    """Greedy batch selection: ``n`` distinct candidates, each the best under ``criterion``
    after the posterior has been updated for the ones picked before it.

    Each pick adds its expected Fisher weight λ = E[σ'(z)] to the precision along its feature
    u (Sherman–Morrison: Σ ← Σ − λ·Σu·uᵀΣ / (1 + λ·uᵀΣu)), so the batch does not repeat a
    direction the earlier picks already pinned down; no candidate is picked twice.

    Args:
        posterior: the :class:`LaplacePosterior` holding the candidates.
        n: how many to pick, at most the number of candidates.
        criterion: ``"policy"`` (:func:`policy_gain`) or ``"bald"`` (:func:`bald`).
        available: optional boolean mask of the candidates that may be picked.

    Returns:
        The indices of the picked candidates, in the order picked, shape ``(n,)``.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"'criterion' must be one of {list(CRITERIA)}. Got {criterion!r}.")
    if criterion == "policy" and posterior.fisher is None:
        raise ValueError(
            "criterion='policy' needs the policy's Fisher matrix on a support: give the "
            "posterior a 'support' (a model density with a finite support or grid has one)."
        )
    u = posterior.features
    count = u.shape[0] if available is None else int(available.sum())
    if n > count:
        raise ValueError(f"Cannot pick {n} pairs from {count} candidates; draw a larger pool.")
    # identical candidates share their scores: work on the distinct ones, with multiplicities
    distinct, inverse, counts = torch.unique(
        torch.cat([u, posterior.logits[:, None]], 1), dim=0, return_inverse=True, return_counts=True
    )
    if available is not None:
        counts = torch.zeros(distinct.shape[0], dtype=torch.long).index_add_(
            0, inverse, available.to(torch.long).cpu()
        )
    u, logits = distinct[:, :-1], distinct[:, -1]
    order = torch.argsort(inverse, stable=True)
    if available is not None:  # the picked instances of a distinct candidate: available ones
        order = order[available.cpu()[order]]
    starts = torch.cumsum(counts, 0) - counts
    taken = torch.zeros_like(counts)
    sigma = posterior.covariance.clone()
    a = u @ sigma  # Σu per candidate, as rows
    variance = (a * u).sum(1)
    fisher = posterior.fisher
    if criterion == "policy":
        spread = ((a @ fisher) * a).sum(1)
    del a

    def scores(rows):
        if criterion == "policy":
            return policy_gain(logits[rows], variance[rows], spread[rows])
        return bald(logits[rows], variance[rows])

    # lazy greedy: the stored scores are re-computed only for the leading few; they stay upper
    # bounds as long as a score can only fall when the posterior tightens (BALD's can), and
    # where the leader's fresh score falls below the next stored one, everything is re-scored
    everything = torch.arange(u.shape[0])
    stored = torch.where(taken < counts, scores(everything), -math.inf)
    picked = []
    for _ in range(n):
        lead = torch.topk(stored, min(_LAZY, stored.shape[0])).indices
        fresh = torch.where(taken[lead] < counts[lead], scores(lead), -math.inf)
        stored[lead] = fresh
        j = int(lead[torch.argmax(fresh)])
        if stored[j] < stored.max():
            stored = torch.where(taken < counts, scores(everything), -math.inf)
            j = int(torch.argmax(stored))
        picked.append(int(order[starts[j] + taken[j]]))
        taken[j] += 1
        if taken[j] == counts[j]:
            stored[j] = -math.inf
        weight = float(_gaussian_expectation(_sigmoid_slope, logits[j], variance[j]))
        k = sigma @ u[j]
        scale = weight / (1 + weight * float(variance[j]))
        projection = u @ k  # uᵀΣu_j for every candidate
        if criterion == "policy":  # uᵀΣ'GΣ'u, Σ' = Σ − scale·kkᵀ
            gk = fisher @ k
            spread = (
                spread
                - 2 * scale * projection * (u @ (sigma @ gk))
                + scale**2 * projection**2 * (k @ gk)
            )
        variance = variance - scale * projection**2
        sigma = sigma - scale * torch.outer(k, k)
    return torch.tensor(picked, dtype=torch.long)
