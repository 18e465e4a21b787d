"""Autoregressive densities over token sequences that end with an end-of-sequence token.

A sequence ``x = (x_1, …, x_T)`` with ``x_T = EOS`` (and no EOS before) has probability

    p(x) = Π_{t=1..T} p(x_t | x_<t),

each factor a softmax over the vocabulary. Its length ``|x| = T`` counts the EOS token. With a
maximum length ``max_length`` the conditional at position ``max_length`` is a point mass on EOS,
so every sequence ends by then (with a minimum length, EOS has probability 0 before it) and the
probabilities of all sequences of length ``min_length … max_length`` sum to exactly 1: the density is normalized by construction, which is what
lets Theorem 2 of Dumoulin et al. apply to it (the length-normalized rule, eq. 26, is a PBDE with
f(x) = 1/|x|).

Items are padded integer tensors of shape ``(batch, width)``: each row holds the tokens up to and
including EOS, then :data:`pbde.io.PAD_TOKEN` (−1) to the right. Any ``width`` is accepted (wider
padding does not change the result); :meth:`Autoregressive.sample` returns
``width = max_length``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pbde._validation import (
    check_int,
    check_positive_number,
    check_tensor,
    is_validation_enabled,
)
from pbde.densities.base import Density
from pbde.io import PAD_TOKEN

__all__ = ["Autoregressive", "ForcedEOS", "sequence_lengths"]


def sequence_lengths(x: torch.Tensor) -> torch.Tensor:
    """Number of tokens of each padded sequence (everything but the trailing ``PAD_TOKEN``).

    Args:
        x: integer tensor of shape ``(batch, width)``, padded with ``PAD_TOKEN`` on the right.

    Returns:
        ``LongTensor`` of shape ``(batch,)``.

    Example:
        >>> sequence_lengths(torch.tensor([[4, 2, 0, -1], [0, -1, -1, -1]]))
        tensor([3, 1])
    """
    check_tensor("x", x)
    if x.ndim != 2:
        raise ValueError(f"'x' must have shape (batch, width). Got {tuple(x.shape)}.")
    return (x != PAD_TOKEN).sum(dim=1)


class Autoregressive(Density):
    """A normalized density over token sequences ending with EOS: a small GRU language model.

    ``log p(x) = Σ_t log softmax(W h_t + b + β_t e_EOS)[x_t]``, where ``h_t`` is the state of
    a GRU that has read a begin-of-sequence symbol and ``x_1 … x_{t−1}`` (each input is a token
    embedding plus a learned position embedding) and ``β_t`` (:attr:`eos_bias`) a learned bias
    of the EOS logit at position ``t``. Changing ``β`` changes only when sequences stop: the
    distribution of the next token given that the sequence goes on is untouched. Training
    ``eos_bias`` alone (``model.requires_grad_(False); model.eos_bias.requires_grad_(True)``)
    therefore adapts the length distribution and nothing else. At the last position
    ``t = max_length`` the conditional is a point mass on EOS (log-probability 0), and before
    position ``min_length`` EOS has probability 0, so the probabilities of all sequences of
    length ``min_length … max_length`` sum to 1.

    Items: integer tensors of shape ``(batch, width)``, each row the tokens (ids in
    ``[0, vocab_size)``), ending with exactly one ``eos``, then ``PAD_TOKEN`` (−1) padding.
    ``event_shape`` is ``(max_length,)``, the width of :meth:`sample`'s output; ``log_prob``
    accepts any width.

    Args:
        vocab_size: number of token ids, EOS included, >= 2.
        max_length: maximum number of tokens of a sequence, EOS included, >= 1.
        eos: the end-of-sequence token id (default 0).
        min_length: minimum number of tokens of a sequence, EOS included, in
            ``[1, max_length]`` (default 1). A support that matches the data's keeps
            preference fitting from moving mass to lengths that no data shows (see
            :mod:`pbde.experiments.lm_mixture`).
        embedding_dim: size of the token and position embeddings.
        hidden_size: size of the GRU state.
        num_layers: number of stacked GRU layers.
        dropout: dropout between GRU layers (``num_layers > 1``), in [0, 1).

    Attributes:
        eos_bias: learned offset of the EOS logit at each position, shape ``(max_length,)``.

    Raises:
        ValueError: on invalid sizes or an ``eos`` outside the vocabulary.

    Example:
        >>> import pbde
        >>> lm = Autoregressive(vocab_size=3, max_length=4)   # tokens 1, 2 and EOS = 0
        >>> x = torch.tensor([[2, 1, 0], [0, -1, -1]])         # "2 1 <eos>" and "<eos>"
        >>> lm.log_prob(x).shape, lm.length(x).tolist()
        (torch.Size([2]), [3, 1])
        >>> lm.sample(5, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([5, 4])
        >>> annotator = pbde.Annotator(lm, pbde.length_normalized(lm.length))  # eq. 26
    """

    def __init__(
        self,
        vocab_size: int,
        max_length: int,
        *,
        eos: int = 0,
        min_length: int = 1,
        embedding_dim: int = 64,
        hidden_size: int = 128,
        num_layers: int = 1,
        dropout: float = 0.0,
    ):
        super().__init__()
        for name, value, minimum in (
            ("vocab_size", vocab_size, 2),
            ("max_length", max_length, 1),
            ("embedding_dim", embedding_dim, 1),
            ("hidden_size", hidden_size, 1),
            ("num_layers", num_layers, 1),
        ):
            check_int(name, value, minimum)
        if (
            isinstance(min_length, bool)
            or not isinstance(min_length, int)
            or not 1 <= min_length <= max_length
        ):
            raise ValueError(
                f"'min_length' must be an int in [1, max_length={max_length}]. Got {min_length!r}."
            )
        if isinstance(eos, bool) or not isinstance(eos, int) or not 0 <= eos < vocab_size:
            raise ValueError(f"'eos' must be a token id in [0, {vocab_size - 1}]. Got {eos!r}.")
        dropout = check_positive_number("dropout", dropout, allow_zero=True)
        if dropout >= 1:
            raise ValueError(f"'dropout' must lie in [0, 1). Got {dropout!r}.")
        self.vocab_size, self.max_length, self.eos = vocab_size, max_length, eos
        self.min_length = min_length
        self.event_shape = (max_length,)
        # row `vocab_size` of the token embedding is the begin-of-sequence input
        self.token_embedding = nn.Embedding(vocab_size + 1, embedding_dim)
        self.position_embedding = nn.Embedding(max_length, embedding_dim)
        self.gru = nn.GRU(
            embedding_dim,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.head = nn.Linear(hidden_size, vocab_size)
        # log-odds of stopping at each position, learned directly (see the class docstring)
        self.eos_bias = nn.Parameter(torch.zeros(max_length))

    def __repr__(self) -> str:
        return (
            f"Autoregressive(vocab_size={self.vocab_size}, min_length={self.min_length}, "
            f"max_length={self.max_length}, eos={self.eos}, hidden_size={self.gru.hidden_size}, "
            f"num_layers={self.gru.num_layers})"
        )

    # -- public ---------------------------------------------------------------------------

    def length(self, x: torch.Tensor) -> torch.Tensor:
        """Number of tokens of each sequence, EOS included, shape ``(batch,)`` (int64).

        Pass it to :func:`pbde.length_normalized` for the length-normalized Luce rule (eq. 26):
        ``pbde.Annotator(lm, pbde.length_normalized(lm.length))``.

        Raises:
            TypeError, ValueError: as :meth:`log_prob` (while validation is enabled).
        """
        check_tensor("x", x)
        if is_validation_enabled():
            self._validate_items(x)
        return sequence_lengths(x)

    def sample(
        self,
        n: int,
        *,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Draw ``n`` sequences, shape ``(n, max_length)``, padded with ``PAD_TOKEN``.

        Ancestral sampling, token by token; each conditional's logits are divided by
        ``temperature`` (at ``temperature=1`` the draws follow :meth:`log_prob` exactly; other
        temperatures change every conditional except the forced EOS at ``max_length``).

        Args:
            n: number of sequences, >= 1.
            temperature: the softmax temperature, > 0.
            generator: optional ``torch.Generator`` for reproducibility.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"'n' must be an int >= 1. Got {n!r} instead.")
        temperature = check_positive_number("temperature", temperature)
        with torch.no_grad():
            return self._sample(n, generator, temperature)

    def fit_mle(
        self,
        sequences: torch.Tensor,
        *,
        steps: int = 2000,
        lr: float = 3e-3,
        batch_size: int | None = 64,
        schedule: str = "cosine",
        seed: int = 0,
        progress: bool | None = None,
    ):
        """Maximum-likelihood training on a corpus: minimize ``−mean log p(x)`` over sequences.

        Runs :func:`pbde.fit.optimize` (Adam, cosine decay of the learning rate to 0 by default)
        on mini-batches of ``batch_size`` sequences drawn without replacement at each step.

        Args:
            sequences: the corpus, shape ``(n, width)``, items as for :meth:`log_prob`.
            steps: optimization steps, >= 1.
            lr: peak learning rate, > 0.
            batch_size: sequences per step; ``None`` for the whole corpus.
            schedule: ``"cosine"`` or ``"constant"``.
            seed: seed of the mini-batch sampler.
            progress: show a progress bar (default: when standard error is a terminal).

        Returns:
            :class:`~pbde.FitResult` (the loss is the mean negative log-likelihood per sequence,
            in nats).

        Raises:
            TypeError, ValueError: if ``sequences`` are not valid items of this density, or on
                bad optimization settings.
        """
        from pbde.fit import optimize

        check_tensor("sequences", sequences)
        if sequences.ndim != 2 or sequences.shape[0] == 0:
            raise ValueError(
                f"'sequences' must have shape (n, width) with n >= 1. Got {tuple(sequences.shape)}."
            )
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
            raise ValueError(f"'batch_size' must be None or an int >= 1. Got {batch_size!r}.")
        sequences = sequences.to(self._param_device())
        self._validate_items(sequences)
        sequences = sequences[:, : int(sequence_lengths(sequences).max())]
        n = sequences.shape[0]

        def negative_log_likelihood(generator: torch.Generator) -> torch.Tensor:
            if batch_size is None or batch_size >= n:
                batch = sequences
            else:
                index = torch.randperm(n, generator=generator)[:batch_size]
                batch = sequences[index.to(sequences.device)]
            return -self.log_prob(batch).mean()

        return optimize(
            self,
            negative_log_likelihood,
            steps=steps,
            lr=lr,
            schedule=schedule,
            seed=seed,
            progress=progress,
            description="mle",
        )

    # -- Density --------------------------------------------------------------------------

    def _validate_items(self, x: torch.Tensor) -> None:
        if x.ndim != 2 or x.shape[1] == 0:
            raise ValueError(
                f"'x' must have shape (batch, width), token sequences padded with {PAD_TOKEN}. "
                f"Got {tuple(x.shape)}."
            )
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise TypeError(f"'x' must hold integer token ids. Got dtype {x.dtype}.")
        _check_padded_sequences("x", x, self.vocab_size, self.eos, self.max_length)
        too_short = sequence_lengths(x) < self.min_length
        if bool(too_short.any()):
            row = int(too_short.nonzero()[0])
            raise ValueError(
                f"'x' must hold sequences of at least min_length={self.min_length} tokens (EOS "
                f"included). Row {row} has {int(sequence_lengths(x)[row])}: {x[row].tolist()}."
            )

    def _log_prob(self, x: torch.Tensor) -> torch.Tensor:
        lengths = sequence_lengths(x)
        width = max(int(lengths.max()), 1) if x.shape[0] else 1
        tokens = x[:, :width].clamp_min(0)  # padding → any valid id; masked out below
        logits = self._next_token_logits(tokens)
        log_probs = torch.log_softmax(logits, dim=-1)
        token_log_probs = log_probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        positions = torch.arange(width, device=x.device)
        # the conditional at position max_length is a point mass on EOS: it contributes 0
        mask = (positions < lengths[:, None]) & (positions < self.max_length - 1)
        return torch.where(mask, token_log_probs, torch.zeros_like(token_log_probs)).sum(-1)

    def _sample(self, n, generator, temperature: float = 1.0):
        device = self._param_device()
        out = torch.full((n, self.max_length), PAD_TOKEN, dtype=torch.long, device=device)
        finished = torch.zeros(n, dtype=torch.bool, device=device)
        previous = torch.full((n,), self.vocab_size, dtype=torch.long, device=device)  # BOS
        state = None
        for t in range(self.max_length):
            if t == self.max_length - 1:
                token = torch.full((n,), self.eos, dtype=torch.long, device=device)
            else:
                inputs = self._inputs(previous[:, None], start=t)
                output, state = self.gru(inputs, state)
                logits = self.head(output[:, 0])
                logits[:, self.eos] += self.eos_bias[t]
                if t < self.min_length - 1:
                    logits[:, self.eos] = -math.inf
                logits = logits / temperature
                probs = torch.softmax(logits.to(torch.float64), dim=-1)
                where = generator.device if generator is not None else probs.device
                token = torch.multinomial(probs.to(where), 1, generator=generator)[:, 0]
                token = token.to(device)
            out[:, t] = torch.where(finished, torch.full_like(token, PAD_TOKEN), token)
            finished = finished | (token == self.eos)
            if bool(finished.all()):
                break
            previous = token
        return out

    # -- internals ------------------------------------------------------------------------

    def _inputs(self, previous_tokens: torch.Tensor, start: int = 0) -> torch.Tensor:
        positions = torch.arange(
            start, start + previous_tokens.shape[1], device=previous_tokens.device
        )
        return self.token_embedding(previous_tokens) + self.position_embedding(positions)

    def _next_token_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits of p(x_t | x_<t) for t = 1..width, shape ``(batch, width, vocab_size)``."""
        bos = torch.full_like(tokens[:, :1], self.vocab_size)
        previous = torch.cat([bos, tokens[:, :-1]], dim=1)
        output, _ = self.gru(self._inputs(previous))
        logits = self.head(output)
        is_eos = torch.arange(self.vocab_size, device=logits.device) == self.eos
        logits = logits + self.eos_bias[: tokens.shape[1], None].to(logits.dtype) * is_eos
        if self.min_length > 1:  # no EOS before min_length
            early = torch.arange(tokens.shape[1], device=logits.device) < self.min_length - 1
            logits = logits.masked_fill(early[:, None] & is_eos, -math.inf)
        return logits


class ForcedEOS(Density):
    """A language model with EOS forced at a maximum length: normalized on the sequences of at
    most ``max_length`` tokens (a :class:`~pbde.SequenceSupport`).

    For a sequence ``x`` of ``|x| ≤ max_length`` tokens ending with EOS,

        log p_L(x) = log p(x)                       if |x| < max_length,
        log p_L(x) = Σ_{t < max_length} log p(x_t | x_<t)   if |x| = max_length,

    i.e. the conditional at position ``max_length`` is a point mass on EOS: a sequence that
    reaches the maximum length stops there and gets the mass of all its longer continuations.
    The probabilities of all sequences of the support sum to exactly 1 (when the model's
    vocabulary is the support's). This is what :class:`Autoregressive` does by construction, and
    what a model generating with a length limit does. Computed item by item, with gradients:
    train it with :func:`pbde.fit` like the model it wraps (its parameters are the wrapped
    model's). Why this form rather than renormalizing on the support: see
    :class:`~pbde.SequenceSupport`; the mass the wrapped model puts beyond ``max_length``
    is :func:`pbde.mass_beyond`.

    Items: those of the wrapped density — ``(batch, width)`` token rows for
    :class:`Autoregressive` (whose own ``max_length`` must be >= this one), ``(batch, 2, width)``
    prompt/completion items for :class:`~pbde.densities.CausalLM` (the completion row is the
    sequence).

    Args:
        density: an :class:`Autoregressive` or a :class:`~pbde.densities.CausalLM`.
        max_length: most tokens of a sequence (of a completion), EOS included, >= 1.
        eos: the end-of-sequence token id.

    Raises:
        TypeError: if ``density`` is neither.
        ValueError: on an invalid ``max_length`` or ``eos``; from ``log_prob``, on sequences
            that do not end with EOS or are longer than ``max_length``.

    Example:
        >>> import pbde
        >>> lm = Autoregressive(vocab_size=3, max_length=6)
        >>> p = ForcedEOS(lm, 3, eos=0)
        >>> support = pbde.SequenceSupport(3, 3)
        >>> round(float(p.log_prob(support.points).exp().sum()), 6)
        1.0
    """

    def __init__(self, density: Density, max_length: int, *, eos: int):
        super().__init__()
        from pbde.densities.hf import CausalLM

        if not isinstance(density, (Autoregressive, CausalLM)):
            raise TypeError(
                "'density' must be a pbde.densities.Autoregressive or CausalLM. Got "
                f"{type(density).__name__}."
            )
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"'max_length' must be an int >= 1. Got {max_length!r}.")
        if isinstance(density, Autoregressive) and density.max_length < max_length:
            raise ValueError(
                f"'max_length' must be at most the Autoregressive density's own max_length="
                f"{density.max_length}. Got {max_length}."
            )
        vocab_size = density.vocab_size
        if isinstance(eos, bool) or not isinstance(eos, int) or not 0 <= eos < vocab_size:
            raise ValueError(f"'eos' must be a token id in [0, {vocab_size - 1}]. Got {eos!r}.")
        if isinstance(density, Autoregressive) and eos != density.eos:
            raise ValueError(
                f"'eos' must be the Autoregressive density's eos={density.eos}. Got {eos}."
            )
        self.density = density
        self.max_length, self.eos, self.vocab_size = max_length, eos, vocab_size
        self.conditional = isinstance(density, CausalLM)
        self.event_shape = density.event_shape if self.conditional else (max_length,)

    def __repr__(self) -> str:
        return f"ForcedEOS({self.density!r}, max_length={self.max_length}, eos={self.eos})"

    def length(self, x: torch.Tensor) -> torch.Tensor:
        """Number of tokens of each sequence (completion), EOS included, shape ``(batch,)``."""
        check_tensor("x", x)
        if is_validation_enabled():
            self._validate_items(x)
        return sequence_lengths(x[:, 1] if self.conditional else x)

    def _validate_items(self, x: torch.Tensor) -> None:
        self.density._validate_items(x)
        rows = x[:, 1] if self.conditional else x
        role = " (the completions)" if self.conditional else ""
        name = "x[:, 1]" if self.conditional else "x"
        _check_padded_sequences(name, rows, self.vocab_size, self.eos, self.max_length, role)

    def _param_device(self) -> torch.device:
        return self.density._param_device()

    def _log_prob(self, x: torch.Tensor) -> torch.Tensor:
        rows = x[:, 1] if self.conditional else x
        lengths = sequence_lengths(rows)
        at_limit = lengths == self.max_length
        if self.max_length == 1:  # the only sequence is EOS alone, with probability 1
            return torch.zeros(x.shape[0], device=x.device)
        # the EOS of a sequence at the limit is forced: score only the tokens before it
        last = torch.arange(rows.shape[1], device=x.device) == (lengths - 1)[:, None]
        rows = rows.masked_fill(last & at_limit[:, None], PAD_TOKEN)
        if self.conditional:
            x = torch.stack([x[:, 0], rows], dim=1)
            return self.density._log_prob(x)
        return self.density._log_prob(rows)

    def _sample(self, n, generator):
        if not self.conditional and self.density.max_length == self.max_length:
            return self.density._sample(n, generator)
        raise NotImplementedError(
            "ForcedEOS samples only an Autoregressive density of the same max_length; sample a "
            "pbde.densities.Tabulated of it on a pbde.SequenceSupport instead."
        )


