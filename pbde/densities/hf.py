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
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from pbde._validation import check_tensor, is_validation_enabled
from pbde.data import Preferences, TextPreferences
from pbde.densities.base import Density
from pbde.densities.sequence import _check_padded_sequences, sequence_lengths
from pbde.io import PAD_TOKEN

__all__ = ["CausalLM", "Tokenized"]


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
        adapters: for a ``peft`` model (LoRA), ``False`` evaluates the base model with the
            adapters switched off: the reference of a LoRA fit, from the same weights, with no
            copy of them (:meth:`frozen` shares the model then).
        tokenizer: the model's tokenizer, kept with it (:func:`pbde.save_model` writes it next
            to the model); optional.

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
        adapters: bool = True,
        tokenizer=None,
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
        if not adapters and not hasattr(model, "disable_adapter"):
            raise ValueError(
                "'adapters'=False needs a peft model (with disable_adapter()). Got "
                f"{type(model).__name__}."
            )
        self.model = model
        self.adapters = adapters
        self.tokenizer = tokenizer
        self.source: str | None = None  # the folder it was loaded from (from_pretrained)
        self.lora: dict | None = None  # LoRA's settings (from_pretrained)
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
        off = "" if self.adapters else ", adapters off"
        return f"CausalLM({type(self.model).__name__}, vocab_size={self.vocab_size}{off})"

    @property
    def origin(self) -> dict | None:
        """Where this density comes from, as data (for :func:`pbde.save_model` to record a
        reference without copying it): ``{"kind": "folder", "path": …}``, ``{"kind":
        "adapters-off"}`` for the base of a LoRA model, or ``None`` if unknown."""
        if not self.adapters:
            return {"kind": "adapters-off"}
        return None if self.source is None else {"kind": "folder", "path": self.source}

    def frozen(self) -> CausalLM:
        """A copy without trainable parameters. With ``adapters=False`` the copy shares the
        model (the base weights that LoRA never trains) instead of copying it."""
        if self.adapters:
            return super().frozen()
        clone = CausalLM.__new__(CausalLM)
        nn.Module.__init__(clone)
        clone.__dict__.update(
            {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.__dict__.items()}
        )
        object.__setattr__(clone, "_shared", self.model)  # not a submodule: not moved or saved
        clone._modules = {}
        clone._memo = (None,) * 5
        return clone

    @property
    def _module(self) -> nn.Module:
        shared = self.__dict__.get("_shared")
        return self.model if shared is None else shared

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        tokenizer: bool | None = None,
        lora_r: int | None = None,
        lora_alpha: float | None = None,
        lora_dropout: float = 0.0,
        lora_target_modules: Sequence[str] | None = None,
        **kwargs,
    ) -> CausalLM:
        """Load a causal LM (and its tokenizer) from a local folder written by
        ``save_pretrained``; nothing is downloaded.

        Args:
            path: the folder (``config.json`` and the weights; the tokenizer's files too, unless
                ``tokenizer=False``).
            tokenizer: load the folder's tokenizer as :attr:`tokenizer`: ``True`` requires
                one, ``None`` (default) loads it if the folder has one, ``False`` does not.
            lora_r: train LoRA adapters of this rank (``peft``) instead of the weights; the
                reference is then the same model with the adapters off
                (``CausalLM(model, adapters=False)``), with no copy of the weights.
            lora_alpha: LoRA's scale α (default ``2·lora_r``).
            lora_dropout: dropout on the adapters' input (default 0).
            lora_target_modules: the modules that get adapters (default: peft's choice for the
                architecture).
            **kwargs: passed to ``AutoModelForCausalLM.from_pretrained`` (e.g. ``torch_dtype``).

        Raises:
            ValueError: if ``path`` is not a local folder holding a model (a hub name is
                refused), or has no tokenizer while ``tokenizer`` is ``True``, or the tokenizer's
                vocabulary is larger than the model's.
            ImportError: without ``transformers`` (or ``peft`` for LoRA), with the install command.
        """
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise ImportError(
                'CausalLM.from_pretrained needs transformers: pip install "pbde[hf]"'
            ) from error
        folder = os.fspath(path)
        if not os.path.isdir(folder):
            raise ValueError(
                f"'path' must be a local folder written by save_pretrained (pbde downloads "
                f"nothing; save a hub model with save_pretrained first). Got {folder!r}, which "
                "is not a folder."
            )
        if not os.path.exists(os.path.join(folder, "config.json")):
            raise ValueError(f"'path' {folder!r} holds no model (no config.json).")
        loaded_tokenizer = None
        files = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
        has_tokenizer = any(os.path.exists(os.path.join(folder, name)) for name in files)
        if tokenizer or (tokenizer is None and has_tokenizer):
            if not has_tokenizer:
                raise ValueError(
                    f"'path' {folder!r} holds no tokenizer (none of {', '.join(files)}); save "
                    "the tokenizer with tokenizer.save_pretrained(path) next to the model."
                )
            try:
                loaded_tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            except (OSError, ValueError, TypeError) as error:
                raise ValueError(
                    f"'path' {folder!r} holds no usable tokenizer ({str(error).splitlines()[0]}); "
                    "save the tokenizer with tokenizer.save_pretrained(path) next to the model."
                ) from None
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, **kwargs)
        vocab = model.config.vocab_size
        if loaded_tokenizer is not None and len(loaded_tokenizer) > vocab:
            raise ValueError(
                f"The tokenizer of {folder!r} has {len(loaded_tokenizer)} tokens, more than the "
                f"model's vocabulary of {vocab}."
            )
        lora = None
        if lora_r is not None:
            if isinstance(lora_r, bool) or not isinstance(lora_r, int) or lora_r < 1:
                raise ValueError(f"'lora_r' must be an int >= 1. Got {lora_r!r}.")
            try:
                from peft import LoraConfig, get_peft_model
            except ImportError as error:  # pragma: no cover - depends on the environment
                raise ImportError('LoRA needs peft: pip install "pbde[hf]"') from error
            lora = {
                "r": lora_r,
                "lora_alpha": float(2 * lora_r if lora_alpha is None else lora_alpha),
                "lora_dropout": float(lora_dropout),
                "target_modules": None
                if lora_target_modules is None
                else list(lora_target_modules),
            }
            with warnings.catch_warnings():  # peft sets fan_in_fan_out itself for GPT-2's Conv1D
                warnings.filterwarnings("ignore", message="fan_in_fan_out is set to False")
                model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **lora))
        density = cls(model, tokenizer=loaded_tokenizer)
        density.source = os.path.abspath(folder)
        density.lora = lora
        return density

    def without_adapters(self) -> CausalLM:
        """The base model of a LoRA density with its adapters off (the reference of a LoRA fit),
        sharing the weights."""
        reference = CausalLM(
            self.model,
            vocab_size=self.vocab_size,
            pad_token_id=self.pad_token_id,
            adapters=False,
            tokenizer=self.tokenizer,
        )
        reference.source = self.__dict__.get("source")
        return reference

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

    @staticmethod
    def tokenize(
        data: TextPreferences,
        tokenizer,
        *,
        max_length: int | None = None,
        max_prompt_length: int | None = None,
        add_eos: bool = True,
    ) -> Tokenized:
        """Text comparisons to token items ``(n, 2, width)``, the way the model will read them.

        * **The model's own tokenizer.** Standard rows: the prompt and prompt + completion are
          tokenized as the model reads them (``tokenizer(text)``, special tokens such as BOS
          included). Conversational rows: rendered with the tokenizer's chat template (the
          prompt with the generation prompt, prompt + completion as the whole conversation);
          rows without a prompt take the messages the two completions share as it.
        * **The boundary.** The completion starts where the tokenized prompt and the tokenized
          prompt + completion stop agreeing (BPE merges tokens across the boundary, and chat
          templates may render a prompt alone differently), as TRL's DPO trainer does, for both
          completions of a row.
        * **EOS once.** ``add_eos`` appends the tokenizer's EOS id to each standard completion
          that does not already end with it (chat templates end the turn themselves).
        * **Truncation.** Prompts longer than ``max_prompt_length`` keep their last tokens
          (truncated from the left); completions are then cut on the right so that prompt +
          completion fits ``max_length``. Every truncation is counted in the result.

        Args:
            data: the comparisons (:class:`~pbde.TextPreferences`, e.g. read by
                :func:`pbde.io.read_preferences`).
            tokenizer: a ``transformers`` tokenizer with an EOS token.
            max_length: most tokens of prompt + completion (default: no limit).
            max_prompt_length: most tokens of a prompt (default: no limit).
            add_eos: append EOS to standard completions (default ``True``).

        Returns:
            :class:`Tokenized`: the :class:`~pbde.Preferences` (labels, annotator ids and
            weights kept) and the truncation counts.

        Raises:
            TypeError: if ``data`` is not ``TextPreferences``.
            ValueError: if the tokenizer has no EOS token (with ``add_eos``), a limit is not an
                int >= 1, a prompt alone fills ``max_length`` (names the row and its length),
                or a prompt or completion is empty after tokenization.
        """
        from pbde.data import TextPreferences

        if not isinstance(data, TextPreferences):
            raise TypeError(f"'data' must be pbde.TextPreferences. Got {type(data).__name__}.")
        for name, value in (("max_length", max_length), ("max_prompt_length", max_prompt_length)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"'{name}' must be None or an int >= 1. Got {value!r}.")
        eos = getattr(tokenizer, "eos_token_id", None)
        if add_eos and not data.conversational and eos is None:
            raise ValueError(
                "'tokenizer' has no EOS token (eos_token_id is None): completions could not end "
                "with one. Set tokenizer.eos_token, or pass add_eos=False."
            )
        n = len(data)
        prompts, first, second = _conversation_parts(data)
        both = [
            prompts,
            [p + c for p, c in zip(prompts, first, strict=True)],
            [p + c for p, c in zip(prompts, second, strict=True)],
        ]
        if data.conversational:
            encoded = [
                [
                    tokenizer.apply_chat_template(m, tokenize=True, add_generation_prompt=True)
                    for m in prompts
                ],
                [tokenizer.apply_chat_template(m, tokenize=True) for m in both[1]],
                [tokenizer.apply_chat_template(m, tokenize=True) for m in both[2]],
            ]
            encoded = [[_ids(e) for e in column] for column in encoded]
        else:
            encoded = [list(tokenizer(column)["input_ids"]) if column else [] for column in both]
        prompt_ids, a_ids, b_ids = encoded
        out_prompts, out_a, out_b = [], [], []
        counts = {"prompts_truncated": 0, "completions_truncated": 0, "rows_truncated": 0}
        for i in range(n):
            full_a, full_b = list(a_ids[i]), list(b_ids[i])
            cut = min(_common_prefix(prompt_ids[i], full_a), _common_prefix(prompt_ids[i], full_b))
            prompt, ca, cb = full_a[:cut], full_a[cut:], full_b[cut:]
            if add_eos and not data.conversational:
                ca, cb = [c if c[-1:] == [eos] else c + [eos] for c in (ca, cb)]
            if not prompt:
                bos = getattr(tokenizer, "bos_token_id", None)
                bos = eos if bos is None else bos
                if bos is None:
                    raise ValueError(
                        f"Row {i}: the prompt is empty after tokenization and the tokenizer has "
                        "no BOS or EOS token to condition the completion on."
                    )
                prompt = [bos]
            if not ca or not cb:
                raise ValueError(
                    f"Row {i}: a completion is empty after tokenization (add_eos=False and no "
                    "token after the prompt)."
                )
            truncated = False
            if max_prompt_length is not None and len(prompt) > max_prompt_length:
                prompt = prompt[-max_prompt_length:]
                counts["prompts_truncated"] += 1
                truncated = True
            if max_length is not None:
                room = max_length - len(prompt)
                if room < 1:
                    raise ValueError(
                        f"Row {i}: its prompt has {len(prompt)} tokens, which leaves no room for "
                        f"the completion within max_length={max_length}. Raise max_length or set "
                        "max_prompt_length below it."
                    )
                if len(ca) > room or len(cb) > room:
                    counts["completions_truncated"] += (len(ca) > room) + (len(cb) > room)
                    ca, cb = ca[:room], cb[:room]
                    truncated = True
            counts["rows_truncated"] += truncated
            out_prompts.append(prompt)
            out_a.append(ca)
            out_b.append(cb)
        items = CausalLM.items(out_prompts + out_prompts, out_a + out_b)
        prefs = Preferences(items[:n], items[n:], data.y, data.annotator_id, data.weight)
        lengths = sequence_lengths(items[:, 0]) + sequence_lengths(items[:, 1])
        return Tokenized(prefs, longest=int(lengths.max()), **counts)

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

    def _param_device(self) -> torch.device:
        from pbde.densities.base import device_of

        return device_of(self._module)

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
        # the logits at position t score the token at t + 1: only positions from the shortest
        # prompt's last token on score completion tokens, so only those go through the LM head
        first = int(prompt_length.min()) - 1
        logits = self._logits(input_ids, valid, width - first)
        targets = input_ids[:, first + 1 :]
        scored = _token_log_probs(logits[:, : width - first - 1], targets)
        in_completion = (positions[:, first + 1 :] >= prompt_length[:, None]) & valid[
            :, first + 1 :
        ]
        return torch.where(in_completion, scored, torch.zeros_like(scored)).sum(-1)

    def _logits(self, input_ids, valid, keep: int) -> torch.Tensor:
        import contextlib
        import inspect

        model = self._module
        kwargs = {"input_ids": input_ids, "attention_mask": valid.long()}
        forward = inspect.signature(model.forward).parameters
        if "use_cache" in forward:
            kwargs["use_cache"] = False
        if "logits_to_keep" in forward or "kwargs" in forward and hasattr(model, "peft_config"):
            kwargs["logits_to_keep"] = keep
        off = contextlib.nullcontext() if self.adapters else model.disable_adapter()
        with off:
            logits = model(**kwargs).logits
        return logits[:, -keep:]


