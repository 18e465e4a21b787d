"""What a fit should converge to: globally optimal model densities and divergences.

For a finite support or a grid over a bounded domain, :func:`optimal_density` computes the
density π that minimizes the population objective

    J(π) = Σ_{a,b} q(a, b) · E_{y ~ annotator(a, b)} [ loss(Ω_π(a) − Ω_π(b), y) ],

for any annotator process, any model behavior Ω_π = f·log π + g and any loss of
:mod:`pbde.losses` that is smooth and strictly convex in the logits (``"bce"``, ``"ipo"``).

Because every loss is linear in y, the inner expectation is ``loss(h, P(a ≻ b))``, and J depends
on π only through the scores w = Ω_π, and only through their differences. J is convex in w, and
every w maps back to exactly one normalized π: log π = (w − g − C)/f with the unique C that
normalizes it (f > 0 makes the integral strictly monotone in C — the argument of Theorem 2's
proof). So the optimum is found by convex minimization over w, then that map:

* a single PBDE annotator with the BCE loss: the minimum is w = Ω_{p*} in closed form
  (Dumoulin et al., Lemma 1), for any proposal with full support;
* anything else (a :class:`~pbde.MixtureAnnotator`, the IPO loss, …): Newton's method on w in
  float64, with the proposal q as an argument, since the optimum then depends on it.
"""

from __future__ import annotations

import sys

import torch

from pbde import losses as _losses
from pbde.annotators import Annotator, MixtureAnnotator, PreferenceProcess
from pbde.behavior import PBDE
from pbde.densities.base import Density, check_density
from pbde.densities.finite import Tabulated
from pbde.support import Support, as_support

#: largest support the general (pairwise) solver accepts: it holds n×n float64 matrices
MAX_PAIRWISE_SUPPORT = 4096


def optimal_density(
    annotator: PreferenceProcess,
    behavior: PBDE,
    support: Support | torch.Tensor,
    *,
    proposal: Density | torch.Tensor | None = None,
    loss: str = "bce",
    normalization_atol: float = 1e-3,
    **loss_kwargs,
) -> Tabulated:
    """The globally optimal model density for an annotator process and a model behavior.

    Args:
        annotator: the process that labels the pairs (an :class:`~pbde.Annotator`, a
            :class:`~pbde.MixtureAnnotator`, or any :class:`~pbde.annotators.PreferenceProcess`).
        behavior: the model's behavior Ω_π = f·log π + g (:class:`~pbde.PBDE`).
        support: a :class:`~pbde.Support` (finite: sums), a :class:`~pbde.Grid` (bounded
            interval: trapezoid integrals), a :class:`~pbde.SequenceSupport` (all sequences
            up to a length), or a tensor of items. On a SequenceSupport with prompts the
            densities are p(completion | prompt) and each prompt is solved on its own: pairs
            compare completions of one prompt, the proposal is restricted to the prompt's items
            (and renormalized), and the optimum is normalized prompt by prompt.
        proposal: the distribution q of pairs, needed when the optimum depends on it
            (misspecified models, non-BCE losses): a :class:`~pbde.densities.Density` (x_A, x_B
            drawn independently from it), a tensor of shape ``(n,)`` of masses on the support
            (independent draws), or ``(n, n)`` joint masses. Default: uniform on the support.
        loss: ``"bce"`` (the PBDE likelihood, default) or ``"ipo"`` (give ``tau``), or a
            callable loss that is smooth and strictly convex in the logits.
        normalization_atol: how far from 1 the integral of each annotator density over the
            support may be (densities must be normalized where the support covers them).
        **loss_kwargs: parameters of the loss (``tau`` for ``"ipo"``).

    Returns:
        A :class:`~pbde.densities.Tabulated` density on the support.

    Raises:
        TypeError: bad argument types.
        ValueError: an annotator density not normalized on the support; a proposal of the wrong
            shape or with negative mass; a support too large for the pairwise solver; no finite
            optimum (e.g. deterministic preferences under the BCE loss, whose optimum lies at
            infinite logits).

    Example:
        >>> import torch, pbde
        >>> p_star = pbde.densities.Categorical(probs=torch.tensor([0.2, 0.3, 0.5]))
        >>> ref = pbde.densities.Categorical(size=3)
        >>> pi = pbde.optimal_density(pbde.Annotator(p_star), pbde.dpo(2.0, ref), torch.arange(3))
        >>> pi.prob(torch.arange(3))  # ∝ π_ref · p*^{1/β}  (eq. 16)
        tensor([0.2628, 0.3218, 0.4154], dtype=torch.float64)
    """
    if not isinstance(annotator, PreferenceProcess):
        raise TypeError(
            f"'annotator' must be a pbde.Annotator or MixtureAnnotator. Got "
            f"{type(annotator).__name__}."
        )
    if not isinstance(behavior, PBDE):
        raise TypeError(f"'behavior' must be a pbde.PBDE. Got {type(behavior).__name__}.")
    support = as_support(support)
    if loss in ("hinge", "rrhf") or loss in (_losses.hinge, _losses.rrhf):
        name = loss if isinstance(loss, str) else loss.__name__
        raise ValueError(
            f"'loss'={name!r} is piecewise linear in the logits: its population optimum is not "
            "unique, so optimal_density cannot compute it. Use a smooth, strictly convex loss "
            "('bce', 'ipo' with tau) or a callable one."
        )
    loss_fn = _losses.get(loss)
    _check_normalized(annotator, support, normalization_atol)
    if support.num_groups == 1:
        log_density = _optimal_log_density(
            annotator, behavior, support, proposal, loss_fn, loss_kwargs
        )
    else:  # a conditional support: each prompt on its own (pairs share a prompt)
        _check_proposal_shape(proposal, support)
        log_density = torch.empty(len(support), dtype=torch.float64)
        for index in support.groups():
            log_density[index] = _optimal_log_density(
                annotator,
                behavior,
                support.subset(index),
                _proposal_of_group(proposal, index),
                loss_fn,
                loss_kwargs,
            )
    return Tabulated(support, log_density)  # normalized by construction; Tabulated checks it


