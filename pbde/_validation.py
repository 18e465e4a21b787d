"""Argument checks shared by the whole package, and the switch that turns them off.

Public methods validate their inputs and then delegate to private ones that compute. Checks that
cost a pass over the data (finiteness, domains, ``f > 0``) run only while validation is enabled,
which it is by default; :func:`pbde.validation` turns them off for a hot loop (``fit`` does this
after its first step, once the data and the model have been checked).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from numbers import Real

import torch

_ENABLED = True


def is_validation_enabled() -> bool:
    """Whether the data-dependent checks of pbde run (default ``True``)."""
    return _ENABLED


def set_validation(enabled: bool) -> None:
    """Turn pbde's data-dependent checks on or off globally."""
    global _ENABLED
    if not isinstance(enabled, bool):
        raise TypeError(f"'enabled' must be a bool. Got {enabled!r} instead.")
    _ENABLED = enabled


@contextlib.contextmanager
def validation(enabled: bool) -> Iterator[None]:
    """Context manager that sets validation on or off and restores the previous state.

    Example:
        >>> import pbde
        >>> with pbde.validation(False):
        ...     pass  # hot loop without data checks
    """
    previous = _ENABLED
    set_validation(enabled)
    try:
        yield
    finally:
        set_validation(previous)


def _describe(value: torch.Tensor) -> str:
    """A short description of the offending entries of a tensor for an error message."""
    flat = value.detach().reshape(-1)
    if flat.numel() <= 6:
        return str(flat.tolist())
    return f"tensor of shape {tuple(value.shape)}"


def check_positive_number(name: str, value: object, *, allow_zero: bool = False) -> float:
    """Return ``value`` as a float after checking it is a finite number > 0 (or >= 0)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"'{name}' must be a real number. Got {value!r} instead.")
    value = float(value)
    ok = value >= 0 if allow_zero else value > 0
    if not ok or not math.isfinite(value):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"'{name}' must be finite and {bound}. Got {value!r} instead.")
    return value


def check_tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"'{name}' must be a torch.Tensor. Got {type(value).__name__} instead.")
    return value


def as_tensor(name: str, value: object) -> torch.Tensor:
    """``torch.as_tensor(value)``, with torch's conversion errors (strings, ragged lists, numbers
    too large for any dtype) turned into a ``TypeError`` or ``ValueError`` naming ``name``."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (str, bytes)):
        raise TypeError(f"'{name}' must be a tensor of numbers. Got the string {value!r}.")
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError, OverflowError) as error:
        raise ValueError(
            f"'{name}' must be convertible to a tensor of numbers. Got {short_repr(value)} "
            f"({str(error).splitlines()[0]})."
        ) from None


def short_repr(value: object) -> str:
    """``repr(value)`` cut to 60 characters, for error messages."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_int(name: str, value: object, minimum: int, maximum: int | None = None) -> int:
    """Return ``value`` after checking it is an int (not a bool) >= ``minimum`` (and <=
    ``maximum``); ``ValueError`` also for a non-int (1.5), the convention of pbde's int
    arguments."""
    bad = isinstance(value, bool) or not isinstance(value, int) or value < minimum
    if bad or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"'{name}' must be an int {bound}. Got {value!r}.")
    return value


def check_real(name: str, value: torch.Tensor) -> None:
    """Raise ``TypeError`` if a tensor is complex: its imaginary part would be dropped silently."""
    if value.is_complex():
        raise TypeError(
            f"'{name}' must hold real numbers. Got dtype {value.dtype} (complex), e.g. "
            f"{value.reshape(-1)[0].item()!r}."
        )


def check_finite(name: str, value: torch.Tensor) -> None:
    """Raise ``ValueError`` if a floating tensor holds NaN or infinity (``TypeError`` if it is
    complex)."""
    check_real(name, value)
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        bad = value[~torch.isfinite(value)]
        raise ValueError(
            f"'{name}' must be finite (no NaN or inf). Got {bad.numel()} non-finite "
            f"value(s), e.g. {bad.reshape(-1)[0].item()!r}."
        )


def check_all_positive(name: str, value: torch.Tensor) -> None:
    """Raise ``ValueError`` unless every entry of ``value`` is finite and > 0."""
    bad = ~(torch.isfinite(value) & (value > 0))
    if bool(bad.any()):
        example = value[bad].reshape(-1)[0].item()
        raise ValueError(
            f"'{name}' must be > 0 wherever it is evaluated. Got {int(bad.sum())} "
            f"value(s) violating it, e.g. {example!r}."
        )


def check_labels(name: str, y: torch.Tensor) -> None:
    """Labels are probabilities that x_A is preferred: finite and in [0, 1]."""
    check_finite(name, y.to(torch.float64))
    bad = (y < 0) | (y > 1)
    if bool(bad.any()):
        raise ValueError(
            f"'{name}' must lie in [0, 1] (1 means x_A is preferred to x_B). Got "
            f"{int(bad.sum())} value(s) outside it, e.g. {y[bad].reshape(-1)[0].item()!r}."
        )


def mixture_log_weights(weights, count: int) -> torch.Tensor:
    """Normalized log mixture weights from ``weights`` (``None`` = uniform): checks that there are
    ``count`` finite values > 0. Floating tensors keep their dtype (float64 stays float64)."""
    weights = torch.ones(count) if weights is None else torch.as_tensor(weights)
    if not weights.is_floating_point():
        weights = weights.to(torch.get_default_dtype())
    weights = weights.reshape(-1)
    if weights.numel() != count or not bool((torch.isfinite(weights) & (weights > 0)).all()):
        raise ValueError(
            f"'weights' must hold {count} finite values > 0. Got {weights.tolist()!r}."
        )
    return torch.log(weights / weights.sum())
