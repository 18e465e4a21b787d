"""Supports: the finite sets and grids on which densities are normalized and compared.

A :class:`Support` is a set of points with a measure: the counting measure for a finite support
(sums), trapezoid weights for a :class:`Grid` over a bounded interval (integrals). Every place in
pbde that normalizes, integrates or compares densities goes through
:meth:`Support.log_integral`, so there is one normalizer for bounded-domain models.
"""

from __future__ import annotations

import math
from numbers import Real

import torch

from pbde._validation import check_finite, check_tensor


class Support:
    """A finite set of items with a measure.

    Args:
        points: tensor of shape ``(n, *event_shape)`` holding the items (integer ids, numbers,
            vectors). Must be non-empty.
        log_weights: optional tensor of shape ``(n,)``, the log of the measure of each point
            (default 0: the counting measure, so integrals are sums).

    Raises:
        TypeError: if ``points`` is not a tensor.
        ValueError: if ``points`` is empty or ``log_weights`` has the wrong shape.

    Example:
        >>> s = Support(torch.arange(3))
        >>> float(s.log_integral(torch.log(torch.tensor([0.2, 0.3, 0.5]))).exp())
        1.0
    """

    def __init__(self, points: torch.Tensor, log_weights: torch.Tensor | None = None):
        check_tensor("points", points)
        if points.ndim == 0 or points.shape[0] == 0:
            raise ValueError(
                f"'points' must hold at least one item along dim 0. Got shape {tuple(points.shape)}."
            )
        check_finite("points", points)
        if log_weights is None:
            log_weights = torch.zeros(points.shape[0], dtype=torch.float64)
        check_tensor("log_weights", log_weights)
        if log_weights.shape != (points.shape[0],):
            raise ValueError(
                f"'log_weights' must have shape ({points.shape[0]},) to match 'points'. "
                f"Got {tuple(log_weights.shape)}."
            )
        self.points = points
        self.log_weights = log_weights.to(torch.float64)

    def __len__(self) -> int:
        return self.points.shape[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={len(self)})"

    def log_integral(self, log_values: torch.Tensor) -> torch.Tensor:
        """log ∫ exp(log_values) dμ over the support, computed with logsumexp.

        Args:
            log_values: tensor of shape ``(n,)`` (or ``(..., n)``): log of the integrand at each
                point.

        Returns:
            Tensor of shape ``log_values.shape[:-1]``.
        """
        weights = self.log_weights.to(device=log_values.device, dtype=log_values.dtype)
        return torch.logsumexp(log_values + weights, dim=-1)

    def masses(self, log_density: torch.Tensor) -> torch.Tensor:
        """Probability mass of each point, ``exp(log_density + log_weight)``, shape ``(n,)``."""
        weights = self.log_weights.to(device=log_density.device, dtype=log_density.dtype)
        return torch.exp(log_density + weights)


class Grid(Support):
    """A uniform grid over ``[low, high]`` with trapezoid-rule weights.

    Integrals over the interval are approximated by the trapezoid rule on ``size`` points
    (``size - 1`` intervals of width ``(high - low) / (size - 1)``).

    Args:
        low: left end of the interval.
        high: right end, ``> low``.
        size: number of points, ``>= 2`` (default ``2**16``, the paper's normalizer).
        dtype: dtype of the points (default float32).

    Example:
        >>> g = Grid(0.0, 1.0, 101)
        >>> round(float(g.log_integral(torch.zeros(101)).exp()), 6)  # ∫ 1 dx over [0, 1]
        1.0
    """

    def __init__(
        self, low: float, high: float, size: int = 2**16, *, dtype: torch.dtype = torch.float32
    ):
        for name, value in (("low", low), ("high", high)):
            if isinstance(value, bool) or not isinstance(value, Real):
                raise TypeError(f"'{name}' must be a real number. Got {value!r} instead.")
        low, high = float(low), float(high)
        if not (math.isfinite(low) and math.isfinite(high)) or not high > low:
            raise ValueError(
                f"Grid needs finite 'low' < 'high'. Got low={low!r}, high={high!r} instead."
            )
        if isinstance(size, bool) or not isinstance(size, int) or size < 2:
            raise ValueError(f"'size' must be an int >= 2. Got {size!r} instead.")
        self.low, self.high, self.size = low, high, size
        self.step = (high - low) / (size - 1)
        points = torch.linspace(low, high, size, dtype=torch.float64).to(dtype)
        log_weights = torch.full((size,), math.log(self.step), dtype=torch.float64)
        log_weights[0] = log_weights[-1] = math.log(self.step / 2)
        super().__init__(points, log_weights)

    def __repr__(self) -> str:
        return f"Grid(low={self.low}, high={self.high}, size={self.size})"

    def index_of(self, x: torch.Tensor) -> torch.Tensor | None:
        """The grid index of each item of ``x`` if every item is exactly a grid point, else
        ``None`` (e.g. samples of a density that samples on this grid)."""
        if x.ndim != 1 or not x.is_floating_point():
            return None
        points = self.points.to(x.device)
        index = torch.round((x.double() - self.low) / self.step).long().clamp_(0, self.size - 1)
        return index if bool((points[index] == x.to(points.dtype)).all()) else None


def as_support(support: Support | torch.Tensor) -> Support:
    """Accept a :class:`Support` or a tensor of items (counting measure)."""
    if isinstance(support, Support):
        return support
    if isinstance(support, torch.Tensor):
        return Support(support)
    raise TypeError(
        f"'support' must be a pbde.Support, a pbde.Grid or a tensor of items. "
        f"Got {type(support).__name__} instead."
    )