def _optimal_log_density(annotator, behavior, support, proposal, loss_fn, loss_kwargs):
    """log π* on a support with one group: Lemma 1, or Newton's method on the scores."""
    points = support.points
    with torch.no_grad():
        if isinstance(annotator, Annotator) and loss_fn is _losses.bce:
            scores = annotator.omega(points).to(torch.float64)  # Lemma 1
        else:
            logits = _logit_matrix(annotator, points)
            weights = _pair_weights(proposal, support)
            scores = _minimize_scores(logits, weights, loss_fn, loss_kwargs)
        return _scores_to_log_density(scores, behavior, points, support)


def _check_proposal_shape(proposal, support: Support) -> None:
    n = len(support)
    if isinstance(proposal, torch.Tensor) and proposal.shape not in ((n,), (n, n)):
        raise ValueError(
            f"'proposal' as a tensor must have shape ({n},) or ({n}, {n}). Got "
            f"{tuple(proposal.shape)}."
        )


def _proposal_of_group(proposal, index: torch.Tensor):
    """The proposal restricted to one prompt's items (masses renormalized later)."""
    if isinstance(proposal, torch.Tensor):
        return proposal[index] if proposal.ndim == 1 else proposal[index][:, index]
    return proposal


def kl(
    p: Density,
    q: Density,
    support: Support | torch.Tensor,
    *,
    atol: float = 1e-3,
    by_prompt: bool = False,
) -> float | torch.Tensor:
    """KL(p ‖ q) = ∫ p log(p/q) on a support or grid.

    Both densities are evaluated on the support and renormalized there; each must already
    integrate to 1 within ``atol`` (otherwise the support does not cover it: ``ValueError``).
    Points where p is 0 contribute 0 (0·log 0 = 0); points where q is 0 and p is not make it inf.

    On a conditional support (a :class:`~pbde.SequenceSupport` with prompts) both are
    p(completion | prompt), normalized prompt by prompt: the result is the mean over prompts
    of KL(p(· | prompt) ‖ q(· | prompt)) (prompts weighted equally), or with ``by_prompt=True``
    a float64 tensor of shape ``(num_prompts,)`` of each prompt's KL.
    """
    log_p, log_q, support = _on_support(p, q, support, atol)
    mass = support.masses(log_p)
    terms = torch.where(mass > 0, mass * (log_p - log_q), torch.zeros_like(mass))
    return _reduce_by_group(terms, support, by_prompt)


def tv(
    p: Density,
    q: Density,
    support: Support | torch.Tensor,
    *,
    atol: float = 1e-3,
    by_prompt: bool = False,
) -> float | torch.Tensor:
    """Total variation ½ ∫ |p − q| on a support or grid (same normalization rules, and the same
    mean over prompts on a conditional support, as :func:`kl`)."""
    log_p, log_q, support = _on_support(p, q, support, atol)
    terms = 0.5 * (support.masses(log_p) - support.masses(log_q)).abs()
    return _reduce_by_group(terms, support, by_prompt)


