"""Bad and edge-case inputs across the public API, the readers and the CLI: each one stops with
the right exception type and a message that names the argument and the value it was given.

The tables were written by trying to break the library: every argument of a public function
given NaN, ±inf, 0, a negative number, a bool, a string, a complex number, a wrong shape; data
that are valid for the first batch but not for a later one; damaged files. A Hypothesis pass then
checks that finite inputs give finite outputs (or a clear error) for ``Preferences``, the
behaviors and the losses.
"""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pbde
from pbde import losses
from pbde.cli import main
from pbde.densities import Categorical, EnergyModel, Tabulated

NAN, INF = float("nan"), float("inf")
t = torch.tensor


def categorical(size=3):
    return Categorical(size=size)


def annotator(size=4):
    return pbde.Annotator(Categorical(size=size))


def pairs(n=8, size=4):
    xa = torch.arange(n) % size
    xb = (torch.arange(n) + 1) % size
    return pbde.Preferences(xa, xb, (torch.arange(n) < n // 2).float())  # wins both ways


def fit(**options):
    options.setdefault("steps", 2)
    options.setdefault("progress", False)
    return pbde.fit(annotator(), pairs(), **options)


# -- scalar arguments: every bad value of every numeric argument --------------------------------

# (name in messages, function of the value, which bad values apply)
POSITIVE = {
    "beta": lambda v: pbde.dpo(v, categorical()),
    "alpha": lambda v: pbde.geometric(v, categorical()),
    "tau": lambda v: losses.ipo(t([0.0]), t([1.0]), tau=v),
    "lr": lambda v: fit(lr=v),
    "f": lambda v: pbde.PBDE(f=v),
    "max_grad_norm": lambda v: fit(max_grad_norm=v),
}
NON_NEGATIVE = {
    "delta": lambda v: losses.hinge(t([0.0]), t([1.0]), delta=v),
    "weight": lambda v: pbde.nll_regularizer(t([0, 1]), weight=v),
}
NUMERIC_BAD = [  # (id, value, exception, how the value appears in the message)
    ("nan", NAN, ValueError, "nan"),
    ("inf", INF, ValueError, "inf"),
    ("-inf", -INF, ValueError, "-inf"),
    ("negative", -1.0, ValueError, "-1.0"),
    ("string", "1", TypeError, "'1'"),
    ("bool", True, TypeError, "True"),
    ("complex", 1 + 2j, TypeError, "(1+2j)"),
    ("none", None, TypeError, "None"),
    ("list", [1.0], TypeError, "[1.0]"),
]
SCALAR_CASES = [
    pytest.param(fn, name, value, error, shown, id=f"{name}-{label}")
    for table, zero_ok in ((POSITIVE, False), (NON_NEGATIVE, True))
    for name, fn in table.items()
    for label, value, error, shown in NUMERIC_BAD
    + ([] if zero_ok else [("zero", 0.0, ValueError, "0.0")])
    if not (name == "max_grad_norm" and value is None)  # None: no clipping
]


@pytest.mark.parametrize("make, name, value, error, shown", SCALAR_CASES)
def test_bad_scalar_argument(make, name, value, error, shown):
    with pytest.raises(error) as caught:
        make(value)
    message = str(caught.value)
    assert f"'{name}'" in message and shown in message, message


INT_ARGUMENTS = {
    "steps": lambda v: fit(steps=v),
    "batch_size": lambda v: fit(batch_size=v),
    "gradient_accumulation": lambda v: fit(gradient_accumulation=v),
    "warmup_steps": lambda v: fit(steps=5, warmup_steps=v),
    "checkpoint_every": lambda v: fit(checkpoint_every=v),
    "log_every": lambda v: fit(log_every=v),
    "epochs": lambda v: pbde.fit(annotator(), pairs(), epochs=v, batch_size=2, progress=False),
    "size": lambda v: Categorical(size=v),
    "n": lambda v: categorical().sample(v),
    "grid_size": lambda v: EnergyModel(0.0, 1.0, grid_size=v),
}
INT_BAD = [
    ("float", 1.5, "1.5"),
    ("bool", True, "True"),
    ("string", "3", "'3'"),
    ("negative", -2, "-2"),
    ("none-like-nan", NAN, "nan"),
]
INT_CASES = [
    pytest.param(fn, name, value, shown, id=f"{name}-{label}")
    for name, fn in INT_ARGUMENTS.items()
    for label, value, shown in INT_BAD
]


@pytest.mark.parametrize("make, name, value, shown", INT_CASES)
def test_bad_int_argument(make, name, value, shown):
    with pytest.raises((ValueError, TypeError)) as caught:
        make(value)
    message = str(caught.value)
    assert f"'{name}'" in message and shown in message, message


# -- everything else: one row per bad input -----------------------------------------------------

checkpoint_dir = "/"  # an existing directory


def separated():
    return pbde.Preferences(t([0, 1, 2]), t([1, 2, 3]), t([1.0, 1.0, 1.0]))


ERRORS = [
    # Preferences: types, shapes, values
    (
        "prefs-xa-string",
        lambda: pbde.Preferences("ab", t([0]), t([1.0])),
        TypeError,
        ["'xa'", "'ab'"],
    ),
    (
        "prefs-xa-ragged",
        lambda: pbde.Preferences([[0, 1], [2]], [[0, 1], [2]], [1.0, 1.0]),
        ValueError,
        ["'xa'", "[[0, 1], [2]]"],
    ),
    (
        "prefs-xa-complex",
        lambda: pbde.Preferences(t([0.5 + 5j]), t([0.0 + 0j]), t([1.0])),
        TypeError,
        ["'xa'", "complex"],
    ),
    (
        "prefs-y-complex",
        lambda: pbde.Preferences(t([0]), t([1]), t([1.0 + 1j])),
        TypeError,
        ["'y'", "complex"],
    ),
    (
        "prefs-weight-complex",
        lambda: pbde.Preferences(t([0]), t([1]), t([1.0]), weight=t([1j])),
        TypeError,
        ["'weight'", "complex"],
    ),
    ("prefs-y-nan", lambda: pbde.Preferences(t([0]), t([1]), t([NAN])), ValueError, ["'y'", "nan"]),
    ("prefs-y-inf", lambda: pbde.Preferences(t([0]), t([1]), t([INF])), ValueError, ["'y'", "inf"]),
    (
        "prefs-y-above-1",
        lambda: pbde.Preferences(t([0]), t([1]), t([1.5])),
        ValueError,
        ["'y'", "1.5"],
    ),
    (
        "prefs-y-below-0",
        lambda: pbde.Preferences(t([0]), t([1]), t([-0.5])),
        ValueError,
        ["'y'", "-0.5"],
    ),
    (
        "prefs-y-shape",
        lambda: pbde.Preferences(t([0, 1]), t([1, 0]), t([1.0])),
        ValueError,
        ["'y'", "(1,)"],
    ),
    (
        "prefs-y-2d",
        lambda: pbde.Preferences(t([0]), t([1]), t([[1.0]])),
        ValueError,
        ["'y'", "(1, 1)"],
    ),
    (
        "prefs-empty",
        lambda: pbde.Preferences(t([], dtype=torch.long), t([], dtype=torch.long), t([])),
        ValueError,
        ["'xa'", "(0,)"],
    ),
    ("prefs-scalar", lambda: pbde.Preferences(t(0), t(1), t([1.0])), ValueError, ["'xa'", "()"]),
    (
        "prefs-shape-mismatch",
        lambda: pbde.Preferences(t([0, 1]), t([[1, 0]]), t([1.0, 0.0])),
        ValueError,
        ["'xa'", "(1, 2)"],
    ),
    (
        "prefs-xa-nan",
        lambda: pbde.Preferences(t([NAN]), t([0.0]), t([1.0])),
        ValueError,
        ["'xa'", "nan"],
    ),
    (
        "prefs-xb-inf",
        lambda: pbde.Preferences(t([0.0]), t([-INF]), t([1.0])),
        ValueError,
        ["'xb'", "-inf"],
    ),
    (
        "prefs-id-float",
        lambda: pbde.Preferences(t([0]), t([1]), t([1.0]), annotator_id=t([0.5])),
        TypeError,
        ["'annotator_id'", "float"],
    ),
    (
        "prefs-id-bool",
        lambda: pbde.Preferences(t([0]), t([1]), t([1.0]), annotator_id=t([True])),
        TypeError,
        ["'annotator_id'", "bool"],
    ),
    (
        "prefs-id-negative",
        lambda: pbde.Preferences(t([0]), t([1]), t([1.0]), annotator_id=t([-3])),
        ValueError,
        ["'annotator_id'", "-3"],
    ),
    (
        "prefs-id-string",
        lambda: pbde.Preferences(t([0]), t([1]), t([1.0]), annotator_id="a"),
        TypeError,
        ["'annotator_id'", "'a'"],
    ),
    (
        "prefs-weight-negative",
        lambda: pbde.Preferences(t([0]), t([1]), t([1.0]), weight=t([-1.0])),
        ValueError,
        ["'weight'", "-1.0"],
    ),
    (
        "prefs-weight-all-zero",
        lambda: pbde.Preferences(t([0]), t([1]), t([1.0]), weight=t([0.0])),
        ValueError,
        ["'weight'", "0.0"],
    ),
    (
        "prefs-weight-nan",
        lambda: pbde.Preferences(t([0]), t([1]), t([1.0]), weight=t([NAN])),
        ValueError,
        ["'weight'", "nan"],
    ),
    (
        "prefs-weight-shape",
        lambda: pbde.Preferences(t([0]), t([1]), t([1.0]), weight=t([1.0, 1.0])),
        ValueError,
        ["'weight'", "(2,)"],
    ),
    ("prefs-split-1", lambda: pairs().split(1.0), ValueError, ["'test_fraction'", "1.0"]),
    ("prefs-split-int", lambda: pairs().split(0), ValueError, ["'test_fraction'", "0"]),
    ("prefs-split-tiny", lambda: pairs().split(0.01), ValueError, ["'test_fraction'", "0.01"]),
    ("prefs-index", lambda: pairs()[99], IndexError, ["99"]),
    ("prefs-concat-empty", lambda: pbde.Preferences.concat([]), ValueError, ["'parts'"]),
    # densities
    (
        "cat-probs-negative",
        lambda: Categorical(probs=t([0.5, -0.5])),
        ValueError,
        ["'probs'", "-0.5"],
    ),
    ("cat-probs-nan", lambda: Categorical(probs=t([NAN, 0.5])), ValueError, ["'probs'", "nan"]),
    ("cat-probs-list", lambda: Categorical(probs=[0.5, 0.5]), TypeError, ["'probs'", "list"]),
    ("cat-logits-inf", lambda: Categorical(t([INF, 0.0])), ValueError, ["'logits'", "inf"]),
    ("cat-logits-2d", lambda: Categorical(t([[0.0]])), ValueError, ["'logits'", "(1, 1)"]),
    (
        "cat-two-args",
        lambda: Categorical(size=2, probs=t([0.5, 0.5])),
        ValueError,
        ["'size'", "probs"],
    ),
    ("cat-id-minus-one", lambda: categorical(4).log_prob(t([-1])), ValueError, ["'x'", "-1"]),
    ("cat-id-too-large", lambda: categorical(4).log_prob(t([9])), ValueError, ["'x'", "9"]),
    ("cat-id-float", lambda: categorical(4).log_prob(t([1.0])), TypeError, ["'x'", "float32"]),
    ("cat-id-bool", lambda: categorical(4).log_prob(t([True, False])), TypeError, ["'x'", "bool"]),
    ("cat-id-complex", lambda: categorical(4).log_prob(t([1 + 0j])), TypeError, ["'x'", "complex"]),
    ("cat-id-list", lambda: categorical(4).log_prob([1]), TypeError, ["'x'", "list"]),
    ("cat-id-2d", lambda: categorical(4).log_prob(t([[1]])), ValueError, ["'x'", "(1, 1)"]),
    ("energy-low-string", lambda: EnergyModel("0", 1.0), TypeError, ["'low'", "'0'"]),
    ("energy-high-none", lambda: EnergyModel(0.0, None), TypeError, ["'high'", "None"]),
    ("energy-low-nan", lambda: EnergyModel(NAN, 1.0), ValueError, ["'low'", "nan"]),
    ("energy-inverted", lambda: EnergyModel(1.0, 0.0), ValueError, ["'high'", "0.0"]),
    (
        "energy-activation",
        lambda: EnergyModel(0.0, 1.0, activation="sigmoidal"),
        ValueError,
        ["'activation'", "'sigmoidal'"],
    ),
    ("energy-hidden", lambda: EnergyModel(0.0, 1.0, hidden=(0,)), ValueError, ["'hidden'", "(0,)"]),
    (
        "energy-outside",
        lambda: EnergyModel(0.0, 1.0, grid_size=16).log_prob(t([1.5])),
        ValueError,
        ["'x'", "1.5"],
    ),
    (
        "energy-nan-item",
        lambda: EnergyModel(0.0, 1.0, grid_size=16).log_prob(t([NAN])),
        ValueError,
        ["'x'", "nan"],
    ),
    (
        "tab-fraction",
        lambda: Tabulated(torch.arange(3), torch.full((3,), -math.log(3))).log_prob(t([1.5])),
        ValueError,
        ["'x'", "1.5"],
    ),
    (
        "tab-bool",
        lambda: Tabulated(torch.arange(3), torch.full((3,), -math.log(3))).log_prob(t([True])),
        TypeError,
        ["'x'", "bool"],
    ),
    (
        "tab-not-normalized",
        lambda: Tabulated(torch.arange(3), torch.zeros(3)),
        ValueError,
        ["'log_density'", "3.0"],
    ),
    (
        "tab-shape",
        lambda: Tabulated(torch.arange(3), torch.zeros(2)),
        ValueError,
        ["'log_density'", "(2,)"],
    ),
    (
        "tab-nan",
        lambda: Tabulated(torch.arange(2), t([NAN, 0.0])),
        ValueError,
        ["'log_density'", "NaN"],
    ),
    (
        "tab-unknown-item",
        lambda: Tabulated(torch.arange(3), torch.full((3,), -math.log(3))).log_prob(t([7])),
        ValueError,
        ["'x'", "7"],
    ),
    ("grid-low-string", lambda: pbde.Grid("0", 1.0, 8), TypeError, ["'low'", "'0'"]),
    ("grid-size-one", lambda: pbde.Grid(0.0, 1.0, 1), ValueError, ["'size'", "1"]),
    # behaviors
    ("pbde-g-nan", lambda: pbde.PBDE(g=NAN), ValueError, ["'g'", "nan"]),
    ("pbde-g-inf", lambda: pbde.PBDE(g=-INF), ValueError, ["'g'", "-inf"]),
    ("pbde-g-string", lambda: pbde.PBDE(g="0"), TypeError, ["'g'", "'0'"]),
    (
        "pbde-f-callable-inf",
        lambda: pbde.Annotator(
            categorical(), pbde.PBDE(f=lambda x: torch.full(x.shape, INF))
        ).logits(t([0]), t([1])),
        ValueError,
        ["'f(x)'", "inf"],
    ),
    (
        "pbde-g-callable-inf",
        lambda: pbde.Annotator(
            categorical(), pbde.PBDE(g=lambda x: torch.full(x.shape, INF))
        ).logits(t([0]), t([1])),
        ValueError,
        ["'g(x)'", "inf"],
    ),
    (
        "pbde-g-callable-nan",
        lambda: pbde.Annotator(
            categorical(), pbde.PBDE(g=lambda x: torch.full(x.shape, NAN))
        ).logits(t([0]), t([1])),
        ValueError,
        ["'g(x)'", "nan"],
    ),
    (
        "pbde-g-callable-shape",
        lambda: pbde.Annotator(categorical(), pbde.PBDE(g=lambda x: torch.zeros(3, 3))).logits(
            t([0]), t([1])
        ),
        ValueError,
        ["g(x)", "(3, 3)"],
    ),
    (
        "pbde-g-callable-complex",
        lambda: pbde.Annotator(
            categorical(), pbde.PBDE(g=lambda x: torch.zeros(x.shape, dtype=torch.cfloat))
        ).logits(t([0]), t([1])),
        TypeError,
        ["'g(x)'", "complex"],
    ),
    (
        "pbde-g-callable-string",
        lambda: pbde.Annotator(categorical(), pbde.PBDE(g=lambda x: "zero")).logits(t([0]), t([1])),
        TypeError,
        ["'g(x)'", "'zero'"],
    ),
    (
        "pbde-f-overflow",
        lambda: pbde.Annotator(categorical(), pbde.PBDE(f=1e300)).logits(t([0]), t([1])),
        ValueError,
        ["Ω(x)", "1e+300"],
    ),
    ("dpo-1e308", lambda: pbde.dpo(1e308, categorical()), ValueError, ["'beta'", "1e+308"]),
    (
        "geometric-1e-300",
        lambda: pbde.geometric(1e-300, categorical()),
        ValueError,
        ["'alpha'", "1e-300"],
    ),
    ("dpo-reference-type", lambda: pbde.dpo(1.0, "pi_ref"), TypeError, ["'reference'", "str"]),
    (
        "dpo-length-type",
        lambda: pbde.dpo(1.0, categorical(), length=3),
        TypeError,
        ["'length'", "3"],
    ),
    (
        "length-normalized-type",
        lambda: pbde.length_normalized(None),
        TypeError,
        ["'length'", "None"],
    ),
    (
        "length-zero",
        lambda: pbde.Annotator(
            categorical(), pbde.length_normalized(lambda x: torch.zeros(x.shape))
        ).logits(t([0]), t([1])),
        ValueError,
        ["'length(x)'", "0.0"],
    ),
    (
        "annotator-density-type",
        lambda: pbde.Annotator("categorical"),
        TypeError,
        ["'density'", "str"],
    ),
    (
        "annotator-behavior-type",
        lambda: pbde.Annotator(categorical(), "luce"),
        TypeError,
        ["'behavior'", "str"],
    ),
    (
        "annotator-logits-shapes",
        lambda: annotator().logits(t([0, 1]), t([1])),
        ValueError,
        ["'xa'", "(1,)"],
    ),
    ("annotator-logits-list", lambda: annotator().logits([0], t([1])), TypeError, ["'xa'", "list"]),
    (
        "deterministic-score-nan",
        lambda: pbde.DeterministicAnnotator(t([NAN, 1.0])),
        ValueError,
        ["'score'", "(2,)"],
    ),
    (
        "deterministic-score-type",
        lambda: pbde.DeterministicAnnotator("abc"),
        TypeError,
        ["'score'", "'abc'"],
    ),
    (
        "deterministic-id-out",
        lambda: pbde.DeterministicAnnotator(t([1.0, 2.0])).logits(t([0]), t([5])),
        ValueError,
        ["'x'", "[0, 1]"],
    ),
    (
        "mixture-weights-nan",
        lambda: pbde.MixtureAnnotator([annotator()] * 2, [NAN, 1.0]),
        ValueError,
        ["'weights'", "nan"],
    ),
    (
        "mixture-weights-count",
        lambda: pbde.MixtureAnnotator([annotator()] * 2, [1.0]),
        ValueError,
        ["'weights'", "[1.0]"],
    ),
    (
        "label-nan-logits",
        lambda: pbde.Annotator(
            categorical(), pbde.PBDE(g=lambda x: torch.full(x.shape, NAN))
        ).label(t([0]), t([1])),
        ValueError,
        ["g(x)", "nan"],
    ),
    # losses
    ("loss-name", lambda: losses.get("mse"), ValueError, ["'loss'", "'mse'"]),
    (
        "rrhf-ranking-shape",
        lambda: losses.rrhf_ranking(t([1.0, 2.0])),
        ValueError,
        ["'scores'", "(2,)"],
    ),
    (
        "rrhf-ranking-k1",
        lambda: losses.rrhf_ranking(t([[1.0]])),
        ValueError,
        ["'scores'", "(1, 1)"],
    ),
    # fit: options
    ("fit-model-type", lambda: pbde.fit("model", pairs()), TypeError, ["'model'", "str"]),
    (
        "fit-prefs-type",
        lambda: pbde.fit(annotator(), [(0, 1, 1.0)]),
        TypeError,
        ["'prefs'", "list"],
    ),
    ("fit-progress-string", lambda: fit(progress="no"), TypeError, ["'progress'", "'no'"]),
    ("fit-progress-int", lambda: fit(progress=1), TypeError, ["'progress'", "1"]),
    ("fit-steps-huge", lambda: fit(steps=10**12), ValueError, ["'steps'", "1000000000000"]),
    ("fit-seed-huge", lambda: fit(seed=10**23), ValueError, ["'seed'", "100000000000000000000000"]),
    ("fit-seed-float", lambda: fit(seed=0.5), ValueError, ["'seed'", "0.5"]),
    ("fit-schedule", lambda: fit(schedule="exp"), ValueError, ["'schedule'", "'exp'"]),
    ("fit-optimizer", lambda: fit(optimizer="sgd"), ValueError, ["'optimizer'", "'sgd'"]),
    ("fit-precision", lambda: fit(precision="fp8"), ValueError, ["'precision'", "'fp8'"]),
    ("fit-loss-name", lambda: fit(loss="mse"), ValueError, ["'loss'", "'mse'"]),
    ("fit-loss-kwarg", lambda: fit(loss="bce", tau=1.0), TypeError, ["'bce'", "tau"]),
    ("fit-loss-scalar", lambda: fit(loss=lambda h, y: h.mean()), ValueError, ["loss", "()"]),
    (
        "fit-loss-n-by-2",
        lambda: fit(loss=lambda h, y: torch.stack([h, h], 1)),
        ValueError,
        ["loss", "(8, 2)"],
    ),
    ("fit-loss-float", lambda: fit(loss=lambda h, y: 0.5), ValueError, ["loss", "float"]),
    ("fit-replacement", lambda: fit(replacement="yes"), TypeError, ["'replacement'", "'yes'"]),
    ("fit-regularizer", lambda: fit(regularizer=3), TypeError, ["'regularizer'", "3"]),
    ("fit-eval-prefs", lambda: fit(eval_prefs="x"), TypeError, ["'eval_prefs'", "str"]),
    (
        "fit-eval-every-alone",
        lambda: fit(eval_every=2),
        ValueError,
        ["'eval_every'", "'eval_prefs'"],
    ),
    ("fit-log-type", lambda: fit(log=3), TypeError, ["'log'", "3"]),
    (
        "fit-checkpoint-dir",
        lambda: fit(checkpoint=checkpoint_dir),
        ValueError,
        ["'checkpoint'", repr(checkpoint_dir)],
    ),
    (
        "fit-checkpoint-missing-folder",
        lambda: fit(checkpoint="/nonexistent-folder/x.pt"),
        ValueError,
        ["'checkpoint'", "/nonexistent-folder"],
    ),
    ("fit-checkpoint-type", lambda: fit(checkpoint=3), TypeError, ["'checkpoint'", "3"]),
    ("fit-steps-and-epochs", lambda: fit(epochs=1), ValueError, ["'steps'", "epochs=1"]),
    ("fit-device", lambda: fit(device="banana"), RuntimeError, ["banana"]),
    # fit: data against the model, in any batch
    (
        "fit-later-batch-minus-one",
        lambda: pbde.fit(
            annotator(),
            pbde.Preferences(t([0, 1, 2, 3] * 8), t([1, 2, 3, -1] * 8), torch.ones(32)),
            steps=2,
            batch_size=2,
            progress=False,
        ),
        ValueError,
        ["'x'", "-1"],
    ),
    (
        "fit-later-batch-nine",
        lambda: pbde.fit(
            annotator(),
            pbde.Preferences(t([0, 1, 2, 3] * 8), t([1, 2, 3, 9] * 8), torch.ones(32)),
            steps=2,
            batch_size=2,
            progress=False,
        ),
        ValueError,
        ["'x'", "9"],
    ),
    (
        "fit-energy-outside",
        lambda: pbde.fit(
            pbde.Annotator(EnergyModel(0.0, 1.0, grid_size=16)),
            pbde.Preferences(
                torch.linspace(0, 1, 32),
                torch.cat([torch.linspace(0, 1, 31), t([4.0])]),
                torch.ones(32),
            ),
            steps=2,
            batch_size=2,
            progress=False,
        ),
        ValueError,
        ["'x'", "4.0"],
    ),
    (
        "fit-f-negative-later",
        lambda: pbde.fit(
            pbde.Annotator(categorical(4), pbde.PBDE(f=lambda x: 1.0 - (x == 3).float() * 2)),
            pbde.Preferences(t([0, 1, 2, 3] * 8), t([1, 2, 0, 0] * 8), torch.ones(32)),
            steps=2,
            batch_size=2,
            progress=False,
        ),
        ValueError,
        ["'f(x)'", "-1.0"],
    ),
    (
        "fit-reference-later",
        lambda: pbde.fit(
            pbde.Annotator(categorical(4), pbde.dpo(1.0, categorical(3))),
            pbde.Preferences(t([0, 1, 2, 3] * 8), t([1, 2, 0, 0] * 8), torch.ones(32)),
            steps=2,
            batch_size=2,
            progress=False,
        ),
        ValueError,
        ["'x'", "3"],
    ),
    # evaluate, ensemble, regularizer
    (
        "evaluate-prefs-type",
        lambda: pbde.evaluate(annotator(), "prefs"),
        TypeError,
        ["'prefs'", "str"],
    ),
    (
        "evaluate-batch-size",
        lambda: pbde.evaluate(annotator(), pairs(), batch_size=0),
        ValueError,
        ["'batch_size'", "0"],
    ),
    (
        "evaluate-out-of-range",
        lambda: pbde.evaluate(annotator(2), pairs()),
        ValueError,
        ["'x'", "2"],
    ),
    ("ensemble-empty", lambda: pbde.fit_ensemble([], pairs()), TypeError, ["'models'"]),
    (
        "ensemble-loss-count",
        lambda: pbde.fit_ensemble([annotator(), annotator()], pairs(), loss=["bce"]),
        ValueError,
        ["'loss'", "['bce']"],
    ),
    (
        "ensemble-later-batch",
        lambda: pbde.fit_ensemble([annotator(3), annotator(3)], pairs(), steps=2, progress=False),
        ValueError,
        ["'x'", "3"],
    ),
    (
        "regularizer-samples-type",
        lambda: pbde.nll_regularizer([0, 1]),
        TypeError,
        ["'samples'", "list"],
    ),
    (
        "regularizer-samples-empty",
        lambda: pbde.nll_regularizer(torch.zeros(0)),
        ValueError,
        ["'samples'", "(0,)"],
    ),
    # theory
    (
        "optimal-hinge",
        lambda: pbde.optimal_density(
            pbde.Annotator(Categorical(probs=t([0.2, 0.8]))),
            pbde.luce(),
            torch.arange(2),
            loss="hinge",
        ),
        ValueError,
        ["'loss'", "'hinge'"],
    ),
    (
        "optimal-rrhf",
        lambda: pbde.optimal_density(
            pbde.Annotator(Categorical(probs=t([0.2, 0.8]))),
            pbde.luce(),
            torch.arange(2),
            loss="rrhf",
        ),
        ValueError,
        ["'loss'", "'rrhf'"],
    ),
    (
        "optimal-annotator-type",
        lambda: pbde.optimal_density("p", pbde.luce(), torch.arange(2)),
        TypeError,
        ["'annotator'", "str"],
    ),
    (
        "optimal-behavior-type",
        lambda: pbde.optimal_density(annotator(2), "luce", torch.arange(2)),
        TypeError,
        ["'behavior'", "str"],
    ),
    # validation switch
    ("set-validation-int", lambda: pbde.set_validation(0), TypeError, ["'enabled'", "0"]),
    (
        "validation-string",
        lambda: pbde.validation("off").__enter__(),
        TypeError,
        ["'enabled'", "'off'"],
    ),
]


@pytest.mark.parametrize("make, error, shown", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_bad_input(make, error, shown):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pbde.SeparationWarning)
        with pytest.raises(error) as caught:
            make()
    message = str(caught.value)
    for part in shown:
        assert part in message, message


# -- files: checkpoints and model files ---------------------------------------------------------


def _checkpoint_of(tmp_path, **options):
    path = tmp_path / "run.pt"
    fit(checkpoint=path, **options)
    return path


def _edited(path, edit):
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)
    return path


CHECKPOINTS = [
    ("empty", lambda p: p.write_bytes(b""), "cannot be read"),
    ("truncated", lambda p: p.write_bytes(p.read_bytes()[:200]), "cannot be read"),
    ("text", lambda p: p.write_text("not a checkpoint"), "cannot be read"),
    (
        "foreign-dict",
        lambda p: torch.save({"weights": torch.zeros(3)}, p),
        "is not a pbde checkpoint",
    ),
    ("foreign-list", lambda p: torch.save([1, 2, 3], p), "is not a pbde checkpoint"),
    ("step-crafted", lambda p: _edited(p, lambda s: s.__setitem__("step", 10**9)), "damaged"),
    ("step-zero", lambda p: _edited(p, lambda s: s.__setitem__("step", 0)), "damaged"),
    (
        "step-float",
        lambda p: _edited(p, lambda s: s.__setitem__("step", 1.5)),
        "is not a pbde checkpoint",
    ),
    ("no-fingerprint", lambda p: _edited(p, lambda s: s.pop("fingerprint")), "earlier pbde"),
    (
        "nan-parameter",
        lambda p: _edited(p, lambda s: s["model"]["density.logits"].fill_(NAN)),
        "not finite",
    ),
    (
        "wrong-shape",
        lambda p: _edited(p, lambda s: s["model"].__setitem__("density.logits", torch.zeros(7))),
        "shape",
    ),
    ("nan-history", lambda p: _edited(p, lambda s: s["history"].fill_(NAN)), "not finite"),
]


@pytest.mark.parametrize(
    "damage, expected", [c[1:] for c in CHECKPOINTS], ids=[c[0] for c in CHECKPOINTS]
)
def test_damaged_checkpoints_are_refused_with_their_path(tmp_path, damage, expected):
    path = _checkpoint_of(tmp_path)
    damage(path)
    with pytest.raises(ValueError) as caught:
        fit(checkpoint=path)
    message = str(caught.value)
    assert str(path) in message and expected in message and "start a new run" in message, message


@pytest.mark.parametrize(
    "options",
    [
        dict(lr=0.5),
        dict(steps=3),
        dict(seed=1),
        dict(batch_size=4),
        dict(loss="ipo", tau=1.0),
        dict(schedule="constant"),
        dict(other_data=True),
    ],
    ids=["lr", "steps", "seed", "batch_size", "loss", "schedule", "data"],
)
def test_a_checkpoint_of_another_run_is_refused(tmp_path, options):
    path = _checkpoint_of(tmp_path)
    options = dict(options)
    if options.pop("other_data", False):
        other = pbde.Preferences(t([0, 1]), t([1, 0]), t([1.0, 1.0]))
        with pytest.raises(ValueError, match="different run"):
            pbde.fit(annotator(), other, steps=2, checkpoint=path, progress=False)
        return
    with pytest.raises(ValueError, match="different run") as caught:
        fit(checkpoint=path, **options)
    assert str(path) in str(caught.value)


def test_the_same_run_resumes(tmp_path):
    path = _checkpoint_of(tmp_path)
    assert fit(checkpoint=path).steps == 2


def _model_file(tmp_path, model=None):
    path = tmp_path / "model.pt"
    pbde.save_model(model or annotator(), path)
    return path


MODEL_FILES = [
    ("empty", lambda p: p.write_bytes(b""), "it is empty"),
    ("truncated", lambda p: p.write_bytes(p.read_bytes()[:100]), "unreadable"),
    ("json", lambda p: p.write_text("{}"), "it is text, starting '{}'"),
    ("binary", lambda p: p.write_bytes(b"\x00\xff\x13garbage"), "starts with the bytes"),
    ("foreign", lambda p: torch.save({"a": 1}, p), "no 'format' tag"),
    ("version", lambda p: _edited(p, lambda s: s.__setitem__("version", 99)), "version 99"),
    (
        "nan",
        lambda p: _edited(p, lambda s: s["state"]["density.logits"].fill_(NAN)),
        "'density.logits'",
    ),
    (
        "inf",
        lambda p: _edited(p, lambda s: s["state"]["density.logits"].fill_(INF)),
        "'density.logits'",
    ),
    (
        "size-float",
        lambda p: _edited(p, lambda s: s["config"]["density"].__setitem__("size", 4.7)),
        "4.7",
    ),
    (
        "size-huge",
        lambda p: _edited(p, lambda s: s["config"]["density"].__setitem__("size", 2**27)),
        "134217728",
    ),
    (
        "size-string",
        lambda p: _edited(p, lambda s: s["config"]["density"].__setitem__("size", "4")),
        "'4'",
    ),
    (
        "size-negative",
        lambda p: _edited(p, lambda s: s["config"]["density"].__setitem__("size", -4)),
        "-4",
    ),
    ("kind", lambda p: _edited(p, lambda s: s["config"].__setitem__("kind", "robot")), "'robot'"),
    ("no-config", lambda p: _edited(p, lambda s: s.pop("config")), "'config'"),
    (
        "state-not-tensor",
        lambda p: _edited(p, lambda s: s["state"].__setitem__("density.logits", [0.0])),
        "'density.logits'",
    ),
    (
        "state-shape",
        lambda p: _edited(p, lambda s: s["state"].__setitem__("density.logits", torch.zeros(5))),
        "size",
    ),
    (
        "behavior",
        lambda p: _edited(
            p,
            lambda s: s["config"].__setitem__(
                "behavior",
                {"name": "dpo", "beta": NAN, "reference": {"type": "Categorical", "size": 4}},
            ),
        ),
        "'beta'",
    ),
]


@pytest.mark.parametrize(
    "damage, expected", [c[1:] for c in MODEL_FILES], ids=[c[0] for c in MODEL_FILES]
)
def test_damaged_model_files_are_refused_with_their_path(tmp_path, damage, expected):
    path = _model_file(tmp_path)
    damage(path)
    with pytest.raises(ValueError) as caught:
        pbde.load_model(path)
    message = str(caught.value)
    assert str(path) in message and expected in message, message


def test_model_file_with_a_huge_grid_is_refused_before_allocating(tmp_path):
    model = pbde.Annotator(Tabulated(pbde.Grid(0.0, 1.0, 16), torch.zeros(16)))
    path = _edited(
        _model_file(tmp_path, model),
        lambda s: s["config"]["density"]["support"]["grid"].__setitem__("size", 2**27),
    )
    with pytest.raises(ValueError, match="134217728"):
        pbde.load_model(path)
    path = _edited(_model_file(tmp_path, model), lambda s: s["state"]["density.values"].add_(1.0))
    with pytest.raises(ValueError, match="not normalized"):
        pbde.load_model(path)
    energy = pbde.Annotator(EnergyModel(0.0, 1.0, hidden=(4,), grid_size=16))
    path = _edited(
        _model_file(tmp_path, energy),
        lambda s: s["config"]["density"].__setitem__("grid_size", 2**27),
    )
    with pytest.raises(ValueError, match="'grid_size'.*134217728"):
        pbde.load_model(path)


# -- readers ------------------------------------------------------------------------------------

READER_ROWS = [
    ("y-text", {"xa": 0, "xb": 1, "y": "yes"}, "'y'"),
    ("y-above", {"xa": 0, "xb": 1, "y": 2}, "'y'"),
    ("y-nan", {"xa": 0, "xb": 1, "y": "NaN"}, "'y'"),
    ("xa-missing", {"xb": 1, "y": 1}, "xa"),
    ("weight-negative", {"xa": 0, "xb": 1, "y": 1, "weight": -1}, "weight"),
    ("id-negative", {"xa": 0, "xb": 1, "y": 1, "annotator_id": -2}, "annotator_id"),
    ("wins-negative", {"xa": 0, "xb": 1, "wins_a": -1, "wins_b": 0}, "wins_a"),
]


@pytest.mark.parametrize("row, name", [r[1:] for r in READER_ROWS], ids=[r[0] for r in READER_ROWS])
def test_bad_rows_are_refused_by_the_readers(tmp_path, row, name):
    """Each names the column and the row."""
    path = tmp_path / "data.jsonl"
    good = {"xa": 1, "xb": 0, "y": 0}
    path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(ValueError) as caught:
        pbde.io.read_preferences(path)
    message = str(caught.value)
    assert name in message and "row 2" in message, message


def test_an_unknown_column_close_to_a_known_one_is_named(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"xa": 0, "xb": 1, "yy": 1}) + "\n")
    with pytest.raises(ValueError, match="column 'yy' is not known: did you mean 'y'"):
        pbde.io.read_preferences(path)


