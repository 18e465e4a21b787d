"""ΨPO (Azar et al.): the general preference objective, its optimum, and IPO's population loss.

Azar et al., eq. 6: for a non-decreasing Ψ: [0, 1] → ℝ,

    max_π  E_{y∼π, y′∼μ}[Ψ(p*(y ≻ y′))] − τ·KL(π ‖ π_ref),

whose maximizer is (eqs. 7, 9)

    π*(y) ∝ π_ref(y) · exp(τ⁻¹ · E_{y′∼μ}[Ψ(p*(y ≻ y′))]).

Ψ = logit gives RLHF and DPO (under a Bradley–Terry annotator the optimum is
π_ref · p*^{1/τ}, the same as :func:`pbde.optimal_density` with ``pbde.dpo(τ, π_ref)``); Ψ =
identity gives IPO, whose optimum exists even when preferences are deterministic.
"""

from __future__ import annotations

import torch

from pbde._validation import check_positive_number
from pbde.annotators import PreferenceProcess
from pbde.densities.base import Density, check_density
from pbde.densities.finite import Tabulated
from pbde.support import Support, as_support
from pbde.theory import _check_normalized, _item_masses, _log_density_on, _logit_matrix

__all__ = ["psipo_optimum", "ipo_population_loss", "preference_against"]


def preference_against(annotator: PreferenceProcess, support, proposal=None) -> torch.Tensor:
    """p*(y ≻ μ) = E_{y′∼μ}[p*(y ≻ y′)] for every y of the support, shape ``(n,)`` (float64).

    ``proposal`` is μ: ``None`` (uniform on the support), a Density, or masses of shape ``(n,)``.
    """
    support = as_support(support)
    mu = _behaviour_masses(proposal, support)
    with torch.no_grad():
        probs = torch.sigmoid(_logit_matrix(annotator, support.points))
    return probs @ mu


def psipo_optimum(
    annotator: PreferenceProcess,
    psi,
    tau: float,
    reference: Density,
    proposal,
    support: Support | torch.Tensor,
) -> Tabulated:
    """The maximizer of the ΨPO objective (Azar et al., eqs. 6, 7, 9) on a support or grid.

    Args:
        annotator: any preference process giving p*(y ≻ y′): an :class:`~pbde.Annotator`, a
            :class:`~pbde.MixtureAnnotator`, a :class:`~pbde.DeterministicAnnotator`.
        psi: ``"logit"`` (RLHF/DPO), ``"identity"`` (IPO), or a callable mapping a tensor of
            probabilities to values; it must be non-decreasing on [0, 1].
        tau: KL-regularization strength τ > 0.
        reference: π_ref, normalized on the support.
        proposal: μ, the behaviour policy of the second response: ``None`` (uniform on the
            support), a Density, or a tensor of masses of shape ``(n,)``.
        support: a :class:`~pbde.Support`, :class:`~pbde.Grid` or tensor of items. On a
            :class:`~pbde.SequenceSupport` with prompts each prompt is solved on its own
            (π(· | prompt), μ restricted to the prompt's completions and renormalized).

    Returns:
        A :class:`~pbde.densities.Tabulated` density on the support.

    Raises:
        ValueError: if the optimum does not exist — Ψ = logit (or any Ψ with Ψ(1) = +∞) and
            p*(y ≻ y′) = 1 for some y′ that μ can draw: the objective is unbounded and only the
            limit exists, π(y′) → 0 for every dominated y′, for every τ (Azar et al. §4.2) — or
            if ``psi`` is decreasing, or ``tau`` ≤ 0. (Where Ψ = −∞ only, for items that lose
            for sure, those items get probability 0 and the optimum exists.)

    Example:
        >>> import torch, pbde
        >>> always = pbde.DeterministicAnnotator(torch.tensor([1.0, 0.0]))  # y1 ≻ y2 always
        >>> ref = pbde.densities.Categorical(size=2)
        >>> pi = pbde.psipo_optimum(always, "identity", 1.0, ref, None, torch.arange(2))
        >>> pi.prob(torch.arange(2))  # σ(1/(2τ)), σ(−1/(2τ))
        tensor([0.6225, 0.3775], dtype=torch.float64)
    """
    if not isinstance(annotator, PreferenceProcess):
        raise TypeError(
            f"'annotator' must be a pbde preference process. Got {type(annotator).__name__}."
        )
    tau = check_positive_number("tau", tau)
    check_density("reference", reference)
    support = as_support(support)
    _check_normalized(annotator, support, 1e-3)
    if support.num_groups > 1:  # a conditional support: each prompt on its own
        if isinstance(proposal, torch.Tensor) and proposal.shape != (len(support),):
            _behaviour_masses(proposal, support)  # raises, naming the shape
        log_density = torch.empty(len(support), dtype=torch.float64)
        for index in support.groups():
            part = proposal[index] if isinstance(proposal, torch.Tensor) else proposal
            optimum = psipo_optimum(annotator, psi, tau, reference, part, support.subset(index))
            log_density[index] = optimum.values
        return Tabulated(support, log_density)
    mu = _behaviour_masses(proposal, support)
    with torch.no_grad():
        logits = _logit_matrix(annotator, support.points)
    values = _apply_psi(psi, logits)
    drawn = mu > 0
    # Ψ = −∞ (y loses for sure to some y′ that μ draws) only sends π(y) to 0; Ψ = +∞ (y wins for
    # sure) makes the objective unbounded, so no maximizer exists.
    bad = torch.isnan(values[:, drawn]) | (values[:, drawn] == torch.inf)
    if bool(bad.any()):
        rows, cols = bad.nonzero()[0].tolist()
        col = drawn.nonzero().squeeze(1)[cols].item()
        raise ValueError(
            f"The ΨPO optimum does not exist for psi={_psi_name(psi)!r}: p*(y ≻ y′) is "
            f"{float(torch.sigmoid(logits[rows, col])):g} for the support items {rows} and {col}, "
            "so Ψ is +∞ there and the objective is unbounded: it has no maximizer, only the "
            "limit where every item that loses deterministically gets probability → 0, whatever "
            "τ (Azar et al. §4.2). Use "
            "psi='identity' (IPO), or an annotator with non-deterministic preferences."
        )
    expected = (values[:, drawn] * mu[drawn]).sum(1)  # E_{y′∼μ} Ψ(p*(y ≻ y′)), −∞ allowed
    log_ref = _log_density_on(reference, support)
    log_density = log_ref + expected / tau
    return Tabulated(support, log_density, normalize=True)