def mass_beyond(
    density: Density, support: Support, *, by_prompt: bool = False
) -> float | torch.Tensor:
    """The mass a language model puts outside a :class:`~pbde.SequenceSupport`: on sequences
    longer than its ``max_length`` (and on tokens outside its vocabulary), 1 − Σ_x p(x).

    A :class:`~pbde.densities.ForcedEOS` density is normalized on the support; for it this is
    the mass its wrapped model puts beyond the maximum length, which the forced form gives to
    the sequences of exactly ``max_length`` tokens. An :class:`~pbde.densities.Autoregressive`
    of the support's ``max_length`` forces EOS itself: 0.

    Args:
        density: p, a sequence density (or a ForcedEOS wrapper of one).
        support: a SequenceSupport of its items.
        by_prompt: on a support with prompts, each prompt's mass beyond, a float64 tensor of
            shape ``(num_prompts,)``, instead of their mean.

    Returns:
        A float in [0, 1] (up to round-off), or the tensor of ``by_prompt``.
    """
    from pbde.densities.sequence import ForcedEOS

    check_density("density", density)
    support = as_support(support)
    if isinstance(density, ForcedEOS):
        density = density.density
    log_mass = support.log_integral_by_group(_log_density_on(density, support))
    beyond = -torch.expm1(log_mass)
    return beyond if by_prompt else float(beyond.mean())


# -- helpers ---------------------------------------------------------------------------------


def _log_density_on(density: Density, support: Support) -> torch.Tensor:
    with torch.no_grad():
        return density.log_prob(support.points).to(torch.float64).cpu()


def _check_mass(name: str, log_mass: torch.Tensor, atol: float, support: Support) -> None:
    """Each group's integral (shape ``(num_groups,)``) must be 1 within ``atol``."""
    from pbde.support import SequenceSupport

    masses = log_mass.exp()
    bad = ~((masses - 1.0).abs() <= atol)
    if not bool(bad.any()):
        return
    group = int(bad.nonzero()[0])
    where = f" for prompt {group}" if support.num_groups > 1 else ""
    hint = "the support does not cover the density, or it is not normalized."
    if isinstance(support, SequenceSupport):
        hint = (
            "a language model puts mass on sequences longer than the support's "
            f"max_length={support.max_length}; wrap it in pbde.densities.ForcedEOS(model, "
            f"{support.max_length}, eos={support.eos}) to force EOS there (pbde.mass_beyond "
            "gives the mass beyond)."
        )
    raise ValueError(
        f"'{name}' must be normalized on the support (integral 1 within {atol}){where}. Got "
        f"{float(masses[group])!r}: {hint}"
    )


def _check_normalized(process: PreferenceProcess, support: Support, atol: float) -> None:
    for module in process.modules():
        if isinstance(module, Annotator):
            log_density = _log_density_on(module.density, support)
            _check_mass(
                "annotator density", support.log_integral_by_group(log_density), atol, support
            )


def _on_support(p, q, support, atol):
    support = as_support(support)
    index = support.group_index
    out = []
    for name, density in (("p", p), ("q", q)):
        check_density(name, density)
        log_d = _log_density_on(density, support)
        log_mass = support.log_integral_by_group(log_d)
        _check_mass(name, log_mass, atol, support)
        out.append(log_d - log_mass[index])
    return out[0], out[1], support


def _reduce_by_group(terms: torch.Tensor, support: Support, by_prompt: bool):
    if support.num_groups == 1:
        return terms.sum()[None] if by_prompt else float(terms.sum())
    sums = torch.zeros(support.num_groups, dtype=terms.dtype).index_add_(
        0, support.group_index, terms
    )
    return sums if by_prompt else float(sums.mean())


def _logit_matrix(process: PreferenceProcess, points: torch.Tensor) -> torch.Tensor:
    """H[a, b] = the process's logits for the pair (points[a], points[b]), float64, (n, n)."""
    n = points.shape[0]
    if n > MAX_PAIRWISE_SUPPORT:
        raise ValueError(
            f"'support' has {n} points; the pairwise solver accepts at most "
            f"{MAX_PAIRWISE_SUPPORT} (it holds n×n matrices). Use a coarser Grid."
        )
    if isinstance(process, Annotator):
        omega = process.omega(points).to(torch.float64)
        return omega[:, None] - omega[None, :]
    if isinstance(process, MixtureAnnotator):
        parts = [_logit_matrix(a, points) for a in process.annotators]
        return process.combine(torch.stack(parts, dim=-1))
    index_a = torch.arange(n).repeat_interleave(n)
    index_b = torch.arange(n).repeat(n)
    return process.logits(points[index_a], points[index_b]).to(torch.float64).reshape(n, n)


def _item_masses(proposal, support: Support) -> torch.Tensor:
    """μ[a] = mass of item a under a proposal over single items (None: uniform on the support;
    a Density; or masses of shape (n,)), float64, normalized."""
    n = len(support)
    if proposal is None:
        masses = support.log_weights.exp()
    elif isinstance(proposal, Density):
        masses = support.masses(_log_density_on(proposal, support))
    elif isinstance(proposal, torch.Tensor) and proposal.shape == (n,):
        masses = proposal.detach().to(torch.float64).cpu()
    else:
        raise TypeError(
            f"'proposal' must be None, a Density or a tensor of shape ({n},). Got "
            f"{type(proposal).__name__}."
        )
    return _normalized_masses(masses)


