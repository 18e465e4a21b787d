"""Preference processes: how a pair (x_A, x_B) becomes a label y.

The same classes play both roles of the paper: a synthetic annotator with implicit preference
distribution p* that labels pairs, and an annotator *model* whose density π_θ is fitted by maximum
likelihood. Misspecification is the two being different processes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pbde._validation import check_tensor, is_validation_enabled, mixture_log_weights
from pbde.behavior import PBDE, luce
from pbde.data import Preferences
from pbde.densities.base import Density, check_density
from pbde.losses import bce


class PreferenceProcess(nn.Module):
    """Base class: a subclass provides ``_logits(xa, xb)``; the rest is derived here.

    ``logits(xa, xb)`` is log P(x_A ≻ x_B) − log P(x_B ≻ x_A).
    """

    def logits(self, xa: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
        """Preference logits, shape ``(n,)``, for pairs given as two batches of shape
        ``(n, *event_shape)``.

        Infinite logits are legal (a :class:`DeterministicAnnotator`'s are ±inf; an item of
        zero density loses with logit −inf); NaN never is.

        Raises:
            TypeError, ValueError: if ``xa``/``xb`` are not tensors of the same non-empty shape
                (and, while validation is on, if the density rejects the items or a logit is
                NaN).
        """
        check_tensor("xa", xa)
        check_tensor("xb", xb)
        if xa.shape != xb.shape or xa.ndim == 0 or xa.shape[0] == 0:
            raise ValueError(
                "'xa' and 'xb' must be non-empty batches of the same shape. Got "
                f"{tuple(xa.shape)} and {tuple(xb.shape)}."
            )
        logits = self._logits(xa, xb)
        if is_validation_enabled():
            _check_no_nan(logits)
        return logits

    def prob(self, xa: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
        """P(x_A ≻ x_B), shape ``(n,)``."""
        return torch.sigmoid(self.logits(xa, xb))

    def label(
        self, xa: torch.Tensor, xb: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> Preferences:
        """Sample a label for each pair: y ~ Bernoulli(P(x_A ≻ x_B)).

        Returns:
            :class:`~pbde.Preferences` holding ``xa``, ``xb`` and the sampled ``y``.
        """
        with torch.no_grad():
            probs = self.prob(xa, xb)
            _check_no_nan(probs)  # a NaN probability would become the label 0
            u = torch.rand(probs.shape, generator=generator, dtype=probs.dtype).to(probs.device)
        return Preferences(xa, xb, (u < probs).to(torch.get_default_dtype()))

    def log_likelihood(self, prefs: Preferences) -> torch.Tensor:
        """log p(y | x_A, x_B) of each comparison, shape ``(n,)`` (soft labels: the expected
        log-likelihood)."""
        if not isinstance(prefs, Preferences):
            raise TypeError(f"'prefs' must be pbde.Preferences. Got {type(prefs).__name__}.")
        return -bce(self.logits(prefs.xa, prefs.xb), prefs.y)

    def _logits(self, xa: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _indexed_logits(
        self, items: torch.Tensor, ia: torch.Tensor, ib: torch.Tensor
    ) -> torch.Tensor:
        """Logits of the pairs ``(items[ia], items[ib])``, ``items`` holding distinct items.

        What :func:`pbde.fit` calls: a subclass whose logits are differences of per-item scores
        evaluates each distinct item once, however many pairs it is in.
        """
        return self._logits(items[ia], items[ib])


def _check_no_nan(logits: torch.Tensor) -> None:
    nan = torch.isnan(logits)
    if bool(nan.any()):
        raise ValueError(
            f"The preference logits are NaN for {int(nan.sum())} of {logits.shape[0]} pairs "
            f"(e.g. pair {int(torch.nonzero(nan)[0, 0])}): the model's scores are not finite "
            "there (Ω = ±inf on both sides, or an overflow)."
        )


class Annotator(PreferenceProcess):
    """One annotator: a density and a behavior, P(x_A ≻ x_B) = σ(Ω(x_A) − Ω(x_B)) (eq. 11).

    Args:
        density: the implicit preference distribution (p* for a synthetic annotator, π_θ for a
            model).
        behavior: the :class:`~pbde.PBDE` (default :func:`pbde.luce`).

    Example:
        >>> import torch, pbde
        >>> p = pbde.densities.Categorical(probs=torch.tensor([0.2, 0.3, 0.5]))
        >>> a = pbde.Annotator(p)          # Luce / Bradley–Terry
        >>> a.prob(torch.tensor([2]), torch.tensor([0]))  # 0.5 / (0.5 + 0.2)
        tensor([0.7143], grad_fn=<SigmoidBackward0>)
    """

    def __init__(self, density: Density, behavior: PBDE | None = None):
        super().__init__()
        self.density = check_density("density", density)
        behavior = luce() if behavior is None else behavior
        if not isinstance(behavior, PBDE):
            raise TypeError(f"'behavior' must be a pbde.PBDE. Got {type(behavior).__name__}.")
        self.behavior = behavior
        # registered so that .to(device) moves them; they hold no trainable parameters
        self.references = nn.ModuleList(behavior.references)

    def __repr__(self) -> str:
        return f"Annotator(density={type(self.density).__name__}, behavior={self.behavior!r})"

    def omega(self, x: torch.Tensor) -> torch.Tensor:
        """Ω(x) = f(x)·log p(x) + g(x), shape ``(batch,)``."""
        return self.behavior.omega(self.density.log_prob(x), x)

    def _scores(self, x: torch.Tensor) -> torch.Tensor:
        """Ω(x) up to a constant shared by all items: all that pair logits need.

        With a constant f the density's normalizer only shifts every score by f·log Z, so it is
        skipped (:meth:`~pbde.densities.Density.unnormalized_log_prob`).
        """
        return self._item_terms(x)[1]

    def _item_terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log p(x), Ω(x))``, both up to the density's normalizer when f is constant (see
        :meth:`_scores`); what :func:`pbde.fit` logs as log-probabilities and rewards."""
        if self.behavior.constant_f is not None:
            log_p = self.density.unnormalized_log_prob(x)
        else:
            log_p = self.density.log_prob(x)
        return log_p, self.behavior.omega(log_p, x)

    def _logits(self, xa, xb):
        # one density evaluation for both items
        scores = self._scores(torch.cat([xa, xb]))
        return scores[: xa.shape[0]] - scores[xa.shape[0] :]

    def _indexed_logits(self, items, ia, ib):
        scores = self._scores(items)
        return scores[ia] - scores[ib]


