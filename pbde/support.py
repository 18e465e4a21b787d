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

from pbde._validation import check_finite, check_int, check_tensor


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

    # -- conditional supports: one normalization per group (per prompt) ----------------------

    #: number of groups a density is normalized over separately (1: the whole support)
    num_groups: int = 1

    @property
    def group_index(self) -> torch.Tensor:
        """Group of each point, ``LongTensor`` of shape ``(n,)`` (all 0 for a plain support)."""
        return torch.zeros(len(self), dtype=torch.long)

    def groups(self) -> list[torch.Tensor]:
        """Indices of the points of each group, a list of ``num_groups`` ``LongTensor``."""
        index = self.group_index
        return [torch.nonzero(index == g).reshape(-1) for g in range(self.num_groups)]

    def log_integral_by_group(self, log_values: torch.Tensor) -> torch.Tensor:
        """log ∫ exp(log_values) dμ over each group, shape ``(num_groups,)``.

        Args:
            log_values: tensor of shape ``(n,)``.
        """
        if self.num_groups == 1:
            return self.log_integral(log_values)[None]
        weights = self.log_weights.to(device=log_values.device, dtype=log_values.dtype)
        index = self.group_index.to(log_values.device)
        return torch.stack(
            [torch.logsumexp((log_values + weights)[index == g], 0) for g in range(self.num_groups)]
        )

    def subset(self, index: torch.Tensor) -> Support:
        """The points ``index`` (and their weights) as a plain :class:`Support`."""
        return Support(self.points[index], self.log_weights[index])


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


#: default largest number of items (all prompts together) a :class:`SequenceSupport` enumerates
MAX_SEQUENCE_SUPPORT = 2**20


def sequence_count(vocab_size: int, max_length: int, *, min_length: int = 1) -> int:
    """Number of EOS-terminated sequences over ``vocab_size`` tokens (EOS included) of
    ``min_length … max_length`` tokens (EOS included): Σ_{l} (vocab_size − 1)^{l − 1}.

    The first ``l − 1`` tokens are any of the ``vocab_size − 1`` other tokens, the last is EOS.

    Example:
        >>> sequence_count(3, 3)  # 1 + 2 + 4
        7
    """
    return sum((vocab_size - 1) ** (length - 1) for length in range(min_length, max_length + 1))