# -- the CLI: every subcommand, many bad options, never a traceback ------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    rows = [{"xa": i % 4, "xb": (i + 1) % 4, "y": float(i % 3 != 0)} for i in range(40)]
    (folder / "prefs.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (folder / "file").write_text("x")
    (folder / "empty.pt").write_bytes(b"")
    model = annotator()
    with torch.no_grad():
        model.density.logits.fill_(NAN)
    state = {"format": "pbde-model", "version": 1, "config": {"kind": "annotator", "density": {"type": "Categorical", "size": 4}, "behavior": {"name": "luce"}, "frozen": []}, "state": {"density.logits": torch.full((4,), NAN)}}  # fmt: skip
    torch.save(state, folder / "nan.pt")
    return folder


FIT = ["fit", "{d}/prefs.jsonl", "--density", "categorical", "--items", "4", "--steps", "3", "--lr", "0.1", "--out", "{d}/out", "--no-progress"]  # fmt: skip
ENERGY = ["fit", "{d}/prefs.jsonl", "--density", "energy", "--low", "0", "--high", "5", "--steps", "3", "--lr", "0.1", "--out", "{d}/out", "--no-progress"]  # fmt: skip
CLI = [
    ("demo-device-cuda", ["demo", "--quick", "--device", "cuda:7"], "--device"),
    ("demo-device-banana", ["demo", "--quick", "--device", "banana"], "banana"),
    ("demo-out-file", ["demo", "--quick", "--out", "{d}/file"], "--out"),
    ("demo-out-under-file", ["demo", "--quick", "--out", "{d}/file/sub"], "--out"),
    ("demo-steps-zero", ["demo", "--steps", "0"], "--steps"),
    ("demo-steps-text", ["demo", "--steps", "many"], "--steps"),
    ("demo-pairs-negative", ["demo", "--pairs", "-5"], "--pairs"),
    ("demo-beta-nan", ["demo", "--beta", "nan"], "--beta"),
    ("demo-beta-zero", ["demo", "--beta", "0"], "--beta"),
    ("demo-seed-huge", ["demo", "--seed", "100000000000000000000000"], "--seed"),
    ("demo-seed-negative", ["demo", "--seed", "-1"], "--seed"),
    ("demo-grid-one", ["demo", "--grid-size", "1"], "--grid-size"),
    ("demo-unknown", ["demo", "--colour", "red"], "--colour"),
    ("fit-no-data", ["fit", "{d}/missing.jsonl", *FIT[2:]], "missing.jsonl"),
    ("fit-data-folder", ["fit", "{d}", *FIT[2:]], "DATA"),
    ("fit-out-file", [*FIT[:-3], "--out", "{d}/file", "--no-progress"], "--out"),
    ("fit-checkpoint-folder", [*FIT, "--checkpoint", "{d}"], "--checkpoint"),
    ("fit-checkpoint-missing-folder", [*FIT, "--checkpoint", "{d}/nowhere/c.pt"], "--checkpoint"),
    ("fit-checkpoint-empty", [*FIT, "--checkpoint", "{d}/empty.pt"], "empty.pt"),
    ("fit-device-cuda", [*FIT, "--device", "cuda"], "--device"),
    ("fit-device-banana", [*FIT, "--device", "banana"], "--device"),
    ("fit-seed-huge", [*FIT, "--seed", "100000000000000000000000"], "--seed"),
    ("fit-seed-caret", [*FIT, "--seed", "10^23"], "--seed"),
    ("fit-items-zero", [*FIT[:5], "0", *FIT[6:]], "--items"),
    ("fit-items-too-few", [*FIT[:5], "2", *FIT[6:]], "--items"),
    ("fit-lr-negative", [*FIT[:9], "-0.1", *FIT[10:]], "--lr"),
    ("fit-lr-inf", [*FIT[:9], "inf", *FIT[10:]], "--lr"),
    ("fit-steps-zero", [*FIT[:7], "0", *FIT[8:]], "--steps"),
    ("fit-tau-without-ipo", [*FIT, "--tau", "1"], "--tau"),
    ("fit-ipo-without-tau", [*FIT, "--loss", "ipo"], "--tau"),
    ("fit-delta-negative", [*FIT, "--loss", "hinge", "--delta", "-1"], "--delta"),
    ("fit-delta-nan", [*FIT, "--loss", "hinge", "--delta", "nan"], "--delta"),
    ("fit-loss-unknown", [*FIT, "--loss", "mse"], "--loss"),
    ("fit-test-fraction", [*FIT, "--test-fraction", "1.5"], "--test-fraction"),
    ("fit-test-fraction-nan", [*FIT, "--test-fraction", "nan"], "--test-fraction"),
    ("fit-batch-zero", [*FIT, "--batch-size", "0"], "--batch-size"),
    ("fit-beta-without-dpo", [*FIT, "--beta", "1"], "--beta"),
    ("fit-dpo-without-beta", [*FIT, "--behavior", "dpo"], "--beta"),
    (
        "fit-reference-missing",
        [*FIT, "--behavior", "dpo", "--beta", "1", "--reference", "{d}/none.pt"],
        "--reference",
    ),
    (
        "fit-reference-empty",
        [*FIT, "--behavior", "dpo", "--beta", "1", "--reference", "{d}/empty.pt"],
        "--reference",
    ),
    ("fit-energy-grid-one", [*ENERGY, "--grid-size", "1"], "--grid-size"),
    ("fit-energy-grid-huge", [*ENERGY, "--grid-size", str(2**27)], "--grid-size"),
    ("fit-energy-inverted", [*ENERGY[:5], "9", *ENERGY[6:]], "--low"),
    ("fit-energy-low-inf", [*ENERGY[:5], "-inf", *ENERGY[6:]], "--low"),
    ("fit-energy-high-nan", [*ENERGY[:7], "nan", *ENERGY[8:]], "--high"),
    ("fit-energy-items", [*ENERGY, "--items", "3"], "--items"),
    ("fit-no-density", ["fit", "{d}/prefs.jsonl", "--out", "{d}/out"], "--density"),
    ("fit-lm-only", [*FIT, "--max-length", "4"], "--max-length"),
    (
        "fit-model-missing",
        ["fit", "{d}/prefs.jsonl", "--model", "{d}/nomodel", "--out", "{d}/o"],
        "--model",
    ),
    ("evaluate-missing", ["evaluate", "{d}/none.pt", "{d}/prefs.jsonl"], "none.pt"),
    ("evaluate-empty", ["evaluate", "{d}/empty.pt", "{d}/prefs.jsonl"], "empty.pt"),
    ("evaluate-nan-model", ["evaluate", "{d}/nan.pt", "{d}/prefs.jsonl"], "nan.pt"),
    ("evaluate-text-model", ["evaluate", "{d}/prefs.jsonl", "{d}/prefs.jsonl"], "prefs.jsonl"),
    (
        "evaluate-batch-size",
        ["evaluate", "{d}/nan.pt", "{d}/prefs.jsonl", "--batch-size", "0"],
        "--batch-size",
    ),
    (
        "evaluate-on-error",
        ["evaluate", "{d}/nan.pt", "{d}/prefs.jsonl", "--on-error", "skip"],
        "--on-error",
    ),
    ("reproduce-nothing", ["reproduce"], "NAME"),
    ("reproduce-unknown", ["reproduce", "no-such-experiment", "--quick"], "no-such-experiment"),
    ("reproduce-device", ["reproduce", "--quick", "--device", "banana", "x"], "--device"),
    ("reproduce-out-file", ["reproduce", "--quick", "--out", "{d}/file", "x"], "--out"),
    ("reproduce-steps-zero", ["reproduce", "--steps", "0", "x"], "--steps"),
    ("reproduce-seed-text", ["reproduce", "--seed", "one", "x"], "--seed"),
    ("reproduce-quick-fast", ["reproduce", "--quick", "--fast", "x"], "--fast"),
    ("reproduce-all-and-name", ["reproduce", "all", "x", "--quick"], "all"),
    ("no-command", [], "command"),
    ("unknown-command", ["train"], "train"),
]


@pytest.mark.parametrize("argv, shown", [c[1:] for c in CLI], ids=[c[0] for c in CLI])
def test_cli_failures_are_one_line_exit_2_and_name_the_option(files, capsys, argv, shown):
    argv = [a.format(d=files) for a in argv]
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (argv, out, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert shown.format(d=files) in err, err
    assert not (files / "out").exists(), "the failure came after work had started"


# -- separation ---------------------------------------------------------------------------------


def test_separated_comparisons_warn_naming_the_items():
    with pytest.warns(pbde.SeparationWarning, match=r"item\(s\) 0 never lost.*item\(s\) 3 never"):
        pbde.fit(annotator(), separated(), steps=2, progress=False)


def test_a_cycle_of_wins_does_not_warn():
    prefs = pbde.Preferences(t([0, 1, 2, 3]), t([1, 2, 3, 0]), torch.ones(4))
    with warnings.catch_warnings():
        warnings.simplefilter("error", pbde.SeparationWarning)
        pbde.fit(annotator(), prefs, steps=2, progress=False)
    # ipo has a finite optimum on any data: no warning either
    with warnings.catch_warnings():
        warnings.simplefilter("error", pbde.SeparationWarning)
        pbde.fit(annotator(), separated(), loss="ipo", tau=1.0, steps=2, progress=False)
    # nor does a fit with a regularizer (a prior), which is the remedy the warning names
    with warnings.catch_warnings():
        warnings.simplefilter("error", pbde.SeparationWarning)
        model = annotator()
        prior = lambda m: (m.density.logits**2).sum()  # noqa: E731
        pbde.fit(model, separated(), regularizer=prior, steps=2, progress=False)


def test_separated_items_finds_groups():
    # {0, 1} beat each other and beat {2, 3}, which beat each other: two groups
    prefs = pbde.Preferences(t([0, 1, 2, 3, 0]), t([1, 0, 3, 2, 3]), torch.ones(5))
    assert pbde.fit.__module__ == "pbde.fit"
    from pbde.fit import separated_items

    assert separated_items(prefs) == ([0, 1], [2, 3])
    soft = pbde.Preferences(t([0, 1]), t([1, 2]), t([0.5, 0.5]))
    assert separated_items(soft) is None  # ties give wins both ways


# -- what is legal: non-finite values that are not errors ---------------------------------------


def test_infinite_logits_are_legal_and_each_loss_says_what_it_gives():
    h = t([INF, -INF, INF, -INF, INF])
    y = t([1.0, 1.0, 0.0, 0.0, 0.5])
    expected = {
        "bce": [0.0, INF, INF, 0.0, INF],
        "ipo": [INF] * 5,
        "hinge": [0.0, INF, INF, 0.0, INF],
        "rrhf": [0.0, INF, INF, 0.0, INF],
    }
    for name, values in expected.items():
        value = losses.get(name)(h, y, **({"tau": 0.1} if name == "ipo" else {}))
        assert value.tolist() == values, name
    deterministic = pbde.DeterministicAnnotator(t([3.0, 1.0, 2.0]))
    logits = deterministic.logits(t([0, 1, 2]), t([2, 2, 2]))
    assert logits.tolist() == [INF, -INF, 0.0]
    labels = deterministic.label(t([0, 1]), t([2, 2])).y
    assert labels.tolist() == [1.0, 0.0]


def test_ipo_in_float16_is_computed_in_float32():
    h = t([300.0, -300.0], dtype=torch.float16)
    value = losses.ipo(h, t([0.0, 1.0], dtype=torch.float16), tau=1.0)
    assert value.dtype == torch.float32 and bool(torch.isfinite(value).all())
    assert value.tolist() == pytest.approx([300.5**2, 300.5**2])


def test_subnormal_weights_fit_like_unit_weights():
    prefs = pairs()
    tiny = pbde.Preferences(prefs.xa, prefs.xb, prefs.y, weight=torch.full((8,), 1e-45))
    plain = pbde.fit(annotator(), prefs, steps=3, lr=0.1, progress=False)
    weighted = pbde.fit(annotator(), tiny, steps=3, lr=0.1, progress=False)
    assert torch.equal(plain.losses, weighted.losses)


def test_validation_off_skips_the_whole_data_check():
    """Like validate_args: switched off, nothing is checked (the caller vouches for the data)."""
    bad = pbde.Preferences(t([0, 1, 2, 3] * 8), t([1, 2, 3, -1] * 8), torch.ones(32))
    with pytest.raises(ValueError, match="-1"):
        pbde.fit(annotator(), bad, steps=2, batch_size=2, progress=False)
    with pbde.validation(False), warnings.catch_warnings():
        warnings.simplefilter("ignore", pbde.SeparationWarning)
        pbde.fit(annotator(), bad, steps=2, batch_size=2, progress=False)


# -- fuzzing: finite in, finite out (or a clear error) -------------------------------------------

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)
probability = st.floats(0.0, 1.0, allow_nan=False, width=32)
anything = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**30), 10**30),
    st.booleans(),
    st.text(max_size=3),
    st.none(),
    st.complex_numbers(max_magnitude=10),
)
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(
    h=st.lists(finite, min_size=1, max_size=6),
    y=st.data(),
    tau=st.floats(1e-3, 1e3),
    delta=st.floats(0.0, 10.0),
)
def test_fuzz_losses_finite_in_finite_out(h, y, tau, delta):
    labels = y.draw(st.lists(probability, min_size=len(h), max_size=len(h)))
    h, labels = t(h), t(labels)
    for name, kwargs in (
        ("bce", {}),
        ("ipo", {"tau": tau}),
        ("hinge", {"delta": delta}),
        ("rrhf", {}),
    ):
        value = losses.get(name)(h, labels, **kwargs)
        assert value.shape == h.shape and bool(torch.isfinite(value).all()), (name, value)
        assert bool((value >= 0).all()), (name, value)