class MixtureAnnotator(PreferenceProcess):
    """A population of annotators: each comparison is made by one annotator drawn with
    probability w_i (Dumoulin et al., eq. 25; the model of eq. 30).

    P(x_A ≻ x_B) = Σ_i w_i σ(h_i(x_A, x_B)); its logits are
    ``logsumexp_i(log w_i + log σ(h_i)) − logsumexp_i(log w_i + log σ(−h_i))``, stable for large
    margins. This is *not* an :class:`Annotator` whose density is a mixture (eq. 24,
    ``Annotator(densities.Mixture(...))``): there one annotator likes both modes; here each
    annotator likes one, and a single-annotator model fitted to their pooled labels can please
    neither.

    ``label`` records which annotator made each comparison in ``Preferences.annotator_id``.

    Args:
        annotators: the annotators (any :class:`PreferenceProcess`).
        weights: their probabilities, > 0 (normalized here); default uniform.
        learn_weights: make the weights trainable (default False).
    """

    def __init__(self, annotators, weights=None, *, learn_weights: bool = False):
        super().__init__()
        annotators = list(annotators)
        if not annotators or not all(isinstance(a, PreferenceProcess) for a in annotators):
            raise TypeError("'annotators' must be a non-empty list of pbde annotators.")
        logits = mixture_log_weights(weights, len(annotators))
        self.annotators = nn.ModuleList(annotators)
        if learn_weights:
            self.weight_logits = nn.Parameter(logits)
        else:
            self.register_buffer("weight_logits", logits)

    @property
    def weights(self) -> torch.Tensor:
        return torch.softmax(self.weight_logits, 0)

    def component_logits(self, xa: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
        """Each annotator's logits, shape ``(n, K)``."""
        return torch.stack([a.logits(xa, xb) for a in self.annotators], dim=-1)

    def combine(self, h: torch.Tensor) -> torch.Tensor:
        """Mixture logits from component logits ``h`` of shape ``(..., K)``:
        ``logit(Σ_i w_i σ(h_i))``, computed with logsumexp and logsigmoid."""
        log_w = torch.log_softmax(self.weight_logits, 0).to(h)
        return torch.logsumexp(log_w + F.logsigmoid(h), -1) - torch.logsumexp(
            log_w + F.logsigmoid(-h), -1
        )

    def _logits(self, xa, xb):
        return self.combine(self.component_logits(xa, xb))

    def _indexed_logits(self, items, ia, ib):
        h = [a._indexed_logits(items, ia, ib) for a in self.annotators]
        return self.combine(torch.stack(h, dim=-1))

    def label(self, xa, xb, *, generator=None) -> Preferences:
        """Draw an annotator for each comparison, then its label; ids go in ``annotator_id``."""
        with torch.no_grad():
            h = self.component_logits(xa, xb)
            who = torch.multinomial(
                self.weights.cpu(), h.shape[0], replacement=True, generator=generator
            )
            who = who.to(h.device)
            probs = torch.sigmoid(h.gather(1, who[:, None]).squeeze(1))
            _check_no_nan(probs)
            u = torch.rand(probs.shape, generator=generator, dtype=probs.dtype).to(probs.device)
        y = (u < probs).to(torch.get_default_dtype())
        return Preferences(xa, xb, y, annotator_id=who)


class DeterministicAnnotator(PreferenceProcess):
    """An annotator who always prefers the item with the higher score: P(x_A ≻ x_B) ∈ {0, ½, 1}.

    Azar et al. §4.2: with such preferences the Bradley–Terry rewards, and DPO's optimum, run
    off to infinity. Its logits are ``+inf`` (x_A scores higher), ``−inf`` (lower) or 0 (a tie),
    so ``label`` draws deterministic labels (ties are a fair coin) and the theory functions see
    exact 0/1 probabilities.

    Args:
        score: a callable mapping a batch of items to scores, shape ``(batch,)``; or a 1-D tensor
            of scores indexed by integer item ids.

    Example:
        >>> a = DeterministicAnnotator(torch.tensor([3.0, 1.0, 2.0]))  # ranking 0 ≻ 2 ≻ 1
        >>> a.prob(torch.tensor([0, 1, 2]), torch.tensor([2, 2, 2]))
        tensor([1.0000, 0.0000, 0.5000])
    """

    def __init__(self, score):
        super().__init__()
        if isinstance(score, torch.Tensor):
            if score.ndim != 1 or not bool(torch.isfinite(score).all()):
                raise ValueError(
                    f"'score' as a tensor must be 1-D and finite (one score per item id). Got "
                    f"shape {tuple(score.shape)}."
                )
            self.register_buffer("scores", score.detach().clone())
            self._score = None
        elif callable(score):
            self._score = score
        else:
            raise TypeError(f"'score' must be a callable of x or a 1-D tensor. Got {score!r}.")

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """The scores of a batch of items, shape ``(batch,)``."""
        if self._score is not None:
            return torch.as_tensor(self._score(x))
        if x.is_floating_point() or bool(((x < 0) | (x >= self.scores.shape[0])).any()):
            raise ValueError(
                f"'x' must hold integer item ids in [0, {self.scores.shape[0] - 1}] for a "
                "DeterministicAnnotator given a score tensor."
            )
        return self.scores.to(x.device)[x]

    def _logits(self, xa, xb):
        difference = self.score(xa) - self.score(xb)
        infinity = torch.full_like(difference, math.inf, dtype=torch.get_default_dtype())
        return torch.where(difference > 0, infinity, torch.where(difference < 0, -infinity, 0.0))
