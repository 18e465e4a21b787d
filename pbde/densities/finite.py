"""Densities on finite supports and tabulated densities."""

from __future__ import annotations

import torch
from torch import nn

from pbde._validation import check_finite, check_tensor, short_repr
from pbde.densities.base import Density
from pbde.io import PAD_TOKEN
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
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            # a bool tensor would index as a mask, not as ids
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
        # one normalization per group: per prompt on a conditional SequenceSupport
        log_total = self.support.log_integral_by_group(log_density)
        if normalize:
            log_density = log_density - log_total[self.support.group_index]
        elif bool((log_total.abs() > 1e-6).any()):
            group = int((log_total.abs() > 1e-6).nonzero()[0])
            where = f" for prompt {group}" if self.support.num_groups > 1 else ""
            raise ValueError(
                f"'log_density' must be normalized on the support (integral 1){where}. Got "
                f"integral {float(log_total[group].exp())!r}; pass normalize=True to "
                "renormalize."
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
        keys = self.__dict__.get("_keys")
        if keys is None or keys[0].device != points.device:  # the support's index, once
            keys = self._keys = item_keys(points)
        index, found = find_items(points, *keys, x.to(points.dtype))
        if not bool(found.all()):
            raise ValueError(
                "'x' must hold items of the support of this Tabulated density. Got "
                f"{x[~found][0].tolist()!r}, which is not one of them."
            )
        return values[index]

    def _validate_items(self, x):
        super()._validate_items(x)
        points = self.support.points
        if not points.is_floating_point():
            if x.dtype == torch.bool:
                raise TypeError(
                    f"'x' must hold integer items for this Tabulated density on a support of "
                    f"{points.dtype} items. Got dtype {x.dtype}."
                )
            fractional = x != x.round() if x.is_floating_point() else None
            if fractional is not None and bool(fractional.any()):
                # 1.5 would be cast to 1 and read as that item
                raise ValueError(
                    "'x' must hold items of the support of this Tabulated density (integers). "
                    f"Got {x[fractional].reshape(-1)[0].item()!r}."
                )
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

    def sample_pairs(self, n: int, *, generator: torch.Generator | None = None):
        """``n`` pairs drawn independently from this density, shapes ``(n, *event_shape)``; on a
        conditional support (prompts), a prompt drawn uniformly per pair, then both items from
        that prompt's p(completion | prompt), so each pair shares its prompt (as in DPO data).
        :func:`pbde.sample_pairs` calls it."""
        if self.support.num_groups == 1:
            both = self.sample(2 * n, generator=generator)
            return both[:n], both[n:]
        groups = torch.randint(self.support.num_groups, (n,), generator=generator)
        masses = self.support.masses(self.values)
        same = self.support.group_index[None, :] == groups[:, None]
        probs = torch.where(same, masses[None, :], torch.zeros_like(masses)[None, :])
        index = torch.multinomial(probs, 2, replacement=True, generator=generator)
        points = self.support.points
        return points[index[:, 0]], points[index[:, 1]]


class Precomputed(Density):
    """A frozen density known on a fixed set of items: its log-probabilities computed once, then
    looked up.

    What DPO's π_ref is during training: the reference never changes, so evaluating it at every
    step (a whole language model's forward pass) is wasted work. :meth:`of` evaluates a density
    once on every distinct item of a data set, in batches and without gradient, and the result
    answers ``log_prob`` for those items by lookup (a hash of each item, then an exact comparison),
    so the reference model can be released before training starts.

    Token items (integer ``(…, width)`` tensors padded on the right with ``PAD_TOKEN``) asked for at
    another width than they were stored with are re-padded (or their all-padding columns trimmed)
    before the lookup.

    Args:
        items: the items, shape ``(m, *event_shape)``, finite.
        log_probs: ``log p(items)``, shape ``(m,)``, no NaN.

    Raises:
        ValueError: if the shapes do not match or ``log_probs`` holds NaN; from ``log_prob``, if
            an item is not one of ``items``.

    Example:
        >>> p = Categorical(probs=torch.tensor([0.2, 0.3, 0.5]))
        >>> table = Precomputed.of(p, torch.tensor([2, 0, 2]))
        >>> table.log_prob(torch.tensor([0, 2, 2])).exp()
        tensor([0.2000, 0.5000, 0.5000])
    """

    def __init__(self, items: torch.Tensor, log_probs: torch.Tensor):
        super().__init__()
        check_tensor("items", items)
        check_tensor("log_probs", log_probs)
        if items.ndim == 0 or items.shape[0] == 0:
            raise ValueError(
                f"'items' must hold at least one item. Got shape {tuple(items.shape)}."
            )
        if log_probs.shape != (items.shape[0],):
            raise ValueError(
                f"'log_probs' must have shape ({items.shape[0]},), one value per item. Got "
                f"{tuple(log_probs.shape)}."
            )
        check_finite("items", items)
        if bool(torch.isnan(log_probs).any()):
            raise ValueError("'log_probs' must not contain NaN.")
        self.event_shape = tuple(items.shape[1:])
        self.register_buffer("items", items.detach().clone())
        self.register_buffer("values", log_probs.detach().clone())
        sorted_keys, order = item_keys(self.items)
        self.register_buffer("_sorted_keys", sorted_keys)
        self.register_buffer("_order", order)
        #: what the values were computed from, as data (e.g. a model folder), if known
        self.origin: dict | None = None
        # frozen by nature: a behavior that takes it as its reference (pbde.dpo) keeps this
        # table instead of copying it (a table of many token items is large)
        self._freeze()

    @classmethod
    @torch.no_grad()
    def of(
        cls, density: Density, items: torch.Tensor, *, batch_size: int = 64, progress=None
    ) -> Precomputed:
        """Evaluate ``density`` once on the distinct ``items`` (batches of ``batch_size``, no
        gradient, the density in eval mode and put back in its mode afterwards).

        Args:
            density: any :class:`Density` (e.g. a :class:`~pbde.densities.CausalLM` reference).
            items: items, shape ``(m, *event_shape)``; repeated items are evaluated once.
            batch_size: items per forward pass, >= 1.
            progress: show a progress bar (default: when standard error is a terminal).
        """
        import sys

        from tqdm.auto import tqdm

        from pbde.densities.base import check_density

        check_density("density", density)
        check_tensor("items", items)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"'batch_size' must be an int >= 1. Got {batch_size!r}.")
        distinct = torch.unique(items, dim=0) if items.ndim > 0 else items
        if items.ndim > 1 and not items.is_floating_point():
            # sorted by length first: batches of similar widths waste less padding
            order = (distinct != PAD_TOKEN).reshape(distinct.shape[0], -1).sum(1).argsort()
            distinct = distinct[order]
        was_training = density.training
        density.eval()
        values = []
        show = sys.stderr.isatty() if progress is None else progress
        try:
            for start in tqdm(
                range(0, distinct.shape[0], batch_size), desc="reference", disable=not show
            ):
                value = density.log_prob(distinct[start : start + batch_size])
                # at least float32 (a bfloat16 model's values), never less than the density gives
                values.append(value.to(torch.promote_types(value.dtype, torch.float32)).cpu())
        finally:
            density.train(was_training)
        table = cls(distinct.cpu(), torch.cat(values))
        table.origin = getattr(density, "origin", None)
        return table

    def __repr__(self) -> str:
        return f"Precomputed(items={self.items.shape[0]}, event_shape={self.event_shape})"

    def _validate_items(self, x: torch.Tensor) -> None:
        if x.ndim != len(self.event_shape) + 1 or (
            tuple(x.shape[1:-1]) != self.event_shape[:-1] if self.event_shape else x.ndim != 1
        ):
            super()._validate_items(x)
        check_finite("x", x)

    def _log_prob(self, x: torch.Tensor) -> torch.Tensor:
        x = self._at_stored_width(x)
        index, found = find_items(self.items, self._sorted_keys, self._order, x)
        if not bool(found.all()):
            row = int(torch.nonzero(~found)[0, 0])
            raise ValueError(
                "'x' must hold items this Precomputed density was computed on. Row "
                f"{row} (item {short_repr(x[row].tolist())}) is not one of its "
                f"{self.items.shape[0]} items."
            )
        return self.values[index]

    def _at_stored_width(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim < 2 or x.shape[-1] == self.items.shape[-1] or x.is_floating_point():
            return x
        width = self.items.shape[-1]
        if x.shape[-1] < width:
            pad = torch.full((*x.shape[:-1], width - x.shape[-1]), PAD_TOKEN, dtype=x.dtype)
            return torch.cat([x, pad.to(x.device)], dim=-1)
        if bool((x[..., width:] != PAD_TOKEN).any()):
            raise ValueError(
                f"'x' must hold items this Precomputed density was computed on; some are longer "
                f"than its width {width}."
            )
        return x[..., :width]


def item_keys(items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An index of ``items`` (along dim 0) for :func:`find_items`: their sorted hash keys and the
    order that sorts them."""
    keys = _row_keys(items)
    sorted_keys, order = keys.sort()
    return sorted_keys, order


def find_items(
    stored: torch.Tensor, sorted_keys: torch.Tensor, order: torch.Tensor, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each item of ``x`` is among ``stored`` (indexed by :func:`item_keys`): a hash lookup
    then an exact comparison, O((n + m) log m) rather than the n×m comparison of every pair.

    Returns:
        ``(index, found)``: ``stored[index[i]] == x[i]`` wherever ``found[i]``.
    """
    position = torch.searchsorted(sorted_keys, _row_keys(x)).clamp_(max=len(order) - 1)
    index = order[position]
    flat = x.reshape(x.shape[0], -1)
    found = (stored[index].reshape(x.shape[0], -1) == flat.to(stored.dtype)).all(1)
    if not bool(found.all()):  # a hash collision between stored items, -0.0, or an unknown item
        rows = stored.reshape(stored.shape[0], -1)
        for row in torch.nonzero(~found).reshape(-1).tolist():
            same = (rows == flat[row].to(rows.dtype)).all(1).nonzero()
            if same.numel():
                index[row], found[row] = same[0, 0], True
    return index, found


def _row_keys(x: torch.Tensor) -> torch.Tensor:
    """A 64-bit hash of each item (row along dim 0): equal items, equal keys."""
    flat = x.reshape(x.shape[0], -1)
    flat = flat.double().view(torch.int64) if flat.is_floating_point() else flat.long()
    generator = torch.Generator().manual_seed(20231)
    weights = torch.randint(-(2**62), 2**62, (flat.shape[1],), generator=generator) * 2 + 1
    return (flat * weights.to(flat.device)).sum(1)  # wraps modulo 2^64
