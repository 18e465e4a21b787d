"""The density interface: a normalized ``log_prob`` is all a subclass must provide."""

from __future__ import annotations

import copy
import itertools

import torch
from torch import nn

from pbde._validation import check_finite, check_tensor, is_validation_enabled


class Density(nn.Module):
    """A normalized probability density (or mass function) as a torch module.

    Subclasses implement ``_log_prob(x)`` (and ``_sample`` if they can be sampled); the public
    methods validate and then delegate. Items ``x`` come in batches along dim 0: ``log_prob``
    maps shape ``(batch, *event_shape)`` to ``(batch,)``.
    """

    #: shape of one item (``()`` for scalars and integer ids)
    event_shape: tuple[int, ...] = ()

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized log-density of each item of the batch ``x``, shape ``(batch,)``.

        ``x`` is moved to the density's device; so is the result.

        Raises:
            TypeError: if ``x`` is not a tensor.
            ValueError: if ``x`` has the wrong shape, non-finite entries or lies outside the
                support (checked while validation is enabled).
        """
        return self._evaluate(x, normalized=True)

    def unnormalized_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) + c, with c the same for every item (it may depend on the parameters).

        Differences of log-densities, which is all a pair logit with a constant f needs, do not
        depend on c: energy models skip their normalizer here. Validated like :meth:`log_prob`.
        """
        return self._evaluate(x, normalized=False)

    def _evaluate(self, x: torch.Tensor, normalized: bool) -> torch.Tensor:
        check_tensor("x", x)
        memo = self.__dict__.get("_memo")
        if memo is not None:  # a frozen copy: same tensor, same contents, same answer
            key = (x, x._version, normalized, self._parameter_versions())
            if memo[0] is x and memo[1:4] == key[1:]:
                return memo[4]
        x = x.to(self._param_device())
        if is_validation_enabled():
            self._validate_items(x)
        value = self._log_prob(x) if normalized else self._unnormalized_log_prob(x)
        if memo is not None:
            self._memo = (*key, value)
        return value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`log_prob` (so ``torch.func.functional_call`` works on densities)."""
        return self.log_prob(x)

    def prob(self, x: torch.Tensor) -> torch.Tensor:
        """``exp(log_prob(x))``."""
        return self.log_prob(x).exp()

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` items, shape ``(n, *event_shape)``, without gradient."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"'n' must be an int >= 1. Got {n!r} instead.")
        with torch.no_grad():
            return self._sample(n, generator)

    def frozen(self) -> Density:
        """A detached copy with no trainable parameters (e.g. π_ref in DPO)."""
        if is_frozen(self):  # frozen already: nothing can change it
            return self
        return copy.deepcopy(self)._freeze()

    def _freeze(self) -> Density:
        """Freeze this density in place (what :meth:`frozen` does to its copy)."""
        self.requires_grad_(False)
        self.eval()
        # The copy remembers its last answer: a training loop asks for π_ref on the same items at
        # every step. Keyed on the tensor object (held, so its id cannot be reused) and the
        # version counters of it and of the parameters (bumped by in-place writes such as
        # load_state_dict); moving the copy (.to, .double) forgets the answer.
        self._memo = (None,) * 5
        self._tensors = None  # its parameters and buffers, listed once (see _parameter_versions)
        return self

    def train(self, mode: bool = True) -> Density:
        """As ``nn.Module.train``; a :meth:`frozen` copy stays in eval mode (a reference density
        inside a model that :func:`pbde.fit` puts in training mode)."""
        return super().train(mode and not is_frozen(self))

    def _parameter_versions(self) -> int:
        # a frozen copy's tensors are listed once (walking the modules at every step of a fit
        # cost more than the step's arithmetic on small problems); moving it lists them again
        tensors = self.__dict__.get("_tensors")
        if tensors is None:
            tensors = list(itertools.chain(self.parameters(), self.buffers()))
            if "_tensors" in self.__dict__:
                self.__dict__["_tensors"] = tensors
        return sum(t._version for t in tensors)

    def _apply(self, fn, *args, **kwargs):
        if self.__dict__.get("_memo") is not None:
            self._memo = (None,) * 5
            self.__dict__["_tensors"] = None
        return super()._apply(fn, *args, **kwargs)

    # -- for subclasses -------------------------------------------------------------------

    def _log_prob(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _unnormalized_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self._log_prob(x)  # override where the normalizer costs something

    def _sample(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} cannot be sampled.")

    def _validate_items(self, x: torch.Tensor) -> None:
        shape = tuple(x.shape[1:]) if x.ndim >= 1 else None
        if shape != tuple(self.event_shape):
            raise ValueError(
                f"'x' must have shape (batch, {', '.join(map(str, self.event_shape))}) for "
                f"{type(self).__name__} (event shape {tuple(self.event_shape)}). "
                f"Got {tuple(x.shape)}."
            )
        check_finite("x", x)

    def _param_device(self) -> torch.device:
        return device_of(self)


def is_frozen(module: nn.Module) -> bool:
    """Whether ``module`` is a :meth:`Density.frozen` density (a reference: never trained, never
    in a checkpoint)."""
    return module.__dict__.get("_memo") is not None


def device_of(module: nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (CPU if it has none)."""
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        return tensor.device
    return torch.device("cpu")


def floating_dtype_of(module: nn.Module) -> torch.dtype:
    """The dtype of a module's first floating parameter or buffer (the default dtype if none)."""
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.get_default_dtype()


def check_density(name: str, value: object) -> Density:
    """Raise ``TypeError`` unless ``value`` is a pbde :class:`Density`."""
    if not isinstance(value, Density):
        raise TypeError(
            f"'{name}' must be a pbde.densities.Density. Got {type(value).__name__} instead."
        )
    return value
