"""Densities on the real line: analytic truncated-normal mixtures, wrapped torch/Pyro
distributions, and mixtures of any densities."""

from __future__ import annotations

import math

import torch
from torch import nn

from pbde._validation import check_finite, mixture_log_weights
from pbde.densities.base import Density


def _as_1d(name: str, value, dtype=torch.float64) -> torch.Tensor:
    tensor = torch.as_tensor(value, dtype=dtype).reshape(-1)
    if tensor.numel() == 0:
        raise ValueError(f"'{name}' must not be empty.")
    check_finite(name, tensor)
    return tensor


def _check_in_interval(x: torch.Tensor, low: float, high: float) -> None:
    bad = (x < low) | (x > high)
    if bool(bad.any()):
        raise ValueError(
            f"'x' must lie in the domain [{low}, {high}]. Got {x[bad].reshape(-1)[0].item()!r}."
        )


class TruncatedNormalMixture(Density):
    """A mixture of normal distributions, each truncated to ``[low, high]`` (analytic).

    ``p(x) = Σ_k w_k · N(x; μ_k, σ_k) / (Φ((high−μ_k)/σ_k) − Φ((low−μ_k)/σ_k))`` for x in
    [low, high]. Dumoulin et al.'s p* (eq. 10) is
    ``TruncatedNormalMixture([-2.5, 2.5], [0.25, 1.0], [0.4, 0.6], low=-10, high=10)``.

    Args:
        loc: component means, shape ``(K,)``.
        scale: component standard deviations, shape ``(K,)``, > 0.
        weights: mixture weights, shape ``(K,)``, > 0 (normalized here); default uniform.
        low: left end of the interval.
        high: right end of the interval, ``low < high``.
        learnable: make loc, log-scale and weight logits trainable parameters (default False).
    """

    def __init__(self, loc, scale, weights=None, *, low: float, high: float, learnable=False):
        super().__init__()
        loc = _as_1d("loc", loc)
        scale = _as_1d("scale", scale)
        weights = torch.ones_like(loc) if weights is None else _as_1d("weights", weights)
        if not (loc.shape == scale.shape == weights.shape):
            raise ValueError(
                f"'loc', 'scale' and 'weights' must have the same length. Got "
                f"{loc.numel()}, {scale.numel()} and {weights.numel()}."
            )
        if bool((scale <= 0).any()):
            raise ValueError(f"'scale' must be > 0. Got {scale.tolist()!r}.")
        if bool((weights <= 0).any()):
            raise ValueError(f"'weights' must be > 0. Got {weights.tolist()!r}.")
        low, high = float(low), float(high)
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"Need finite 'low' < 'high'. Got low={low!r}, high={high!r}.")
        self.low, self.high = low, high
        params = {
            "loc": loc,
            "log_scale": scale.log(),
            "weight_logits": torch.log(weights / weights.sum()),
        }
        for name, value in params.items():
            if learnable:
                setattr(self, name, nn.Parameter(value))
            else:
                self.register_buffer(name, value)

    @property
    def weights(self) -> torch.Tensor:
        return torch.softmax(self.weight_logits, 0)

    def components(self) -> list[TruncatedNormalMixture]:
        """Each component as its own one-component density (e.g. one annotator each, eq. 25)."""
        return [
            TruncatedNormalMixture(
                self.loc[k : k + 1].detach(),
                self.log_scale[k : k + 1].detach().exp(),
                low=self.low,
                high=self.high,
            )
            for k in range(self.loc.shape[0])
        ]

    def _component_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float64)[:, None]
        scale = self.log_scale.exp()
        z = (x - self.loc) / scale
        log_normal = -0.5 * z**2 - self.log_scale - 0.5 * math.log(2 * math.pi)
        alpha = (self.low - self.loc) / scale
        beta = (self.high - self.loc) / scale
        log_mass = _log_diff_ndtr(beta, alpha)
        return log_normal - log_mass

    def _log_prob(self, x: torch.Tensor) -> torch.Tensor:
        log_w = torch.log_softmax(self.weight_logits, 0)
        return torch.logsumexp(self._component_log_probs(x) + log_w, dim=-1)

    def _validate_items(self, x: torch.Tensor) -> None:
        super()._validate_items(x)
        _check_in_interval(x, self.low, self.high)

    def _sample(self, n, generator):
        component = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        loc = self.loc[component]
        scale = self.log_scale.exp()[component]
        alpha, beta = (self.low - loc) / scale, (self.high - loc) / scale
        # Inverse-CDF sampling loses all precision where Φ rounds to 1 (an interval far right of
        # the mean): there sample the mirror image, a standard normal truncated to [−β, −α].
        # Φ comes from log_ndtr because torch's ndtr is 0 below about −8.3 (absolute accuracy).
        flip = alpha > 0
        lo = torch.special.log_ndtr(torch.where(flip, -beta, alpha)).exp()
        hi = torch.special.log_ndtr(torch.where(flip, -alpha, beta)).exp()
        u = torch.rand(n, dtype=torch.float64, generator=generator, device=loc.device)
        z = torch.special.ndtri(lo + u * (hi - lo))
        x = loc + scale * torch.where(flip, -z, z)
        return x.clamp(self.low, self.high).to(torch.get_default_dtype())


