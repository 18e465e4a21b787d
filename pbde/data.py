"""Preference data: the point where synthetic annotators and real datasets meet the models."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from pbde._validation import as_tensor, check_finite, check_labels, check_real

PairSampler = Callable[[int, "torch.Generator | None"], "tuple[torch.Tensor, torch.Tensor]"]


class Preferences:
    """A validated set of pairwise comparisons ``(x_A, x_B, y)``.

    ``y[i]`` is the probability that ``x_A[i]`` was preferred to ``x_B[i]``: 1 means
    x_A ≻ x_B, 0 means x_B ≻ x_A, values in between are soft labels (ties are 0.5).

    Args:
        xa: items shown first, shape ``(n, *event_shape)``.
        xb: items shown second, same shape as ``xa``.
        y: labels, shape ``(n,)``, in [0, 1].
        annotator_id: optional integer ids ``>= 0`` of who made each comparison, shape ``(n,)``.
        weight: optional weights ``>= 0`` of the comparisons, shape ``(n,)``, not all 0;
            :func:`pbde.fit` then minimizes the weighted mean of the per-pair losses.

    Raises:
        ValueError: on empty data, mismatched lengths or shapes, non-finite items or labels,
            labels outside [0, 1], negative annotator ids, or negative / non-finite / all-zero
            weights.
        TypeError: if ``annotator_id`` is not integer, or the items, labels or weights are
            strings or complex numbers (an imaginary part is never dropped silently).

    Example:
        >>> prefs = Preferences(torch.tensor([0, 1]), torch.tensor([2, 2]), torch.tensor([1.0, 0.0]))
        >>> len(prefs), prefs[1].y
        (2, tensor([0.]))
    """

    def __init__(self, xa, xb, y, annotator_id=None, weight=None):
        xa, xb = as_tensor("xa", xa), as_tensor("xb", xb)
        y = as_tensor("y", y)
        for name, value in (("xa", xa), ("xb", xb), ("y", y)):
            check_real(name, value)
        if xa.ndim == 0 or xa.shape[0] == 0:
            raise ValueError(
                f"'xa' must hold at least one comparison. Got shape {tuple(xa.shape)}."
            )
        if xa.shape != xb.shape:
            raise ValueError(
                f"'xa' and 'xb' must have the same shape. Got {tuple(xa.shape)} and "
                f"{tuple(xb.shape)}."
            )
        if y.ndim != 1 or y.shape[0] != xa.shape[0]:
            raise ValueError(
                f"'y' must have shape ({xa.shape[0]},), one label per pair. Got {tuple(y.shape)}."
            )
        check_finite("xa", xa)
        check_finite("xb", xb)
        y = y.to(torch.get_default_dtype()) if not y.is_floating_point() else y
        check_labels("y", y)
        if annotator_id is not None:
            annotator_id = as_tensor("annotator_id", annotator_id)
            if (
                annotator_id.is_floating_point()
                or annotator_id.is_complex()
                or annotator_id.dtype == torch.bool
            ):
                raise TypeError(
                    f"'annotator_id' must hold integers. Got dtype {annotator_id.dtype}."
                )
            if annotator_id.shape != y.shape:
                raise ValueError(
                    f"'annotator_id' must have shape ({y.shape[0]},). Got "
                    f"{tuple(annotator_id.shape)}."
                )
            if bool((annotator_id < 0).any()):
                raise ValueError(f"'annotator_id' must be >= 0. Got {int(annotator_id.min())}.")
        if weight is not None:
            weight = as_tensor("weight", weight)
            check_real("weight", weight)
            weight = weight if weight.is_floating_point() else weight.to(torch.get_default_dtype())
            if weight.shape != y.shape:
                raise ValueError(
                    f"'weight' must have shape ({y.shape[0]},). Got {tuple(weight.shape)}."
                )
            check_finite("weight", weight)
            if bool((weight < 0).any()) or not bool((weight > 0).any()):
                raise ValueError(
                    "'weight' must be >= 0 with at least one weight > 0. Got minimum "
                    f"{float(weight.min())!r} and maximum {float(weight.max())!r}."
                )
        self.xa, self.xb, self.y = xa, xb, y
        self.annotator_id, self.weight = annotator_id, weight

    def __len__(self) -> int:
        return self.y.shape[0]

    def __repr__(self) -> str:
        ids = "" if self.annotator_id is None else ", with annotator ids"
        ids += "" if self.weight is None else ", weighted"
        return (
            f"Preferences(n={len(self)}, item shape={tuple(self.xa.shape[1:])}, "
            f"mean y={float(self.y.float().mean()):.3f}{ids})"
        )

    def __getitem__(self, index) -> Preferences:
        if isinstance(index, int):
            if not -len(self) <= index < len(self):
                # IndexError (not the empty-data ValueError) also ends `for pair in prefs`
                raise IndexError(f"index {index} is out of range for {len(self)} comparisons.")
            index = slice(index, index + 1 if index != -1 else None)
        y = self.y[index]
        if y.ndim != 1 or y.shape[0] == 0:
            raise ValueError(f"Indexing with {index!r} selects no comparison (or not a 1-D set).")
        ids = None if self.annotator_id is None else self.annotator_id[index]
        weight = None if self.weight is None else self.weight[index]
        # a subset of validated data is valid: no second pass over it (fit draws batches so)
        return Preferences._trusted(self.xa[index], self.xb[index], y, ids, weight)

    @classmethod
    def _trusted(cls, xa, xb, y, annotator_id, weight=None) -> Preferences:
        out = cls.__new__(cls)
        out.xa, out.xb, out.y, out.annotator_id, out.weight = xa, xb, y, annotator_id, weight
        return out

    @property
    def device(self) -> torch.device:
        return self.y.device

    def to(self, device) -> Preferences:
        """A copy on ``device`` (labels, items and ids)."""
        ids = None if self.annotator_id is None else self.annotator_id.to(device)
        weight = None if self.weight is None else self.weight.to(device)
        return Preferences._trusted(
            self.xa.to(device), self.xb.to(device), self.y.to(device), ids, weight
        )

    def split(
        self, test_fraction: float = 0.2, *, seed: int = 0
    ) -> tuple[Preferences, Preferences]:
        """A random train/test split.

        Args:
            test_fraction: fraction of comparisons held out, in (0, 1); both parts must be
                non-empty.
            seed: seed of the permutation.

        Returns:
            ``(train, test)``.
        """
        if not (isinstance(test_fraction, float) and 0.0 < test_fraction < 1.0):
            raise ValueError(f"'test_fraction' must be a float in (0, 1). Got {test_fraction!r}.")
        n_test = round(len(self) * test_fraction)
        if n_test == 0 or n_test == len(self):
            raise ValueError(
                f"'test_fraction'={test_fraction} of {len(self)} comparisons leaves an empty part."
            )
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self), generator=generator).to(self.device)
        return self[order[n_test:]], self[order[:n_test]]

    @staticmethod
    def concat(parts: list[Preferences]) -> Preferences:
        """Concatenate several sets (annotator ids are kept only if every part has them; weights
        must be given for every part or for none)."""
        if not parts:
            raise ValueError("'parts' must hold at least one Preferences.")
        ids = [p.annotator_id for p in parts]
        weights = [p.weight for p in parts]
        if len({w is None for w in weights}) > 1:
            raise ValueError("'parts' must all have weights or all have none.")
        return Preferences(
            torch.cat([p.xa for p in parts]),
            torch.cat([p.xb for p in parts]),
            torch.cat([p.y for p in parts]),
            None if any(i is None for i in ids) else torch.cat(ids),
            None if weights[0] is None else torch.cat(weights),
        )


class TextPreferences:
    """Comparisons of text completions, before tokenization: ``(prompt, x_A, x_B, y)``.

    The text form of prompt/chosen/rejected data (the TRL / Hugging Face convention: ``x_A`` is
    the chosen completion, ``x_B`` the rejected one, ``y = 1``). A language-model density turns it
    into :class:`Preferences` of token items with its own tokenizer
    (:meth:`pbde.densities.CausalLM.tokenize`); the readers of :mod:`pbde.io` return it for text
    columns.

    Each prompt and completion is either a string (*standard* format) or a list of chat messages
    ``{"role": str, "content": str}`` (*conversational* format, rendered with the tokenizer's chat
    template); all rows use the same format.

    Args:
        prompt: ``n`` prompts (strings or message lists), or ``None`` when the data have none
            (conversational completions then carry their prompt as their leading messages).
        xa: ``n`` completions shown first (the chosen ones), non-empty.
        xb: ``n`` completions shown second (the rejected ones), non-empty.
        y: labels in [0, 1], shape ``(n,)``; default all 1 (``x_A`` preferred).
        annotator_id: optional integer ids ``>= 0``, shape ``(n,)``.
        weight: optional weights ``>= 0``, shape ``(n,)``.

    The labels, ids and weights are held (and validated) as :attr:`labels`, a
    :class:`Preferences` whose items are the row numbers ``0 … n−1``.

    Raises:
        ValueError: on empty data, lists of different lengths, an empty completion, a missing
            prompt in some rows, mixed formats, or bad labels, ids or weights.
        TypeError: if a prompt or completion is neither a string nor a list of messages.

    Example:
        >>> data = TextPreferences(["2+2="], ["4"], ["5"])
        >>> len(data), data.conversational, data.labels.y
        (1, False, tensor([1.]))
    """

    def __init__(self, prompt, xa, xb, y=None, annotator_id=None, weight=None):
        xa, xb = _text_list("xa", xa), _text_list("xb", xb)
        n = len(xa)
        if n == 0:
            raise ValueError("'xa' must hold at least one completion. Got none.")
        if len(xb) != n:
            raise ValueError(f"'xa' and 'xb' must have the same length. Got {n} and {len(xb)}.")
        if prompt is not None:
            prompt = _text_list("prompt", prompt, allow_empty=True)
            if len(prompt) != n:
                raise ValueError(
                    f"'prompt' must hold {n} prompts, one per pair. Got {len(prompt)}."
                )
        formats = {isinstance(t, str) for t in xa + xb + (prompt or [])}
        if len(formats) > 1:
            raise ValueError(
                "'prompt', 'xa' and 'xb' must all be strings or all be chat message lists. Got both."
            )
        y = torch.ones(n) if y is None else y
        self.labels = Preferences(torch.arange(n), torch.arange(n), y, annotator_id, weight)
        self.prompt, self.xa, self.xb = prompt, xa, xb
        self.conversational = formats == {False}

    @property
    def y(self) -> torch.Tensor:
        return self.labels.y

    @property
    def annotator_id(self) -> torch.Tensor | None:
        return self.labels.annotator_id

    @property
    def weight(self) -> torch.Tensor | None:
        return self.labels.weight

    def __len__(self) -> int:
        return len(self.xa)

    def __repr__(self) -> str:
        kind = "conversational" if self.conversational else "standard"
        prompt = "" if self.prompt is not None else ", no prompts"
        return f"TextPreferences(n={len(self)}, {kind}{prompt}, mean y={float(self.y.mean()):.3f})"

    def __getitem__(self, index) -> TextPreferences:
        labels = self.labels[index]
        rows = labels.xa.tolist()
        out = TextPreferences.__new__(TextPreferences)
        out.prompt = None if self.prompt is None else [self.prompt[i] for i in rows]
        out.xa, out.xb = [self.xa[i] for i in rows], [self.xb[i] for i in rows]
        out.labels = Preferences._trusted(
            torch.arange(len(rows)),
            torch.arange(len(rows)),
            labels.y,
            labels.annotator_id,
            labels.weight,
        )
        out.conversational = self.conversational
        return out

    def split(
        self, test_fraction: float = 0.2, *, seed: int = 0
    ) -> tuple[TextPreferences, TextPreferences]:
        """A random train/test split (the same permutation as :meth:`Preferences.split`)."""
        train, test = self.labels.split(test_fraction, seed=seed)
        return self[train.xa], self[test.xa]

    def to_records(self) -> list[dict]:
        """The rows as dicts with ``prompt`` (if any), ``chosen`` (x_A), ``rejected`` (x_B) and, where
        not all 1, ``y``; ``annotator_id`` and ``weight`` when present (what the readers read)."""
        y = self.y.tolist()
        ids = None if self.annotator_id is None else self.annotator_id.tolist()
        weight = None if self.weight is None else self.weight.tolist()
        hard = all(v == 1.0 for v in y)
        records = []
        for i in range(len(self)):
            record = {} if self.prompt is None else {"prompt": self.prompt[i]}
            record["chosen" if hard else "xa"] = self.xa[i]
            record["rejected" if hard else "xb"] = self.xb[i]
            if not hard:
                record["y"] = y[i]
            if ids is not None:
                record["annotator_id"] = ids[i]
            if weight is not None:
                record["weight"] = weight[i]
            records.append(record)
        return records


def is_chat_message(value) -> bool:
    """Whether ``value`` is a chat message: a mapping with string ``role`` and ``content``."""
    return (
        isinstance(value, Mapping)
        and isinstance(value.get("role"), str)
        and isinstance(value.get("content"), str)
    )


def _text_list(name: str, values, *, allow_empty: bool = False) -> list:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise TypeError(
            f"'{name}' must be a list of strings or of chat message lists. Got "
            f"{type(values).__name__}."
        )
    out = list(values)
    for i, value in enumerate(out):
        if isinstance(value, str):
            if not value and not allow_empty:
                raise ValueError(f"'{name}' must hold non-empty text. Row {i} is empty.")
            continue
        if value is None:
            raise ValueError(f"'{name}' is missing in row {i} (None).")
        if not isinstance(value, (list, tuple)) or (not value and not allow_empty):
            raise TypeError(
                f"'{name}' must hold strings or non-empty lists of chat messages. Row {i} is "
                f"{type(value).__name__} {str(value)[:60]!r}."
            )
        for message in value:
            if not is_chat_message(message):
                raise TypeError(
                    f"'{name}' row {i}: a chat message must be a dict with string 'role' and "
                    f"'content'. Got {str(message)[:60]!r}."
                )
        out[i] = [dict(message) for message in value]
    return out


def sample_pairs(proposal, n: int, *, generator: torch.Generator | None = None):
    """Draw ``n`` pairs ``(x_A, x_B)`` from a proposal q(x_A, x_B).

    Args:
        proposal: a :class:`~pbde.densities.Density` (x_A and x_B drawn independently from it,
            the paper's setting with π_ref) or a callable ``(n, generator) -> (xa, xb)``.
        n: number of pairs, >= 1.
        generator: optional ``torch.Generator`` for reproducibility.

    Returns:
        ``(xa, xb)``, each of shape ``(n, *event_shape)``.
    """
    from pbde.densities.base import Density

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"'n' must be an int >= 1. Got {n!r} instead.")
    if isinstance(proposal, Density) and hasattr(proposal, "sample_pairs"):
        return proposal.sample_pairs(n, generator=generator)  # pairs that share a prompt
    if isinstance(proposal, Density):
        both = proposal.sample(2 * n, generator=generator)
        return both[:n], both[n:]
    if callable(proposal):
        xa, xb = proposal(n, generator)
        return xa, xb
    raise TypeError(
        f"'proposal' must be a Density or a callable (n, generator) -> (xa, xb). "
        f"Got {type(proposal).__name__}."
    )
