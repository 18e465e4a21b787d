r"""Per-pair losses on preference logits.

Every loss is a pure function ``loss(logits, y, **params) -> tensor`` of the model's preference
logits ``h = Ω_θ(x_A) − Ω_θ(x_B)`` (see :meth:`pbde.Annotator.logits`) and the labels ``y`` in
[0, 1]. It returns one value per pair, unreduced: :func:`pbde.fit` reduces.

Each loss is *linear in y*: ``loss(h, y) = y·ℓ(h) + (1 − y)·ℓ(−h)`` where ℓ is the loss of a
pair whose first item won. So a soft label is the expectation over hard labels, and the population
objective under an annotator is the same function evaluated at the annotator's preference
probability; :func:`pbde.optimal_density` relies on this.

Infinite logits are legal input (a :class:`~pbde.DeterministicAnnotator`'s logits are ±inf):
a loss is then 0 where the label agrees with the logit's sign, +inf where it contradicts it
(``bce``, ``hinge``, ``rrhf``) — ``ipo`` is +inf at any infinite logit, the squared distance to a
finite target — and a weight ``y = 0`` or ``1 − y = 0`` times an infinite term counts as 0, never
NaN. NaN logits give NaN. Half-precision logits are computed in float32 (``ipo``'s squares
overflow float16 from |h| ≈ 256) and returned in float32.

Losses are orthogonal to behaviors: DPO is ``bce`` with :func:`pbde.dpo`, IPO is ``ipo`` with
``pbde.dpo(1.0, reference)``, SLiC-HF-direct is ``hinge`` with :func:`pbde.luce`, RSO's variant is
``hinge`` with ``pbde.dpo(1.0, reference)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pbde._validation import check_positive_number, is_validation_enabled

__all__ = ["bce", "ipo", "hinge", "rrhf", "rrhf_ranking", "get"]


def bce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""Binary cross-entropy: the negative PBDE log-likelihood (Dumoulin et al., eq. 1 and 11).

    ``bce(h, y) = −y·log σ(h) − (1 − y)·log σ(−h)``, computed with ``logsigmoid`` so that large
    margins do not overflow.

    Args:
        logits: ``h``, shape ``(n,)``.
        y: labels in [0, 1], shape ``(n,)``.

    Returns:
        Tensor of shape ``(n,)``.
    """
    return -(_weighted(y, F.logsigmoid(logits)) + _weighted(1 - y, F.logsigmoid(-logits)))


def _weighted(weight: torch.Tensor, term: torch.Tensor) -> torch.Tensor:
    """weight·term with 0·(±inf) = 0, so a deterministic annotator's infinite logits give a
    loss of 0 or +inf, never NaN (derivatives at finite logits are unchanged)."""
    return torch.where((weight == 0) & torch.isinf(term), 0.0, weight * term)


def _check_overflow(value, logits, name: str, parameter: float):
    """Raise ``ValueError`` where finite logits gave an infinite loss (while validation is on):
    the parameter, or the logits, overflow the dtype."""
    if is_validation_enabled() and isinstance(value, torch.Tensor):
        overflow = torch.isinf(value) & torch.isfinite(logits)
        if bool(overflow.any()):
            raise ValueError(
                f"The loss overflowed {value.dtype} at finite logits (e.g. "
                f"{float(logits[overflow].reshape(-1)[0])!r}) with '{name}'={parameter!r}: use a "
                "more moderate value or float64 logits."
            )
    return value


def _at_least_float32(value):
    if isinstance(value, torch.Tensor) and value.dtype in (torch.float16, torch.bfloat16):
        return value.float()
    return value


def ipo(logits: torch.Tensor, y: torch.Tensor, tau: float) -> torch.Tensor:
    r"""IPO's squared loss (Azar et al., eq. 17; Dumoulin et al., eq. 23).

    ``ipo(h, y) = y·(h − 1/(2τ))² + (1 − y)·(h + 1/(2τ))²``. For a hard label this is the squared
    distance of the winner-minus-loser margin to 1/(2τ); for a soft label its minimizer in h is
    ``(2y − 1)/(2τ)``. Use it with ``pbde.dpo(1.0, reference)`` (f = 1, g = −log π_ref).

    Args:
        logits: ``h``, shape ``(n,)``.
        y: labels in [0, 1], shape ``(n,)``.
        tau: KL-regularization strength τ > 0.
    """
    tau = check_positive_number("tau", tau)
    target = 1.0 / (2.0 * tau)
    logits, y = _at_least_float32(logits), _at_least_float32(y)
    value = _weighted(y, (logits - target) ** 2) + _weighted(1 - y, (logits + target) ** 2)
    return _check_overflow(value, logits, "tau", tau)


def hinge(logits: torch.Tensor, y: torch.Tensor, delta: float = 1.0) -> torch.Tensor:
    r"""Hinge loss on the margin: SLiC-HF-direct (eq. 20) with :func:`pbde.luce`, RSO (eq. 21)
    with ``pbde.dpo(1.0, reference)``.

    ``hinge(h, y) = y·max(0, δ − h) + (1 − y)·max(0, δ + h)``.

    Args:
        logits: ``h``, shape ``(n,)``.
        y: labels in [0, 1], shape ``(n,)``.
        delta: margin δ >= 0.
    """
    delta = check_positive_number("delta", delta, allow_zero=True)
    logits, y = _at_least_float32(logits), _at_least_float32(y)
    value = _weighted(y, F.relu(delta - logits)) + _weighted(1 - y, F.relu(delta + logits))
    return _check_overflow(value, logits, "delta", delta)


def rrhf(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""RRHF's ranking loss on one pair (Yuan et al.; Dumoulin et al., eq. 19).

    ``rrhf(h, y) = y·max(0, −h) + (1 − y)·max(0, h)``: zero once the preferred item scores at
    least as high. Summed over the pairs of a ranking it is eq. 19 (see :func:`rrhf_ranking`);
    RRHF uses it with :func:`pbde.length_normalized`.
    """
    return hinge(logits, y, delta=0.0)


def rrhf_ranking(scores: torch.Tensor) -> torch.Tensor:
    r"""RRHF's loss for k-wise rankings (Dumoulin et al., eq. 19).

    Args:
        scores: ``Ω_θ`` of the ranked items, shape ``(n, k)``, best first.

    Returns:
        ``Σ_{i<j} max(0, s_j − s_i)`` per ranking, shape ``(n,)``.
    """
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f"'scores' must have shape (n, k) with k >= 2. Got {tuple(scores.shape)}.")
    diff = scores[:, None, :] - scores[:, :, None]  # [n, i, j] = s_j - s_i
    upper = torch.triu(torch.ones_like(diff[0], dtype=torch.bool), diagonal=1)
    return F.relu(diff)[:, upper].sum(-1)


_LOSSES = {"bce": bce, "ipo": ipo, "hinge": hinge, "rrhf": rrhf}


def get(loss):
    """The loss function called ``loss`` (``"bce"``, ``"ipo"``, ``"hinge"``, ``"rrhf"``), or
    ``loss`` itself if it is a callable ``(logits, y, **params) -> per-pair tensor``."""
    if callable(loss):
        return loss
    if loss not in _LOSSES:
        raise ValueError(f"'loss' must be one of {sorted(_LOSSES)} or a callable. Got {loss!r}.")
    return _LOSSES[loss]
