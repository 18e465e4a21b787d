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
    of 64 units, tanh). The MLP sees x mapped linearly onto [−10, 10] (:attr:`input_range`), the
    paper's own domain, so that the paper's MLP sees the paper's inputs: on [−1, 1] the first
    layer needs ten times larger weights to draw p*'s narrow mode, and DPO with β = 1 stalls on a
    saturated plateau (KL 0.58 to its optimum instead of 0.01 after 3000 steps at lr 5e-4). Z is
    computed on a
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

    #: points per pass through the network on the CPU (see :meth:`energy`)
    chunk_size: int = 8192
    #: the network's input is x mapped linearly from [low, high] onto [−input_range, input_range]
    input_range: float = 10.0

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
        if isinstance(grid_size, bool) or not isinstance(grid_size, int) or grid_size < 2:
            raise ValueError(f"'grid_size' must be an int >= 2. Got {grid_size!r} instead.")
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
        # The output bias shifts E by a constant, which the normalizer cancels: it has no effect
        # on the density and an exact gradient of 0, so it is not trained (Adam would turn the
        # rounding noise in that 0 into steps of size lr, a random walk of a dead parameter).
        layers[-1].bias.requires_grad_(False)
        self.energy_net = nn.Sequential(*layers)
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None  # (parameters, log Z)

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """E(x), shape ``(batch,)`` (unnormalized: log p(x) = −E(x) − log Z).

        Large batches go through the network in chunks of :attr:`chunk_size` points, so that a
        chunk's activations stay in the CPU's cache (same values, same gradients). The network
        as built here (``Linear``, activation, …, ``Linear``) is evaluated from its layers'
        weights as plain tensor operations, without the modules' calls (:func:`_mlp`: the same
        function), so module hooks on :attr:`energy_net` do not fire; a replaced ``energy_net``
        of another form is called as it is.
        """
        net, layers = self.energy_net, self._plain_layers()
        if layers is not None:
            net = _mlp([x.weight.T for x in layers], [x.bias for x in layers], net[1])
        return _chunked(net, self._input(x), self.chunk_size, dim=0).squeeze(-1)

    def _plain_layers(self) -> list[nn.Linear] | None:
        """The ``Linear`` layers of :attr:`energy_net` if it is a plain MLP (``_is_plain_mlp``),
        else ``None``; found once per network (a training step asks every time)."""
        net, known = self.energy_net, self.__dict__.get("_plain")
        if known is None or known[0] is not net or known[1] != len(net):
            layers = list(net[::2]) if _is_plain_mlp(net) else None
            known = self.__dict__["_plain"] = (net, len(net), layers)
        return known[2]

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        """The network's input for the items ``x``, shape ``(batch, 1)``; the last one is kept
        (a full batch's items are the same tensor at every step)."""
        dtype, known = self._dtype(), self.__dict__.get("_last_input")
        if known is not None and known[0] is x and known[1] == (x._version, dtype):
            return known[2]
        scaled = _to_input(x, self.low, self.high, self.input_range).to(dtype)[:, None]
        if not scaled.requires_grad:  # items, not a variable of a graph
            self.__dict__["_last_input"] = (x, (x._version, dtype), scaled)
        return scaled

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

    def _unnormalized_log_prob(self, x):
        return -self.energy(x)

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
        """Regress −E on a target log-density over the domain (how the paper makes its pre-trained π_ref).

        Minimizes the mean squared error between −E(x) and ``target_log_prob(x)`` on a grid of
        ``points`` points, both centred (a constant offset is the normalizer's business).

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
            residual = -self.energy(x) - target
            return ((residual - residual.mean()) ** 2).mean()

        return optimize(self, mse, steps=steps, lr=lr, progress=progress, description="pretrain")

    def _dtype(self) -> torch.dtype:
        return self.energy_net[0].weight.dtype

    def _device(self) -> torch.device:
        return self.energy_net[0].weight.device

    def _param_device(self) -> torch.device:
        return self._device()


def _to_input(x: torch.Tensor, low: float, high: float, half_width: float) -> torch.Tensor:
    return (2.0 * (x - low) / (high - low) - 1.0) * half_width


def _chunked(forward, points: torch.Tensor, chunk_size: int, *, dim: int) -> torch.Tensor:
    """``forward(points)``, on the CPU in chunks of ``chunk_size`` points (along axis ``dim`` of
    ``points`` and of the outputs), so that a chunk's activations stay in the cache; the same
    values and gradients as one call."""
    if points.shape[dim] <= chunk_size or points.device.type != "cpu":
        return forward(points)
    return torch.cat([forward(part) for part in points.split(chunk_size, dim=dim)], dim=dim)


def _is_plain_mlp(net: nn.Module) -> bool:
    """Whether ``net`` is an ``nn.Sequential`` of ``Linear``, activation, …, ``Linear`` with
    one activation class of :data:`_ACTIVATIONS` and a one-unit output (what
    :class:`EnergyModel` builds)."""
    if not isinstance(net, nn.Sequential) or len(net) % 2 == 0:
        return False
    layers, activations = list(net[::2]), list(net[1::2])
    kinds = {type(a) for a in activations}
    return (
        all(type(x) is nn.Linear for x in layers)
        and len(kinds) == 1
        and kinds <= set(_ACTIVATIONS.values())
        and layers[0].in_features == 1
        and layers[-1].out_features == 1
    )


def _mlp(weights: list[torch.Tensor], biases: list[torch.Tensor], activation: nn.Module):
    """The energy network as a function of its input, ``(n, 1)`` (one network) or ``(1, n, 1)``
    (a stack of K), from layers ``h @ W + b``: ``weights`` of shape ``(in, out)`` or
    ``(K, in, out)``, biases broadcastable to ``(out,)`` or ``(K, 1, out)``; returns
    ``(n, 1)`` or ``(K, n, 1)``.

    The same function as ``nn.Sequential``, as plain tensor operations (no module calls): the
    first layer, with one input feature, is an outer product (``addcmul``), which also lets K
    networks share one input. tanh is ``torch.tanh``: computing it as 2σ(2z) − 1 in a custom
    autograd function was faster with an earlier torch on the CPU, and is slower with
    torch 2.13 at every size (``benchmarks/RESULTS.md``, "the training step's fixed cost").
    """
    act = torch.tanh if isinstance(activation, nn.Tanh) else activation.forward
    first_w, first_b = weights[0], biases[0]
    middle = list(zip(weights[1:-1], biases[1:-1], strict=True))
    last_w, last_b = weights[-1], biases[-1]

    def forward(x: torch.Tensor) -> torch.Tensor:
        h = act(torch.addcmul(first_b, x, first_w))
        for w, b in middle:
            h = act(torch.baddbmm(b, h, w) if w.dim() == 3 else torch.addmm(b, h, w))
        return torch.matmul(h, last_w) + last_b

    return forward