def ipo_population_loss(
    model: PreferenceProcess, annotator: PreferenceProcess, tau: float, proposal, support
) -> torch.Tensor:
    """IPO's population loss (Azar et al., eq. 13), differentiable in the model's parameters:

        L(π) = E_{y, y′ ∼ μ} [ (h_π(y, y′) − (p*(y ≻ μ) − p*(y′ ≻ μ)) / τ)² ],

    with h_π the model's preference logits (for IPO, the model behavior is
    ``pbde.dpo(1.0, reference)``, so h_π = log π(y)π_ref(y′) / (π(y′)π_ref(y))). Its minimizer is
    :func:`psipo_optimum` with Ψ = identity; it differs from the expected sampled loss
    (``pbde.losses.ipo``, eq. 17) by a constant (Prop. 3).

    Returns:
        A scalar tensor.
    """
    tau = check_positive_number("tau", tau)
    support = as_support(support)
    mu = _behaviour_masses(proposal, support)
    wins = preference_against(annotator, support, mu)
    h = _logit_matrix(model, support.points)
    target = (wins[:, None] - wins[None, :]) / tau
    return (mu[:, None] * mu[None, :] * (h - target.to(h)) ** 2).sum()


def _behaviour_masses(proposal, support: Support) -> torch.Tensor:
    if isinstance(proposal, torch.Tensor) and proposal.ndim == 2:
        raise ValueError(
            "'proposal' (μ) must be a distribution over single items here: a Density or masses "
            f"of shape ({len(support)},). Got a joint of shape {tuple(proposal.shape)}."
        )
    return _item_masses(proposal, support)


def _apply_psi(psi, probabilities_logits: torch.Tensor) -> torch.Tensor:
    if psi == "logit":
        return probabilities_logits  # logit(σ(h)) = h, exactly (±inf where deterministic)
    probs = torch.sigmoid(probabilities_logits)
    if psi == "identity":
        return probs
    if not callable(psi):
        raise ValueError(f"'psi' must be 'logit', 'identity' or a callable. Got {psi!r}.")
    grid = torch.linspace(0.0, 1.0, 257, dtype=torch.float64)[1:-1]
    on_grid = torch.as_tensor(psi(grid), dtype=torch.float64)
    if bool((on_grid.diff() < -1e-12).any()):
        raise ValueError(
            "'psi' must be non-decreasing on [0, 1]; it decreases somewhere in (0, 1)."
        )
    return torch.as_tensor(psi(probs), dtype=torch.float64)


def _psi_name(psi) -> str:
    return psi if isinstance(psi, str) else getattr(psi, "__name__", "callable")