def _pair_weights(proposal, support: Support) -> torch.Tensor:
    """Q[a, b] = probability of the pair (a, b) under the proposal, float64, sums to 1: x_A and
    x_B drawn independently from :func:`_item_masses`, or a joint of shape (n, n)."""
    n = len(support)
    if isinstance(proposal, torch.Tensor) and proposal.shape not in ((n,), (n, n)):
        raise ValueError(
            f"'proposal' as a tensor must have shape ({n},) or ({n}, {n}). Got "
            f"{tuple(proposal.shape)}."
        )
    if isinstance(proposal, torch.Tensor) and proposal.shape == (n, n):
        return _normalized_masses(proposal.detach().to(torch.float64).cpu())
    masses = _item_masses(proposal, support)
    return masses[:, None] * masses[None, :]


def _normalized_masses(masses: torch.Tensor) -> torch.Tensor:
    if (
        not bool(torch.isfinite(masses).all())
        or bool((masses < 0).any())
        or float(masses.sum()) <= 0
    ):
        raise ValueError("'proposal' must give finite, non-negative masses with a positive total.")
    return masses / masses.sum()


def _minimize_scores(
    logits, weights, loss_fn, loss_kwargs, *, max_iter=100, tol=1e-11, step_tol=1e-8
):
    """Newton's method for min_w Σ Q_ab loss(w_a − w_b, P_ab), with P = σ(logits)."""
    target = torch.sigmoid(logits)
    n = target.shape[0]
    w = torch.zeros(n, dtype=torch.float64)
    gauge = torch.full((n, n), 1.0 / n, dtype=torch.float64)  # fixes the free additive constant

    def derivatives(w, order):
        with torch.enable_grad():
            h = (w[:, None] - w[None, :]).requires_grad_(True)
            value = loss_fn(h, target, **loss_kwargs)
            if order == 0:
                return (weights * value).sum()
            (d1,) = torch.autograd.grad(value.sum(), h, create_graph=True)
            (d2,) = torch.autograd.grad(d1.sum(), h)
        return (weights * value).sum().detach(), (weights * d1).detach(), weights * d2

    for _ in range(max_iter):
        objective, d1, d2 = derivatives(w, 2)
        gradient = d1.sum(1) - d1.sum(0)
        hessian = torch.diag(d2.sum(1) + d2.sum(0)) - d2 - d2.T
        try:
            step = -torch.linalg.solve(hessian + gauge * float(hessian.diagonal().mean()), gradient)
        except torch.linalg.LinAlgError:
            raise ValueError(
                "No finite optimum: the objective became flat (singular Hessian) on the way to "
                "infinite logits, the signature of deterministic preferences (P ∈ {0, 1}) under "
                "the BCE loss."
            ) from None
        # converged only if the Newton step is small too: on the way to infinite logits (BCE
        # with deterministic preferences) the gradient vanishes like e^{-margin} while the
        # steps stay of size ~1, so a gradient test alone stops at a spurious finite "optimum"
        if float(gradient.abs().max()) < tol and float(step.abs().max()) < step_tol:
            break
        t = 1.0
        while t > 1e-10:
            candidate = w + t * step
            if float(derivatives(candidate, 0)) <= float(objective) + 1e-4 * t * float(
                gradient @ step
            ):
                break
            t *= 0.5
        w = w + t * step
    else:
        raise ValueError(
            f"No finite optimum was found: Newton's method did not converge in {max_iter} "
            f"iterations (the score spread grew to {float(w.max() - w.min()):.3g}). This is the "
            "signature of deterministic preferences (P ∈ {0, 1}) under the BCE loss, whose "
            "optimum lies at infinite logits."
        )
    return w - w.mean()


def _scores_to_log_density(scores, behavior: PBDE, points, support: Support) -> torch.Tensor:
    """log π = (w − g − C)/f, with the unique C that makes π integrate to 1 on the support."""
    f = behavior.f(points).to(torch.float64).cpu()
    shifted = scores.cpu() - behavior.g(points).to(torch.float64).cpu()
    if behavior.constant_f is not None:
        log_density = shifted / f
        return log_density - support.log_integral(log_density)

    import scipy.optimize  # here, not at import time: it costs ~0.4 s and only this needs it

    def log_mass(c: float) -> float:
        return float(support.log_integral((shifted - c) / f))

    lo, hi = -1.0, 1.0
    while log_mass(lo) < 0:
        lo *= 2
    while log_mass(hi) > 0:
        hi *= 2
    c = scipy.optimize.brentq(
        log_mass, lo, hi, xtol=1e-14, rtol=4 * sys.float_info.epsilon, maxiter=500
    )
    return (shifted - c) / f