class SequenceSupport(Support):
    """Every EOS-terminated token sequence up to a maximum length, optionally for each of a set of
    prompts: the finite sample space of a small language model, on which the theory is exact.

    **Items.** Without ``prompts``: the sequences as an integer tensor of shape ``(n, max_length)``,
    right-padded with ``PAD_TOKEN`` (−1), the items of
    :class:`~pbde.densities.Autoregressive`. With ``prompts``: items of shape
    ``(P·n, 2, width)``, row 0 the prompt and row 1 the completion (the items of
    :class:`~pbde.densities.CausalLM`), every completion repeated for each of the ``P`` prompts;
    ``width = max(max_length, longest prompt)``. A sequence of length ``l`` (EOS included) is
    ``l − 1`` tokens other than EOS followed by EOS, so there are
    ``n = Σ_{l=min_length..max_length} (V − 1)^{l − 1}`` of them (:func:`sequence_count`),
    ordered by length, then lexicographically.

    **Conditional supports.** With prompts, densities are p(completion | prompt): each prompt's
    completions form one group (:attr:`group_index`) and every normalization is per group —
    :class:`~pbde.densities.Tabulated` checks that each prompt's masses sum to 1,
    :func:`~pbde.optimal_density` and :func:`~pbde.psipo_optimum` solve each prompt separately
    (pairs compare completions of the same prompt, as in DPO data), :func:`~pbde.kl` and
    :func:`~pbde.tv` return the mean over prompts (or each prompt's value with
    ``by_prompt=True``), and a Tabulated density on it samples a prompt uniformly, then its
    completion.

    **Normalization of language models.** A language model gives some mass to sequences longer
    than ``max_length``, so its probabilities do not sum to 1 here. pbde makes it normalized
    by forcing EOS at the maximum length (:class:`~pbde.densities.ForcedEOS`;
    :class:`~pbde.densities.Autoregressive` does it by construction): the conditional at
    position ``max_length`` is a point mass on EOS, so a sequence of ``max_length`` tokens gets
    the probability of its first ``max_length − 1`` tokens (the mass of all its longer
    continuations). Why not restrict and renormalize (divide by P(|x| ≤ max_length))? The
    forced form is computed item by item, with gradients, and it is what a model generating
    with a length limit does; the normalizer of the renormalized form is a sum over the whole
    support, so a model trained through it would need the whole support at each step, and
    without one the length-normalized rule (f = 1/|x|, eq. 26) is not identified (Theorem 2
    needs a normalized model: a leaking model can scale all its mass on the support). The
    mass a model puts beyond the maximum length is reported by :func:`pbde.mass_beyond`.

    Args:
        vocab_size: number of token ids ``0 … vocab_size − 1``, EOS included, >= 2.
        max_length: most tokens of a sequence, EOS included, >= 1.
        eos: the end-of-sequence token id (default 0).
        min_length: fewest tokens of a sequence, EOS included, in ``[1, max_length]``.
        prompts: optional prompts, a list of non-empty token-id lists (or a ``(P, L)`` tensor
            padded with ``PAD_TOKEN``); their tokens may be any ids >= 0.
        max_size: refuse to enumerate more items than this (all prompts together; default
            :data:`MAX_SEQUENCE_SUPPORT` = 2^20).

    Attributes:
        lengths: number of tokens of each completion, EOS included, ``LongTensor`` ``(n,)``.
        num_groups: number of prompts (1 without prompts).

    Raises:
        ValueError: on invalid sizes, an ``eos`` outside the vocabulary, empty prompts, or a
            support larger than ``max_size`` (the message gives the size).

    Example:
        >>> s = SequenceSupport(3, 3)  # tokens 1, 2 and EOS = 0
        >>> s.points
        tensor([[ 0, -1, -1],
                [ 1,  0, -1],
                [ 2,  0, -1],
                [ 1,  1,  0],
                [ 1,  2,  0],
                [ 2,  1,  0],
                [ 2,  2,  0]])
    """

    def __init__(
        self,
        vocab_size: int,
        max_length: int,
        *,
        eos: int = 0,
        min_length: int = 1,
        prompts=None,
        max_size: int = MAX_SEQUENCE_SUPPORT,
    ):
        from pbde.io import PAD_TOKEN

        for name, value, minimum in (
            ("vocab_size", vocab_size, 2),
            ("max_length", max_length, 1),
            ("max_size", max_size, 1),
        ):
            check_int(name, value, minimum)
        if isinstance(eos, bool) or not isinstance(eos, int) or not 0 <= eos < vocab_size:
            raise ValueError(f"'eos' must be a token id in [0, {vocab_size - 1}]. Got {eos!r}.")
        if (
            isinstance(min_length, bool)
            or not isinstance(min_length, int)
            or not 1 <= min_length <= max_length
        ):
            raise ValueError(
                f"'min_length' must be an int in [1, max_length={max_length}]. Got {min_length!r}."
            )
        prompt_rows = None if prompts is None else _prompt_rows(prompts)
        count = sequence_count(vocab_size, max_length, min_length=min_length)
        total = count * (1 if prompt_rows is None else len(prompt_rows))
        if total > max_size:
            raise ValueError(
                f"SequenceSupport would hold {total:,} items (vocab_size={vocab_size}, "
                f"max_length={max_length}: {count:,} sequences"
                + ("" if prompt_rows is None else f" × {len(prompt_rows)} prompts")
                + f"), more than max_size={max_size:,}. Lower vocab_size or max_length, or "
                "raise max_size."
            )
        self.vocab_size, self.max_length, self.eos = vocab_size, max_length, eos
        self.min_length = min_length
        others = torch.tensor([t for t in range(vocab_size) if t != eos], dtype=torch.long)
        rows = []
        for length in range(min_length, max_length + 1):
            number = (vocab_size - 1) ** (length - 1)
            block = torch.full((number, max_length), PAD_TOKEN, dtype=torch.long)
            if length > 1:
                powers = (vocab_size - 1) ** torch.arange(length - 2, -1, -1)
                digits = torch.arange(number)[:, None] // powers % (vocab_size - 1)
                block[:, : length - 1] = others[digits]
            block[:, length - 1] = eos
            rows.append(block)
        sequences = torch.cat(rows)
        self.sequences = sequences
        self.prompts = prompt_rows
        lengths = (sequences != PAD_TOKEN).sum(1)
        if prompt_rows is None:
            self.lengths = lengths
            self._group_index = torch.zeros(count, dtype=torch.long)
            super().__init__(sequences)
            return
        width = max(max_length, max(len(p) for p in prompt_rows))
        items = torch.full((len(prompt_rows), count, 2, width), PAD_TOKEN, dtype=torch.long)
        for i, prompt in enumerate(prompt_rows):
            items[i, :, 0, : len(prompt)] = torch.tensor(prompt, dtype=torch.long)
        items[:, :, 1, :max_length] = sequences
        self.num_groups = len(prompt_rows)
        self.lengths = lengths.repeat(self.num_groups)
        self._group_index = torch.arange(self.num_groups).repeat_interleave(count)
        super().__init__(items.reshape(-1, 2, width))

    def __repr__(self) -> str:
        prompts = "" if self.prompts is None else f", prompts={len(self.prompts)}"
        return (
            f"SequenceSupport(vocab_size={self.vocab_size}, max_length={self.max_length}, "
            f"eos={self.eos}{prompts}, size={len(self)})"
        )

    @property
    def group_index(self) -> torch.Tensor:
        """Prompt of each item, ``LongTensor`` of shape ``(n,)`` (all 0 without prompts)."""
        return self._group_index


def _prompt_rows(prompts) -> list[list[int]]:
    from pbde.io import PAD_TOKEN

    if isinstance(prompts, torch.Tensor):
        if prompts.ndim != 2 or prompts.is_floating_point():
            raise ValueError(
                "'prompts' as a tensor must be integer of shape (P, L). Got "
                f"{tuple(prompts.shape)}, {prompts.dtype}."
            )
        prompts = [[t for t in row if t != PAD_TOKEN] for row in prompts.tolist()]
    if isinstance(prompts, (str, bytes)) or not hasattr(prompts, "__len__") or not prompts:
        raise ValueError(f"'prompts' must be a non-empty list of token-id lists. Got {prompts!r}.")
    rows = []
    for i, row in enumerate(prompts):
        row = list(row) if not isinstance(row, (str, bytes)) else None
        if (
            not row
            or any(isinstance(t, bool) or not isinstance(t, int) for t in row)
            or min(row) < 0
        ):
            raise ValueError(
                f"'prompts' must hold non-empty lists of token ids >= 0. Prompt {i} is "
                f"{prompts[i]!r}."
            )
        rows.append(row)
    return rows


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