def _token_log_probs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] at each position, shape ``targets.shape``, in float32 (or the
    logits' dtype if wider).

    The normalizer (logsumexp over the vocabulary) is computed a few rows at a time, so the
    float32 copy of the logits (from bf16/fp16) never exists for the whole batch at once; the
    full log-softmax is never built.
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)  # float64 models stay float64
    selected = logits.gather(-1, targets[..., None]).squeeze(-1).to(dtype)
    per_row = logits.shape[1] * logits.shape[2]
    rows = max(1, (1 << 24) // max(per_row, 1))  # ~64 MB of float32 per chunk
    normalizer = torch.cat(
        [torch.logsumexp(chunk.to(dtype), dim=-1) for chunk in logits.split(rows, dim=0)]
    )
    return selected - normalizer


@dataclass
class Tokenized:
    """What :meth:`CausalLM.tokenize` returns.

    Attributes:
        prefs: the comparisons of ``(n, 2, width)`` token items.
        rows_truncated: rows where a prompt or a completion was truncated.
        prompts_truncated: prompts cut on the left to ``max_prompt_length``.
        completions_truncated: completions cut on the right to fit ``max_length``.
        longest: the most tokens of prompt + completion in any item.
    """

    prefs: Preferences
    rows_truncated: int = 0
    prompts_truncated: int = 0
    completions_truncated: int = 0
    longest: int = 0


def _conversation_parts(data) -> tuple[list, list, list]:
    """Prompts and completions of each row; conversational rows without a prompt take the
    leading messages both completions share as their prompt."""
    if data.prompt is not None or not data.conversational:
        prompts = data.prompt if data.prompt is not None else [""] * len(data)
        return list(prompts), list(data.xa), list(data.xb)
    prompts, first, second = [], [], []
    for i, (a, b) in enumerate(zip(data.xa, data.xb, strict=True)):
        shared = 0
        while shared < min(len(a), len(b)) - 1 and a[shared] == b[shared]:
            shared += 1
        if shared == 0:
            raise ValueError(
                f"Row {i}: without a 'prompt' column, conversational completions must share "
                "their leading (prompt) messages. These two share none."
            )
        prompts.append(a[:shared])
        first.append(a[shared:])
        second.append(b[shared:])
    return prompts, first, second


def _ids(encoded) -> list[int]:
    """Token ids from what ``apply_chat_template(tokenize=True)`` returns (a list or a dict)."""
    if isinstance(encoded, Mapping) or hasattr(encoded, "keys"):
        encoded = encoded["input_ids"]
    return [int(t) for t in encoded]


def _common_prefix(a: list[int], b: list[int]) -> int:
    length = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        length += 1
    return length


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
