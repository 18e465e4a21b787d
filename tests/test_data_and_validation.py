"""Preference data, pair sampling, and every argument check of the package.

The validation table lists, for each way of misusing the API, the exception type and a pattern
that the message must match: it must name the offending argument.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

import pbde
from pbde import losses
from pbde.densities import (
    Categorical,
    EnergyModel,
    FromDistribution,
    Mixture,
    Tabulated,
    TruncatedNormalMixture,
)

# -- Preferences ----------------------------------------------------------------------------


def make_prefs(n=10, ids=True) -> pbde.Preferences:
    xa = torch.arange(n)  # unique, so every comparison can be identified by its x_A
    xb = torch.arange(n).flip(0) + 100
    y = (torch.arange(n) % 3 == 0).float()
    return pbde.Preferences(xa, xb, y, torch.arange(n) % 2 if ids else None)


def test_preferences_basics():
    prefs = make_prefs()
    assert len(prefs) == 10
    assert prefs.device == torch.device("cpu")
    assert "n=10" in repr(prefs)
    labels = pbde.Preferences(torch.tensor([1, 2]), torch.tensor([0, 0]), torch.tensor([1, 0]))
    assert labels.y.dtype == torch.get_default_dtype()  # integer labels become floats
    soft = pbde.Preferences(torch.zeros(3, 2), torch.ones(3, 2), torch.tensor([0.0, 0.5, 1.0]))
    assert soft.xa.shape == (3, 2)  # vector items


@pytest.mark.parametrize("index, expected", [(0, [0]), (3, [3]), (-1, [9]), (-10, [0])])
def test_preferences_int_index(index, expected):
    prefs = make_prefs()
    part = prefs[index]
    assert isinstance(part, pbde.Preferences)
    assert part.xa.tolist() == expected
    assert part.xb.tolist() == [109 - e for e in expected]
    assert part.y.tolist() == [float(e % 3 == 0) for e in expected]
    assert part.annotator_id.tolist() == [e % 2 for e in expected]


@pytest.mark.parametrize(
    "index, expected",
    [
        (slice(2, 5), [2, 3, 4]),
        (slice(None, None, 4), [0, 4, 8]),
        (torch.tensor([7, 1, 1]), [7, 1, 1]),
        (torch.arange(10) >= 8, [8, 9]),
    ],
)
def test_preferences_slices_and_tensor_indices(index, expected):
    part = make_prefs()[index]
    assert part.xa.tolist() == expected
    assert part.xb.tolist() == [109 - e for e in expected]
    assert part.annotator_id.tolist() == [e % 2 for e in expected]


@pytest.mark.parametrize("index", [10, -11, 100])
def test_preferences_index_out_of_range(index):
    with pytest.raises(IndexError, match="out of range"):
        make_prefs()[index]


def test_preferences_iterate():
    prefs = make_prefs(4)
    items = list(prefs)
    assert [p.xa.tolist() for p in items] == [[0], [1], [2], [3]]


def test_preferences_to():
    prefs = make_prefs()
    moved = prefs.to("cpu")
    assert moved is not prefs
    for name in ("xa", "xb", "y", "annotator_id"):
        assert torch.equal(getattr(moved, name), getattr(prefs, name))
    assert make_prefs(ids=False).to(torch.device("cpu")).annotator_id is None


@pytest.mark.parametrize("n, fraction, n_test", [(10, 0.3, 3), (10, 0.5, 5), (7, 0.2, 1)])
def test_preferences_split(n, fraction, n_test):
    prefs = make_prefs(n)
    train, test = prefs.split(fraction, seed=3)
    assert (len(train), len(test)) == (n - n_test, n_test)
    a, b = set(train.xa.tolist()), set(test.xa.tolist())
    assert not a & b
    assert a | b == set(range(n))
    for part in (train, test):  # rows stay together
        assert torch.equal(part.xb, 99 + n - part.xa)
        assert torch.equal(part.annotator_id, part.xa % 2)
    again = prefs.split(fraction, seed=3)
    assert torch.equal(again[1].xa, test.xa)


def test_preferences_split_depends_on_seed():
    prefs = make_prefs(50)
    tests = {tuple(prefs.split(0.5, seed=s)[1].xa.tolist()) for s in range(4)}
    assert len(tests) > 1


def test_preferences_concat():
    a, b = make_prefs(4), make_prefs(3)
    both = pbde.Preferences.concat([a, b])
    assert len(both) == 7
    assert both.xa.tolist() == [0, 1, 2, 3, 0, 1, 2]
    assert both.annotator_id.tolist() == [0, 1, 0, 1, 0, 1, 0]
    assert torch.equal(both.y, torch.cat([a.y, b.y]))
    assert pbde.Preferences.concat([a, make_prefs(2, ids=False)]).annotator_id is None


# -- sample_pairs ---------------------------------------------------------------------------


def test_sample_pairs_from_a_density_draws_independent_items():
    probs = np.array([0.1, 0.2, 0.3, 0.4])
    density = Categorical(probs=torch.tensor(probs, dtype=torch.float32))
    n = 20000
    xa, xb = pbde.sample_pairs(density, n, generator=torch.Generator().manual_seed(0))
    assert xa.shape == xb.shape == (n,)
    assert not xa.is_floating_point()
    both = density.sample(2 * n, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.cat([xa, xb]), both)  # x_A and x_B are the two halves
    counts = np.bincount((4 * xa + xb).numpy(), minlength=16)
    result = scipy.stats.chisquare(counts, n * np.outer(probs, probs).reshape(-1))
    assert result.pvalue > 1e-3, result  # the pair is distributed as q(x_A) q(x_B)


def test_sample_pairs_from_a_continuous_density():
    density = TruncatedNormalMixture([0.0], [1.0], low=-1.0, high=1.0)
    xa, xb = pbde.sample_pairs(density, 5, generator=torch.Generator().manual_seed(0))
    assert xa.shape == xb.shape == (5,)
    assert not torch.equal(xa, xb)


def test_sample_pairs_from_a_callable():
    seen = {}

    def proposal(n, generator):
        seen["n"], seen["generator"] = n, generator
        return torch.zeros(n, 2), torch.ones(n, 2)

    generator = torch.Generator()
    xa, xb = pbde.sample_pairs(proposal, 3, generator=generator)
    assert seen == {"n": 3, "generator": generator}
    assert torch.equal(xa, torch.zeros(3, 2)) and torch.equal(xb, torch.ones(3, 2))


# -- validation table -----------------------------------------------------------------------

t = torch.tensor


def categorical():
    return Categorical(probs=t([0.2, 0.3, 0.5]))


def energy():
    torch.manual_seed(0)
    return EnergyModel(-1.0, 1.0, hidden=(4,), grid_size=65)


def tnm():
    return TruncatedNormalMixture([0.0], [1.0], low=-1.0, high=1.0)


def prefs_with(xa=(0, 1, 2), xb=(2, 0, 1), y=(1.0, 0.0, 0.5), ids=None):
    return lambda: pbde.Preferences(t(xa), t(xb), t(y), None if ids is None else t(ids))


NAN, INF = math.nan, math.inf
ERRORS = [
    # Preferences: labels, items, lengths, emptiness, annotator ids
    ("label-above-one", prefs_with(y=(1.0, 1.5, 0.0)), ValueError, r"'y' must lie in \[0, 1\]"),
    ("label-negative", prefs_with(y=(-0.1, 1.0, 0.0)), ValueError, r"'y' must lie in \[0, 1\]"),
    ("label-nan", prefs_with(y=(NAN, 1.0, 0.0)), ValueError, r"'y' must be finite"),
    ("label-inf", prefs_with(y=(1.0, INF, 0.0)), ValueError, r"'y' must be finite"),
    ("item-a-nan", prefs_with(xa=(0.0, NAN, 1.0)), ValueError, r"'xa' must be finite"),
    ("item-b-inf", prefs_with(xb=(0.0, 1.0, -INF)), ValueError, r"'xb' must be finite"),
    ("xa-xb-lengths", prefs_with(xb=(1, 2)), ValueError, r"'xa' and 'xb' must have the same"),
    ("y-length", prefs_with(y=(1.0, 0.0)), ValueError, r"'y' must have shape \(3,\)"),
    ("y-2d", prefs_with(y=((1.0,), (0.0,), (1.0,))), ValueError, r"'y' must have shape"),
    ("empty", prefs_with(xa=(), xb=(), y=()), ValueError, r"'xa' must hold at least one"),
    ("ids-float", prefs_with(ids=(0.0, 1.0, 0.0)), TypeError, r"'annotator_id' must hold int"),
    ("ids-negative", prefs_with(ids=(0, -1, 0)), ValueError, r"'annotator_id' must be >= 0"),
    ("ids-length", prefs_with(ids=(0, 1)), ValueError, r"'annotator_id' must have shape"),
    ("split-fraction", lambda: make_prefs().split(1.0), ValueError, r"'test_fraction'"),
    ("split-empty-part", lambda: make_prefs(3).split(0.1), ValueError, r"'test_fraction'"),
    ("concat-nothing", lambda: pbde.Preferences.concat([]), ValueError, r"'parts'"),
    # sample_pairs and Density.sample
    ("pairs-n-zero", lambda: pbde.sample_pairs(categorical(), 0), ValueError, r"'n' must be"),
    ("pairs-n-float", lambda: pbde.sample_pairs(categorical(), 2.0), ValueError, r"'n' must be"),
    ("pairs-proposal", lambda: pbde.sample_pairs("q", 2), TypeError, r"'proposal' must be"),
    ("sample-n", lambda: categorical().sample(0), ValueError, r"'n' must be an int >= 1"),
    # behaviors: f > 0 wherever evaluated, constants, parameters
    ("f-zero", lambda: pbde.PBDE(f=0), ValueError, r"'f' must be finite and > 0"),
    ("f-negative", lambda: pbde.PBDE(f=-1), ValueError, r"'f' must be finite and > 0"),
    ("f-inf", lambda: pbde.PBDE(f=INF), ValueError, r"'f' must be finite and > 0"),
    ("f-type", lambda: pbde.PBDE(f="1"), TypeError, r"'f' must be a number or a callable"),
    ("f-bool", lambda: pbde.PBDE(f=True), TypeError, r"'f' must be a number or a callable"),
    ("g-type", lambda: pbde.PBDE(g="0"), TypeError, r"'g' must be a number or a callable"),
    (
        "f-callable-nonpositive",
        lambda: pbde.PBDE(f=lambda x: x.float() - 1.0).f(t([0, 1, 2])),
        ValueError,
        r"'f\(x\)' must be > 0",
    ),
    (
        "f-callable-nonpositive-in-annotator",
        lambda: pbde.Annotator(categorical(), pbde.PBDE(f=lambda x: 1.0 - x.float())).logits(
            t([0]), t([2])
        ),
        ValueError,
        r"'f\(x\)' must be > 0",
    ),
    (
        "f-callable-shape",
        lambda: pbde.PBDE(f=lambda x: torch.ones(1)).f(t([0, 1])),
        ValueError,
        r"f\(x\) must return shape \(2,\)",
    ),
    (
        "g-callable-shape",
        lambda: pbde.PBDE(g=lambda x: torch.ones(3)).g(t([0, 1])),
        ValueError,
        r"g\(x\) must return shape \(2,\)",
    ),
    (
        "length-zero",
        lambda: pbde.length_normalized(lambda x: x).f(t([0, 1])),
        ValueError,
        r"'length\(x\)' must be > 0",
    ),
    ("length-type", lambda: pbde.length_normalized(3), TypeError, r"'length' must be a callable"),
    ("dpo-beta-zero", lambda: pbde.dpo(0.0, categorical()), ValueError, r"'beta' must be"),
    ("dpo-beta-negative", lambda: pbde.dpo(-1.0, categorical()), ValueError, r"'beta' must be"),
    ("dpo-beta-type", lambda: pbde.dpo("1", categorical()), TypeError, r"'beta' must be a real"),
    ("dpo-reference", lambda: pbde.dpo(1.0, "ref"), TypeError, r"'reference' must be a pbde"),
    ("geometric-alpha", lambda: pbde.geometric(0, categorical()), ValueError, r"'alpha' must be"),
    ("geometric-neg", lambda: pbde.geometric(-2, categorical()), ValueError, r"'alpha' must be"),
    # losses
    ("ipo-tau-zero", lambda: losses.ipo(t([0.0]), t([1.0]), 0.0), ValueError, r"'tau' must be"),
    ("ipo-tau-negative", lambda: losses.ipo(t([0.0]), t([1.0]), -1), ValueError, r"'tau' must"),
    ("hinge-delta", lambda: losses.hinge(t([0.0]), t([1.0]), -0.1), ValueError, r"'delta' must"),
    ("ranking-1d", lambda: losses.rrhf_ranking(t([1.0, 2.0])), ValueError, r"'scores' must"),
    ("ranking-k1", lambda: losses.rrhf_ranking(t([[1.0]])), ValueError, r"'scores' must"),
    ("loss-name", lambda: losses.get("mse"), ValueError, r"'loss' must be one of"),
    # densities: domains, item ids, tables, constructors
    ("energy-x-above", lambda: energy().log_prob(t([0.0, 1.5])), ValueError, r"'x' must lie in"),
    ("energy-x-below", lambda: energy().log_prob(t([-1.01])), ValueError, r"'x' must lie in"),
    ("energy-x-nan", lambda: energy().log_prob(t([NAN])), ValueError, r"'x' must be finite"),
    ("energy-x-shape", lambda: energy().log_prob(t([[0.0]])), ValueError, r"'x' must have shape"),
    ("energy-x-type", lambda: energy().log_prob([0.0]), TypeError, r"'x' must be a torch.Tensor"),
    ("energy-activation", lambda: EnergyModel(0, 1, activation="x"), ValueError, r"'activation'"),
    ("energy-hidden", lambda: EnergyModel(0, 1, hidden=(0,)), ValueError, r"'hidden'"),
    ("tnm-x-above", lambda: tnm().log_prob(t([1.0, 2.0])), ValueError, r"'x' must lie in"),
    ("tnm-x-below", lambda: tnm().log_prob(t([-3.0])), ValueError, r"'x' must lie in"),
    ("tnm-scale", lambda: TruncatedNormalMixture([0], [0], low=0, high=1), ValueError, r"'scale'"),
    (
        "tnm-lengths",
        lambda: TruncatedNormalMixture([0, 1], [1], low=0, high=1),
        ValueError,
        r"'loc', 'scale' and 'weights'",
    ),
    (
        "tnm-weights",
        lambda: TruncatedNormalMixture([0], [1], [-1], low=0, high=1),
        ValueError,
        r"'weights' must be > 0",
    ),
    (
        "tnm-interval",
        lambda: TruncatedNormalMixture([0], [1], low=1, high=1),
        ValueError,
        r"'low' < 'high'",
    ),
    ("tnm-loc-empty", lambda: TruncatedNormalMixture([], [], low=0, high=1), ValueError, r"'loc'"),
    ("cat-id-high", lambda: categorical().log_prob(t([0, 3])), ValueError, r"'x' must hold item"),
    ("cat-id-negative", lambda: categorical().log_prob(t([-1])), ValueError, r"'x' must hold item"),
    ("cat-id-float", lambda: categorical().log_prob(t([1.0])), TypeError, r"'x' must hold integer"),
    ("cat-none", lambda: Categorical(), ValueError, r"exactly one of 'logits', 'probs'"),
    ("cat-two", lambda: Categorical(t([0.0]), size=1), ValueError, r"exactly one of 'logits'"),
    ("cat-probs", lambda: Categorical(probs=t([0.5, 0.0])), ValueError, r"'probs' must be"),
    ("cat-probs-nan", lambda: Categorical(probs=t([NAN])), ValueError, r"'probs' must be finite"),
    ("cat-logits-2d", lambda: Categorical(torch.zeros(2, 2)), ValueError, r"'logits' must be 1-D"),
    ("cat-size", lambda: Categorical(size=0), ValueError, r"'size' must be an int >= 1"),
    (
        "tabulated-unnormalized",
        lambda: Tabulated(torch.arange(3), torch.log(t([0.2, 0.3, 0.6]))),
        ValueError,
        r"'log_density' must be normalized",
    ),
    (
        "tabulated-grid-unnormalized",
        lambda: Tabulated(pbde.Grid(0, 1, 11), torch.zeros(11) + 0.01),
        ValueError,
        r"'log_density' must be normalized",
    ),
    (
        "tabulated-shape",
        lambda: Tabulated(torch.arange(3), torch.zeros(2)),
        ValueError,
        r"'log_density' must have shape \(3,\)",
    ),
    (
        "tabulated-nan",
        lambda: Tabulated(torch.arange(2), t([0.0, NAN])),
        ValueError,
        r"'log_density' must not contain NaN",
    ),
    (
        "tabulated-not-an-item",
        lambda: Tabulated(torch.arange(2), torch.log(t([0.5, 0.5]))).log_prob(t([1, 5])),
        ValueError,
        r"'x' must hold items of the support",
    ),
    (
        "tabulated-grid-x",
        lambda: Tabulated(pbde.Grid(0, 1, 3), torch.zeros(3)).log_prob(t([1.2])),
        ValueError,
        r"'x' must lie in \[0.0, 1.0\]",
    ),
    ("support-type", lambda: Tabulated([0, 1], torch.zeros(2)), TypeError, r"'support' must be"),
    ("from-dist-type", lambda: FromDistribution("normal"), TypeError, r"'distribution' must be"),
    (
        "from-dist-batch",
        lambda: FromDistribution(torch.distributions.Normal(torch.zeros(2), 1.0)),
        ValueError,
        r"'distribution' must have batch_shape \(\)",
    ),
    (
        "from-dist-x",
        lambda: FromDistribution(torch.distributions.Beta(2.0, 2.0)).log_prob(t([0.5, 1.5])),
        ValueError,
        r"'x' must lie in the support of Beta",
    ),
    ("mixture-empty", lambda: Mixture([]), TypeError, r"'densities' must be a non-empty list"),
    ("mixture-weights", lambda: Mixture([tnm()], [0.0]), ValueError, r"'weights' must hold 1"),
    (
        "mixture-shapes",
        lambda: Mixture([tnm(), Tabulated(t([[0.0]]), t([0.0]))]),
        ValueError,
        r"event shape",
    ),
    ("mixture-x", lambda: Mixture([tnm()]).log_prob(t([2.0])), ValueError, r"'x' must lie in"),
    # supports
    ("grid-reversed", lambda: pbde.Grid(1.0, 0.0), ValueError, r"'low' < 'high'"),
    ("grid-equal", lambda: pbde.Grid(1.0, 1.0), ValueError, r"'low' < 'high'"),
    ("grid-infinite", lambda: pbde.Grid(0.0, INF), ValueError, r"'low' < 'high'"),
    ("grid-nan", lambda: pbde.Grid(NAN, 1.0), ValueError, r"'low' < 'high'"),
    ("grid-size-one", lambda: pbde.Grid(0.0, 1.0, 1), ValueError, r"'size' must be an int >= 2"),
    ("grid-size-float", lambda: pbde.Grid(0.0, 1.0, 10.0), ValueError, r"'size' must be an int"),
    ("grid-size-bool", lambda: pbde.Grid(0.0, 1.0, True), ValueError, r"'size' must be an int"),
    ("support-empty", lambda: pbde.Support(torch.zeros(0)), ValueError, r"'points' must hold"),
    ("support-scalar", lambda: pbde.Support(t(1.0)), ValueError, r"'points' must hold"),
    ("support-list", lambda: pbde.Support([1, 2]), TypeError, r"'points' must be a torch.Tensor"),
    ("support-nan", lambda: pbde.Support(t([NAN])), ValueError, r"'points' must be finite"),
    (
        "support-weights",
        lambda: pbde.Support(torch.arange(3), torch.zeros(2)),
        ValueError,
        r"'log_weights' must have shape \(3,\)",
    ),
    # annotators
    ("annotator-density", lambda: pbde.Annotator("p"), TypeError, r"'density' must be a pbde"),
    (
        "annotator-behavior",
        lambda: pbde.Annotator(categorical(), "luce"),
        TypeError,
        r"'behavior' must be a pbde.PBDE",
    ),
    (
        "annotator-pair-shapes",
        lambda: pbde.Annotator(categorical()).logits(t([0, 1]), t([2])),
        ValueError,
        r"'xa' and 'xb' must be non-empty batches of the same shape",
    ),
    (
        "annotator-xa-type",
        lambda: pbde.Annotator(categorical()).prob([0], t([2])),
        TypeError,
        r"'xa' must be a torch.Tensor",
    ),
    (
        "annotator-prefs",
        lambda: pbde.Annotator(categorical()).log_likelihood((t([0]), t([1]), t([1.0]))),
        TypeError,
        r"'prefs' must be pbde.Preferences",
    ),
    (
        "mixture-annotator-weights",
        lambda: pbde.MixtureAnnotator([pbde.Annotator(categorical())] * 2, [1.0, 0.0]),
        ValueError,
        r"'weights' must hold 2 finite values > 0",
    ),
    (
        "mixture-annotator-empty",
        lambda: pbde.MixtureAnnotator([]),
        TypeError,
        r"'annotators' must be a non-empty list",
    ),
    ("set-validation", lambda: pbde.set_validation(1), TypeError, r"'enabled' must be a bool"),
]


@pytest.mark.parametrize(
    "make, error, pattern", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS]
)
def test_validation_error(make, error, pattern):
    with pytest.raises(error, match=pattern):
        make()


# -- switching validation off ---------------------------------------------------------------

# checks that cost a pass over the data: each raises with validation on and is skipped off
DATA_CHECKS = [
    ("energy-domain", lambda: energy().log_prob(t([0.0, 1.5]))),
    ("tnm-domain", lambda: tnm().log_prob(t([2.0]))),
    (
        "tabulated-grid-domain",
        lambda: Tabulated(pbde.Grid(0, 1, 3), torch.zeros(3)).log_prob(t([1.2])),
    ),
    (
        "normal-finite",
        lambda: FromDistribution(torch.distributions.Normal(0.0, 1.0)).log_prob(t([INF])),
    ),
    ("f-positive", lambda: pbde.PBDE(f=lambda x: x.float() - 1.0).f(t([0, 1, 2]))),
    ("length-positive", lambda: pbde.length_normalized(lambda x: x - 5).f(t([0, 1]))),
    (
        "annotator-f-positive",
        lambda: pbde.Annotator(categorical(), pbde.PBDE(f=lambda x: x.float() - 1)).logits(
            t([0]), t([2])
        ),
    ),
]


@pytest.mark.parametrize("call", [c for _, c in DATA_CHECKS], ids=[i for i, _ in DATA_CHECKS])
def test_validation_context_disables_data_checks_and_restores(call):
    assert pbde.is_validation_enabled()
    with pytest.raises(ValueError):
        call()
    with pbde.validation(False):
        assert not pbde.is_validation_enabled()
        call()  # no check
    assert pbde.is_validation_enabled()
    with pytest.raises(ValueError):
        call()


def test_validation_context_restores_after_an_exception_and_nests():
    with pytest.raises(RuntimeError), pbde.validation(False):
        raise RuntimeError
    assert pbde.is_validation_enabled()
    with pbde.validation(False):
        with pbde.validation(True):
            assert pbde.is_validation_enabled()
            with pytest.raises(ValueError):
                tnm().log_prob(t([2.0]))
        assert not pbde.is_validation_enabled()
    assert pbde.is_validation_enabled()
    pbde.set_validation(False)
    with pbde.validation(True):
        pass
    assert not pbde.is_validation_enabled()  # restores the previous state, not the default


def test_validation_off_does_not_change_results():
    density, x = tnm(), torch.linspace(-1, 1, 9)
    with_checks = density.log_prob(x)
    with pbde.validation(False):
        torch.testing.assert_close(density.log_prob(x), with_checks)
    expected = scipy.stats.truncnorm(-1, 1).logpdf(x.numpy())
    np.testing.assert_allclose(with_checks.numpy(), expected, rtol=1e-6)
