"""The training loop: one loop for every density, behavior and loss."""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from pbde import distributed as _distributed
from pbde import losses as _losses
from pbde._validation import (
    check_int,
    check_positive_number,
    check_tensor,
    is_validation_enabled,
    validation,
)
from pbde.annotators import Annotator, PreferenceProcess
from pbde.data import Preferences
from pbde.densities.base import device_of, is_frozen
from pbde.densities.finite import Precomputed
from pbde.io import PAD_TOKEN


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        model: the fitted model (the same object that was passed in, trained in place).
        losses: training objective at each step, shape ``(steps,)`` (float64, on the CPU).
        learning_rates: learning rate used at each step, shape ``(steps,)``.
        seconds: wall time of the run (of this process's part, if it resumed a checkpoint).
        steps: number of optimization steps taken in total.
        metrics: the records logged every ``log_every`` steps and at each evaluation (dicts
            with ``"step"`` and the metric names, as written to ``log``); empty when nothing was
            logged.
    """

    model: nn.Module
    losses: torch.Tensor
    learning_rates: torch.Tensor
    seconds: float
    steps: int
    metrics: list[dict] = field(default_factory=list)

    @property
    def final_loss(self) -> float:
        return float(self.losses[-1])


def nll_regularizer(
    samples: torch.Tensor, weight: float = 1.0
) -> Callable[[nn.Module], torch.Tensor]:
    """SLiC-HF's λ term: ``weight · (−mean log π_θ(samples))`` (Dumoulin et al., eq. 20).

    Args:
        samples: items to keep likely, e.g. draws from π_ref, shape ``(m, *event_shape)``.
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
    steps: int | None = None,
    epochs: int | None = None,
    lr: float = 1e-3,
    batch_size: int | None = None,
    replacement: bool = False,
    gradient_accumulation: int = 1,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    schedule: str = "cosine",
    warmup_steps: int = 0,
    max_grad_norm: float | None = None,
    precision: str | None = None,
    seed: int = 0,
    progress: bool | None = None,
    regularizer: Callable[[nn.Module], torch.Tensor] | None = None,
    device: str | torch.device | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 500,
    log_every: int | None = None,
    log: str | os.PathLike | Callable[[dict], None] | None = None,
    eval_prefs: Preferences | None = None,
    eval_every: int | None = None,
    eval_batch_size: int | None = None,
    check_convergence: bool = True,
    cuda_graph: bool = True,
    **loss_kwargs,
) -> FitResult:
    """Fit an annotator model to preference data by minimizing a per-pair loss.

    The objective at each step is ``mean(loss(model.logits(xa, xb), y, **loss_kwargs))`` over a
    batch (the ``prefs.weight``-weighted mean when the data are weighted), plus
    ``regularizer(model)`` if given. Adam with cosine decay of the learning rate to 0
    over ``steps`` is the default (the paper's recipe). The trainer options of language-model
    alignment (AdamW with weight decay, warm-up, gradient accumulation and clipping, mixed
    precision, epochs of shuffled mini-batches, metrics logging, periodic evaluation) are options
    of this same loop, for every density.

    Before training, while validation is on (:func:`pbde.validation`), every distinct item of
    ``prefs`` goes once through the checks of the model's densities and behaviors (the loop
    itself validates only its first step): an item outside a density's domain or an f(x) <= 0
    anywhere in the data stops the fit before it starts.

    Args:
        model: an :class:`~pbde.Annotator` or :class:`~pbde.MixtureAnnotator` whose parameters
            are trained in place.
        prefs: the training data.
        loss: ``"bce"`` (the PBDE likelihood), ``"ipo"``, ``"hinge"``, ``"rrhf"`` or a callable
            ``(logits, y, **loss_kwargs) -> per-pair tensor`` (see :mod:`pbde.losses`).
        steps: number of optimization steps, >= 1 (default 1000 unless ``epochs`` is given).
        epochs: instead of ``steps``: passes over the data in epoch-shuffled mini-batches of
            ``batch_size`` (each epoch a new permutation; the last batch of an epoch may be
            smaller), ``steps = epochs · ceil(n / batch_size)``. Without it each step draws its
            batch afresh.
        lr: peak learning rate, > 0.
        batch_size: pairs per optimization step; ``None`` for full batch.
        replacement: draw each mini-batch with replacement (e.g. Azar et al. §5.4: batches of 9
            from a data set of 3 pairs); by default without, and a ``batch_size`` >= the data
            set's size is the full batch.
        gradient_accumulation: split each step's batch into this many micro-batches, evaluated
            and back-propagated one after another (less memory, the same step: the gradients of
            the parts add up to the batch's).
        optimizer: ``"adam"`` (default) or ``"adamw"`` (decoupled ``weight_decay``).
        weight_decay: AdamW's weight decay, >= 0 (only with ``optimizer="adamw"``).
        schedule: ``"cosine"`` (decay to 0), ``"linear"`` (decay to 0) or ``"constant"``.
        warmup_steps: steps of linear warm-up before the schedule, >= 0 (step t < W uses
            ``lr·(t + 1)/(W + 1)``; the schedule then runs over the remaining steps).
        max_grad_norm: clip the gradients' global norm to this value (> 0); ``None``: no
            clipping. The norm before clipping is logged as ``grad_norm``.
        precision: ``None`` (the parameters' dtype), ``"bf16"`` (autocast to bfloat16, on the CPU
            or CUDA) or ``"fp16"`` (autocast to float16 with a gradient scaler, CUDA only).
        seed: seed of the mini-batch sampler.
        progress: show a progress bar; default: when standard error is a terminal.
        regularizer: optional callable ``model -> scalar`` added to the objective (e.g.
            :func:`nll_regularizer` for SLiC-HF's λ term).
        device: where to train (e.g. ``"cuda"``); the model and data are moved there. Default:
            the model's device.
        checkpoint: a file path (its folder must exist). Every ``checkpoint_every`` steps the
            model (without its frozen reference densities), optimizer, scheduler, sampler state,
            loss and learning-rate histories are saved there, with a fingerprint of the run (a
            hash of the data, the model's kinds and parameter shapes, the behavior and the
            arguments that shape the training: loss and its parameters, steps/epochs, lr,
            batching, optimizer, schedule, clipping, precision, seed; not the regularizer, which
            is code, nor the device or logging); if the file exists when ``fit`` starts,
            training resumes from it — only if it is a pbde checkpoint of the same run.
        checkpoint_every: steps between checkpoints, >= 1.
        log_every: every this many steps, record the training metrics averaged since the last
            record: ``loss``, ``learning_rate``, ``grad_norm`` (with clipping), ``rewards/chosen``,
            ``rewards/rejected`` (the mean Ω of the preferred and of the other item, label-
            weighted; for :func:`pbde.dpo` this is TRL's β·log(π/π_ref)), ``rewards/margins``,
            ``rewards/accuracies``, ``logps/chosen``, ``logps/rejected`` (log π as the density
            gives it), ``tokens_per_second`` (token items), ``seconds``. Default: only with
            ``log``, every 10 steps.
        log: where the records go: a JSON Lines file path (one record per line, appended) or a
            callable taking each record; they are also in :attr:`FitResult.metrics`.
        eval_prefs: held-out data evaluated every ``eval_every`` steps and at the end (records
            with ``eval/`` names: :func:`evaluate`'s metrics).
        eval_every: steps between evaluations (default: only at the end).
        eval_batch_size: pairs per forward pass of the evaluation (default ``batch_size``).
        check_convergence: warn (:class:`ConvergenceWarning`) when a full-batch fit of
            >= :data:`CONVERGENCE_MIN_STEPS` steps clearly did not converge (see
            :func:`warn_if_unconverged`); ``False``: no check.
        cuda_graph: on a GPU, a full-batch step without logging (the same tensors at every
            step) is recorded once as a CUDA graph and replayed (the same values, to the
            rounding of the learning rate to float32); ``False``: ordinary steps.
        **loss_kwargs: parameters of the loss (``tau`` for ``"ipo"``, ``delta`` for ``"hinge"``).

    Returns:
        :class:`FitResult`.

    Warns:
        SeparationWarning: with the ``"bce"`` loss, categorical densities and no
            ``regularizer``, when the comparisons separate the items (some never lost to the
            others; see :func:`separated_items`): the maximum-likelihood fit then has no finite
            answer. (A regularizer is how one gives it one, so with a regularizer it is quiet.)

    Raises:
        TypeError: bad types, or loss parameters the loss does not take / lacks.
        ValueError: bad values (steps, lr, batch_size, schedule, …), items the model rejects, a
            loss that does not return one value per pair, a checkpoint path in a missing folder
            or naming a directory, or a checkpoint file that is not a pbde checkpoint or belongs
            to a different run (the message names the file).
        FloatingPointError: if the objective becomes NaN or infinite; names the step. The model
            keeps the parameters of the last good step, and the last checkpoint (if any) is left
            as it was.

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
    for name, value in (("check_convergence", check_convergence), ("cuda_graph", cuda_graph)):
        if not isinstance(value, bool):
            raise TypeError(f"'{name}' must be True or False. Got {value!r}.")
    accumulation = check_int("gradient_accumulation", gradient_accumulation, 1)
    if log_every is not None:
        check_int("log_every", log_every, 1)
    if eval_every is not None:
        check_int("eval_every", eval_every, 1)
        if eval_prefs is None:
            raise ValueError("'eval_every' needs 'eval_prefs' (the data to evaluate on).")
    if eval_prefs is not None and not isinstance(eval_prefs, Preferences):
        raise TypeError(
            f"'eval_prefs' must be pbde.Preferences or None. Got {type(eval_prefs).__name__}."
        )
    if log is not None and not (callable(log) or isinstance(log, (str, os.PathLike))):
        raise TypeError(f"'log' must be a file path or a callable. Got {log!r}.")
    target = torch.device(device) if device else device_of(model)
    data = _PairData(prefs, batch_size, target, replacement, epochs=epochs is not None)
    steps = _resolve_steps(steps, epochs, data)
    if log is not None and log_every is None:
        log_every = 10
    data.collect_stats = log_every is not None
    model.to(data.prefs.device)
    if is_validation_enabled():
        check_data_against_model(model, data.items)
    separated = False
    if regularizer is None and (loss_fn.loss == "bce" or loss_fn.loss is _losses.bce):
        separated = warn_if_separated(model, data.prefs)
    fingerprint = None
    if checkpoint is not None:
        fingerprint = _fingerprint(
            data.prefs,
            model,
            loss=loss_fn.loss,
            loss_kwargs=loss_kwargs,
            epochs=epochs,
            batch_size=batch_size,
            replacement=replacement,
            gradient_accumulation=accumulation,
        )

    def objective(generator: torch.Generator):
        drawn = data.draw(generator)
        for part in data.micro_batches(drawn, accumulation):
            yield data.objective(model, loss_fn, regularizer, part)

    def evaluation() -> dict:
        metrics = evaluate(
            model, eval_prefs, loss=loss_fn, batch_size=eval_batch_size or batch_size
        )
        return {f"eval/{name}": value for name, value in metrics.items()}

    result = optimize(
        model,
        objective,
        steps=steps,
        lr=lr,
        optimizer=optimizer,
        weight_decay=weight_decay,
        schedule=schedule,
        warmup_steps=warmup_steps,
        max_grad_norm=max_grad_norm,
        precision=precision,
        seed=seed,
        progress=progress,
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
        description="fit",
        sharded=data.world_size > 1,
        on_start=lambda step: data.start_at(step, seed),
        log_every=log_every,
        log=log,
        statistics=data.take_stats if log_every is not None else None,
        evaluate=evaluation if eval_prefs is not None else None,
        eval_every=eval_every,
        fingerprint=fingerprint,
        static=data.full_batch and accumulation == 1 and data.world_size == 1 and log_every is None,
        cuda_graph=cuda_graph,
    )
    # separated data have no finite optimum: their warning says why the loss keeps falling
    if check_convergence and data.full_batch and not separated and _distributed.is_main_process():
        warn_if_unconverged(result)
    return result


#: the most optimization steps of one run (its loss history takes 16 bytes per step)
MAX_STEPS = 2**31


def check_data_against_model(model: nn.Module, items: torch.Tensor) -> None:
    """Every distinct item of a data set through the checks of the model's densities and
    behaviors, once, before training: the training loop validates only its first step, so an
    item outside a density's domain (or an f(x) <= 0) in a later mini-batch would otherwise pass
    unnoticed. Vectorized and without gradient: the items' shapes, dtypes and domains for each
    density and reference density, and the behaviors' f and g on them. On token sequences g is
    checked here only when every reference is a :class:`~pbde.densities.Precomputed` table (the
    language-model trainer's π_ref: a lookup, which also finds items missing from the table); a
    reference network is not run over the whole data set (its g is checked batch by batch while
    validation is on, and a non-finite objective stops the fit).

    Raises:
        TypeError, ValueError: what the density or behavior raises, naming the items.
    """
    token_items = items.ndim >= 2 and not items.is_floating_point()
    with torch.no_grad():
        for annotator in _annotators(model):
            x = items.to(annotator.density._param_device())
            annotator.density._validate_items(x)
            behavior = annotator.behavior
            for reference in behavior.references:
                reference._validate_items(x.to(reference._param_device()))
            if behavior.constant_f is None:
                behavior.f(x)
            tabulated = all(isinstance(r, Precomputed) for r in behavior.references)
            if (not token_items or tabulated) and not isinstance(behavior._g, float):
                behavior.g(x)


def _annotators(model) -> list[Annotator]:
    if isinstance(model, Annotator):
        return [model]
    return [a for sub in getattr(model, "annotators", ()) for a in _annotators(sub)]


class SeparationWarning(RuntimeWarning):
    """The comparisons separate the items: the maximum-likelihood fit has no finite answer."""


def separated_items(prefs: Preferences) -> tuple[list, list] | None:
    """The items of integer-id comparisons that the data separate from the rest, or ``None``.

    In the directed graph of wins (an edge winner → loser for each comparison whose label gives
    the winner a positive probability; a soft label gives both edges), the Bradley–Terry / Luce
    maximum-likelihood estimate is finite exactly when the graph is strongly connected (Zermelo,
    1929; Ford, 1957). Otherwise some group of items never lost to the others (their
    log-strengths grow without bound under the likelihood) and some group never beat them.

    Returns:
        ``(never_lost, never_won)``: the items of the groups that no other item beat, and of
        those that beat no other item; ``None`` when the graph is strongly connected (or the
        items are not integer ids).
    """
    import numpy as np
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if prefs.xa.ndim != 1 or prefs.xa.is_floating_point() or prefs.xa.dtype == torch.bool:
        return None
    keep = torch.ones_like(prefs.y, dtype=torch.bool)
    if prefs.weight is not None:
        keep = prefs.weight > 0
    xa, xb, y = prefs.xa[keep].cpu(), prefs.xb[keep].cpu(), prefs.y[keep].cpu()
    items, inverse = torch.unique(torch.cat([xa, xb]), return_inverse=True)
    n, m = items.shape[0], xa.shape[0]
    if n < 2:
        return None
    a, b = inverse[:m], inverse[m:]
    winners = torch.cat([a[y > 0], b[y < 1]]).numpy()
    losers = torch.cat([b[y > 0], a[y < 1]]).numpy()
    graph = coo_matrix((np.ones(winners.shape[0]), (winners, losers)), shape=(n, n)).tocsr()
    count, label = connected_components(graph, directed=True, connection="strong")
    if count == 1:
        return None
    beaten = np.zeros(count, dtype=bool)  # a component with an edge into it from outside
    beats = np.zeros(count, dtype=bool)  # with an edge out of it
    between = label[winners] != label[losers]
    beaten[label[losers][between]] = True
    beats[label[winners][between]] = True
    never_lost = items[torch.as_tensor(~beaten[label])].tolist()
    never_won = items[torch.as_tensor(~beats[label])].tolist()
    return never_lost, never_won


def warn_if_separated(model, prefs: Preferences) -> bool:
    """Warn (:class:`SeparationWarning`) when a categorical model is fitted by maximum
    likelihood to comparisons that separate its items (see :func:`separated_items`); returns
    whether it warned."""
    from pbde.densities.finite import Categorical

    annotators = _annotators(model)
    if not annotators or not all(isinstance(a.density, Categorical) for a in annotators):
        return False
    found = separated_items(prefs)
    if found is None:
        return False
    never_lost, never_won = found

    def listed(values):
        more = f" and {len(values) - 8} more" if len(values) > 8 else ""
        return ", ".join(map(str, values[:8])) + more

    import warnings

    warnings.warn(
        f"The comparisons separate the items: item(s) {listed(never_lost)} never lost to the "
        f"other items and item(s) {listed(never_won)} never beat them. The maximum-likelihood "
        "fit has no finite answer: the loss tends to 0 while those log-probabilities grow "
        "without bound, so the result depends on 'steps' and 'lr'. Add comparisons, a "
        "regularizer (pbde.nll_regularizer), or use a bounded loss ('ipo').",
        SeparationWarning,
        stacklevel=3,
    )
    return True


class ConvergenceWarning(RuntimeWarning):
    """The fit stopped while its objective was still falling steadily: more steps (or a larger
    learning rate) would have lowered it further."""


#: the shortest run :func:`warn_if_unconverged` judges (shorter runs are demonstrations and
#: quick checks; :func:`fit` takes 1000 steps by default)
CONVERGENCE_MIN_STEPS = 500


def unconverged(
    losses: torch.Tensor, learning_rates: torch.Tensor, *, tail: float = 0.1
) -> tuple[float, float] | None:
    """Whether a run's objective was still falling steadily when it stopped.

    Judged from the recorded objective ``L_t`` (read once, at the end) over the last ``tail``
    of the steps, against the whole run, per unit of learning rate (so that a schedule that
    decays to 0 does not pass for convergence): the run is *unconverged* when

    * it has >= :data:`CONVERGENCE_MIN_STEPS` steps, all finite, and fell overall;
    * the objective did not rise at >= 90% of the steps of the tail (a steady descent, not the
      noise of a converged or oscillating run), and fell by more than ``1e-6·(1 + |L_end|)``;
    * over the tail it fell, per unit of learning rate spent there, at least a quarter as fast
      as over the whole run (a converged run's descent per unit of learning rate is far slower
      at the end than at the start).

    Meant for full-batch runs, whose ``L_t`` is the objective itself (a mini-batch's is a
    noisy estimate of it).

    Args:
        losses: the objective at each step, shape ``(steps,)``.
        learning_rates: the learning rate of each step, shape ``(steps,)``.
        tail: the fraction of the run judged as its end.

    Returns:
        ``None`` if the run is not judged unconverged, else ``(fall over the tail, ratio of the
        tail's rate to the whole run's)``.
    """
    n = losses.shape[0]
    if n < CONVERGENCE_MIN_STEPS:
        return None
    losses, rates = losses.double(), learning_rates.double()
    if not bool(torch.isfinite(losses).all() and torch.isfinite(rates).all()):
        return None
    start = n - max(2, round(tail * n))
    fall, fall_tail = float(losses[0] - losses[-1]), float(losses[start] - losses[-1])
    steady = float((losses[start + 1 :] <= losses[start:-1]).double().mean())
    if fall <= 0 or steady < 0.9 or fall_tail <= 1e-6 * (1 + abs(float(losses[-1]))):
        return None
    # the update of step t moves L_t to L_{t+1}: the falls above are over steps [.., n − 1)
    spent, spent_tail = float(rates[: n - 1].sum()), float(rates[start : n - 1].sum())
    if spent <= 0 or spent_tail <= 0:
        return None
    ratio = (fall_tail / spent_tail) / (fall / spent)
    return (fall_tail, ratio) if ratio >= 0.25 else None


def warn_if_unconverged(result: FitResult) -> None:
    """Warn (:class:`ConvergenceWarning`) when :func:`unconverged` judges the run unconverged."""
    found = unconverged(result.losses, result.learning_rates)
    if found is None:
        return
    fall, ratio = found
    import warnings

    losses = result.losses
    warnings.warn(
        f"The fit did not converge: over its last 10% of steps the objective was still falling "
        f"steadily (by {fall:.3g}, to {float(losses[-1]):.6g}), per unit of learning rate at "
        f"{ratio:.0%} of its pace over the whole run. More 'steps' or a larger 'lr' would lower "
        "it further (check_convergence=False turns this check off).",
        ConvergenceWarning,
        stacklevel=3,
    )


def _resolve_steps(steps, epochs, data: _PairData) -> int:
    if epochs is None:
        return 1000 if steps is None else steps
    if steps is not None:
        raise ValueError(
            f"Give 'steps' or 'epochs', not both. Got steps={steps!r}, epochs={epochs!r}."
        )
    check_int("epochs", epochs, 1)
    if data.replacement:
        raise ValueError("'epochs' passes over the data without replacement: drop 'replacement'.")
    return epochs * data.batches_per_epoch


@torch.no_grad()
def evaluate(
    model: PreferenceProcess,
    prefs: Preferences,
    *,
    loss: str | Callable = "bce",
    batch_size: int | None = None,
    **loss_kwargs,
) -> dict:
    """The model's fit to ``prefs``: mean loss, log-likelihood and accuracy per comparison.

    Accuracy counts a comparison as right when the model's preference logit has the sign of the
    label: ``y·1[h > 0] + (1 − y)·1[h < 0] + ½·1[h = 0]`` averaged over comparisons (ties and soft
    labels count fractionally; for hard labels it is the plain accuracy, model ties counting ½).
    For an :class:`~pbde.Annotator`, a logit smaller than the floating-point resolution of the
    scores it is the difference of (``64·eps·(|f·log p| + |g|)`` of both items) is a tie: at
    π = π_ref a DPO logit is rounding noise, whose sign says nothing. Weighted data give
    weighted means. For an ``Annotator`` the means of Ω and log π of the preferred and of the
    other item are reported as ``rewards/…`` and ``logps/…`` (as :func:`fit` logs them).

    Args:
        model: an annotator model.
        prefs: the comparisons.
        loss: the loss whose mean is reported as ``loss`` (as in :func:`fit`).
        batch_size: comparisons per forward pass (default: all at once).
        **loss_kwargs: the loss's parameters.

    Returns:
        A dict with ``loss``, ``log_likelihood``, ``accuracy``, ``comparisons`` and, for an
        ``Annotator``, the ``rewards/…`` and ``logps/…`` means.
    """
    if not isinstance(model, PreferenceProcess):
        raise TypeError(
            f"'model' must be a pbde.Annotator or MixtureAnnotator. Got {type(model).__name__}."
        )
    if not isinstance(prefs, Preferences):
        raise TypeError(f"'prefs' must be pbde.Preferences. Got {type(prefs).__name__}.")
    loss_fn = loss if getattr(loss, "_pbde_bound", False) else _bind_loss(loss, loss_kwargs)
    if batch_size is not None:
        check_int("batch_size", batch_size, 1)
    was_training = model.training
    model.eval()
    device = device_of(model)
    data = _PairData(prefs, batch_size, device)
    data.collect_stats = isinstance(model, Annotator)
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    step = data.batch_size or data.n
    try:
        for start in range(0, data.n, step):
            batch = data._batch(slice(start, min(start + step, data.n)))
            logits, resolution = data.scored(model, batch)
            y = batch.y.double()
            w = torch.ones_like(y) if batch.weight is None else batch.weight.double()
            h = logits.double()
            log_likelihood = y * torch.nn.functional.logsigmoid(h) + (1 - y) * (
                torch.nn.functional.logsigmoid(-h)
            )
            right = _agreement(h, y, resolution)
            sums += torch.stack(
                [
                    (w * loss_fn(logits, batch.y).double()).sum(),
                    (w * log_likelihood).sum(),
                    (w * right).sum(),
                ]
            )
    finally:
        model.train(was_training)
    total = data.full_size
    out = {
        "loss": float(sums[0]) / total,
        "log_likelihood": float(sums[1]) / total,
        "accuracy": float(sums[2]) / total,
        "comparisons": data.n,
    }
    stats = data.take_stats()
    out.update({k: v for k, v in stats.items() if not k.startswith("tokens")})
    return out


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
        *,
        epochs: bool = False,
    ):
        if not isinstance(prefs, Preferences):
            raise TypeError(f"'prefs' must be pbde.Preferences. Got {type(prefs).__name__}.")
        if batch_size is not None:
            check_int("batch_size", batch_size, 1)
        self.prefs = prefs = prefs.to(device)
        if prefs.weight is not None:
            # only relative weights matter (weighted means): scaled by a power of 2 (exactly:
            # the means do not change by a bit) to a maximum in [0.5, 1), so that subnormal
            # weights (1e-45) do not make the step's size underflow to NaN
            exponent = int(torch.frexp(prefs.weight.max().double()).exponent)
            if exponent != 0:
                weight = (prefs.weight.double() * 2.0**-exponent).to(prefs.weight.dtype)
                prefs = self.prefs = Preferences._trusted(
                    prefs.xa, prefs.xb, prefs.y, prefs.annotator_id, weight
                )
        self.n = n = len(prefs)
        self.batch_size = batch_size
        if not isinstance(replacement, bool):
            raise TypeError(f"'replacement' must be True or False. Got {replacement!r}.")
        self.replacement = replacement
        self.full_batch = batch_size is None or (batch_size >= n and not replacement)
        self.epochs = epochs
        self.batches_per_epoch = 1 if self.full_batch else -(-n // batch_size)
        self.rank, self.world_size = _distributed.rank_and_world_size()
        # the objective is Σ (w·)loss / size, size = the batch's size or total weight
        self.full_size = n if prefs.weight is None else float(prefs.weight.sum())
        self.items, self.item_a, self.item_b = distinct_items(prefs.xa, prefs.xb)
        self.tokens = not self.items.is_floating_point() and self.items.ndim >= 2
        self.collect_stats = False
        self._stats: torch.Tensor | None = None
        if self.full_batch:  # each process keeps its slice of the data set (all when alone)
            start, stop = _distributed.shard_bounds(n, self.rank, self.world_size)
            self.local = self._batch(slice(start, stop)) if stop > start else None

    def _batch(self, which) -> _Batch:
        prefs = self.prefs
        weight = None if prefs.weight is None else prefs.weight[which]
        a, b = self.item_a[which], self.item_b[which]
        if a.shape[0] == self.n:  # the whole data set: all items, the same tensor every step
            return _Batch(self.items, a, b, prefs.y[which], weight)
        used, inverse = torch.unique(torch.cat([a, b]), return_inverse=True)
        m = a.shape[0]
        return _Batch(self.items[used], inverse[:m], inverse[m:], prefs.y[which], weight)

    def draw(self, generator: torch.Generator) -> tuple[torch.Tensor | None, float | torch.Tensor]:
        """This process's pairs of a step's batch (indices; ``None`` for the whole local data
        set) and the batch's size (or total weight)."""
        if self.full_batch:
            return None, self.full_size
        if self.replacement:  # the same on all ranks
            index = torch.randint(0, self.n, (self.batch_size,), generator=generator)
        elif self.epochs:
            index = self._epoch_batch()
        else:
            index = torch.randperm(self.n, generator=generator)[: self.batch_size]
        start, stop = _distributed.shard_bounds(index.shape[0], self.rank, self.world_size)
        mine = index[start:stop].to(self.prefs.device)
        size = index.shape[0]
        if self.prefs.weight is not None:  # a batch of zero weights contributes 0, not 0/0
            size = self.prefs.weight[index.to(self.prefs.device)].sum().clamp_min(1e-30)
        return mine, size

    def start_at(self, step: int, seed: int) -> None:
        """Where the epochs stand: at ``step`` of a run seeded with ``seed`` (resumable)."""
        self._step, self._seed, self._epoch = step, seed, None

    def _epoch_batch(self) -> torch.Tensor:
        """Batch ``step mod batches_per_epoch`` of a permutation drawn for each epoch from the
        seed and the epoch's number, so a resumed run continues the same epoch."""
        epoch, position = divmod(self._step, self.batches_per_epoch)
        if self._epoch != epoch:
            generator = torch.Generator().manual_seed((self._seed * 1_000_003 + epoch) % 2**64)
            self._epoch, self._permutation = epoch, torch.randperm(self.n, generator=generator)
        self._step += 1
        return self._permutation[position * self.batch_size : (position + 1) * self.batch_size]

    def micro_batches(self, drawn, parts: int):
        """The step's local pairs split into ``parts`` micro-batches: ``(batch or None when
        empty, the batch's size, whether it is the step's first part)``."""
        mine, size = drawn
        if parts == 1:
            if mine is None:
                yield self.local, size, True
            else:
                yield (self._batch(mine) if mine.numel() else None), size, True
            return
        if mine is None:
            start, stop = _distributed.shard_bounds(self.n, self.rank, self.world_size)
            mine = torch.arange(start, stop, device=self.prefs.device)
        for k, chunk in enumerate(torch.tensor_split(mine, parts)):
            yield (self._batch(chunk) if chunk.numel() else None), size, k == 0

    def logits(self, model, batch: _Batch) -> torch.Tensor:
        """The batch's preference logits; records the statistics when ``collect_stats``."""
        return self.scored(model, batch)[0]

    def scored(self, model, batch: _Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The batch's logits and their resolution (see :func:`_agreement`; ``None`` when
        unknown); records the statistics when ``collect_stats``."""
        if not (self.collect_stats and isinstance(model, Annotator)):
            logits = model._indexed_logits(batch.items, batch.a, batch.b)
            if self.collect_stats:
                self._record(batch, logits, None, None, None)
            return logits, None
        log_p, omega = model._item_terms(batch.items)
        logits = omega[batch.a] - omega[batch.b]
        with torch.no_grad():  # each item's Ω as f·log p + g: the size of what cancels in h
            f = model.behavior.constant_f
            f_log_p = log_p.detach() * (f if f is not None else model.behavior.f(batch.items))
            size = f_log_p.abs() + (omega.detach() - f_log_p).abs()
            eps = torch.finfo(logits.dtype).eps if logits.is_floating_point() else 0.0
            resolution = 64 * eps * (size[batch.a] + size[batch.b])
        self._record(batch, logits, log_p, omega, resolution)
        return logits, resolution

    def _record(self, batch: _Batch, logits, log_p, omega, resolution) -> None:
        with torch.no_grad():
            y = batch.y.to(torch.float64)
            w = torch.ones_like(y) if batch.weight is None else batch.weight.to(torch.float64)
            h = logits.detach().to(torch.float64)
            right = _agreement(h, y, resolution)
            values = [w.sum(), (w * h * (2 * y - 1)).sum(), (w * right).sum()]
            for per_item in (omega, log_p):
                if per_item is not None:
                    v = per_item.detach().to(torch.float64)
                    a, b = v[batch.a], v[batch.b]
                    values += [(w * (y * a + (1 - y) * b)).sum(), (w * (y * b + (1 - y) * a)).sum()]
            if self.tokens:
                values.append((batch.items != PAD_TOKEN).sum().to(torch.float64))
            stats = torch.stack(values)
            self._stats = stats if self._stats is None else self._stats + stats

    def take_stats(self) -> dict:
        """The statistics recorded since the last call, as means (summed over processes)."""
        if self._stats is None:
            return {}
        stats, self._stats = self._stats, None
        if self.world_size > 1:
            stats = stats.clone()
            _distributed.all_reduce_sum_([stats])
        values = stats.tolist()
        total = values[0] if values[0] > 0 else float("nan")
        out = {"rewards/margins": values[1] / total, "rewards/accuracies": values[2] / total}
        names = []
        if len(values) >= 7 or (len(values) == 6 and not self.tokens):
            names = ["rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected"]
        for name, value in zip(names, values[3:], strict=False):
            out[name] = value / total
        if self.tokens:
            out["tokens"] = values[-1]
        return out

    def objective(self, model, loss_fn, regularizer, part) -> torch.Tensor:
        """This process's part of the batch mean, Σ_{its slice} loss / (batch size): the parts
        of all processes (and micro-batches) sum to the mean exactly, whatever the slice sizes;
        weighted data: Σ_{its slice} w·loss / Σ_{batch} w. The regularizer is added once per
        step (to the first micro-batch of rank 0)."""
        batch, size, first = part
        if batch is None:
            value = torch.zeros((), device=self.prefs.device)
        else:
            per_pair = loss_fn(self.logits(model, batch), batch.y)
            if batch.weight is not None:
                per_pair = batch.weight * per_pair
            value = per_pair.sum() / size
        if regularizer is not None and self.rank == 0 and first:
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


def _agreement(h: torch.Tensor, y: torch.Tensor, resolution=None) -> torch.Tensor:
    """``y·1[h > r] + (1 − y)·1[h < −r] + ½·1[|h| ≤ r]``: how far the logit's sign agrees with
    the label, a logit within the resolution ``r`` of 0 counting as a tie."""
    r = 0.0 if resolution is None else resolution.to(h)
    return y * (h > r) + (1 - y) * (h < -r) + 0.5 * (h.abs() <= r)


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
    objective: Callable[[torch.Generator], torch.Tensor | Iterable[torch.Tensor]],
    *,
    steps: int,
    lr: float,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    schedule: str = "cosine",
    warmup_steps: int = 0,
    max_grad_norm: float | None = None,
    precision: str | None = None,
    seed: int = 0,
    progress: bool | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 500,
    description: str = "optimize",
    sharded: bool = False,
    on_start: Callable[[int], None] | None = None,
    log_every: int | None = None,
    log: str | os.PathLike | Callable[[dict], None] | None = None,
    statistics: Callable[[], dict] | None = None,
    evaluate: Callable[[], dict] | None = None,
    eval_every: int | None = None,
    fingerprint: str | None = None,
    static: bool = False,
    cuda_graph: bool = True,
) -> FitResult:
    """The one optimization loop of pbde (used by :func:`fit` and by density pre-training).

    Minimizes ``objective(generator)`` over the trainable parameters of ``module`` with Adam
    (or AdamW). The objective returns the step's value, or yields it in parts (micro-batches
    of gradient accumulation) that are back-propagated one after another and add up to it. The
    first step runs with validation on (if it is globally on), the rest without: the data and
    the model do not change their kind between steps. The options (``optimizer`` …
    ``eval_every``) are those of :func:`fit`; ``statistics()`` returns the metrics gathered by
    the objective since its last call (logged every ``log_every`` steps), ``evaluate()`` the
    held-out metrics, and ``on_start(step)`` learns the step the run starts (or resumes) at.

    The step never waits for the device: the objective's values stay there and are read at the
    end, at records, evaluations, checkpoints and progress updates (and every 1024 steps); a
    step whose objective is not finite is skipped on the device, and so is every later one,
    and the run stops at the next read naming the first bad step, with the parameters of the
    last good one. ``static=True`` says the objective evaluates the
    same tensors at every step, in one part, with no effect on the host (a full batch): on a
    GPU the step is then recorded once as a CUDA graph and replayed (unless
    ``cuda_graph=False``; see ``_GraphedStep``).

    In a ``torch.distributed`` run only rank 0 shows progress, logs and writes checkpoints
    (every process reads the checkpoint when resuming: it must be on a file system they all
    see). With ``sharded=True`` the objective returns this process's part of the objective, the
    parts of all processes summing to it (see :mod:`pbde.distributed`): the parameters start
    from rank 0's values, and each step sums the values and gradients over the processes before
    the identical optimizer step everywhere.

    A checkpoint records a fingerprint of the run: ``fingerprint`` (the caller's hash of its
    data and settings; :func:`fit` hashes the data, the loss and the batching), the module's
    kinds and parameter shapes and this loop's settings (``steps`` … ``seed``). A checkpoint
    file of a different run is refused (``ValueError`` naming the file); so is a file that is
    not a complete, consistent pbde checkpoint.
    """
    check_int("steps", steps, 1, MAX_STEPS)
    lr = check_positive_number("lr", lr)
    if optimizer not in ("adam", "adamw"):
        raise ValueError(f"'optimizer' must be 'adam' or 'adamw'. Got {optimizer!r}.")
    weight_decay = check_positive_number("weight_decay", weight_decay, allow_zero=True)
    if weight_decay and optimizer != "adamw":
        raise ValueError(
            f"'weight_decay' needs optimizer='adamw' (decoupled decay). Got weight_decay="
            f"{weight_decay!r} with optimizer={optimizer!r}."
        )
    if schedule not in ("cosine", "linear", "constant"):
        raise ValueError(f"'schedule' must be 'cosine', 'linear' or 'constant'. Got {schedule!r}.")
    check_int("warmup_steps", warmup_steps, 0)
    if warmup_steps >= steps:
        raise ValueError(
            f"'warmup_steps' must be < steps ({steps}), the warm-up being part of the run. Got "
            f"{warmup_steps}."
        )
    if max_grad_norm is not None:
        max_grad_norm = check_positive_number("max_grad_norm", max_grad_norm)
    check_int("checkpoint_every", checkpoint_every, 1)
    if isinstance(seed, bool) or not isinstance(seed, int) or not -(2**63) <= seed < 2**64:
        raise ValueError(f"'seed' must be an int in [-2**63, 2**64 - 1]. Got {seed!r}.")
    if progress is not None and not isinstance(progress, bool):
        raise TypeError(f"'progress' must be True, False or None. Got {progress!r}.")
    if checkpoint is not None:
        _check_checkpoint_path(checkpoint)
    parameters = [p for p in module.parameters() if p.requires_grad]
    if not parameters:
        raise ValueError("The model has no trainable parameters to fit.")
    autocast, scaler = _mixed_precision(precision, parameters[0].device)
    # parameters sharded by FSDP2: their gradients are averaged by FSDP, so each process's part
    # is scaled by W (the average of W·parts is their sum); the others are summed here
    fsdp = sharded and any(_distributed.is_sharded(p) for p in parameters)
    # a step that can be recorded as a CUDA graph: the optimizer must then be capturable
    graphable = (
        cuda_graph
        and static
        and precision is None
        and not sharded
        and parameters[0].device.type == "cuda"
    )
    optim = _optimizer(
        optimizer,
        parameters,
        lr,
        weight_decay,
        fused=scaler is None and not fsdp,
        capturable=graphable,
    )
    # a step whose objective is not finite is skipped on the device (the fused step reads this
    # flag, as it reads a gradient scaler's), and so is every later one: the run reads the
    # objective's values only now and then, and stops at the first bad step with the parameters
    # of the last good one. Without a fused step, each step's value is read before stepping.
    skip_on_device = bool(optim.defaults.get("fused"))
    found_inf = torch.zeros((), dtype=torch.float32, device=parameters[0].device)
    if skip_on_device:
        optim.found_inf = found_inf
    scheduler = _scheduler(optim, schedule, steps, warmup_steps)
    generator = torch.Generator().manual_seed(seed)
    history = torch.full((steps,), math.nan, dtype=torch.float64)
    learning_rates = torch.full((steps,), math.nan, dtype=torch.float64)
    start = 0
    if checkpoint is not None:
        fingerprint = _run_fingerprint(
            fingerprint,
            module,
            steps=steps,
            lr=lr,
            optimizer=optimizer,
            weight_decay=weight_decay,
            schedule=schedule,
            warmup_steps=warmup_steps,
            max_grad_norm=max_grad_norm,
            precision=precision,
            seed=seed,
        )
    if checkpoint is not None and os.path.exists(checkpoint):
        start = _load_checkpoint(
            checkpoint,
            module,
            optim,
            scheduler,
            generator,
            history,
            learning_rates,
            steps,
            fingerprint,
        )
    if on_start is not None:
        on_start(start)
    main_process = _distributed.is_main_process()
    scale = _distributed.rank_and_world_size()[1] if fsdp else 1
    replicated = [p for p in parameters if not _distributed.is_sharded(p)]
    if sharded:
        _distributed.agree_on_start(start, checkpoint)
        _distributed.broadcast_from_main_(
            [t for t in [*module.parameters(), *module.buffers()] if not _distributed.is_sharded(t)]
        )
    if progress is None:
        progress = sys.stderr.isatty()
    progress = progress and main_process
    logger = _MetricsLog(log if main_process else None, log_every, statistics)
    values = _Values(history, start, steps, checkpoint)
    validate_first = is_validation_enabled()
    learning_rate = optim.param_groups[0]
    graphed = None
    if graphable and skip_on_device:
        graphed = _GraphedStep(objective, optim, generator, found_inf, parameters, max_grad_norm)
    module.train()
    began = time.perf_counter()
    with tqdm(total=steps, initial=start, desc=description, disable=not progress) as bar:
        for step in range(start, steps):
            if graphed is not None and graphed.ready(step - start):
                lr_now = learning_rates[step] = learning_rate["lr"]
                values.append(graphed.step())
                scheduler.step()
                grad_norm = None
            else:
                warming = graphed.warming() if graphed is not None else contextlib.nullcontext()
                with warming, validation(validate_first and step == start):
                    optim.zero_grad(set_to_none=True)
                    total = None
                    parts = objective(generator)
                    parts = iter([parts] if isinstance(parts, torch.Tensor) else parts)
                    while True:
                        with autocast():
                            value = next(parts, None)
                        if value is None:
                            break
                        part = value.detach()
                        if part.dtype in (torch.float16, torch.bfloat16):
                            part = part.float()
                        total = part if total is None else total + part
                        if value.requires_grad:  # not so for an empty slice of a shard
                            value = value * scale if fsdp else value
                            (value if scaler is None else scaler.scale(value)).backward()
                    if sharded:  # every process sees the same total, so all stop together
                        total = total.clone().reshape(1)
                        _distributed.all_reduce_sum_([total])
                        total = total[0]
                    values.append(total)
                    if skip_on_device:
                        found_inf.masked_fill_(~torch.isfinite(total), 1.0)
                    else:
                        values.check()  # reads the value: a bad step stops before stepping
                    if sharded and replicated:
                        _distributed.all_reduce_gradients_(replicated)
                        if fsdp:  # these parts were scaled by W too
                            for p in replicated:
                                p.grad.div_(scale)
                    if scaler is not None:
                        scaler.unscale_(optim)
                    grad_norm = None
                    if max_grad_norm is not None:
                        grad_norm = torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
                        if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP2
                            grad_norm = grad_norm.full_tensor()
                    lr_now = learning_rates[step] = learning_rate["lr"]
                    if scaler is None:
                        optim.step()
                    else:
                        scaler.step(optim)
                        scaler.update()
                    scheduler.step()
            done = step + 1 == steps
            evaluating = evaluate is not None and (
                done or (eval_every and (step + 1) % eval_every == 0)
            )
            saving = checkpoint is not None and ((step + 1) % checkpoint_every == 0 or done)
            # the values are read (and a bad step stops the run) only here: at the end, at
            # records, evaluations and checkpoints (on every process alike), and now and then
            if done or evaluating or saving or logger.records_at(step) or values.full():
                values.check()
            logger.step(step, history, lr_now, grad_norm)
            if evaluating:
                logger.record(step + 1, evaluate())
                module.train()
            if saving and main_process:
                _save_checkpoint(
                    checkpoint,
                    module,
                    optim,
                    scheduler,
                    generator,
                    history,
                    learning_rates,
                    fingerprint,
                    step + 1,
                )
            bar.update(1)
            if progress and (step % 50 == 0 or done):
                values.read()  # shown, not checked: the checks are at the same steps everywhere
                bar.set_postfix(loss=f"{history[step]:.4f}")
    module.eval()
    return FitResult(
        module, history, learning_rates, time.perf_counter() - began, steps, logger.records
    )


def _optimizer(
    name: str, parameters: list, lr: float, weight_decay: float, *, fused: bool, capturable: bool
):
    """Adam or AdamW over ``parameters``: the fused step (one kernel per device and dtype for
    all tensors, and a step that reads a ``found_inf`` flag) where torch has one for them,
    ``capturable`` (in a CUDA graph) if asked, otherwise torch's default implementation."""
    kind = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    options = {"lr": lr} if name == "adam" else {"lr": lr, "weight_decay": weight_decay}
    if fused and _fused_supported(parameters):
        return kind(parameters, fused=True, capturable=capturable, **options)
    return kind(parameters, **options)


