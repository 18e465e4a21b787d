"""Any Hugging Face causal language model as the density of a completion given a prompt.

Needs the optional extra ``pip install "pbde[hf]"`` (``transformers``); importing this module
does not import ``transformers``, only :meth:`CausalLM.from_pretrained` does.

**Items.** One item is a (prompt, completion) pair of token sequences, stored as an integer
tensor of shape ``(batch, 2, width)``: ``x[:, 0]`` holds the prompts and ``x[:, 1]`` the
completions, each left-aligned and padded on the right with :data:`pbde.io.PAD_TOKEN` (−1), the
padding convention of the rest of pbde. Why one tensor with a row for each part:

* every pbde code path takes items as one tensor batched along dim 0: :class:`pbde.Preferences`
  (``xa`` and ``xb`` of the same shape), ``Annotator.logits`` (which concatenates ``xa`` and
  ``xb``), mini-batch indexing in :func:`pbde.fit`, ``.to(device)``. A pair of tensors or a
  custom object would need a special case in each;
* each item carries its own prompt, so ``x_A`` and ``x_B`` of a DPO comparison (same prompt,
  chosen and rejected completions) and comparisons with different prompts are all just items;
  the density is p(completion | prompt), the prompt tokens are conditioned on and never scored;
* no magic values: the prompt/completion boundary is the padding of each row, not a separator
  token that could collide with a real vocabulary id, and no token id is reserved.

The cost is padding both rows to the same width; :meth:`CausalLM.items` builds the tensor from
token lists, :meth:`CausalLM.preferences` from prompt/chosen/rejected data read by
:mod:`pbde.io`.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence

import torch
from torch import nn

from pbde._validation import check_tensor, is_validation_enabled
from pbde.data import Preferences
from pbde.densities.base import Density
from pbde.densities.sequence import _check_padded_sequences, sequence_lengths
from pbde.io import PAD_TOKEN

__all__ = ["CausalLM"]


class CausalLM(Density):
    """log p(completion | prompt) = Σ_t log p(c_t | prompt, c_<t) under a causal LM.

    The prompt and the completion are concatenated (without gaps), run through the model with
    an attention mask over the padding, and the log-softmax of the logits at each position
    scores the next token; only the completion's tokens are summed (the prompt is masked out).
    The completion is scored as given: for a density normalized over complete responses, end
    each completion with the model's EOS token (as tokenizers and chat templates usually do).

    Use it like any density: ``pbde.Annotator(CausalLM(policy), pbde.dpo(beta, CausalLM(ref)))``
    is DPO (eq. 15), ``pbde.length_normalized(lm.length)`` the length-normalized rule (eq. 26).
    :func:`pbde.fit` trains the wrapped model's parameters. The class cannot be sampled (it has
    no prompts to sample from); use the model's ``generate``.

    Args:
        model: a ``transformers`` causal LM (e.g. from ``AutoModelForCausalLM``), or any
            ``nn.Module`` whose ``forward(input_ids=..., attention_mask=...)`` returns an
            object with ``.logits`` of shape ``(batch, width, vocab)``.
        vocab_size: number of token ids; default ``model.config.vocab_size``.
        pad_token_id: the id fed at padded positions (masked, never scored); default the
            config's ``pad_token_id``, else its ``eos_token_id``, else 0.
        disable_dropout: set the ``p`` of every ``nn.Dropout`` of the model to 0 (default
            ``True``, as TRL does for DPO): :func:`pbde.fit` puts modules in training mode, and
            dropout would make log-probabilities, and the DPO reference, random.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module``.
        ValueError: if the vocabulary size cannot be found or is invalid.

    Example:
        >>> x = CausalLM.items(prompts=[[5, 6], [7]], completions=[[1, 2, 3], [4]])
        >>> x
        tensor([[[ 5,  6, -1],
                 [ 1,  2,  3]],
        <BLANKLINE>
                [[ 7, -1, -1],
                 [ 4, -1, -1]]])
    """

    #: two rows (prompt, completion) of any width
    event_shape = (2, -1)

    def __init__(
        self,
        model: nn.Module,
        *,
        vocab_size: int | None = None,
        pad_token_id: int | None = None,
        disable_dropout: bool = True,
    ):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"'model' must be a torch.nn.Module (a transformers causal LM). Got "
                f"{type(model).__name__}."
            )
        config = getattr(model, "config", None)
        if vocab_size is None:
            vocab_size = getattr(config, "vocab_size", None)
            if vocab_size is None:
                raise ValueError("'vocab_size' must be given: the model has no config.vocab_size.")
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
            raise ValueError(f"'vocab_size' must be an int >= 1. Got {vocab_size!r}.")
        if pad_token_id is None:
            for name in ("pad_token_id", "eos_token_id"):
                value = getattr(config, name, None)
                if isinstance(value, (list, tuple)):
                    value = value[0] if value else None
                if isinstance(value, int) and 0 <= value < vocab_size:
                    pad_token_id = value
                    break
            else:
                pad_token_id = 0
        if not isinstance(pad_token_id, int) or not 0 <= pad_token_id < vocab_size:
            raise ValueError(
                f"'pad_token_id' must be a token id in [0, {vocab_size - 1}]. Got {pad_token_id!r}."
            )
        self.model = model
        self.vocab_size = vocab_size
        self.pad_token_id = pad_token_id
        self.max_positions = getattr(config, "max_position_embeddings", None) or getattr(
            config, "n_positions", None
        )
        if disable_dropout:
            for module in model.modules():
                if isinstance(module, nn.Dropout):
                    module.p = 0.0

    def __repr__(self) -> str:
        return f"CausalLM({type(self.model).__name__}, vocab_size={self.vocab_size})"

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs) -> CausalLM:
        """Load ``AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)`` and wrap it.

        A local directory (written by ``save_pretrained``) loads offline; a hub name may
        download. Raises ``ImportError`` with the install command if ``transformers`` is missing.
        """
        try:
            from transformers import AutoModelForCausalLM
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise ImportError(
                'CausalLM.from_pretrained needs transformers: pip install "pbde[hf]"'
            ) from error
        return cls(AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs))

    # -- building items ---------------------------------------------------------------------

    @staticmethod
    def items(prompts: Sequence, completions: Sequence) -> torch.Tensor:
        """Items ``(n, 2, width)`` from token-id lists (or padded ``(n, L)`` tensors).

        Args:
            prompts: ``n`` prompts, each a non-empty list of token ids (or a ``(n, L)`` tensor
                padded with ``PAD_TOKEN``).
            completions: ``n`` completions, likewise.

        Raises:
            ValueError: if the counts differ, a sequence is empty, or an id is negative.
        """
        prompts, completions = (
            _token_lists("prompts", prompts),
            _token_lists("completions", completions),
        )
        if len(prompts) != len(completions) or not prompts:
            raise ValueError(
                "'prompts' and 'completions' must hold the same number (>= 1) of sequences. "
                f"Got {len(prompts)} and {len(completions)}."
            )
        width = max(len(row) for row in prompts + completions)
        out = torch.full((len(prompts), 2, width), PAD_TOKEN, dtype=torch.long)
        for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
            out[i, 0, : len(prompt)] = torch.tensor(prompt, dtype=torch.long)
            out[i, 1, : len(completion)] = torch.tensor(completion, dtype=torch.long)
        return out

    @staticmethod
    def preferences(result) -> Preferences:
        """Comparisons of (prompt, completion) items from prompt/chosen/rejected data.

        Args:
            result: a :class:`pbde.io.ReadResult` read with a ``prompt`` column of token-id
                lists and token items (e.g. ``pbde.io.from_records(records)`` with tokenized
                ``prompt``, ``chosen``, ``rejected``).

        Returns:
            :class:`~pbde.Preferences` whose ``xa``/``xb`` are ``(n, 2, width)`` items pairing
            each comparison's prompt with its two completions; labels, annotator ids and
            weights are kept.

        Raises:
            ValueError: if the data have no prompts. TypeError: if a prompt is text (tokenize
                it first).

        Example:
            >>> import pbde
            >>> read = pbde.io.from_records([{"prompt": [5], "chosen": [1, 2], "rejected": [3]}])
            >>> CausalLM.preferences(read).xb
            tensor([[[ 5, -1],
                     [ 3, -1]]])
        """
        prompts = getattr(result, "prompts", None)
        if prompts is None:
            raise ValueError(
                "'result' must hold prompts (a 'prompt' column of token ids). Got none."
            )
        prefs = result.prefs
        if prefs.xa.ndim != 2:
            raise ValueError(
                f"'result' must hold token items of shape (n, L). Got {tuple(prefs.xa.shape)}."
            )
        both = CausalLM.items(prompts + prompts, torch.cat([prefs.xa, prefs.xb]))
        n = len(prefs)
        return Preferences(
            both[:n], both[n:], prefs.y, annotator_id=prefs.annotator_id, weight=prefs.weight
        )

    # -- the density ------------------------------------------------------------------------

    def length(self, x: torch.Tensor) -> torch.Tensor:
        """Number of tokens of each completion, shape ``(batch,)`` (for eq. 26's f = 1/|x|)."""
        check_tensor("x", x)
        if is_validation_enabled():
            self._validate_items(x)
        return sequence_lengths(x[:, 1])

    def _validate_items(self, x: torch.Tensor) -> None:
        if x.ndim != 3 or x.shape[1] != 2 or x.shape[2] == 0:
            raise ValueError(
                "'x' must have shape (batch, 2, width): x[:, 0] the prompts and x[:, 1] the "
                f"completions, padded with {PAD_TOKEN}. Got {tuple(x.shape)}."
            )
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise TypeError(f"'x' must hold integer token ids. Got dtype {x.dtype}.")
        _check_padded_sequences("x[:, 0]", x[:, 0], self.vocab_size, None, None, " (the prompts)")
        _check_padded_sequences(
            "x[:, 1]", x[:, 1], self.vocab_size, None, None, " (the completions)"
        )
        if self.max_positions is not None:
            total = sequence_lengths(x[:, 0]) + sequence_lengths(x[:, 1])
            if bool((total > self.max_positions).any()):
                row = int((total > self.max_positions).nonzero()[0])
                raise ValueError(
                    f"'x' must fit the model's {self.max_positions} positions (prompt + "
                    f"completion). Row {row} has {int(total[row])} tokens."
                )

    def _log_prob(self, x: torch.Tensor) -> torch.Tensor:
        prompt, completion = x[:, 0], x[:, 1]
        prompt_length, completion_length = sequence_lengths(prompt), sequence_lengths(completion)
        total = prompt_length + completion_length
        width = int(total.max())
        last = x.shape[2] - 1
        positions = torch.arange(width, device=x.device).expand(x.shape[0], width)
        from_prompt = prompt.gather(1, positions.clamp(max=last))
        from_completion = completion.gather(1, (positions - prompt_length[:, None]).clamp(0, last))
        valid = positions < total[:, None]
        tokens = torch.where(positions < prompt_length[:, None], from_prompt, from_completion)
        input_ids = torch.where(valid, tokens, torch.full_like(tokens, self.pad_token_id))
        logits = self.model(input_ids=input_ids, attention_mask=valid.long()).logits
        # the logits at position t score the token at t + 1
        log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        scored = log_probs.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
        in_completion = (positions[:, 1:] >= prompt_length[:, None]) & valid[:, 1:]
        return torch.where(in_completion, scored, torch.zeros_like(scored)).sum(-1)


def _token_lists(name: str, values) -> list[list[int]]:
    if isinstance(values, torch.Tensor):
        if values.ndim != 2 or values.is_floating_point():
            raise ValueError(
                f"'{name}' as a tensor must be integer of shape (n, L). Got "
                f"{tuple(values.shape)}, {values.dtype}."
            )
        rows = [[t for t in row if t != PAD_TOKEN] for row in values.tolist()]
    elif isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(
            f"'{name}' must be a sequence of token-id lists. Got {type(values).__name__}."
        )
    else:
        rows = []
        for i, row in enumerate(values):
            if isinstance(row, (str, bytes)):
                raise TypeError(
                    f"'{name}' must hold token ids, not text (tokenize it first). Row {i} is "
                    f"{row!r}."
                )
            row = list(row)
            if any(isinstance(t, bool) or not isinstance(t, numbers.Integral) for t in row):
                raise TypeError(f"'{name}' must hold integer token ids. Row {i} is {row!r}.")
            rows.append([int(t) for t in row])
    for i, row in enumerate(rows):
        if not row or min(row) < 0:
            raise ValueError(
                f"'{name}' must hold non-empty sequences of token ids >= 0. Row {i} is {row!r}."
            )
    return rows