def _log_diff_ndtr(b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """log(Φ(b) − Φ(a)) for b > a, stable in both tails."""
    # In the right tail use symmetry: Φ(b) − Φ(a) = Φ(−a) − Φ(−b).
    flip = a > 0
    hi = torch.where(flip, -a, b)
    lo = torch.where(flip, -b, a)
    log_hi = torch.special.log_ndtr(hi)
    log_lo = torch.special.log_ndtr(lo)
    return log_hi + torch.log1p(-torch.exp(log_lo - log_hi))


class FromDistribution(Density):
    """Any ``torch.distributions`` or Pyro distribution as a pbde density.

    ``log_prob`` sums over the distribution's event dimensions, so items have shape
    ``(batch, *dist.event_shape)`` and the batch shape of ``dist`` must be ``()``.

    Args:
        distribution: a ``torch.distributions.Distribution`` (Pyro distributions are ones).

    Example:
        >>> d = FromDistribution(torch.distributions.Normal(0.0, 1.0))
        >>> d.log_prob(torch.tensor([0.0]))
        tensor([-0.9189])
    """

    def __init__(self, distribution: torch.distributions.Distribution):
        super().__init__()
        if not isinstance(distribution, torch.distributions.Distribution):
            raise TypeError(
                "'distribution' must be a torch.distributions.Distribution (or Pyro "
                f"distribution). Got {type(distribution).__name__} instead."
            )
        if tuple(distribution.batch_shape) != ():
            raise ValueError(
                "'distribution' must have batch_shape () so that it is one density. Got "
                f"{tuple(distribution.batch_shape)}; use torch.distributions.Independent."
            )
        self.distribution = distribution
        self.event_shape = tuple(distribution.event_shape)

    def _validate_items(self, x):
        super()._validate_items(x)
        inside = self.distribution.support.check(x)
        if not bool(torch.as_tensor(inside).all()):
            raise ValueError(
                f"'x' must lie in the support of {type(self.distribution).__name__} "
                f"({self.distribution.support}). Got {x[~inside].reshape(-1)[0].item()!r}."
            )

    def _log_prob(self, x):
        return self.distribution.log_prob(x)

    def _sample(self, n, generator):
        if generator is not None:
            # torch.distributions has no generator argument: fork the global RNG from it
            seed = int(torch.randint(0, 2**62, (1,), generator=generator))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return self.distribution.sample((n,))
        return self.distribution.sample((n,))


class Mixture(Density):
    """A mixture of densities: p(x) = Σ_k w_k p_k(x) — one *density*, e.g. eq. 24's p*.

    Paired with a single behavior this is one annotator whose taste is bimodal
    (``Annotator(Mixture(...), luce())``, eq. 24). It is not a mixture of annotators (eq. 25):
    that is :class:`pbde.MixtureAnnotator`, where each comparison is made by one annotator.

    Args:
        densities: the components, all with the same event shape.
        weights: mixture weights, > 0 (normalized here); default uniform.
        learn_weights: make the weights trainable (default False).
    """

    def __init__(self, densities, weights=None, *, learn_weights: bool = False):
        super().__init__()
        densities = list(densities)
        if not densities or not all(isinstance(d, Density) for d in densities):
            raise TypeError("'densities' must be a non-empty list of pbde Density objects.")
        shapes = {tuple(d.event_shape) for d in densities}
        if len(shapes) != 1:
            raise ValueError(f"All densities must have the same event shape. Got {sorted(shapes)}.")
        logits = mixture_log_weights(weights, len(densities))
        self.components = nn.ModuleList(densities)
        self.event_shape = shapes.pop()
        if learn_weights:
            self.weight_logits = nn.Parameter(logits)
        else:
            self.register_buffer("weight_logits", logits)

    @property
    def weights(self) -> torch.Tensor:
        return torch.softmax(self.weight_logits, 0)

    def _validate_items(self, x):
        for component in self.components:
            component._validate_items(x)

    def _log_prob(self, x):
        log_w = torch.log_softmax(self.weight_logits, 0)
        parts = torch.stack([c._log_prob(x) for c in self.components], dim=-1)
        return torch.logsumexp(parts + log_w.to(parts), dim=-1)

    def _sample(self, n, generator):
        which = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        draws = torch.stack([c._sample(n, generator) for c in self.components], dim=0)
        return draws[which, torch.arange(n)]