def _fused_supported(parameters: list) -> bool:
    from torch.optim.optimizer import _get_fused_kernels_supported_devices

    devices = _get_fused_kernels_supported_devices()
    return all(
        type(p) is nn.Parameter  # not a DTensor or another tensor subclass
        and p.is_floating_point()
        and p.device.type in devices
        for p in parameters
    )


class _GraphedStep:
    """A training step recorded once as a CUDA graph and replayed at every later step.

    For an objective that evaluates the same tensors at every step (a full batch): after
    :attr:`warmup` ordinary steps on a side stream (as recording requires), the whole step —
    objective, backward, the found-inf flag, clipping, the fused optimizer step — is recorded,
    with the optimizer reading its learning rate from a float32 device tensor that is set
    before each replay (the scheduler keeps its Python floats). A replay launches the recorded
    kernels at once, without Python work or host synchronization; its values equal the
    ordinary step's but for the learning rate's rounding to float32. Where the recording fails
    (an operation that cannot be recorded, e.g. a copy from host memory or a value read on the
    host), :attr:`failure` says why and the run goes on with ordinary steps.
    """

    #: ordinary steps before the recording (the optimizer's state and caches are created)
    warmup = 3

    def __init__(self, objective, optim, generator, found_inf, parameters, max_grad_norm):
        self.objective, self.optim, self.generator = objective, optim, generator
        self.found_inf, self.parameters, self.max_grad_norm = found_inf, parameters, max_grad_norm
        self.side = torch.cuda.Stream(device=found_inf.device)
        self.graph = self.total = None
        self.failure: str | None = None
        self._learning_rates: list[torch.Tensor] = []

    def ready(self, done: int) -> bool:
        """Whether the step is recorded, after ``done`` ordinary steps (records it then)."""
        if self.graph is None and self.failure is None and done >= self.warmup:
            self._record()
        return self.graph is not None

    def warming(self):
        """Where an ordinary step runs: on the side stream until the recording."""
        if self.graph is not None or self.failure is not None:
            return contextlib.nullcontext()
        return self._on_side_stream()

    @contextlib.contextmanager
    def _on_side_stream(self):
        self.side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.side):
            yield
        torch.cuda.current_stream().wait_stream(self.side)

    def _record(self) -> None:
        groups = self.optim.param_groups
        floats = [group["lr"] for group in groups]
        device = self.found_inf.device
        self._learning_rates = [torch.tensor(f, dtype=torch.float32, device=device) for f in floats]
        self.optim.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        try:
            for group, rate in zip(groups, self._learning_rates, strict=True):
                group["lr"] = rate
            with validation(False), torch.cuda.graph(graph):
                parts = self.objective(self.generator)
                value = parts if isinstance(parts, torch.Tensor) else next(iter(parts))
                total = value.detach()
                value.backward()
                self.found_inf.masked_fill_(~torch.isfinite(total), 1.0)
                if self.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(self.parameters, self.max_grad_norm)
                self.optim.step()
        except Exception as error:  # noqa: BLE001 - any failure to record: ordinary steps
            self.failure = f"{type(error).__name__}: {error}"
            self.optim.zero_grad(set_to_none=True)
            return
        finally:
            for group, rate in zip(groups, floats, strict=True):
                group["lr"] = rate
        self.graph, self.total = graph, total

    def step(self) -> torch.Tensor:
        """One step (a replay); returns the step's objective (a new tensor)."""
        for group, rate in zip(self.optim.param_groups, self._learning_rates, strict=True):
            rate.fill_(group["lr"])
        self.graph.replay()
        return self.total.clone()


