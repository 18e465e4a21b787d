"""Sweeps as one model: :func:`fit_ensemble` and the stacked energy networks it trains.

A sweep (β, α, τ, δ…) fits several models to the same data with the same settings. When the
models are energy networks of one architecture they are trained as one module with stacked
weights (:class:`EnergyStack`), through the one training loop (:func:`pbde.fit.optimize`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from pbde._validation import is_validation_enabled
from pbde.annotators import Annotator, PreferenceProcess
from pbde.data import Preferences
from pbde.densities.base import Density, device_of
from pbde.densities.continuous import _check_in_interval
from pbde.densities.energy import EnergyModel, _chunked, _is_plain_mlp, _mlp, _to_input
from pbde.fit import (
    FitResult,
    _bind_loss,
    _check_regularizer,
    _PairData,
    check_data_against_model,
    fit,
    optimize,
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
    stacked weights (:class:`EnergyStack`: one optimizer step, one pass over
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
        if is_validation_enabled():
            check_data_against_model(m, data.items)
    stack = EnergyStack(densities)
    # a member that needs its normalizer every step (a regularizer on log π, a non-constant f)
    # has the whole grid evaluated anyway: it reads the items that lie on it from there
    stack.grid_members = tuple(
        i
        for i, (m, r) in enumerate(zip(models, regularizers, strict=True))
        if r is not None or m.behavior.constant_f is None
    )
    views = [Annotator(stack.member(i), m.behavior) for i, m in enumerate(models)]
    per_step: list[torch.Tensor] = []  # each step's member objectives, read at the end

    def objective(generator: torch.Generator) -> torch.Tensor:
        stack.new_step()
        part = next(data.micro_batches(data.draw(generator), 1))
        values = torch.stack(
            [
                data.objective(view, f, r, part)
                for view, f, r in zip(views, loss_fns, regularizers, strict=True)
            ]
        )
        per_step.append(values.detach())
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
    history = torch.stack(per_step).to(device="cpu", dtype=torch.float64).T
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


class EnergyStack(nn.Module):
    """K energy models of one architecture as one module with stacked weights.

    Used by :func:`pbde.fit_ensemble` to train a sweep at once. ``member(k)`` is a density
    that reads member k's energies from one evaluation of all K networks per step;
    :meth:`write_back` copies the trained weights into the original models.

    Args:
        models: :class:`EnergyModel` instances with the same domain, grid, hidden widths,
            activation, dtype and device.
    """

    def __init__(self, models: list[EnergyModel]):
        super().__init__()
        first = models[0]
        if not stackable(models):
            raise ValueError("'models' must be EnergyModels of one architecture to be stacked.")
        self.models = models  # a plain list: the originals are not parameters of the stack
        self.low, self.high, self.grid = first.low, first.high, first.grid
        self.chunk_size, self.input_range = first.chunk_size, first.input_range
        self.activation = first.energy_net[1]
        self.weights = nn.ParameterList()  # (K, in, out): h @ W + b
        self.biases = nn.ParameterList()  # (K, 1, out)
        per_model = [[m for m in model.energy_net if isinstance(m, nn.Linear)] for model in models]
        for layers in zip(*per_model, strict=True):
            weight = torch.stack([x.weight.detach().T for x in layers])
            bias = torch.stack([x.bias.detach()[None] for x in layers])
            self.weights.append(nn.Parameter(weight, layers[0].weight.requires_grad))
            self.biases.append(nn.Parameter(bias, layers[0].bias.requires_grad))
        self._memo: dict = {}
        self._indices: dict = {}
        #: the members that need their normalizer every step (a regularizer on log π, a
        #: non-constant f): they evaluate the whole grid once per step and read items on it from
        #: there; the others evaluate only the items they are given
        self.grid_members: tuple[int, ...] = ()

    def __len__(self) -> int:
        return self.weights[0].shape[0]

    def energies(self, x: torch.Tensor, members: Sequence[int] | None = None) -> torch.Tensor:
        """E_k(x) for every member, or for the ``members`` given: shape ``(K, batch)`` or
        ``(len(members), batch)``.

        On the CPU the members run one after another on each chunk of points, with the
        matrix products of a single model: batched products over K members touch K times the
        memory per chunk and were slower than K separate fits (measured at the paper's scale,
        ``benchmarks/RESULTS.md``). Elsewhere (a GPU) the K networks run as batched products.
        """
        scaled = _to_input(x, self.low, self.high, self.input_range).to(self.weights[0].dtype)
        everyone = members is None or list(members) == list(range(len(self)))
        members = range(len(self)) if members is None else members
        if scaled.device.type != "cpu":
            weights, biases = list(self.weights), list(self.biases)
            if not everyone:
                index = torch.tensor(list(members), device=scaled.device)
                weights, biases = [w[index] for w in weights], [b[index] for b in biases]
            mlp = _mlp(weights, biases, self.activation)
            return mlp(scaled[None, :, None]).squeeze(-1)
        networks = [
            _mlp([w[k] for w in self.weights], [b[k] for b in self.biases], self.activation)
            for k in members
        ]

        def forward(points: torch.Tensor) -> torch.Tensor:
            return torch.cat([mlp(points) for mlp in networks], dim=1)  # (n, members)

        return _chunked(forward, scaled[:, None], self.chunk_size, dim=0).T

    def new_step(self) -> None:
        """Forget the energies of the previous step (the parameters have changed)."""
        self._memo = {}

    def _cached(self, key: tuple, x: torch.Tensor, compute) -> torch.Tensor:
        # one entry per tensor (the pairs' items, a regularizer's samples, the grid), each held
        # so that its id is not reused within the step
        hit = self._memo.get((key, id(x)))
        if hit is None or hit[0] is not x:
            hit = self._memo[(key, id(x))] = (x, compute())
        return hit[1]

    def _groups(self, k: int) -> tuple[tuple[int, ...], bool]:
        """The members evaluated together with member ``k``, and whether they are the
        :attr:`grid_members`."""
        on_grid = tuple(sorted(self.grid_members))
        if k in on_grid:
            return on_grid, True
        return tuple(i for i in range(len(self)) if i not in on_grid), False

    def unnormalized_log_prob(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """−E_k(x); computed once per step for a given tensor ``x``, together with the members
        of ``k``'s group (the :attr:`grid_members`, or the others).

        The grid members read ``x`` from their pass over the normalizer grid if it holds only
        grid points; the others evaluate ``x`` itself, and only if one of them asks for it.
        """
        group, on_grid = self._groups(k)

        def compute():
            index = self._grid_index(x) if on_grid else None
            if index is None:
                return -self.energies(x, group)
            return self._grid_log_probs(group)[:, index.to(x.device)]

        return self._cached(("items", group), x, compute)[group.index(k)]

    def _grid_index(self, x: torch.Tensor) -> torch.Tensor | None:
        """``grid.index_of(x)``, kept across steps for the tensors seen (a full batch's items
        are the same tensor at every step): finding it reads a value from the device."""
        hit = self._indices.get(id(x))
        if hit is None or hit[0] is not x:
            if len(self._indices) >= 8:  # mini-batches: a new tensor each step
                self._indices = {}
            hit = self._indices[id(x)] = (x, self.grid.index_of(x))
        return hit[1]

    def _grid_log_probs(self, members: tuple[int, ...]) -> torch.Tensor:
        points = self.grid.points.to(self.weights[0].device)
        return self._cached(
            ("grid", members), self.grid.points, lambda: -self.energies(points, members)
        )

    def log_normalizer(self, k: int) -> torch.Tensor:
        """log Z_k; computed once per step, with the other members of ``k``'s group."""
        group, _ = self._groups(k)
        log_z = self._cached(
            ("log Z", group),
            self.grid.points,
            lambda: self.grid.log_integral(self._grid_log_probs(group)),
        )
        return log_z[group.index(k)]

    def member(self, k: int) -> _StackMember:
        """Member ``k`` as a :class:`~pbde.densities.Density` reading from the stack."""
        return _StackMember(self, k)

    @torch.no_grad()
    def write_back(self) -> None:
        """Copy the stacked weights into the original models."""
        for k, model in enumerate(self.models):
            layers = [m for m in model.energy_net if isinstance(m, nn.Linear)]
            for layer, w, b in zip(layers, self.weights, self.biases, strict=True):
                layer.weight.copy_(w[k].T)
                layer.bias.copy_(b[k, 0])


