"""Per-pair losses against their formulas, written out here in plain Python (not via pbde).

Every loss is a table entry with ``ell(h)``, the loss of a pair whose first item won; the
formulas of the papers are then ``loss(h, y) = y·ell(h) + (1 − y)·ell(−h)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
import scipy.optimize
import torch

from pbde import losses


@dataclass
class LossExample:
    id: str
    fn: Callable
    ell: Callable[[float], float]  # loss when the first item won (y = 1)
    kwargs: dict = field(default_factory=dict)
    kinks: tuple[float, ...] = ()  # where ell is not differentiable


TAU, DELTA = 0.25, 0.7
LOSSES = [
    LossExample("bce", losses.bce, lambda h: math.log1p(math.exp(-h))),  # −log σ(h)
    LossExample("ipo", losses.ipo, lambda h: (h - 1 / (2 * TAU)) ** 2, {"tau": TAU}),
    LossExample("hinge", losses.hinge, lambda h: max(0.0, DELTA - h), {"delta": DELTA}, (DELTA,)),
    LossExample("hinge-default", losses.hinge, lambda h: max(0.0, 1.0 - h), {}, (1.0,)),
    LossExample("rrhf", losses.rrhf, lambda h: max(0.0, -h), {}, (0.0,)),
]
loss_ids = [e.id for e in LOSSES]

H = [-3.0, -1.2, -0.5, 0.0, 0.3, 1.1, 2.5]
Y = [0.0, 1.0, 0.5, 0.2, 1.0, 0.9, 0.0]


def hand(example: LossExample, h: float, y: float) -> float:
    return y * example.ell(h) + (1 - y) * example.ell(-h)


@pytest.mark.parametrize("example", LOSSES, ids=loss_ids)
def test_against_hand_values(example):
    got = example.fn(
        torch.tensor(H, dtype=torch.float64), torch.tensor(Y, dtype=torch.float64), **example.kwargs
    )
    assert got.shape == (len(H),)
    expected = [hand(example, h, y) for h, y in zip(H, Y, strict=True)]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-15)


def test_literal_values():
    """A few values worked out on paper."""
    t = torch.tensor
    assert float(losses.bce(t([0.0]), t([1.0]))) == pytest.approx(math.log(2))
    assert float(losses.bce(t([0.0]), t([0.3]))) == pytest.approx(math.log(2))
    assert float(losses.bce(t([math.log(3.0)]), t([1.0]))) == pytest.approx(math.log(4 / 3))
    assert float(losses.bce(t([math.log(3.0)]), t([0.0]))) == pytest.approx(math.log(4))
    assert float(losses.ipo(t([1.0]), t([1.0]), tau=0.5)) == pytest.approx(0.0)  # target 1
    assert float(losses.ipo(t([1.0]), t([0.0]), tau=0.5)) == pytest.approx(4.0)  # (1 + 1)²
    assert float(losses.ipo(t([0.0]), t([0.5]), tau=1.0)) == pytest.approx(0.25)
    assert float(losses.hinge(t([0.25]), t([1.0]))) == pytest.approx(0.75)
    assert float(losses.hinge(t([0.25]), t([0.0]))) == pytest.approx(1.25)
    assert float(losses.hinge(t([2.0]), t([1.0]), delta=0.5)) == 0.0
    assert float(losses.rrhf(t([-2.0]), t([1.0]))) == pytest.approx(2.0)
    assert float(losses.rrhf(t([-2.0]), t([0.0]))) == 0.0


@pytest.mark.parametrize("example", LOSSES, ids=loss_ids)
def test_linear_in_soft_labels(example):
    h = torch.linspace(-4, 4, 17, dtype=torch.float64)
    one, zero = torch.ones_like(h), torch.zeros_like(h)
    for y in (0.0, 0.1, 0.5, 0.77, 1.0):
        soft = example.fn(h, torch.full_like(h, y), **example.kwargs)
        mixed = y * example.fn(h, one, **example.kwargs) + (1 - y) * example.fn(
            h, zero, **example.kwargs
        )
        torch.testing.assert_close(soft, mixed, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("example", LOSSES, ids=loss_ids)
def test_swapping_the_pair_flips_the_label(example):
    h = torch.linspace(-4, 4, 17, dtype=torch.float64)
    y = torch.linspace(0, 1, 17, dtype=torch.float64)
    torch.testing.assert_close(
        example.fn(h, y, **example.kwargs), example.fn(-h, 1 - y, **example.kwargs)
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bce_does_not_overflow(dtype):
    h = torch.tensor([1e4, -1e4, 1e4, -1e4], dtype=dtype, requires_grad=True)
    y = torch.tensor([1.0, 1.0, 0.0, 0.5], dtype=dtype)
    value = losses.bce(h, y)
    # −log σ(1e4) = log(1 + e^−1e4) = 0 in floating point; −log σ(−1e4) = 1e4 (+ e^−1e4)
    torch.testing.assert_close(value, torch.tensor([0.0, 1e4, 1e4, 5e3], dtype=dtype))
    (grad,) = torch.autograd.grad(value.sum(), h)
    torch.testing.assert_close(grad, torch.tensor([0.0, -1.0, 1.0, -0.5], dtype=dtype))


@pytest.mark.parametrize("example", LOSSES, ids=loss_ids)
def test_gradcheck(example):
    h = torch.tensor([-2.3, -0.4, 0.45, 1.9], dtype=torch.float64)
    assert all(abs(abs(float(v)) - k) > 0.1 for v in h for k in example.kinks)
    y = torch.tensor([1.0, 0.3, 0.0, 0.8], dtype=torch.float64)
    h.requires_grad_(True)
    y.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda h, y: example.fn(h, y, **example.kwargs), (h, y))


@pytest.mark.parametrize("y", [0.0, 0.2, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("tau", [0.1, 0.5, 2.0])
def test_ipo_minimizer_for_soft_labels(y, tau):
    def objective(h):
        return float(
            losses.ipo(
                torch.tensor([h], dtype=torch.float64), torch.tensor([y], dtype=torch.float64), tau
            )
        )

    result = scipy.optimize.minimize_scalar(objective)
    assert result.x == pytest.approx((2 * y - 1) / (2 * tau), abs=1e-6)


@pytest.mark.parametrize("y", [0.0, 0.3, 0.5, 0.8, 1.0])
def test_bce_minimizer_for_soft_labels_is_the_logit(y):
    """The population optimum of bce is σ(h) = y (what makes PBDE estimation consistent)."""

    def objective(h):
        return float(
            losses.bce(
                torch.tensor([h], dtype=torch.float64), torch.tensor([y], dtype=torch.float64)
            )
        )

    result = scipy.optimize.minimize_scalar(objective, bounds=(-30, 30), method="bounded")
    expected = math.log(y / (1 - y)) if 0 < y < 1 else math.copysign(30, y - 0.5)
    assert result.x == pytest.approx(expected, abs=1e-4)


def test_rrhf_ranking_hand_value():
    # best first: s = (1, 3, 2): pairs (1,3) → 2, (1,2) → 1, (3,2) → 0
    scores = torch.tensor([[1.0, 3.0, 2.0], [3.0, 2.0, 1.0], [0.0, 0.0, 5.0]])
    torch.testing.assert_close(losses.rrhf_ranking(scores), torch.tensor([3.0, 0.0, 10.0]))


def test_rrhf_ranking_is_the_sum_of_pairwise_rrhf():
    scores = torch.randn(8, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    k = scores.shape[1]
    pairwise = sum(
        losses.rrhf(scores[:, i] - scores[:, j], torch.ones(8, dtype=torch.float64))
        for i in range(k)
        for j in range(i + 1, k)
    )
    torch.testing.assert_close(losses.rrhf_ranking(scores), pairwise)
    # a pair ranking is one rrhf term
    torch.testing.assert_close(
        losses.rrhf_ranking(scores[:, :2]),
        losses.rrhf(scores[:, 0] - scores[:, 1], torch.ones(8, dtype=torch.float64)),
    )


def test_get():
    assert losses.get("bce") is losses.bce
    assert losses.get("ipo") is losses.ipo
    assert losses.get("hinge") is losses.hinge
    assert losses.get("rrhf") is losses.rrhf

    def custom(logits, y):
        return logits * y

    assert losses.get(custom) is custom