class _Values:
    """The objective's value at each step, kept on the device and read now and then.

    ``append`` keeps a step's value (no read); ``read`` copies the values kept so far into the
    history (one device read for all of them); ``check`` reads them and raises at the first
    value that is not finite, naming its step.
    """

    #: the most values kept on the device between two reads
    window = 1024

    def __init__(self, history: torch.Tensor, start: int, steps: int, checkpoint):
        self.history, self.steps, self.checkpoint = history, steps, checkpoint
        self.kept: list[torch.Tensor] = []
        self.read_to = self.checked_to = start

    def append(self, value: torch.Tensor) -> None:
        self.kept.append(value)

    def full(self) -> bool:
        return len(self.kept) >= self.window

    def read(self) -> None:
        if not self.kept:
            return
        values = torch.stack(self.kept).to(device="cpu", dtype=torch.float64)
        self.history[self.read_to : self.read_to + values.shape[0]] = values
        self.read_to += values.shape[0]
        self.kept = []

    def check(self) -> None:
        self.read()
        if self.checked_to == self.read_to:
            return
        bad = torch.nonzero(~torch.isfinite(self.history[self.checked_to : self.read_to]))
        if bad.numel():
            step = self.checked_to + int(bad[0, 0])
            raise FloatingPointError(
                f"The objective became {float(self.history[step])} at step {step} of "
                f"{self.steps}; stopping. "
                + (
                    f"The last good checkpoint is in {self.checkpoint!s}."
                    if self.checkpoint
                    else ""
                )
            )
        self.checked_to = self.read_to