@FUZZ
@given(value=anything)
def test_fuzz_loss_parameters_finite_or_clear_error(value):
    for name, key in (("ipo", "tau"), ("hinge", "delta")):
        try:
            out = losses.get(name)(t([0.5]), t([1.0]), **{key: value})
        except (TypeError, ValueError) as error:
            assert f"'{key}'" in str(error)
        else:
            assert bool(torch.isfinite(out).all()), (name, value, out)


@FUZZ
@given(xa=st.lists(anything, min_size=1, max_size=3), y=anything)
def test_fuzz_preferences_accept_only_finite_real_data(xa, y):
    try:
        prefs = pbde.Preferences(xa, xa, [y] * len(xa))
    except (TypeError, ValueError) as error:
        assert any(f"'{name}'" in str(error) for name in ("xa", "xb", "y")), str(error)
    else:
        assert not prefs.xa.is_complex() and not prefs.y.is_complex()
        assert bool(torch.isfinite(prefs.xa.double()).all())
        assert bool(((prefs.y >= 0) & (prefs.y <= 1)).all())


@FUZZ
@given(value=anything)
def test_fuzz_behavior_parameters_finite_or_clear_error(value):
    reference = categorical(3)
    x = torch.arange(3)
    for name, make in (
        ("beta", lambda v: pbde.dpo(v, reference)),
        ("alpha", lambda v: pbde.geometric(v, reference)),
        ("f", lambda v: pbde.PBDE(f=v)),
        ("g", lambda v: pbde.PBDE(g=v)),
    ):
        try:
            behavior = make(value)
        except (TypeError, ValueError) as error:
            assert f"'{name}'" in str(error)
            continue
        try:
            logits = pbde.Annotator(Categorical(probs=t([0.2, 0.3, 0.5])), behavior).logits(
                x, x.flip(0)
            )
        except ValueError as error:  # an overflow of Ω: named
            assert "Ω(x)" in str(error) or "g(x)" in str(error)
        else:
            assert bool(torch.isfinite(logits).all()), (name, value, logits)


