"""The training loop: one loop for every density, behavior and loss."""

from __future__ import annotations

import inspect
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from pbde import distributed as _distributed
from pbde import losses as _losses
from pbde._validation import (
    check_positive_number,
    check_tensor,
    is_validation_enabled,
    validation,
)
from pbde.annotators import Annotator, PreferenceProcess
from pbde.data import Preferences
from pbde.densities.base import device_of
from pbde.densities.energy import EnergyStack, stackable


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        model: the fitted model (the same object that was passed in, trained in place).
        losses: training objective at each step, shape ``(steps,)`` (float64, on the CPU).
        learning_rates: learning rate used at each step, shape ``(steps,)``.
        seconds: wall time of the run (of this process's part, if it resumed a checkpoint).
        steps: number of optimization steps taken in total.
    """

    model: nn.Module
    losses: torch.Tensor
    learning_rates: torch.Tensor
    seconds: float
    steps: int

    @property
    def final_loss(self) -> float:
        return float(self.losses[-1])


def nll_regularizer(
    samples: torch.Tensor, weight: float = 1.0
) -> Callable[[nn.Module], torch.Tensor]:
    """SLiC-HF's λ term: ``weight · (−mean log π_θ(samples))`` (Dumoulin et al., eq. 20).

    Args:
        samples: items to keep likely, e.g. draws from π_pre, shape ``(m, *event_shape)``.
        weight: λ >= 0.

    Returns:
        A regularizer for :func:`fit`: a callable of the model (an :class:`~pbde.Annotator`).
    """
    weight = check_positive_number("weight", weight, allow_zero=True)
    check_tensor("samples", samples)
    if samples.ndim == 0 or samples.shape[0] == 0:
        raise ValueError(f"'samples' must be a non-empty batch. Got shape {tuple(samples.shape)}.")
    # each distinct sample evaluated once: mean log π = Σ_u count_u·log π(u) / m
    distinct, counts = torch.unique(
        samples, dim=0 if samples.ndim > 1 else None, return_counts=True
    )
    frequencies = counts.to(torch.get_default_dtype()) / samples.shape[0]

    def regularizer(model):
        density = getattr(model, "density", None)
        if density is None:
            raise TypeError(
                "nll_regularizer needs a model with one density (a pbde.Annotator). Got "
                f"{type(model).__name__}."
            )
        log_p = density.log_prob(distinct)  # moves them to its device
        return -weight * (frequencies.to(log_p) * log_p).sum()

    return regularizer


def fit(
    model: PreferenceProcess,
    prefs: Preferences,
    *,
    loss: str | Callable = "bce",
    steps: int = 1000,
    lr: float = 1e-3,
    batch_size: int | None = None,
    replacement: bool = False,
    schedule: str = "cosine",
    seed: int = 0,
    progress: bool | None = None,
    regularizer: Callable[[nn.Module], torch.Tensor] | None = None,
    device: str | torch.device | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 500,
    **loss_kwargs,
) -> FitResult:
    """Fit an annotator model to preference data by minimizing a per-pair loss.

    The objective at each step is ``mean(loss(model.logits(xa, xb), y, **loss_kwargs))`` over a
    batch (the ``prefs.weight``-weighted mean when the data are weighted), plus
    ``regularizer(model)`` if given. Adam with cosine decay of the learning rate to 0
    over ``steps`` is the default (the paper's recipe).

    Args:
        model: an :class:`~pbde.Annotator` or :class:`~pbde.MixtureAnnotator` whose parameters
            are trained in place.
        prefs: the training data.
        loss: ``"bce"`` (the PBDE likelihood), ``"ipo"``, ``"hinge"``, ``"rrhf"`` or a callable
            ``(logits, y, **loss_kwargs) -> per-pair tensor`` (see :mod:`pbde.losses`).
        steps: number of optimization steps, >= 1.
        lr: peak learning rate, > 0.
        batch_size: pairs per step; ``None`` for full batch.
        replacement: draw each mini-batch with replacement (e.g. Azar et al. §5.4: batches of 9
            from a data set of 3 pairs); by default without, and a ``batch_size`` >= the data
            set's size is the full batch.
        schedule: ``"cosine"`` (decay to 0) or ``"constant"``.
        seed: seed of the mini-batch sampler.
        progress: show a progress bar; default: when standard error is a terminal.
        regularizer: optional callable ``model -> scalar`` added to the objective (e.g.
            :func:`nll_regularizer` for SLiC-HF's λ term).
        device: where to train (e.g. ``"cuda"``); the model and data are moved there. Default:
            the model's device.
        checkpoint: a file path. Every ``checkpoint_every`` steps the model, optimizer,
            scheduler, sampler state and loss history are saved there; if the file exists when
            ``fit`` starts, training resumes from it.
        checkpoint_every: steps between checkpoints, >= 1.
        **loss_kwargs: parameters of the loss (``tau`` for ``"ipo"``, ``delta`` for ``"hinge"``).

    Returns:
        :class:`FitResult`.

    Raises:
        TypeError: bad types, or loss parameters the loss does not take / lacks.
        ValueError: bad values (steps, lr, batch_size, schedule), or a checkpoint written by a
            run with a different number of steps.
        FloatingPointError: if the objective becomes NaN or infinite; names the step. The last
            checkpoint (if any) is left as it was.

    Example:
        >>> import torch, pbde
        >>> truth = pbde.Annotator(pbde.densities.Categorical(probs=torch.tensor([.2, .3, .5])))
        >>> xa, xb = torch.randint(0, 3, (2, 4096), generator=torch.Generator().manual_seed(0))
        >>> prefs = truth.label(xa, xb, generator=torch.Generator().manual_seed(1))
        >>> model = pbde.Annotator(pbde.densities.Categorical(size=3))
        >>> result = pbde.fit(model, prefs, steps=300, lr=0.1, progress=False)
    """
    if not isinstance(model, PreferenceProcess):
        raise TypeError(
            f"'model' must be a pbde.Annotator or MixtureAnnotator. Got {type(model).__name__}."
        )
    loss_fn = _bind_loss(loss, loss_kwargs)
    _check_regularizer(regularizer)
    target = torch.device(device) if device else device_of(model)
    data = _PairData(prefs, batch_size, target, replacement)
    model.to(data.prefs.device)

    def objective(generator: torch.Generator) -> torch.Tensor:
        return data.objective(model, loss_fn, regularizer, data.draw(generator))

    return optimize(
        model,
        objective,
        steps=steps,
        lr=lr,
        schedule=schedule,
        seed=seed,
        progress=progress,
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
        description="fit",
        sharded=data.world_size > 1,
    )


def fit_ensemble(
    models: Sequence[PreferenceProcess],
    prefs: Preferences,
    *,
    loss: str | Callable | Sequence[str | Callable] = "bce",
    loss_kwargs: dict | Sequence[dict] | None = None,
    regularizer: Callable | Sequence[Callable | None] | None = None,
    steps: int = 1000,
    lr: float = 1e-3,
    batch_size: int | None = None,
    replacement: bool = False,
    schedule: str = "cosine",
    seed: int = 0,
    progress: bool | None = None,
    device: str | torch.device | None = None,
) -> list[FitResult]:
    """Fit several models to the same data at once — a sweep (β, α, τ, δ…) in one run.

    The result is that of :func:`fit` on each model alone with the same settings: the members
    see the same batches, and Adam, being elementwise, steps each member's parameters as its
    own optimizer would. When every model is an :class:`~pbde.Annotator` whose density is an
    :class:`~pbde.densities.EnergyModel` of one architecture, the members are one module with
    stacked weights (:class:`~pbde.densities.EnergyStack`: one optimizer step, one pass over
    the data and one evaluation of the items per step for all of them; the networks run as
    batched matrix products on a GPU, one after another on the CPU); otherwise the models are
    fitted one after another. ``steps``, ``lr``, ``batch_size``, ``replacement``,
    ``schedule``, ``seed``, ``progress`` and ``device`` are those of :func:`fit`; checkpoints
    are not supported here.

    Args:
        models: the models, trained in place.
        prefs: the training data, shared by all.
        loss: one loss for all, or one per model (see :func:`fit`).
        loss_kwargs: the loss's parameters: one dict for all, or one per model.
        regularizer: ``None``, one callable for all, or one (or ``None``) per model; it is called
            with a stand-in :class:`~pbde.Annotator` whose density reads the stacked weights.

    Returns:
        One :class:`FitResult` per model, in order. Their ``losses`` are each member's own
        objective; ``seconds`` is the wall time of the whole ensemble.

    Raises:
        TypeError, ValueError: as :func:`fit`; also per-model lists of the wrong length.
        FloatingPointError: if any member's objective becomes NaN or infinite.
    """
    models = list(models)
    if not models or not all(isinstance(m, PreferenceProcess) for m in models):
        raise TypeError("'models' must be a non-empty list of pbde annotator models.")
    k = len(models)
    losses = _per_model("loss", loss, k, lambda v: isinstance(v, (str, Callable)))
    kwargs = _per_model("loss_kwargs", loss_kwargs or {}, k, lambda v: isinstance(v, dict))
    regularizers = _per_model("regularizer", regularizer, k, lambda v: v is None or callable(v))
    loss_fns = [_bind_loss(f, kw) for f, kw in zip(losses, kwargs, strict=True)]
    for r in regularizers:
        _check_regularizer(r)
    densities = [getattr(m, "density", None) for m in models]
    if not (all(isinstance(m, Annotator) for m in models) and stackable(densities)):
        return [
            fit(
                m,
                prefs,
                loss=f,
                steps=steps,
                lr=lr,
                batch_size=batch_size,
                replacement=replacement,
                schedule=schedule,
                seed=seed,
                progress=progress,
                regularizer=r,
                device=device,
                **kw,
            )
            for m, f, kw, r in zip(models, losses, kwargs, regularizers, strict=True)
        ]
    target = torch.device(device) if device else device_of(models[0])
    data = _PairData(prefs, batch_size, target, replacement)
    for m in models:
        m.to(data.prefs.device)
    stack = EnergyStack(densities)
    # a member that needs its normalizer every step (a regularizer on log π, a non-constant f)
    # has the whole grid evaluated anyway: it reads the items that lie on it from there
    stack.grid_members = tuple(
        i
        for i, (m, r) in enumerate(zip(models, regularizers, strict=True))
        if r is not None or m.behavior.constant_f is None
    )
    views = [Annotator(stack.member(i), m.behavior) for i, m in enumerate(models)]
    history = torch.full((k, steps), math.nan, dtype=torch.float64)
    step = [0]

    def objective(generator: torch.Generator) -> torch.Tensor:
        stack.new_step()
        drawn = data.draw(generator)
        values = torch.stack(
            [
                data.objective(view, f, r, drawn)
                for view, f, r in zip(views, loss_fns, regularizers, strict=True)
            ]
        )
        history[:, step[0]] = values.detach().double().cpu()
        step[0] += 1
        return values.sum()

    result = optimize(
        stack,
        objective,
        steps=steps,
        lr=lr,
        schedule=schedule,
        seed=seed,
        progress=progress,
        description=f"fit {k} models",
        sharded=data.world_size > 1,
    )
    stack.write_back()
    return [
        FitResult(m, history[i], result.learning_rates, result.seconds, steps)
        for i, m in enumerate(models)
    ]


def _per_model(name: str, value, k: int, is_one) -> list:
    if is_one(value):
        return [value] * k
    values = list(value) if isinstance(value, (list, tuple)) else None
    if values is None or len(values) != k or not all(is_one(v) for v in values):
        raise ValueError(
            f"'{name}' must be one value for all {k} models or a list of {k}. Got {value!r}."
        )
    return values


def _check_regularizer(regularizer) -> None:
    if regularizer is not None and not callable(regularizer):
        raise TypeError(f"'regularizer' must be a callable of the model. Got {regularizer!r}.")


class _PairData:
    """The training pairs as indices into their distinct items, and how a step's batch is drawn.

    Each distinct item is scored once per step, however many pairs it is in (pairs drawn from a
    density on a grid repeat items a lot), and a full batch hands the model the same tensor of
    items at every step (so a frozen π_ref answers from memory).
    """

    def __init__(
        self,
        prefs: Preferences,
        batch_size: int | None,
        device: torch.device,
        replacement: bool = False,
    ):
        if not isinstance(prefs, Preferences):
            raise TypeError(f"'prefs' must be pbde.Preferences. Got {type(prefs).__name__}.")
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
            raise ValueError(f"'batch_size' must be None or an int >= 1. Got {batch_size!r}.")
        self.prefs = prefs = prefs.to(device)
        self.n = n = len(prefs)
        self.batch_size = batch_size
        if not isinstance(replacement, bool):
            raise TypeError(f"'replacement' must be True or False. Got {replacement!r}.")
        self.replacement = replacement
        self.full_batch = batch_size is None or (batch_size >= n and not replacement)
        self.rank, self.world_size = _distributed.rank_and_world_size()
        # the objective is Σ (w·)loss / size, size = the batch's size or total weight
        self.full_size = n if prefs.weight is None else float(prefs.weight.sum())
        self.items, self.item_a, self.item_b = distinct_items(prefs.xa, prefs.xb)
        if self.full_batch:  # each process keeps its slice of the data set (all when alone)
            start, stop = _distributed.shard_bounds(n, self.rank, self.world_size)
            self.local = self._batch(slice(start, stop)) if stop > start else None

    def _batch(self, which) -> _Batch:
        prefs = self.prefs
        weight = None if prefs.weight is None else prefs.weight[which]
        a, b = self.item_a[which], self.item_b[which]
        if a.shape[0] == self.n:  # the whole data set: all items, the same tensor every step
            return _Batch(self.items, a, b, prefs.y, weight)
        used, inverse = torch.unique(torch.cat([a, b]), return_inverse=True)
        m = a.shape[0]
        return _Batch(self.items[used], inverse[:m], inverse[m:], prefs.y[which], weight)

    def draw(self, generator: torch.Generator) -> tuple[_Batch | None, float | torch.Tensor]:
        """This process's part of a step's batch, and the batch's size (or total weight)."""
        if self.full_batch:
            return self.local, self.full_size
        if self.replacement:  # the same on all ranks
            index = torch.randint(0, self.n, (self.batch_size,), generator=generator)
        else:
            index = torch.randperm(self.n, generator=generator)[: self.batch_size]
        start, stop = _distributed.shard_bounds(self.batch_size, self.rank, self.world_size)
        mine = index[start:stop].to(self.prefs.device)
        batch = self._batch(mine) if stop > start else None
        size = self.batch_size
        if self.prefs.weight is not None:  # a batch of zero weights contributes 0, not 0/0
            size = self.prefs.weight[index.to(self.prefs.device)].sum().clamp_min(1e-30)
        return batch, size

    def objective(self, model, loss_fn, regularizer, drawn) -> torch.Tensor:
        """This process's part of the batch mean, Σ_{its slice} loss / (batch size): the parts
        of all processes sum to the mean exactly, whatever the slice sizes (one part when
        alone); weighted data: Σ_{its slice} w·loss / Σ_{batch} w."""
        batch, size = drawn
        if batch is None:
            value = torch.zeros((), device=self.prefs.device)
        else:
            per_pair = loss_fn(model._indexed_logits(batch.items, batch.a, batch.b), batch.y)
            if batch.weight is not None:
                per_pair = batch.weight * per_pair
            value = per_pair.sum() / size
        if regularizer is not None and self.rank == 0:  # counted once in the sum over processes
            value = value + regularizer(model)
        return value


def distinct_items(
    xa: torch.Tensor, xb: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The distinct items of the pairs and where each pair's items are among them.

    Returns ``(items, ia, ib)`` with ``items[ia] == xa`` and ``items[ib] == xb``.
    """
    both = torch.cat([xa, xb])
    items, inverse = torch.unique(both, dim=0 if both.ndim > 1 else None, return_inverse=True)
    return items, inverse[: xa.shape[0]], inverse[xa.shape[0] :]


@dataclass
class _Batch:
    """Pairs as indices into their distinct items (what ``_indexed_logits`` takes)."""

    items: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    y: torch.Tensor
    weight: torch.Tensor | None


def optimize(
    module: nn.Module,
    objective: Callable[[torch.Generator], torch.Tensor],
    *,
    steps: int,
    lr: float,
    schedule: str = "cosine",
    seed: int = 0,
    progress: bool | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 500,
    description: str = "optimize",
    sharded: bool = False,
) -> FitResult:
    """The one optimization loop of pbde (used by :func:`fit` and by density pre-training).

    Minimizes ``objective(generator)`` over the trainable parameters of ``module`` with Adam.
    The first step runs with validation on (if it is globally on), the rest without: the data
    and the model do not change their kind between steps.

    In a ``torch.distributed`` run only rank 0 shows progress and writes checkpoints (every
    process reads the checkpoint when resuming: it must be on a file system they all see). With
    ``sharded=True`` the objective returns this process's part of the objective, the parts of
    all processes summing to it (see :mod:`pbde.distributed`): the parameters start from rank
    0's values, and each step sums the values and gradients over the processes before the
    identical Adam step everywhere.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"'steps' must be an int >= 1. Got {steps!r} instead.")
    lr = check_positive_number("lr", lr)
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"'schedule' must be 'cosine' or 'constant'. Got {schedule!r}.")
    if (
        isinstance(checkpoint_every, bool)
        or not isinstance(checkpoint_every, int)
        or checkpoint_every < 1
    ):
        raise ValueError(f"'checkpoint_every' must be an int >= 1. Got {checkpoint_every!r}.")
    parameters = [p for p in module.parameters() if p.requires_grad]
    if not parameters:
        raise ValueError("The model has no trainable parameters to fit.")
    optimizer = torch.optim.Adam(parameters, lr=lr)
    if schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=0.0)
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    generator = torch.Generator().manual_seed(seed)
    history = torch.full((steps,), math.nan, dtype=torch.float64)
    learning_rates = torch.full((steps,), math.nan, dtype=torch.float64)
    start = 0
    if checkpoint is not None and os.path.exists(checkpoint):
        start = _load_checkpoint(
            checkpoint, module, optimizer, scheduler, generator, history, steps
        )
    main_process = _distributed.is_main_process()
    if sharded:
        _distributed.agree_on_start(start, checkpoint)
        _distributed.broadcast_from_main_(list(module.parameters()) + list(module.buffers()))
    if progress is None:
        progress = sys.stderr.isatty()
    progress = progress and main_process
    validate_first = is_validation_enabled()
    module.train()
    began = time.perf_counter()
    with tqdm(total=steps, initial=start, desc=description, disable=not progress) as bar:
        for step in range(start, steps):
            with validation(validate_first and step == start):
                optimizer.zero_grad(set_to_none=True)
                value = objective(generator)
                total = value.detach()
                if sharded:  # every process sees the same total, so all stop together
                    total = total.clone().reshape(1)
                    _distributed.all_reduce_sum_([total])
                    total = total[0]
                if not bool(torch.isfinite(total)):
                    raise FloatingPointError(
                        f"The objective became {float(total)} at step {step} of {steps}; stopping. "
                        + (f"The last good checkpoint is in {checkpoint!s}." if checkpoint else "")
                    )
                if value.requires_grad or not sharded:  # not so for an empty slice of a shard
                    value.backward()
                if sharded:
                    _distributed.all_reduce_gradients_(parameters)
                learning_rates[step] = optimizer.param_groups[0]["lr"]
                optimizer.step()
                scheduler.step()
            history[step] = float(total)
            if (
                checkpoint is not None
                and main_process
                and ((step + 1) % checkpoint_every == 0 or step + 1 == steps)
            ):
                _save_checkpoint(
                    checkpoint, module, optimizer, scheduler, generator, history, step + 1
                )
            bar.update(1)
            if progress and (step % 50 == 0 or step + 1 == steps):
                bar.set_postfix(loss=f"{history[step]:.4f}")
    module.eval()
    return FitResult(module, history, learning_rates, time.perf_counter() - began, steps)


def _bind_loss(loss, loss_kwargs):
    loss_fn = _losses.get(loss)
    try:
        inspect.signature(loss_fn).bind(torch.zeros(1), torch.zeros(1), **loss_kwargs)
    except TypeError as error:
        name = getattr(loss_fn, "__name__", repr(loss_fn))
        raise TypeError(
            f"The loss {name!r} cannot take the parameters {sorted(loss_kwargs)}: {error}"
        ) from None

    def bound(logits, y):
        return loss_fn(logits, y, **loss_kwargs)

    return bound


def _save_checkpoint(path, module, optimizer, scheduler, generator, history, step):
    state = {
        "model": module.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "generator": generator.get_state(),
        "history": history,
        "step": step,
        "steps": history.shape[0],
    }
    tmp = f"{os.fspath(path)}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a crash mid-save leaves the previous checkpoint intact


def _load_checkpoint(path, module, optimizer, scheduler, generator, history, steps) -> int:
    state = torch.load(path, map_location=device_of(module), weights_only=True)
    if state["steps"] != steps:
        raise ValueError(
            f"The checkpoint {os.fspath(path)!r} belongs to a run of {state['steps']} steps; "
            f"this run asks for steps={steps}. Use another checkpoint path."
        )
    module.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    generator.set_state(state["generator"].cpu())
    history.copy_(state["history"].cpu())
    return int(state["step"])
