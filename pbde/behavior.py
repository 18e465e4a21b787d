"""Preference behaviors: the (f, g) of a preference behavior distribution equation (PBDE).

Dumoulin et al., eq. 11: an annotator with density p prefers x_A to x_B with probability

    p(y = 1; x_A, x_B) = σ(Ω_p(x_A) − Ω_p(x_B)),   Ω_p(x) = f(x) · log p(x) + g(x),   f(x) > 0.

A :class:`PBDE` holds f and g. It does not hold the density: the same behavior can be paired with
the annotator's implicit preference distribution p* or with a model π_θ (see
:class:`pbde.Annotator`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from numbers import Real

import torch

from pbde._validation import (
    as_tensor,
    check_all_positive,
    check_finite,
    check_positive_number,
    check_real,
    is_validation_enabled,
)

FunctionOfX = Callable[[torch.Tensor], torch.Tensor]


def _frozen(density):
    from pbde.densities.base import check_density

    return check_density("reference", density).frozen()


class PBDE:
    """A preference behavior Ω(x) = f(x)·log p(x) + g(x), with f > 0 (Dumoulin et al., eq. 11).

    Args:
        f: a positive number, or a callable mapping a batch of items ``x`` (shape
            ``(batch, *event_shape)``) to a tensor of shape ``(batch,)`` of positive values.
        g: a number, or a callable of ``x`` returning shape ``(batch,)``. Callables may close over
            reference densities (see :func:`dpo`).
        name: a label used in ``repr`` and plots.
        references: densities that ``f`` or ``g`` close over (e.g. π_ref). Declaring them lets
            an :class:`~pbde.Annotator` move them to the model's device with ``.to(device)``.

    Raises:
        TypeError: if ``f`` or ``g`` is neither a number nor a callable.
        ValueError: if a constant ``f`` is not finite and > 0 or a constant ``g`` not finite;
            when evaluated (validation on), if ``f(x)`` is not finite and > 0 or ``g(x)`` not
            finite at some ``x``, or if Ω(x) is NaN, or infinite where log p(x) is finite (an
            overflow, e.g. of ``dpo(1e308, ...)``). Ω(x) = −inf where p(x) = 0 is legal.

    Example:
        >>> import torch, pbde
        >>> b = pbde.PBDE(f=2.0, g=lambda x: x.float())
        >>> b.omega(torch.log(torch.tensor([0.5, 0.25])), torch.tensor([0, 1]))
        tensor([-1.3863, -1.7726])
    """

    def __init__(
        self,
        f: float | FunctionOfX = 1.0,
        g: float | FunctionOfX = 0.0,
        *,
        name: str | None = None,
        references=(),
    ):
        if callable(f):
            self._f = f
        else:
            if not isinstance(f, Real) or isinstance(f, bool):
                raise TypeError(f"'f' must be a number or a callable of x. Got {f!r} instead.")
            self._f = check_positive_number("f", f)
        if callable(g):
            self._g = g
        else:
            if not isinstance(g, Real) or isinstance(g, bool):
                raise TypeError(f"'g' must be a number or a callable of x. Got {g!r} instead.")
            if not math.isfinite(float(g)):
                raise ValueError(f"'g' must be finite. Got {g!r} instead.")
            self._g = float(g)
        self.name = name or "PBDE"
        self.references = tuple(references)
        # set by the built-in constructors (luce, dpo, geometric) so that pbde.save_model can
        # write the behavior as plain data; a PBDE built from arbitrary callables has none
        self._builtin: dict | None = None

    def __repr__(self) -> str:
        return f"{self.name}(f={self._describe(self._f)}, g={self._describe(self._g)})"

    @staticmethod
    def _describe(value) -> str:
        return f"{value:g}" if isinstance(value, float) else getattr(value, "__name__", "<fn>")

    @property
    def constant_f(self) -> float | None:
        """The value of f if it is a constant, else ``None``."""
        return self._f if isinstance(self._f, float) else None

    def f(self, x: torch.Tensor) -> torch.Tensor:
        """f evaluated on a batch of items, shape ``(batch,)``; checked to be > 0."""
        value = self._evaluate("f", self._f, x)
        if not isinstance(self._f, float) and is_validation_enabled():
            check_all_positive("f(x)", value)
        return value

    def g(self, x: torch.Tensor) -> torch.Tensor:
        """g evaluated on a batch of items, shape ``(batch,)``; checked to be finite."""
        value = self._evaluate("g", self._g, x)
        if not isinstance(self._g, float) and is_validation_enabled():
            check_finite("g(x)", value)
        return value

    @staticmethod
    def _evaluate(name: str, fn: float | FunctionOfX, x: torch.Tensor) -> torch.Tensor:
        if isinstance(fn, float):
            return torch.full((x.shape[0],), fn, dtype=torch.get_default_dtype(), device=x.device)
        value = as_tensor(f"{name}(x)", fn(x))
        check_real(f"{name}(x)", value)
        if value.shape != (x.shape[0],):
            raise ValueError(
                f"{name}(x) must return shape ({x.shape[0]},) for a batch of {x.shape[0]} items. "
                f"Got {tuple(value.shape)}."
            )
        return value

    def omega(self, log_p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Ω(x) = f(x)·log p(x) + g(x) given ``log_p = log p(x)``, shape ``(batch,)``."""
        f = self.f(x) if self.constant_f is None else self.constant_f
        g = self.g(x) if not isinstance(self._g, float) else self._g
        omega = f * log_p + g
        if is_validation_enabled():
            bad = torch.isnan(omega) | (torch.isinf(omega) & torch.isfinite(log_p))
            if bool(bad.any()):
                i = int(torch.nonzero(bad.reshape(-1))[0])
                omega, log_p = omega.detach(), log_p.detach()
                f_i = f if isinstance(f, float) else float(f.detach().reshape(-1)[i])
                g_i = g if isinstance(g, float) else float(g.detach().reshape(-1)[i])
                raise ValueError(
                    f"Ω(x) = f(x)·log p(x) + g(x) of {self!r} is {float(omega[i])} at item {i} "
                    f"of the batch (f = {f_i!r}, log p = {float(log_p[i])!r}, g = {g_i!r}): "
                    f"not representable in {omega.dtype}. Use a smaller f or g (e.g. beta, "
                    "1/alpha) or a wider dtype."
                )
        return omega

    def invert(self, omega: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The log-density that gives score ``omega``: (Ω(x) − g(x)) / f(x)."""
        return (omega - self.g(x).to(omega)) / self.f(x).to(omega)


def _representable(name: str, value: float, *coefficients: float) -> None:
    """Raise ``ValueError`` if a coefficient derived from ``value`` (f or g's factor) is not a
    finite number of the default dtype: ``dpo(1e308, ...)`` in float32 would score inf."""
    dtype = torch.get_default_dtype()
    largest = torch.finfo(dtype).max
    if not all(math.isfinite(c) and abs(c) <= largest for c in coefficients):
        raise ValueError(
            f"'{name}' gives f or g coefficients ({', '.join(f'{c:g}' for c in coefficients)}) "
            f"that are not finite in {dtype} (largest {largest:g}). Got {value!r}."
        )


def luce() -> PBDE:
    """The Luce choice rule / Bradley–Terry model: f = 1, g = 0 (Dumoulin et al., eq. 9).

    Under it, x_A is preferred with probability p(x_A) / (p(x_A) + p(x_B)).
    """
    behavior = PBDE(1.0, 0.0, name="luce")
    behavior._builtin = {"name": "luce"}
    return behavior


def length_normalized(length: FunctionOfX) -> PBDE:
    """The length-normalized Luce rule: f(x) = 1/|x|, g = 0 (Dumoulin et al., eq. 26).

    Args:
        length: callable mapping a batch of items to their lengths, shape ``(batch,)``, all > 0
            (e.g. the number of tokens of each sequence, EOS included).
    """
    if not callable(length):
        raise TypeError(f"'length' must be a callable of x. Got {length!r} instead.")

    def inverse_length(x: torch.Tensor) -> torch.Tensor:
        n = torch.as_tensor(length(x))
        if is_validation_enabled():
            check_all_positive("length(x)", n)
        return 1.0 / n.to(torch.get_default_dtype())

    inverse_length.__name__ = "1/length"
    behavior = PBDE(inverse_length, 0.0, name="length_normalized")
    # pbde.save_model writes this as data when `length` counts tokens (see pbde.serialization)
    behavior._builtin = {"name": "length_normalized"}
    behavior._length = length
    return behavior


def dpo(beta: float, reference, *, length: FunctionOfX | None = None) -> PBDE:
    """DPO's implicit behavior: f = β, g = −β·log π_ref (Dumoulin et al., eq. 15).

    Under a Luce annotator its optimum is π ∝ π_ref · p*^{1/β} (eq. 16). With the squared loss
    :func:`pbde.losses.ipo` and β = 1 it is IPO (Azar et al., eq. 17).

    With ``length``, the log-ratio is divided by the item's length, the convention of TRL's
    ``"ipo"`` and ``"sigmoid_norm"`` losses (which divide by the number of completion tokens):
    f(x) = β/|x|, g(x) = −β·log π_ref(x)/|x|, so Ω(x) = β·(log π(x) − log π_ref(x))/|x|. For a
    :class:`~pbde.densities.CausalLM` ``lm``:

    * TRL ``DPOConfig(loss_type="ipo", beta=τ)`` is ``pbde.dpo(1.0, ref, length=lm.length)``
      with ``pbde.losses.ipo(tau=τ)``;
    * TRL ``loss_type="sigmoid_norm"`` is ``pbde.dpo(β, ref, length=lm.length)`` with
      ``pbde.losses.bce``;
    * TRL ``loss_type="sigmoid"`` is ``pbde.dpo(β, ref)`` with ``bce``, and ``"hinge"``
      (``relu(1 − β·Δ)``) is ``pbde.dpo(β, ref)`` with ``pbde.losses.hinge(delta=1)``.

    Args:
        beta: inverse temperature, > 0.
        reference: the reference density π_ref; a frozen copy is kept.
        length: optional callable mapping a batch of items to their lengths, shape
            ``(batch,)``, all > 0 (e.g. :meth:`pbde.densities.CausalLM.length`, the number of
            completion tokens). Default ``None``: no division (eq. 15).

    Raises:
        ValueError: if ``beta`` is not > 0; when evaluated (validation on), if ``length(x)`` is
            not > 0 at some ``x``.
        TypeError: if ``length`` is neither ``None`` nor a callable.

    Example:
        >>> import torch, pbde
        >>> ref = pbde.densities.Categorical(probs=torch.tensor([0.5, 0.5]))
        >>> b = pbde.dpo(2.0, ref, length=lambda x: x + 1)
        >>> b.omega(torch.log(torch.tensor([0.25, 0.125])), torch.tensor([0, 1]))
        tensor([-1.3863, -1.3863])
    """
    beta = check_positive_number("beta", beta)
    _representable("beta", beta, beta)
    if length is not None and not callable(length):
        raise TypeError(f"'length' must be None or a callable of x. Got {length!r} instead.")
    ref = _frozen(reference)

    if length is None:

        def minus_beta_log_ref(x: torch.Tensor) -> torch.Tensor:
            return -beta * ref.log_prob(x)

        minus_beta_log_ref.__name__ = f"-{beta:g}·log π_ref"
        behavior = PBDE(beta, minus_beta_log_ref, name=f"dpo(beta={beta:g})", references=(ref,))
        behavior._builtin = {"name": "dpo", "beta": beta}
        return behavior

    def checked_length(x: torch.Tensor) -> torch.Tensor:
        n = torch.as_tensor(length(x))
        if is_validation_enabled():
            check_all_positive("length(x)", n)
        return n.to(torch.get_default_dtype())

    def beta_over_length(x: torch.Tensor) -> torch.Tensor:
        return beta / checked_length(x)

    def minus_beta_log_ref_over_length(x: torch.Tensor) -> torch.Tensor:
        log_ref = ref.log_prob(x)
        return -beta * log_ref / checked_length(x).to(log_ref)

    beta_over_length.__name__ = f"{beta:g}/length"
    minus_beta_log_ref_over_length.__name__ = f"-{beta:g}·log π_ref/length"
    behavior = PBDE(
        beta_over_length,
        minus_beta_log_ref_over_length,
        name=f"dpo(beta={beta:g}, per length)",
        references=(ref,),
    )
    # pbde.save_model writes this as data when `length` counts tokens (see pbde.serialization)
    behavior._builtin = {"name": "dpo", "beta": beta, "length_normalized": True}
    behavior._length = length
    return behavior


def geometric(alpha: float, reference) -> PBDE:
    """Geometric-mixture behavior: f = 1/α, g = (1 − 1/α)·log π_ref (Dumoulin et al., eq. 18).

    Under a Luce annotator its optimum is π ∝ π_ref^{1−α} · p*^α.

    Args:
        alpha: mixing exponent, > 0.
        reference: the reference density π_ref; a frozen copy is kept.
    """
    alpha = check_positive_number("alpha", alpha)
    ref = _frozen(reference)
    coefficient = 1.0 - 1.0 / alpha
    _representable("alpha", alpha, 1.0 / alpha, coefficient)

    def scaled_log_ref(x: torch.Tensor) -> torch.Tensor:
        return coefficient * ref.log_prob(x)

    scaled_log_ref.__name__ = f"{coefficient:g}·log π_ref"
    behavior = PBDE(
        1.0 / alpha, scaled_log_ref, name=f"geometric(alpha={alpha:g})", references=(ref,)
    )
    behavior._builtin = {"name": "geometric", "alpha": alpha}
    return behavior