def stackable(models) -> bool:
    """Whether :class:`EnergyStack` can hold these models (same architecture, dtype, device)."""
    if not models or not all(
        isinstance(m, EnergyModel) and _is_plain_mlp(m.energy_net) for m in models
    ):
        return False

    def signature(m):
        shapes = [tuple(p.shape) for p in m.parameters()]
        kinds = [type(layer) for layer in m.energy_net]
        return (m.low, m.high, m.grid.size, shapes, kinds, m._dtype(), m._device(), m.chunk_size,
                m.input_range)  # fmt: skip

    return all(signature(m) == signature(models[0]) for m in models)


class _StackMember(Density):
    """Member k of an :class:`EnergyStack` as a density (its parameters live in the stack)."""

    def __init__(self, stack: EnergyStack, k: int):
        super().__init__()
        self.__dict__["stack"] = stack  # not a submodule: the stack is trained on its own
        self.k = k

    def _unnormalized_log_prob(self, x):
        return self.stack.unnormalized_log_prob(x, self.k)

    def _log_prob(self, x):
        return self._unnormalized_log_prob(x) - self.stack.log_normalizer(self.k)

    def _validate_items(self, x):
        super()._validate_items(x)
        _check_in_interval(x, self.stack.low, self.stack.high)

    def _param_device(self):
        return self.stack.weights[0].device