def _check_padded_sequences(
    name: str,
    x: torch.Tensor,
    vocab_size: int,
    eos: int | None,
    max_length: int | None,
    role: str = "",
) -> None:
    """Rows of ``x``: tokens in ``[0, vocab_size)``, then only ``PAD_TOKEN``; with ``eos``, the
    last token (and only that one) is EOS; with ``max_length``, at most that many tokens.
    Messages start with ``'name'`` followed by ``role`` (e.g. ``" (the prompts)"``)."""
    name = f"{name}'{role}"
    is_pad = x == PAD_TOKEN
    bad = ~is_pad & ((x < 0) | (x >= vocab_size))
    if bool(bad.any()):
        row = int(bad.any(1).nonzero()[0])
        raise ValueError(
            f"'{name} must hold token ids in [0, {vocab_size - 1}] or the padding {PAD_TOKEN}. "
            f"Got {int(x[bad][0])} in row {row}."
        )
    lengths = (~is_pad).sum(1)
    positions = torch.arange(x.shape[1], device=x.device)
    misplaced = is_pad & (positions < lengths[:, None])  # a pad followed by a token
    if bool(misplaced.any()):
        row = int(misplaced.any(1).nonzero()[0])
        raise ValueError(
            f"'{name} must hold padding ({PAD_TOKEN}) only after the last token. Row {row} has "
            f"a token after padding: {x[row].tolist()}."
        )
    if bool((lengths == 0).any()):
        row = int((lengths == 0).nonzero()[0])
        raise ValueError(f"'{name} must hold at least one token per row. Row {row} is all padding.")
    if max_length is not None and bool((lengths > max_length).any()):
        row = int((lengths > max_length).nonzero()[0])
        raise ValueError(
            f"'{name} must hold sequences of at most max_length={max_length} tokens (EOS "
            f"included). Row {row} has {int(lengths[row])}."
        )
    if eos is not None:
        last = x.gather(1, (lengths - 1).clamp_min(0)[:, None])[:, 0]
        no_eos = last != eos
        if bool(no_eos.any()):
            row = int(no_eos.nonzero()[0])
            raise ValueError(
                f"'{name} must hold sequences that end with the EOS token {eos} before the "
                f"padding. Row {row} ends with {int(last[row])}: {x[row].tolist()}."
            )
        early = (x == eos) & (positions < (lengths - 1)[:, None])
        if bool(early.any()):
            row = int(early.any(1).nonzero()[0])
            raise ValueError(
                f"'{name} must hold exactly one EOS token ({eos}) per sequence, the last token. "
                f"Row {row} has an earlier one: {x[row].tolist()}."
            )
