"""Numerical robustness: huge preference logits and tiny probabilities give finite losses and
gradients, in float32 and float64, through every loss and through a few steps of pbde.fit.

Expected values are closed forms evaluated in Python floats: for |h| = 1e4 the logistic terms are
exact to the last bit (log(1 + e^-1e4) underflows to 0), so the losses are 0 or |h| and their
derivatives σ(h) − y are 0 or ±1.
"""

from __future__ import annotations

import math

import pytest
import torch

import pbde
from pbde import losses
from pbde.densities import Categorical

DTYPES = [torch.float32, torch.float64]
LOSSES = {
    "bce": {},
    "ipo": {"tau": 0.1},
    "hinge": {"delta": 1.0},
    "rrhf": {},
}
H = [1e4, -1e4, 1e4, -1e4, 0.0, 1e4]
Y = [1.0, 1.0, 0.0, 0.0, 0.5, 0.5]


def expected_loss(name, h, y, **params):
    """(loss, d loss / d h) of one pair, in Python floats, from the formulas of pbde.losses."""
    if name == "bce":

        def softplus(t):  # log(1 + e^t), exact in floats for |t| = 1e4
            return max(t, 0.0) + math.log1p(math.exp(-abs(t)))

        sigmoid = 1.0 / (1.0 + math.exp(-h)) if h > -700 else 0.0
        return y * softplus(-h) + (1 - y) * softplus(h), sigmoid - y
    if name == "ipo":
        t = 1.0 / (2.0 * params["tau"])
        return y * (h - t) ** 2 + (1 - y) * (h + t) ** 2, 2 * y * (h - t) + 2 * (1 - y) * (h + t)
    delta = params.get("delta", 0.0)
    value = y * max(0.0, delta - h) + (1 - y) * max(0.0, delta + h)
    grad = -y * (delta - h > 0) + (1 - y) * (delta + h > 0)
    return value, grad


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_losses_at_logits_of_1e4(name, dtype):
    h = torch.tensor(H, dtype=dtype, requires_grad=True)
    y = torch.tensor(Y, dtype=dtype)
    value = losses.get(name)(h, y, **LOSSES[name])
    value.sum().backward()
    assert bool(torch.isfinite(value).all()) and bool(torch.isfinite(h.grad).all())
    for i, (hi, yi) in enumerate(zip(H, Y, strict=True)):
        loss, grad = expected_loss(name, hi, yi, **LOSSES[name])
        # float32 represents these values (integers up to ~1e8 and their halves) exactly or to
        # its unit roundoff 6e-8 relative
        assert float(value[i].detach()) == pytest.approx(loss, rel=1e-6, abs=1e-6), (
            i,
            float(value[i].detach()),
        )
        assert float(h.grad[i]) == pytest.approx(grad, rel=1e-6, abs=1e-6), (i, float(h.grad[i]))


def extreme_density(dtype) -> Categorical:
    """Logits of ±1e4 and probabilities down to ~1e-30: log p = [0, -2e4, -1e4, log 1e-30 ...]."""
    tiny = math.log(1e-30)
    return Categorical(logits=torch.tensor([1e4, -1e4, 0.0, 1e4 + tiny, 1e4 + tiny], dtype=dtype))


def extreme_models(dtype):
    reference = Categorical(
        probs=torch.tensor([1e-30, 0.5, 1e-30, 0.5 - 2e-30, 1e-30], dtype=dtype)
    )
    return {
        "luce": pbde.Annotator(extreme_density(dtype)),
        "dpo": pbde.Annotator(extreme_density(dtype), pbde.dpo(0.1, reference)),
        "geometric": pbde.Annotator(extreme_density(dtype), pbde.geometric(3.0, reference)),
        "mixture": pbde.MixtureAnnotator(
            [pbde.Annotator(extreme_density(dtype)), pbde.Annotator(Categorical(size=5))],
            torch.tensor([1.0, 1e-30], dtype=dtype),
        ),
    }


def all_pairs_prefs(dtype) -> pbde.Preferences:
    xa, xb = torch.cartesian_prod(torch.arange(5), torch.arange(5)).T
    y = torch.tensor([1.0, 0.0, 0.5], dtype=dtype).repeat(9)[:25]
    return pbde.Preferences(xa, xb, y)


def test_the_extreme_density_is_what_it_says():
    """Independent check of the test inputs: p(3) ≈ 1e-30 relative to p(0), h reaches 2e4."""
    torch.set_default_dtype(torch.float64)  # Categorical keeps its logits in the default dtype
    with torch.no_grad():
        log_p = extreme_density(torch.float64).log_prob(torch.arange(5))
    assert float(log_p[3] - log_p[0]) == pytest.approx(math.log(1e-30), rel=1e-12)
    assert float(log_p[0] - log_p[1]) == pytest.approx(2e4, rel=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("model_name", ["luce", "dpo", "geometric", "mixture"])
@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_objective_and_gradients_are_finite(dtype, model_name, loss):
    torch.set_default_dtype(dtype)
    model = extreme_models(dtype)[model_name]
    prefs = all_pairs_prefs(dtype)
    h = model.logits(prefs.xa, prefs.xb)
    assert h.dtype == dtype
    # the pairs do reach huge logits (a mixture's are bounded by its weights: here ~log 1e30)
    components = model.component_logits(prefs.xa, prefs.xb) if model_name == "mixture" else h
    assert float(components.detach().abs().max()) > 1e3
    value = losses.get(loss)(h, prefs.y, **LOSSES[loss]).mean()
    value.backward()
    assert bool(torch.isfinite(value))
    for name, parameter in model.named_parameters():
        if parameter.grad is not None:
            assert bool(torch.isfinite(parameter.grad).all()), name


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("model_name", ["luce", "dpo", "geometric", "mixture"])
@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_fit_stays_finite(dtype, model_name, loss):
    torch.set_default_dtype(dtype)
    model = extreme_models(dtype)[model_name]
    result = pbde.fit(
        model, all_pairs_prefs(dtype), loss=loss, steps=5, lr=0.1, progress=False, **LOSSES[loss]
    )  # raises FloatingPointError on a non-finite objective
    assert bool(torch.isfinite(result.losses).all())
    for name, parameter in model.named_parameters():
        assert bool(torch.isfinite(parameter).all()), name
        assert parameter.dtype == dtype