@pytest.mark.parametrize("problem", ["missing", "zero-probability"])
def test_token_data_against_a_precomputed_reference_is_checked_before_training(problem):
    # the language-model trainer's setting: token sequences, pi_ref a Precomputed table; the bad
    # item only appears in the last mini-batch, and the fit must refuse before its first step
    from pbde.densities import Autoregressive, Precomputed

    torch.manual_seed(0)
    density = Autoregressive(vocab_size=4, max_length=3)
    seqs = t([[1, 0, -1], [2, 0, -1], [3, 0, -1], [1, 2, 0]])
    xa, xb = seqs[[0, 1, 0, 1, 0, 1, 2, 0]], seqs[[1, 2, 2, 0, 1, 2, 0, 3]]
    if problem == "missing":  # the table lacks [1, 2, 0]
        reference, expected = Precomputed.of(density, seqs[:3]), ["'x'", "[1, 2, 0]"]
    else:  # pi_ref([1, 2, 0]) = 0: g = -beta log pi_ref is infinite
        values = Precomputed.of(density, seqs).values.clone()
        reference, expected = Precomputed(seqs, values.index_fill(0, t([3]), -math.inf)), ["g"]
    model = pbde.Annotator(density, pbde.dpo(1.0, reference))
    before = [p.detach().clone() for p in density.parameters()]
    with pytest.raises(ValueError) as caught:
        pbde.fit(model, pbde.Preferences(xa, xb, torch.ones(8)), steps=4, batch_size=2, lr=0.1,
                 progress=False)  # fmt: skip
    assert all(word in str(caught.value) for word in expected), caught.value
    assert all(torch.equal(a, b) for a, b in zip(before, density.parameters(), strict=True))