def _mixed_precision(precision, device: torch.device):
    """``(autocast context factory, gradient scaler or None)`` for ``precision``."""
    if precision is None:
        return contextlib.nullcontext, None
    if precision not in ("bf16", "fp16"):
        raise ValueError(f"'precision' must be None, 'bf16' or 'fp16'. Got {precision!r}.")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(
            f"'precision'='fp16' needs a CUDA device (float16 autocast with a gradient scaler); "
            f"the model is on {device}. Use 'bf16' there."
        )
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16

    def autocast():
        return torch.autocast(device_type=device.type, dtype=dtype)

    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    return autocast, scaler


def _scheduler(optim, schedule: str, steps: int, warmup_steps: int):
    if schedule == "cosine" and warmup_steps == 0:  # the paper's recipe, as it always ran
        return torch.optim.lr_scheduler.CosineAnnealingLR(optim, T_max=steps, eta_min=0.0)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / (steps - warmup_steps)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if schedule == "linear":
            return 1.0 - progress
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optim, factor)


class _MetricsLog:
    """The records of a run: training metrics averaged over ``every`` steps, evaluations."""

    def __init__(self, destination, every: int | None, statistics):
        self.destination, self.every, self.statistics = destination, every, statistics
        self.records: list[dict] = []
        self._count = 0  # steps since the last record
        self._norms: list[torch.Tensor] = []
        self._since = time.perf_counter()

    def records_at(self, step: int) -> bool:
        """Whether :meth:`step` makes a record at ``step`` (and so reads the losses)."""
        return self.every is not None and (step + 1) % self.every == 0

    def step(self, step: int, history: torch.Tensor, lr: float, grad_norm) -> None:
        if self.every is None:
            return
        self._count += 1
        if grad_norm is not None:
            self._norms.append(grad_norm.detach())
        if not self.records_at(step):
            return
        now = time.perf_counter()
        losses = history[step + 1 - self._count : step + 1].tolist()
        record = {"loss": sum(losses) / len(losses), "learning_rate": float(lr)}
        if self._norms:
            record["grad_norm"] = float(torch.stack(self._norms).double().mean())
        if self.statistics is not None:
            stats = self.statistics()
            tokens = stats.pop("tokens", None)
            record.update(stats)
            if tokens is not None:
                record["tokens_per_second"] = tokens / max(now - self._since, 1e-9)
        record["seconds"] = now - self._since
        self._count, self._norms, self._since = 0, [], now
        self.record(step + 1, record)

    def record(self, step: int, values: dict) -> None:
        record = {"step": step, **values}
        self.records.append(record)
        if self.destination is None:
            return
        if callable(self.destination):
            self.destination(record)
        else:
            with open(self.destination, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")


def _bind_loss(loss, loss_kwargs):
    loss_fn = _losses.get(loss)
    try:
        inspect.signature(loss_fn).bind(torch.zeros(1), torch.zeros(1), **loss_kwargs)
    except TypeError as error:
        name = getattr(loss_fn, "__name__", repr(loss_fn))
        raise TypeError(
            f"The loss {name!r} cannot take the parameters {sorted(loss_kwargs)}: {error}"
        ) from None

    name = getattr(loss_fn, "__name__", repr(loss_fn))

    def bound(logits, y):
        value = loss_fn(logits, y, **loss_kwargs)
        if not isinstance(value, torch.Tensor) or value.shape != logits.shape:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(
                f"The loss {name!r} must return one value per pair, shape "
                f"{tuple(logits.shape)} (unreduced: pbde reduces). Got {got}."
            )
        return value

    bound._pbde_bound = True
    bound.loss = loss

    return bound


def _trainable_state(module: nn.Module) -> dict:
    """The module's state without its frozen reference densities (data, not what is trained:
    a DPO reference model is never written into a checkpoint)."""
    frozen = [name + "." for name, sub in module.named_modules() if name and is_frozen(sub)]
    return {k: v for k, v in module.state_dict().items() if not k.startswith(tuple(frozen))}


def _fingerprint(prefs: Preferences, model: nn.Module, **settings) -> str:
    """A hash of the training data and of :func:`fit`'s settings that shape the run (the
    module's kinds and shapes and the optimizer's settings are added by :func:`optimize`)."""
    import hashlib

    digest = hashlib.sha256()
    for tensor in (prefs.xa, prefs.xb, prefs.y, prefs.weight, prefs.annotator_id):
        if tensor is None:
            digest.update(b"none")
            continue
        tensor = tensor.detach().contiguous().cpu()
        digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    for annotator in _annotators(model):
        digest.update(repr(annotator.behavior).encode())
    for key, value in sorted(settings.items()):
        if callable(value) and not isinstance(value, str):
            value = getattr(value, "__qualname__", type(value).__qualname__)
        digest.update(f"{key}={value!r};".encode())
    return digest.hexdigest()


def _run_fingerprint(fingerprint: str | None, module: nn.Module, **settings) -> str:
    import hashlib

    digest = hashlib.sha256((fingerprint or "").encode())
    for name, sub in module.named_modules():
        digest.update(f"{name}:{type(sub).__qualname__};".encode())
    for name, tensor in _trainable_state(module).items():
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
    for key, value in sorted(settings.items()):
        digest.update(f"{key}={value!r};".encode())
    return digest.hexdigest()


def _check_checkpoint_path(path) -> None:
    """Before any work: the checkpoint can be written where it is asked for."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"'checkpoint' must be a file path or None. Got {path!r}.")
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"'checkpoint' must be a file path. Got {path!r}, which is a directory.")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(
            f"'checkpoint' {path!r} is in a folder that does not exist ({folder!r}); create it "
            "first."
        )
    if not os.access(folder, os.W_OK):
        raise ValueError(f"'checkpoint' {path!r} cannot be written: {folder!r} is read-only.")


_START_OVER = "Delete it, or pass another 'checkpoint' path, to start a new run."


def _save_checkpoint(
    path, module, optimizer, scheduler, generator, history, learning_rates, fingerprint, step
):
    state = {
        "model": _trainable_state(module),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "generator": generator.get_state(),
        "history": history,
        "learning_rates": learning_rates,
        "step": step,
        "steps": history.shape[0],
        "fingerprint": fingerprint,
    }
    tmp = f"{os.fspath(path)}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a crash mid-save leaves the previous checkpoint intact


def _load_checkpoint(
    path, module, optimizer, scheduler, generator, history, learning_rates, steps, fingerprint
) -> int:
    where = f"The checkpoint {os.fspath(path)!r}"
    try:
        state = torch.load(path, map_location=device_of(module), weights_only=True)
    except Exception as error:  # EOFError, UnpicklingError, RuntimeError, OSError, ...
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(
            f"{where} cannot be read as a pbde checkpoint ({type(error).__name__}: {detail}). "
            f"{_START_OVER}"
        ) from None
    required = {
        "model": dict,
        "optimizer": dict,
        "scheduler": dict,
        "generator": torch.Tensor,
        "history": torch.Tensor,
        "step": int,
        "steps": int,
    }
    if not isinstance(state, dict) or any(
        not isinstance(state.get(key), kind) or isinstance(state.get(key), bool)
        for key, kind in required.items()
    ):
        raise ValueError(
            f"{where} is not a pbde checkpoint (it must be a dict with "
            f"{', '.join(repr(k) for k in required)}). {_START_OVER}"
        )
    if state.get("fingerprint") != fingerprint:
        if state.get("fingerprint") is None:
            cause = "was written by an earlier pbde that did not record its run"
        else:
            other = state["steps"]
            example = f", e.g. {other} steps, not {steps}" if other != steps else ""
            cause = f"belongs to a different run (other data, model or settings{example})"
        raise ValueError(f"{where} {cause}; it cannot be resumed here. {_START_OVER}")
    step = state["step"]
    if state["steps"] != steps or not 1 <= step <= steps:
        raise ValueError(
            f"{where} is damaged: step {step!r} of {state['steps']!r}, for a run of {steps} "
            f"steps. {_START_OVER}"
        )
    for key, target in (("history", history), ("learning_rates", learning_rates)):
        value = state.get(key)
        if not isinstance(value, torch.Tensor) or value.shape != target.shape:
            raise ValueError(
                f"{where} is damaged: its {key!r} is not a tensor of shape "
                f"{tuple(target.shape)}. {_START_OVER}"
            )
        if not bool(torch.isfinite(value[:step]).all()):
            raise ValueError(
                f"{where} is damaged: its {key!r} is not finite before step {step}. {_START_OVER}"
            )
    expected = _trainable_state(module)
    if set(state["model"]) != set(expected):
        raise ValueError(
            f"{where} holds another model's parameters ({len(state['model'])} tensors, this "
            f"model has {len(expected)}). {_START_OVER}"
        )
    for name, value in state["model"].items():
        if not isinstance(value, torch.Tensor) or value.shape != expected[name].shape:
            raise ValueError(
                f"{where} is damaged: its parameter {name!r} is not a tensor of shape "
                f"{tuple(expected[name].shape)}. {_START_OVER}"
            )
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(
                f"{where} is damaged: its parameter {name!r} is not finite. {_START_OVER}"
            )
    try:
        module.load_state_dict(state["model"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"].cpu())
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as error:
        raise ValueError(
            f"{where} is damaged ({type(error).__name__}: {str(error).splitlines()[0]}). "
            f"{_START_OVER}"
        ) from None
    history.copy_(state["history"].cpu())
    learning_rates.copy_(state["learning_rates"].cpu())
    return step
