"""Energy-based densities on a bounded interval, normalized on a grid."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from pbde.densities.base import Density
from pbde.densities.continuous import _check_in_interval
from pbde.support import Grid

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


class EnergyModel(Density):
    """p(x) = exp(−E(x)) / Z on ``[low, high]``, with E an MLP and Z by the trapezoid rule.

    The paper's π_θ for the 1-D experiments (Dumoulin et al., eq. 17 and Table 1: 4 hidden layers
    of 64 units, tanh). The MLP sees x rescaled to [−1, 1]. Z is computed on a
    :class:`~pbde.Grid` of ``grid_size`` points (default 2^16) every time the parameters may
    have changed; for a frozen copy (π_ref) or under ``torch.no_grad`` it is cached until the
    parameters change.

    Args:
        low: left end of the domain.
        high: right end of the domain, ``> low``.
        hidden: widths of the hidden layers (default ``(64, 64, 64, 64)``).
        activation: ``"tanh"`` (default), ``"relu"``, ``"gelu"`` or ``"silu"``.
        grid_size: points of the normalization grid, >= 2.

    Example:
        >>> m = EnergyModel(-10.0, 10.0, grid_size=1025)
        >>> g = m.grid
        >>> with torch.no_grad():
        ...     print(round(float(g.log_integral(m.log_prob(g.points)).exp()), 6))
        1.0
    """

    def __init__(
        self,
        low: float,
        high: float,
        *,
        hidden: tuple[int, ...] = (64, 64, 64, 64),
        activation: str = "tanh",
        grid_size: int = 2**16,
    ):
        super().__init__()
        self.grid = Grid(low, high, grid_size)
        self.low, self.high = self.grid.low, self.grid.high
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"'activation' must be one of {sorted(_ACTIVATIONS)}. Got {activation!r}."
            )
        if not hidden or any(
            isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden
        ):
            raise ValueError(f"'hidden' must be a non-empty tuple of ints >= 1. Got {hidden!r}.")
        layers: list[nn.Module] = []
        width = 1
        for h in hidden:
            layers += [nn.Linear(width, h), _ACTIVATIONS[activation]()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.energy_net = nn.Sequential(*layers)
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None  # (parameters, log Z)

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """E(x), shape ``(batch,)`` (unnormalized: log p(x) = −E(x) − log Z)."""
        scaled = (2.0 * (x - self.low) / (self.high - self.low) - 1.0).to(self._dtype())
        return self.energy_net(scaled[:, None]).squeeze(-1)

    def log_normalizer(self) -> torch.Tensor:
        """log Z = log ∫ exp(−E(x)) dx by the trapezoid rule on the grid (a scalar)."""
        needs_graph = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        if not needs_graph:
            # Key on the parameter values, not on autograd version counters: `.data` writes and
            # torch.nn.utils.vector_to_parameters change parameters without bumping them.
            # Comparing the parameters costs a fraction of one pass of the MLP over the grid.
            snapshot = torch.cat([p.detach().reshape(-1) for p in self.parameters()])
            if (
                self._cache is not None
                and self._cache[0].dtype == snapshot.dtype
                and self._cache[0].device == snapshot.device
                and torch.equal(self._cache[0], snapshot)
            ):
                return self._cache[1]
        points = self.grid.points.to(self._device())
        value = self.grid.log_integral(-self.energy(points))
        if not needs_graph:
            self._cache = (snapshot, value.detach())
        return value

    def _log_prob(self, x):
        return -self.energy(x) - self.log_normalizer()

    def _validate_items(self, x):
        super()._validate_items(x)
        _check_in_interval(x, self.low, self.high)

    def _sample(self, n, generator):
        points = self.grid.points.to(self._device())
        masses = self.grid.masses(self._log_prob(points))
        index = torch.multinomial(
            masses.cpu() / masses.sum().cpu(), n, replacement=True, generator=generator
        )
        return points[index.to(points.device)]

    def pretrain_to(
        self,
        target_log_prob: Callable[[torch.Tensor], torch.Tensor],
        *,
        steps: int = 2000,
        lr: float = 1e-3,
        points: int = 2048,
        progress: bool | None = None,
    ):
        """Regress −E on a target log-density over the domain (how the paper makes π_pre).

        Minimizes the mean squared error between −E(x) and ``target_log_prob(x)`` on a grid of
        ``points`` points; the normalizer then absorbs any constant offset.

        Args:
            target_log_prob: callable mapping a batch of points to log-densities (e.g.
                ``TruncatedNormalMixture([0.], [5.], low=-10, high=10).log_prob``).
            steps: optimization length (Adam, cosine decay).
            lr: peak learning rate.
            points: number of regression points.
            progress: show a progress bar (default: when interactive).

        Returns:
            FitResult: the result of the regression (:class:`~pbde.FitResult`).
        """
        from pbde.fit import optimize

        x = Grid(self.low, self.high, points).points.to(self._device())
        with torch.no_grad():
            target = torch.as_tensor(target_log_prob(x)).to(self._dtype())
        if target.shape != x.shape or not bool(torch.isfinite(target).all()):
            raise ValueError(
                f"'target_log_prob' must map {points} points to {points} finite values. "
                f"Got shape {tuple(target.shape)}."
            )

        def mse(_generator):
            return ((-self.energy(x) - target) ** 2).mean()

        return optimize(self, mse, steps=steps, lr=lr, progress=progress, description="pretrain")

    def _dtype(self) -> torch.dtype:
        return self.energy_net[0].weight.dtype

    def _device(self) -> torch.device:
        return self.energy_net[0].weight.device
