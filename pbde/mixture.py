"""Latent-annotator mixtures on Pyro: who made each comparison is a discrete latent variable.

Crowdsourced preferences come from several annotators with different tastes. A single-annotator
model fitted to their pooled labels serves "lukewarm coffee" to everyone (Dumoulin et al. §5);
a mixture whose components are annotators recovers each taste (appendix A.4). This module fits
such mixtures, tells who is who, chooses the number of annotator types K, and says whether data
look like one annotator or several.

The model (:class:`LatentMixture`) has K components, each a :class:`pbde.Annotator` (any density
family, its own behavior), and mixture weights w with a Dirichlet(α) prior. Two latent
structures:

* ``latent="comparison"`` (no annotator IDs, eqs. 29–30): each comparison n is made by an
  annotator type z_n ~ Cat(w), so p(y_n) = Σ_k w_k p_k(y_n; x_A, x_B) — the marginal likelihood
  of :class:`pbde.MixtureAnnotator` (eq. 30).
* ``latent="annotator"`` (IDs in :attr:`pbde.Preferences.annotator_id`, types unknown): one
  z_j ~ Cat(w) per annotator j, shared by all of j's comparisons:
  p(y_j) = Σ_k w_k Π_{n ∈ j} p_k(y_n). A different likelihood: an annotator's comparisons
  together say much more about their type than any one of them.

Both are written as Pyro models (:meth:`LatentMixture.model`, :meth:`LatentMixture.guide`) whose
discrete latents are summed out exactly by enumeration (``TraceEnum_ELBO``). The weights get a
``Delta`` guide, so the ELBO is the exact log joint ``log p(y | w) + log Dir(w)`` and training
finds MAP weights (ML weights for the default α = 1); the components' parameters are point
estimates (no prior). Training minimizes ``TraceEnum_ELBO.differentiable_loss / n`` with
:func:`pbde.fit.optimize`, the one training loop of pbde.

Example:
    >>> import torch, pbde
    >>> from pbde.densities import Categorical
    >>> truth = pbde.MixtureAnnotator(
    ...     [pbde.Annotator(Categorical(probs=torch.tensor([.7, .2, .1]))),
    ...      pbde.Annotator(Categorical(probs=torch.tensor([.1, .2, .7])))], [0.5, 0.5])
    >>> xa, xb = torch.randint(0, 3, (2, 500), generator=torch.Generator().manual_seed(0))
    >>> prefs = truth.label(xa, xb, generator=torch.Generator().manual_seed(1))
    >>> model = LatentMixture.copies(pbde.Annotator(Categorical(size=3)), 2)
    >>> result = model.fit(prefs, steps=50, lr=0.05, noise=0.5, progress=False)
    >>> model.responsibilities(prefs).shape
    torch.Size([500, 2])
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.infer import TraceEnum_ELBO
from pyro.ops.indexing import Vindex
from torch import nn

from pbde._validation import check_positive_number, is_validation_enabled, mixture_log_weights
from pbde.annotators import Annotator, MixtureAnnotator, PreferenceProcess
from pbde.data import Preferences
from pbde.densities.base import Density, device_of, floating_dtype_of
from pbde.fit import FitResult, distinct_items, optimize

__all__ = [
    "LatentMixture",
    "MixtureFitResult",
    "KSelection",
    "Misspecification",
    "select_k",
    "diagnose_misspecification",
    "check_annotator_ids",
]

_LATENTS = ("comparison", "annotator")


@dataclass
class MixtureFitResult(FitResult):
    """What :meth:`LatentMixture.fit` returns: the :class:`~pbde.FitResult` of the best restart.

    Attributes:
        restart_objectives: the full-data objective (−(log p(y | w) + log Dir(w)) / n, see
            :meth:`LatentMixture.objective`) at the end of each restart.
        best_restart: index of the restart that was kept (the lowest final objective).
    """

    restart_objectives: tuple[float, ...] = ()
    best_restart: int = 0


class LatentMixture(nn.Module):
    """K annotator types, a latent type per comparison or per annotator, summed out exactly.

    Args:
        components: the K >= 1 annotator types, each a :class:`pbde.Annotator` (or any
            :class:`~pbde.annotators.PreferenceProcess`); their logits come from the
            components themselves (the annotators' own logits, each distinct item scored once
            per step as in :func:`pbde.fit`). They are trained in place by :meth:`fit`.
        latent: ``"comparison"`` — one latent type per comparison, no IDs needed (eq. 30);
            ``"annotator"`` — one latent type per annotator, shared by all of their comparisons
            (needs :attr:`pbde.Preferences.annotator_id`).
        concentration: α of the symmetric Dirichlet(α) prior on the weights, >= 1 (the MAP
            weights do not exist for α < 1: the prior density is unbounded at the simplex's
            edges). α = 1 (default) is a flat prior: maximum-likelihood weights.
        weights: initial weights, K values > 0 (normalized here); default uniform.
        learn_weights: fit the weights (default). With ``False`` they stay at ``weights``
            (``weight_logits.requires_grad`` is ``False``; set it to ``True`` to fit them
            later). The maximum-likelihood weights of near-identical components lie at a
            corner of the simplex (the copy that fits slightly better takes all the weight, and
            a component of weight 0 gets no gradient), so holding them while the components
            separate can be what lets a mixture form (see :mod:`pbde.experiments.lm_latent`).

    Raises:
        ValueError: K < 1, an unknown ``latent``, ``concentration`` < 1, or weights that are not
            K finite values > 0.
        TypeError: a component that is not a pbde annotator, or a ``learn_weights`` that is not
            a bool.
    """

    def __init__(
        self,
        components,
        *,
        latent: str = "comparison",
        concentration: float = 1.0,
        weights=None,
        learn_weights: bool = True,
    ):
        super().__init__()
        if isinstance(components, PreferenceProcess):
            raise TypeError(
                "'components' must be a list of pbde annotators (one per annotator type). Got "
                "a single annotator; use LatentMixture.copies(annotator, k) for K copies."
            )
        components = list(components)
        if not components:
            raise ValueError("'components' must hold at least one annotator (K >= 1). Got 0.")
        for i, component in enumerate(components):
            if not isinstance(component, PreferenceProcess):
                raise TypeError(
                    f"'components[{i}]' must be a pbde.Annotator (a PreferenceProcess). Got "
                    f"{type(component).__name__}."
                )
        if latent not in _LATENTS:
            raise ValueError(f"'latent' must be 'comparison' or 'annotator'. Got {latent!r}.")
        concentration = check_positive_number("concentration", concentration)
        if concentration < 1.0:
            raise ValueError(
                "'concentration' must be >= 1: with α < 1 the Dirichlet density is unbounded at "
                f"the edges of the simplex and MAP weights do not exist. Got {concentration!r}."
            )
        self.components = nn.ModuleList(components)
        self.latent = latent
        self.concentration = concentration
        if not isinstance(learn_weights, bool):
            raise TypeError(f"'learn_weights' must be a bool. Got {type(learn_weights).__name__}.")
        # the weights live in the components' dtype (float64 components, float64 weights)
        log_weights = mixture_log_weights(weights, len(components)).to(floating_dtype_of(self))
        self.weight_logits = nn.Parameter(log_weights, requires_grad=learn_weights)

    @classmethod
    def copies(
        cls,
        annotator: PreferenceProcess,
        k: int,
        *,
        latent: str = "comparison",
        concentration: float = 1.0,
        learn_weights: bool = True,
    ) -> LatentMixture:
        """K deep copies of one annotator (e.g. a model initialised at π_ref), uniform weights.

        The copies are identical: :meth:`fit` adds noise to them before training (``noise``),
        which breaks the symmetry as in Dumoulin et al., appendix A.4.

        Raises:
            ValueError: ``k`` is not an int >= 1.
            TypeError: ``annotator`` is not a pbde annotator.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"'k' (the number of components K) must be an int >= 1. Got {k!r}.")
        if not isinstance(annotator, PreferenceProcess):
            raise TypeError(
                f"'annotator' must be a pbde.Annotator. Got {type(annotator).__name__}."
            )
        return cls(
            [copy.deepcopy(annotator) for _ in range(k)],
            latent=latent,
            concentration=concentration,
            learn_weights=learn_weights,
        )

    def __repr__(self) -> str:
        return (
            f"LatentMixture(K={self.k}, latent={self.latent!r}, "
            f"concentration={self.concentration}, weights={self.weights.detach().tolist()})"
        )

    # -- the fitted quantities -------------------------------------------------------------

    @property
    def k(self) -> int:
        """The number of components K."""
        return len(self.components)

    @property
    def weights(self) -> torch.Tensor:
        """The mixture weights w, shape ``(K,)``, summing to 1."""
        return torch.softmax(self.weight_logits, 0)

    @property
    def densities(self) -> list[Density]:
        """The components' densities (each component must be a :class:`pbde.Annotator`)."""
        out = []
        for i, component in enumerate(self.components):
            if not isinstance(component, Annotator):
                raise TypeError(f"component {i} is a {type(component).__name__}: no density.")
            out.append(component.density)
        return out

    def as_annotator(self) -> MixtureAnnotator:
        """The predictive process for a new comparison by an unknown annotator:
        ``MixtureAnnotator(components, weights)`` (eq. 30), sharing the component modules and
        holding a copy of the current weights."""
        return MixtureAnnotator(list(self.components), self.weights.detach())

    def component_logits(self, xa: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
        """h_k(x_A, x_B) of each component (from its ``Annotator.logits``), shape ``(n, K)``."""
        return torch.stack([c.logits(xa, xb) for c in self.components], dim=-1)

    def prob(self, xa: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
        """Predictive P(x_A ≻ x_B) = Σ_k w_k σ(h_k(x_A, x_B)) (eq. 30), shape ``(n,)``."""
        return self.as_annotator().prob(xa, xb)

    def log_likelihood(self, prefs: Preferences) -> torch.Tensor:
        """Marginal log-likelihood of (held-out) comparisons, the latent types summed out.

        * ``latent="comparison"``: log Σ_k w_k p_k(y_n) per comparison, shape ``(n,)`` (equal to
          :meth:`pbde.MixtureAnnotator.log_likelihood` with the same components and weights).
        * ``latent="annotator"``: log Σ_k w_k Π_{n ∈ j} p_k(y_n) per annotator j of ``prefs``,
          shape ``(J,)``, rows in the order of ``prefs.annotator_id.unique()`` (sorted ids).
          Each annotator is treated as a new draw from the population (their type has prior
          w, not a posterior from training data), so held-out *annotators* are the natural
          test set.

        Raises:
            TypeError, ValueError: see :meth:`fit` (hard labels, no weights, valid IDs).
        """
        prefs = self._check_prefs(prefs)
        per_type = self._type_log_likelihood(prefs)
        return torch.logsumexp(torch.log_softmax(self.weight_logits, 0) + per_type, -1)

    def responsibilities(self, prefs: Preferences) -> torch.Tensor:
        """Posterior probabilities of the latent types given the labels ("who is who").

        Computed by Pyro (``TraceEnum_ELBO.compute_marginals``): p(z_n = k | y_n) ∝
        w_k p_k(y_n) per comparison, shape ``(n, K)``; or, with ``latent="annotator"``,
        p(z_j = k | y_j) ∝ w_k Π_{n ∈ j} p_k(y_n) per annotator, shape ``(J, K)``, rows in the
        order of ``prefs.annotator_id.unique()``.
        """
        prefs = self._check_prefs(prefs)
        with torch.no_grad(), pyro.validation_enabled(is_validation_enabled()):
            marginals = TraceEnum_ELBO(max_plate_nesting=1).compute_marginals(
                self.model, self.guide, prefs
            )
        return marginals["z"].probs.reshape(-1, self.k)

    # -- the Pyro model --------------------------------------------------------------------

    def model(self, prefs: Preferences, subsample: torch.Tensor | None = None) -> None:
        """The generative model (Pyro): w ~ Dir(α), then a type per comparison or annotator.

        ``latent="comparison"`` (eq. 29–30)::

            w ~ Dirichlet(α·1_K)
            for n in plate("comparisons"):  z_n ~ Cat(w);  y_n ~ Bernoulli(σ(h_{z_n}(x_A, x_B)))

        ``latent="annotator"``::

            w ~ Dirichlet(α·1_K)
            for j in plate("annotators"):   z_j ~ Cat(w);  y_n ~ Bernoulli(σ(h_{z_j})), n ∈ j

        z is enumerated in parallel (exact sums). The comparisons of one annotator are not a
        rectangular plate (annotators make different numbers of comparisons), so the second
        model observes them through one factor per annotator and type,
        ``Σ_{n ∈ j} log p_k(y_n)`` — the exact log-likelihood of j's labels given z_j = k,
        computed by a scatter-add instead of padding every annotator to the longest one.

        Args:
            prefs: hard-labelled comparisons (checked by :meth:`fit`; pass checked data).
            subsample: indices of the comparisons (or annotators, in the order of
                ``prefs.annotator_id.unique()``) in this mini-batch; ``None`` for all. Pyro
                scales the batch's log-likelihood by (plate size) / (batch size).
        """
        data = self._data(prefs)
        weights = pyro.sample(
            "weights", dist.Dirichlet(self.weights.new_full((self.k,), self.concentration))
        )
        enumerate_z = {"enumerate": "parallel"}
        if self.latent == "comparison":
            with pyro.plate("comparisons", len(data.y), subsample=subsample) as selected:
                h = data.component_logits(self, None if subsample is None else selected)  # (b, K)
                y = data.y if subsample is None else data.y[selected]
                z = pyro.sample("z", dist.Categorical(weights), infer=enumerate_z)
                pyro.sample("y", dist.Bernoulli(logits=Vindex(h)[..., z]), obs=y.to(h.dtype))
        else:
            with pyro.plate("annotators", data.annotators, subsample=subsample) as selected:
                if subsample is None:
                    which, position = None, data.group
                else:  # the comparisons of the selected annotators, and their rows in the batch
                    row = data.group.new_full((data.annotators,), -1)
                    row[selected] = torch.arange(selected.shape[0], device=row.device)
                    which = (row[data.group] >= 0).nonzero().squeeze(-1)
                    position = row[data.group[which]]
                per_type = data.log_likelihood_per_type(self, which)  # (m, K)
                per_annotator = per_type.new_zeros(selected.shape[0], self.k)
                per_annotator = per_annotator.index_add(0, position, per_type)  # (b, K)
                z = pyro.sample("z", dist.Categorical(weights), infer=enumerate_z)
                pyro.factor("y", Vindex(per_annotator)[..., z])

    def guide(self, prefs: Preferences, subsample: torch.Tensor | None = None) -> None:
        """The guide (Pyro): a point mass at the current weights (MAP), nothing else — the
        latent types are enumerated in the model, the components are parameters."""
        pyro.sample("weights", dist.Delta(self.weights, event_dim=1))

    def objective(self, prefs: Preferences, subsample: torch.Tensor | None = None) -> torch.Tensor:
        """The training objective: ``TraceEnum_ELBO.differentiable_loss(model, guide) / n``.

        With the Delta guide this is −(log p(y | w) + log Dir(w; α)) / n, n the number of
        comparisons in ``prefs`` (so learning rates are on the scale of :func:`pbde.fit`'s mean
        loss); a mini-batch (``subsample``) gives an unbiased estimate of it.
        """
        elbo = TraceEnum_ELBO(max_plate_nesting=1)
        with pyro.validation_enabled(is_validation_enabled()):
            if torch.is_grad_enabled():
                loss = elbo.differentiable_loss(self.model, self.guide, prefs, subsample)
            else:  # evaluation: the same value, without a graph
                loss = torch.tensor(elbo.loss(self.model, self.guide, prefs, subsample))
        return loss / len(prefs)

    # -- training --------------------------------------------------------------------------

    def fit(
        self,
        prefs: Preferences,
        *,
        steps: int = 1000,
        lr: float = 1e-3,
        batch_size: int | None = None,
        schedule: str = "cosine",
        restarts: int = 1,
        noise: float = 1e-4,
        seed: int = 0,
        progress: bool | None = None,
    ) -> MixtureFitResult:
        """Fit the components and the weights by MAP, latent types summed out exactly.

        Each restart starts from the state the mixture had when ``fit`` was called, adds
        Gaussian noise of standard deviation ``noise`` to every trainable parameter of the
        components (symmetry breaking: Dumoulin et al., appendix A.4, copy π_ref twice and add
        noise of std 1e-4), resets the weights, and minimizes :meth:`objective` with
        :func:`pbde.fit.optimize` (Adam, cosine decay). The restart with the lowest final
        full-data objective is kept.

        Args:
            prefs: comparisons with hard labels (y ∈ {0, 1}: a latent annotator makes a hard
                choice) and no per-comparison weights; with ``latent="annotator"``, annotator
                IDs.
            steps: optimization steps per restart, >= 1.
            lr: peak learning rate, > 0.
            batch_size: comparisons per step (``latent="comparison"``) or annotators per step
                (``latent="annotator"``), subsampled in the Pyro plate; ``None``: full batch.
            schedule: ``"cosine"`` or ``"constant"``.
            restarts: number of restarts, >= 1.
            noise: std of the symmetry-breaking noise, >= 0.
            seed: seeds the noise (restart r uses seed·1000 + r) and the mini-batches.
            progress: show a progress bar (default: when stderr is a terminal).

        Returns:
            :class:`MixtureFitResult` (``model`` is this mixture, trained in place).

        Raises:
            TypeError: ``prefs`` is not :class:`pbde.Preferences`, or its annotator IDs are not
                integers.
            ValueError: soft labels or weighted comparisons; missing annotator IDs or IDs of the
                wrong length with ``latent="annotator"``; bad ``steps``, ``lr``,
                ``batch_size``, ``restarts``, ``noise``.
        """
        prefs = self._check_prefs(prefs).to(device_of(self))
        if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
            raise ValueError(f"'restarts' must be an int >= 1. Got {restarts!r}.")
        noise = check_positive_number("noise", noise, allow_zero=True)
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
            raise ValueError(f"'batch_size' must be None or an int >= 1. Got {batch_size!r}.")
        data = self._data(prefs)
        units = len(prefs) if self.latent == "comparison" else data.annotators
        full_batch = batch_size is None or batch_size >= units
        initial = copy.deepcopy(self.state_dict())
        best: tuple[float, int, dict, FitResult] | None = None
        finals = []
        for restart in range(restarts):
            self.load_state_dict(initial)
            self._perturb(noise, torch.Generator().manual_seed(seed * 1000 + restart))

            def objective(generator: torch.Generator) -> torch.Tensor:
                subsample = None
                if not full_batch:
                    subsample = torch.randperm(units, generator=generator)[:batch_size]
                    subsample = subsample.to(prefs.device)
                return self.objective(prefs, subsample)

            result = optimize(
                self,
                objective,
                steps=steps,
                lr=lr,
                schedule=schedule,
                seed=seed * 1000 + restart,
                progress=progress,
                description=f"mixture K={self.k}"
                + (f" restart {restart + 1}/{restarts}" if restarts > 1 else ""),
            )
            with torch.no_grad():
                final = float(self.objective(prefs))
            finals.append(final)
            if best is None or final < best[0]:
                best = (final, restart, copy.deepcopy(self.state_dict()), result)
        _, best_restart, state, result = best
        self.load_state_dict(state)
        self.eval()
        return MixtureFitResult(
            model=self,
            losses=result.losses,
            learning_rates=result.learning_rates,
            seconds=result.seconds,
            steps=result.steps,
            restart_objectives=tuple(finals),
            best_restart=best_restart,
        )

    # -- internals -------------------------------------------------------------------------

    def _perturb(self, noise: float, generator: torch.Generator) -> None:
        if noise == 0.0:
            return
        with torch.no_grad():
            for parameter in self.components.parameters():
                if parameter.requires_grad:
                    draw = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
                    parameter.add_(noise * draw.to(parameter.device))

    def _type_log_likelihood(self, prefs: Preferences) -> torch.Tensor:
        """log-likelihood of each unit (comparison or annotator) under each type, ``(U, K)``."""
        data = self._data(prefs)
        per_comparison = data.log_likelihood_per_type(self)
        if self.latent == "comparison":
            return per_comparison
        return per_comparison.new_zeros(data.annotators, self.k).index_add(
            0, data.group, per_comparison
        )

    def _data(self, prefs: Preferences) -> _Comparisons:
        """``prefs`` as indices into its distinct items, remembered for the same tensors (a
        training run passes the same data at every step)."""
        key = (prefs.xa, prefs.xb, prefs.y, prefs.annotator_id, self.latent)
        memo = self.__dict__.get("_memo")
        if memo is not None and all(a is b for a, b in zip(memo[0], key, strict=True)):
            return memo[1]
        data = _Comparisons(prefs, per_annotator=self.latent == "annotator")
        self.__dict__["_memo"] = (key, data)  # holds the tensors: their ids are not reused
        return data

    def _check_prefs(self, prefs: Preferences) -> Preferences:
        if not isinstance(prefs, Preferences):
            raise TypeError(f"'prefs' must be pbde.Preferences. Got {type(prefs).__name__}.")
        if prefs.weight is not None:
            raise ValueError(
                "LatentMixture needs unweighted comparisons: Pyro's enumeration sums out a "
                "latent type per comparison and cannot weight them. Got 'prefs.weight'."
            )
        soft = (prefs.y != 0) & (prefs.y != 1)
        if bool(soft.any()):
            raise ValueError(
                "LatentMixture needs hard labels y in {0, 1} (a latent annotator makes a hard "
                f"choice). Got {int(soft.sum())} soft label(s), e.g. "
                f"{prefs.y[soft][0].item()!r}. For the eq. 30 likelihood with soft labels, use "
                "pbde.fit on pbde.MixtureAnnotator(..., learn_weights=True)."
            )
        if self.latent == "annotator":
            check_annotator_ids(prefs)
        return prefs


def check_annotator_ids(prefs: Preferences) -> torch.Tensor:
    """Check ``prefs.annotator_id``: present, integer, one id >= 0 per comparison.

    Raises:
        ValueError: missing, of the wrong length, or negative.
        TypeError: not an integer tensor.
    """
    ids = prefs.annotator_id
    if ids is None:
        raise ValueError(
            "latent='annotator' needs annotator IDs: 'prefs.annotator_id' is None. Give them to "
            "pbde.Preferences(..., annotator_id=...), or use latent='comparison'."
        )
    if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.is_complex():
        kind = ids.dtype if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise TypeError(f"'annotator_id' must be an integer tensor. Got {kind}.")
    if ids.dtype == torch.bool:
        raise TypeError("'annotator_id' must be an integer tensor. Got torch.bool.")
    if ids.shape != (len(prefs),):
        raise ValueError(
            f"'annotator_id' must have shape ({len(prefs)},), one id per comparison. Got "
            f"{tuple(ids.shape)}."
        )
    if bool((ids < 0).any()):
        raise ValueError(f"'annotator_id' must be >= 0. Got {int(ids.min())}.")
    return ids


def _annotator_groups(prefs: Preferences) -> tuple[torch.Tensor, int]:
    """The position of each comparison's annotator among the sorted unique ids, and their
    number J."""
    unique, group = torch.unique(prefs.annotator_id, sorted=True, return_inverse=True)
    return group, int(unique.shape[0])


class _Comparisons:
    """Checked comparisons as the Pyro model reads them: pairs as indices into their distinct
    items (as :func:`pbde.fit` does, so that each distinct item is scored once per step however
    many pairs it is in), labels, and each comparison's annotator among the sorted unique ids."""

    def __init__(self, prefs: Preferences, *, per_annotator: bool):
        self.items, self.ia, self.ib = distinct_items(prefs.xa, prefs.xb)
        self.y = prefs.y
        self.group, self.annotators = None, 0
        if per_annotator:
            self.group, self.annotators = _annotator_groups(prefs)

    def component_logits(self, mixture: LatentMixture, which=None) -> torch.Tensor:
        """h_k of the comparisons ``which`` (all if ``None``) under each component, ``(m, K)``,
        from each component's ``Annotator`` logits (``_indexed_logits``, the path of fit)."""
        items, ia, ib = self.items, self.ia, self.ib
        if which is not None:  # score only the items this batch uses
            m = which.shape[0]
            used, inverse = torch.unique(torch.cat([ia[which], ib[which]]), return_inverse=True)
            items, ia, ib = items[used], inverse[:m], inverse[m:]
        h = [c._indexed_logits(items, ia, ib) for c in mixture.components]
        return torch.stack(h, dim=-1)

    def log_likelihood_per_type(self, mixture: LatentMixture, which=None) -> torch.Tensor:
        """log p_k(y_n | x_A, x_B) of the comparisons ``which`` under each type, ``(m, K)``."""
        h = self.component_logits(mixture, which)
        y = (self.y if which is None else self.y[which]).to(h)[:, None]
        return y * F.logsigmoid(h) + (1.0 - y) * F.logsigmoid(-h)


# -- choosing K and diagnosing misspecification ---------------------------------------------


@dataclass
class KSelection:
    """What :func:`select_k` returns.

    Attributes:
        k: the chosen K: the smallest whose held-out log-likelihood is not significantly below
            the best's (by more than ``threshold`` standard errors of the paired difference).
        held_out_log_likelihood: K → held-out log-likelihood per held-out comparison (nats).
        standard_error: K → standard error of its paired difference with the best K.
        models: K → the fitted :class:`LatentMixture` (trained on the training part).
        held_out_units: how many held-out units (comparisons, or annotators with IDs) the
            paired differences average over.
        held_out_comparisons: how many held-out comparisons.
    """

    k: int
    held_out_log_likelihood: dict[int, float]
    standard_error: dict[int, float]
    models: dict[int, LatentMixture]
    held_out_units: int
    held_out_comparisons: int

    @property
    def best_k(self) -> int:
        """The K with the highest held-out log-likelihood (before the parsimony rule)."""
        return max(self.held_out_log_likelihood, key=self.held_out_log_likelihood.get)


def select_k(
    prefs: Preferences,
    make_component: PreferenceProcess | Callable[[], PreferenceProcess],
    *,
    k_max: int = 3,
    latent: str = "comparison",
    test_fraction: float = 0.2,
    threshold: float = 2.0,
    concentration: float = 1.0,
    steps: int = 1000,
    lr: float = 1e-3,
    batch_size: int | None = None,
    restarts: int = 1,
    noise: float = 1e-4,
    seed: int = 0,
    progress: bool | None = None,
) -> KSelection:
    """Choose the number of annotator types K by held-out log-likelihood, K = 1..k_max.

    Splits ``prefs`` into a training and a test part (by comparison; by annotator with
    ``latent="annotator"``, so that test annotators are new to the model), fits a
    :class:`LatentMixture` of K components for each K on the training part, and scores the
    marginal log-likelihood of the test part. The chosen K is the smallest one that is not
    significantly worse than the best: its paired per-unit difference with the best K, summed
    and divided by the number of test comparisons, is above −``threshold`` standard errors.

    Args:
        prefs: the data (hard labels; annotator IDs with ``latent="annotator"``).
        make_component: a fresh component: a callable returning a new annotator model, or an
            annotator to deep-copy (e.g. ``pbde.Annotator(pi_pre)``).
        k_max: the largest K tried, >= 1.
        latent: ``"comparison"`` or ``"annotator"`` (see :class:`LatentMixture`).
        test_fraction: held-out fraction in (0, 1).
        threshold: standard errors, >= 0, of the paired difference below the best that still
            count as "as good" (2 by default: about a one-sided 2.5% test).
        concentration: α of the weights' Dirichlet prior (:class:`LatentMixture`).
        steps: optimization steps of each fit (:meth:`LatentMixture.fit`).
        lr: peak learning rate of each fit.
        batch_size: mini-batch size of each fit (``None``: full batch).
        restarts: restarts of each fit with K >= 2 (K = 1 has no symmetry to break).
        noise: symmetry-breaking noise of each fit with K >= 2.
        seed: seeds the split and the fits.
        progress: show progress bars.

    Returns:
        :class:`KSelection`.

    Raises:
        ValueError: ``k_max`` < 1, bad ``threshold``, too few annotators to split, or any error
            of :meth:`LatentMixture.fit`.
        TypeError: ``make_component`` is neither an annotator nor a callable returning one.
    """
    if isinstance(k_max, bool) or not isinstance(k_max, int) or k_max < 1:
        raise ValueError(f"'k_max' must be an int >= 1 (K >= 1). Got {k_max!r}.")
    threshold = check_positive_number("threshold", threshold, allow_zero=True)
    if latent not in _LATENTS:
        raise ValueError(f"'latent' must be 'comparison' or 'annotator'. Got {latent!r}.")
    fresh = _component_factory(make_component)
    train, test = _split(prefs, latent, test_fraction, seed)
    per_unit: dict[int, torch.Tensor] = {}
    models: dict[int, LatentMixture] = {}
    for k in range(1, k_max + 1):
        model = LatentMixture(
            [fresh() for _ in range(k)], latent=latent, concentration=concentration
        )
        model.fit(
            train,
            steps=steps,
            lr=lr,
            batch_size=batch_size,
            restarts=restarts if k > 1 else 1,  # K = 1 has no symmetry to break
            noise=noise if k > 1 else 0.0,
            seed=seed,
            progress=progress,
        )
        with torch.no_grad():
            per_unit[k] = model.log_likelihood(test.to(device_of(model))).double().cpu()
        models[k] = model
    n_test = len(test)
    held_out = {k: float(v.sum()) / n_test for k, v in per_unit.items()}
    best = max(held_out, key=held_out.get)
    errors = {}
    for k, values in per_unit.items():
        difference = values - per_unit[best]
        units = difference.shape[0]
        spread = float(difference.std()) if units > 1 else 0.0
        errors[k] = math.sqrt(units) * spread / n_test
    chosen = min(k for k in held_out if held_out[k] - held_out[best] >= -threshold * errors[k])
    return KSelection(chosen, held_out, errors, models, per_unit[best].shape[0], n_test)


@dataclass
class Misspecification:
    """What :func:`diagnose_misspecification` returns.

    Attributes:
        verdict: ``"one"`` (one annotator explains the data as well as any mixture) or
            ``"several"`` (a mixture of annotator types predicts held-out labels better).
        k: the K chosen by :func:`select_k`.
        held_out_log_likelihood: K → held-out log-likelihood per held-out comparison (nats).
        gap: the best mixture's (K >= 2) held-out log-likelihood minus the single
            annotator's, per comparison (nats); negative when K = 1 predicts best.
        gap_standard_error: standard error of ``gap`` (of the paired per-unit difference).
        held_out_comparisons: how many held-out comparisons.
        selection: the full :class:`KSelection` (with the fitted models).
    """

    verdict: str
    k: int
    held_out_log_likelihood: dict[int, float]
    gap: float
    gap_standard_error: float
    held_out_comparisons: int
    selection: KSelection
    #: the K >= 2 of the best mixture, the one ``gap`` compares with K = 1
    mixture_k: int = 2

    @classmethod
    def from_selection(cls, selection: KSelection) -> Misspecification:
        """The diagnosis that a :func:`select_k` result implies (no refitting).

        Raises:
            TypeError: ``selection`` is not a :class:`KSelection`.
            ValueError: it did not try K = 1 and some K >= 2.
        """
        if not isinstance(selection, KSelection):
            raise TypeError(f"'selection' must be a KSelection. Got {type(selection).__name__}.")
        scores = selection.held_out_log_likelihood
        if 1 not in scores or len(scores) < 2:
            raise ValueError(
                f"'selection' must compare K = 1 with K >= 2. Got K in {sorted(scores)}."
            )
        # the best mixture (K >= 2) against K = 1; standard_error holds paired differences
        # with the best K, which is one of the two
        mixture_k = max((k for k in scores if k >= 2), key=scores.get)
        paired = 1 if selection.best_k == mixture_k else mixture_k
        return cls(
            verdict="one" if selection.k == 1 else "several",
            k=selection.k,
            held_out_log_likelihood=scores,
            gap=scores[mixture_k] - scores[1],
            gap_standard_error=selection.standard_error[paired],
            held_out_comparisons=selection.held_out_comparisons,
            selection=selection,
            mixture_k=mixture_k,
        )

    def __str__(self) -> str:
        scores = ", ".join(f"K={k}: {v:.4f}" for k, v in self.held_out_log_likelihood.items())
        if self.verdict == "several":
            chosen = (
                f"a mixture of K={self.k} annotator types"
                if self.k == self.mixture_k
                else f"K={self.k} annotator types are chosen (the best mixture, K={self.mixture_k},"
            )
            lead = (
                f"The data look like several annotators: {chosen} predicts the "
                f"{self.held_out_comparisons} held-out comparisons better than a single "
                f"annotator by {self.gap:.4f} nats per comparison (± "
                f"{self.gap_standard_error:.4f})" + ("" if self.k == self.mixture_k else ")")
            )
        else:
            lead = (
                "The data look like one annotator: no mixture predicts the "
                f"{self.held_out_comparisons} held-out comparisons significantly better than "
                f"a single annotator (best mixture's gain {self.gap:+.4f} ± "
                f"{self.gap_standard_error:.4f} nats per comparison, at K={self.mixture_k})"
            )
        return f"{lead}; held-out log-likelihood per comparison: {scores}."


def diagnose_misspecification(
    prefs: Preferences,
    make_component: PreferenceProcess | Callable[[], PreferenceProcess],
    *,
    k_max: int = 2,
    **select_k_kwargs,
) -> Misspecification:
    """Does a single-annotator model suffice, or do the data come from several annotators?

    Compares a single annotator (K = 1) with mixtures of annotator types (K = 2..k_max) on
    held-out comparisons with :func:`select_k`. One annotator whose taste is a mixture
    (eq. 24, ``Annotator(densities.Mixture(...))``) is well specified by K = 1 when the
    component family can represent its density; a population of annotators (eq. 25) is not,
    and a mixture predicts its labels better (Dumoulin et al. §5, appendix A.4).

    Args:
        prefs: the data.
        make_component: a fresh single-annotator model (callable or annotator to copy).
        k_max: the largest K tried, >= 2.
        **select_k_kwargs: passed to :func:`select_k` (``latent``, ``steps``, ``lr``, ...).

    Returns:
        :class:`Misspecification`; ``str()`` of it reads as a sentence.

    Raises:
        ValueError: ``k_max`` < 2, or any error of :func:`select_k`.
    """
    if isinstance(k_max, bool) or not isinstance(k_max, int) or k_max < 2:
        raise ValueError(f"'k_max' must be an int >= 2 (one annotator vs several). Got {k_max!r}.")
    selection = select_k(prefs, make_component, k_max=k_max, **select_k_kwargs)
    return Misspecification.from_selection(selection)


def _component_factory(make_component) -> Callable[[], PreferenceProcess]:
    if isinstance(make_component, PreferenceProcess):
        template = make_component
        return lambda: copy.deepcopy(template)
    if not callable(make_component):
        raise TypeError(
            "'make_component' must be a pbde annotator or a callable returning one. Got "
            f"{type(make_component).__name__}."
        )

    def fresh() -> PreferenceProcess:
        component = make_component()
        if not isinstance(component, PreferenceProcess):
            raise TypeError(
                f"'make_component' must return a pbde.Annotator. Got {type(component).__name__}."
            )
        return component

    return fresh


def _split(prefs: Preferences, latent: str, test_fraction: float, seed: int):
    if not isinstance(prefs, Preferences):
        raise TypeError(f"'prefs' must be pbde.Preferences. Got {type(prefs).__name__}.")
    if latent == "comparison":
        return prefs.split(test_fraction, seed=seed)
    check_annotator_ids(prefs)
    if not (isinstance(test_fraction, float) and 0.0 < test_fraction < 1.0):
        raise ValueError(f"'test_fraction' must be a float in (0, 1). Got {test_fraction!r}.")
    group, count = _annotator_groups(prefs)
    n_test = round(count * test_fraction)
    if n_test == 0 or n_test == count:
        raise ValueError(
            f"'test_fraction'={test_fraction} of {count} annotators leaves an empty part; "
            "latent='annotator' holds out whole annotators."
        )
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    is_test = torch.zeros(count, dtype=torch.bool)
    is_test[order[:n_test]] = True
    is_test = is_test.to(group.device)[group]
    return prefs[(~is_test).nonzero().squeeze(-1)], prefs[is_test.nonzero().squeeze(-1)]
