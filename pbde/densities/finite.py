"""Densities on finite supports and tabulated densities."""

from __future__ import annotations

import torch
from torch import nn

from pbde._validation import check_finite, check_tensor
from pbde.densities.base import Density
from pbde.support import Grid, Support, as_support


class Categorical(Density):
    """A learnable distribution over the items ``0, 1, ..., size - 1``.

    Parameterized by unconstrained logits (``log_prob = log_softmax(logits)``).

    Args:
        logits: initial logits, shape ``(size,)``; or
        probs: initial probabilities, shape ``(size,)``, positive (normalized here); or
        size: number of items, uniform start.

    Raises:
        ValueError: if not exactly one of the arguments is given, or it is invalid.

    Example:
        >>> d = Categorical(probs=torch.tensor([0.2, 0.8]))
        >>> d.prob(torch.tensor([1, 0]))
        tensor([0.8000, 0.2000], grad_fn=<ExpBackward0>)
    """

    def __init__(
        self,
        logits: torch.Tensor | None = None,
        *,
        probs: torch.Tensor | None = None,
        size: int | None = None,
    ):
        super().__init__()
        given = [
            name
            for name, v in (("logits", logits), ("probs", probs), ("size", size))
            if v is not None
        ]
        if len(given) != 1:
            raise ValueError(
                f"Give exactly one of 'logits', 'probs' or 'size'. Got {given or 'none'}."
            )
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise ValueError(f"'size' must be an int >= 1. Got {size!r} instead.")
            logits = torch.zeros(size)
        elif probs is not None:
            check_tensor("probs", probs)
            check_finite("probs", probs)
            if probs.ndim != 1 or bool((probs <= 0).any()):
                raise ValueError(
                    f"'probs' must be a 1-D tensor of positive values. Got {probs.tolist()!r}."
                )
            logits = torch.log(probs / probs.sum())
        else:
            check_tensor("logits", logits)
            check_finite("logits", logits)
            if logits.ndim != 1:
                raise ValueError(f"'logits' must be 1-D. Got shape {tuple(logits.shape)}.")
        if not logits.is_floating_point():  # integer logits; float32/float64 are kept as given
            logits = logits.to(torch.get_default_dtype())
        self.logits = nn.Parameter(logits.detach().clone())

    @property
    def size(self) -> int:
        return self.logits.shape[0]

    @property
    def support(self) -> Support:
        """The items ``0..size-1`` with the counting measure."""
        return Support(torch.arange(self.size, device=self.logits.device))

    def log_probs(self) -> torch.Tensor:
        """log-probabilities of all items, shape ``(size,)``."""
        return torch.log_softmax(self.logits, dim=0)

    def _validate_items(self, x: torch.Tensor) -> None:
        super()._validate_items(x)
        if x.is_floating_point() or x.is_complex():
            raise TypeError(f"'x' must hold integer item ids for Categorical. Got dtype {x.dtype}.")
        bad = (x < 0) | (x >= self.size)
        if bool(bad.any()):
            raise ValueError(
                f"'x' must hold item ids in [0, {self.size - 1}]. Got "
                f"{x[bad].reshape(-1)[0].item()!r}."
            )

    def _log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_probs()[x]

    def _sample(self, n, generator):
        probs = self.log_probs().exp()
        return torch.multinomial(probs, n, replacement=True, generator=generator)


class Tabulated(Density):
    """A fixed density given by its values on a :class:`~pbde.Support` (e.g. a theoretical optimum).

    On a finite support, ``log_prob`` accepts only items of the support. On a :class:`~pbde.Grid`,
    it interpolates the log-density linearly between grid points.

    Args:
        support: a :class:`~pbde.Support`, :class:`~pbde.Grid` or tensor of items.
        log_density: tensor of shape ``(len(support),)``; normalized on the support.
        normalize: renormalize ``log_density`` so it integrates to 1 (default ``False``: it
            must already integrate to 1 within 1e-6, else ``ValueError``).
    """

    def __init__(self, support, log_density: torch.Tensor, *, normalize: bool = False):
        super().__init__()
        self.support = as_support(support)
        check_tensor("log_density", log_density)
        if log_density.shape != (len(self.support),):
            raise ValueError(
                f"'log_density' must have shape ({len(self.support)},) to match the support. "
                f"Got {tuple(log_density.shape)}."
            )
        if bool(torch.isnan(log_density).any()):
            raise ValueError("'log_density' must not contain NaN.")
        log_density = log_density.detach().to(torch.float64)
        log_total = self.support.log_integral(log_density)
        if normalize:
            log_density = log_density - log_total
        elif abs(float(log_total)) > 1e-6:
            raise ValueError(
                "'log_density' must be normalized on the support (integral 1). Got integral "
                f"{float(log_total.exp())!r}; pass normalize=True to renormalize."
            )
        self.register_buffer("values", log_density)
        self.event_shape = tuple(self.support.points.shape[1:])

    def _log_prob(self, x: torch.Tensor) -> torch.Tensor:
        points = self.support.points.to(x.device)
        values = self.values.to(x.device)
        if isinstance(self.support, Grid):
            position = (x.to(torch.float64) - self.support.low) / self.support.step
            left = position.floor().clamp(0, self.support.size - 2).long()
            frac = position - left
            return values[left] * (1 - frac) + values[left + 1] * frac
        flat_points = points.reshape(points.shape[0], -1)
        flat_x = x.reshape(x.shape[0], -1).to(flat_points.dtype)
        matches = (flat_x[:, None, :] == flat_points[None, :, :]).all(-1)
        found = matches.any(-1)
        if not bool(found.all()):
            raise ValueError(
                "'x' must hold items of the support of this Tabulated density. Got "
                f"{x[~found][0].tolist()!r}, which is not one of them."
            )
        return values[matches.float().argmax(-1)]

    def _validate_items(self, x):
        super()._validate_items(x)
        if isinstance(self.support, Grid):
            bad = (x < self.support.low) | (x > self.support.high)
            if bool(bad.any()):
                raise ValueError(
                    f"'x' must lie in [{self.support.low}, {self.support.high}]. "
                    f"Got {x[bad].reshape(-1)[0].item()!r}."
                )

    def _sample(self, n, generator):
        masses = self.support.masses(self.values)
        index = torch.multinomial(masses / masses.sum(), n, replacement=True, generator=generator)
        return self.support.points[index]
