"""The training step: what it computes, when it reads values from the device, how it stops.

* The fused Adam step gives the trajectory of a plain PyTorch loop (``torch.optim.Adam`` with its
  per-tensor implementation, the same objective written out), to float64 rounding.
* The loop reads the objective's values from the device only at the end, at records,
  evaluations, checkpoints and progress updates: on the CPU, the number of tensor reads
  (``bool``, ``float``, ``int``, ``item``, ``tolist``) of a run does not grow with its steps; on a
  GPU (when there is one), no synchronization per step.
* A non-finite objective at step k stops the run naming step k, with the parameters of the
  last good step: those of an independent run of k steps (constant learning rate).
* :class:`pbde.ConvergenceWarning`: on an under-trained fit, not on a converged one.
"""

from __future__ import annotations

import copy
import importlib
import math
import warnings

import numpy as np
import pytest
import torch

import pbde
from pbde.densities import Categorical, EnergyModel, TruncatedNormalMixture
from pbde.fit import unconverged

FIT = importlib.import_module("pbde.fit")  # the module (pbde.fit is the function)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

P_STAR = torch.tensor([0.1, 0.2, 0.3, 0.15, 0.25])
REF = torch.tensor([0.3, 0.25, 0.2, 0.15, 0.1])


def categorical_prefs(n=2000, seed=0, dtype=torch.float32) -> pbde.Preferences:
    g = torch.Generator().manual_seed(seed)
    xa, xb = pbde.sample_pairs(Categorical(size=5), n, generator=g)
    return pbde.Annotator(Categorical(probs=P_STAR.to(dtype))).label(xa, xb, generator=g)


def dpo_model(dtype=torch.float32, beta=2.0) -> pbde.Annotator:
    reference = Categorical(probs=REF.to(dtype))
    return pbde.Annotator(Categorical(size=5).to(dtype), pbde.dpo(beta, reference))


def energy_prefs(n=400, seed=0) -> pbde.Preferences:
    g = torch.Generator().manual_seed(seed)
    xa, xb = torch.randint(0, 60, (2, n), generator=g).double() / 3 - 10  # repeated items
    annotator = pbde.Annotator(TruncatedNormalMixture([1.0], [2.0], low=-10, high=10))
    return annotator.label(xa, xb, generator=g)


def energy_model(seed=0) -> tuple[pbde.Annotator, EnergyModel]:
    torch.manual_seed(seed)
    start = EnergyModel(-10.0, 10.0, hidden=(16, 16), grid_size=257).double()
    reference = copy.deepcopy(start)
    return pbde.Annotator(copy.deepcopy(start), pbde.dpo(2.0, reference)), start


def parameters_of(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters() if p.requires_grad]


# -- the step computes what a plain loop computes ------------------------------------------------


def _plain_adam(parameters, objective, steps, lr):
    """The paper's recipe written out: Adam (per-tensor implementation) with cosine decay."""
    optimizer = torch.optim.Adam(parameters, lr=lr, foreach=False, fused=False)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=0.0)
    for _ in range(steps):
        optimizer.zero_grad()
        objective().backward()
        optimizer.step()
        schedule.step()


def test_categorical_fit_equals_a_plain_loop_in_float64():
    """Tolerance: both runs do the same arithmetic but for Adam's kernel (fused vs per-tensor:
    the same formula, other rounding); measured difference 1.1e-16 after 40 steps."""
    prefs = categorical_prefs(dtype=torch.float64)
    model = dpo_model(torch.float64)
    logits = model.density.logits.detach().clone().requires_grad_(True)
    result = pbde.fit(model, prefs, steps=40, lr=0.05, progress=False)

    beta, log_ref = 2.0, REF.double().log()
    y = prefs.y.double()

    def objective():
        log_p = torch.log_softmax(logits, 0)
        h = beta * ((log_p - log_ref)[prefs.xa] - (log_p - log_ref)[prefs.xb])
        return torch.nn.functional.binary_cross_entropy_with_logits(h, y)

    _plain_adam([logits], objective, 40, 0.05)
    torch.testing.assert_close(model.density.logits.detach(), logits.detach(), rtol=0, atol=1e-12)
    assert result.losses.shape == (40,) and bool(torch.isfinite(result.losses).all())


def test_energy_fit_equals_a_plain_loop_in_float64():
    """An energy network with DPO, full batch, written out with ``nn.Sequential`` and the
    trapezoid rule cancelled (f constant). Tolerance as above; measured 4.7e-16 (relative:
    7e-15 at most, on the smallest weights)."""
    prefs = energy_prefs()
    model, start = energy_model()
    reference = copy.deepcopy(start)
    plain = copy.deepcopy(start)
    pbde.fit(model, prefs, steps=30, lr=1e-2, progress=False)

    def energy(m, x):  # −log p up to a constant: the network on x mapped onto [−10, 10]
        return m.energy_net(((x - m.low) / (m.high - m.low) * 2 - 1)[:, None] * 10).squeeze(-1)

    with torch.no_grad():
        ref_a, ref_b = -energy(reference, prefs.xa), -energy(reference, prefs.xb)
    y = prefs.y.double()

    def objective():
        h = 2.0 * ((-energy(plain, prefs.xa) - ref_a) - (-energy(plain, prefs.xb) - ref_b))
        return torch.nn.functional.binary_cross_entropy_with_logits(h, y)

    trained = [p for p in plain.parameters() if p.requires_grad]
    _plain_adam(trained, objective, 30, 1e-2)
    for a, b in zip(parameters_of(model.density), trained, strict=True):
        torch.testing.assert_close(a, b.detach(), rtol=1e-10, atol=1e-12)


# -- values are read from the device only at the read points ------------------------------------


class _Reads:
    """Counts the reads of tensor values into Python (what waits for a GPU)."""

    names = ("__bool__", "__float__", "__int__", "item", "tolist")

    def __init__(self, monkeypatch):
        self.count = 0
        for name in self.names:
            original = getattr(torch.Tensor, name)

            def counted(tensor, *args, _original=original, **kwargs):
                self.count += 1
                return _original(tensor, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)


@pytest.mark.parametrize("kind", ["categorical", "energy", "ensemble"])
def test_the_number_of_value_reads_does_not_grow_with_the_steps(monkeypatch, kind):
    prefs = categorical_prefs() if kind == "categorical" else energy_prefs()
    counts = []
    reads = _Reads(monkeypatch)
    for steps in (20, 120):
        if kind == "categorical":
            model = dpo_model()
        else:
            model = energy_model()[0]
        before = reads.count
        if kind == "ensemble":
            models = [model, energy_model(1)[0]]
            pbde.fit_ensemble(models, prefs, steps=steps, lr=1e-3, progress=False)
        else:
            pbde.fit(model, prefs, steps=steps, lr=1e-3, progress=False, check_convergence=False)
        counts.append(reads.count - before)
    assert counts[0] == counts[1], counts


def test_log_records_and_checkpoints_are_the_read_points(monkeypatch, tmp_path):
    """With records every 10 steps, a run of 120 steps reads 10 more times as often as one of
    20 steps records: the reads grow with the records, not with the steps."""
    prefs = categorical_prefs()
    reads = _Reads(monkeypatch)
    counts = []
    for steps in (20, 120):
        before = reads.count
        pbde.fit(dpo_model(), prefs, steps=steps, lr=1e-3, progress=False, log_every=10,
                 check_convergence=False)  # fmt: skip
        counts.append(reads.count - before)
    per_record = (counts[1] - counts[0]) / 10
    assert per_record == int(per_record) and per_record < 40, counts


# -- a non-finite objective stops the run at its first bad step ----------------------------------


def _nan_at(step: int):
    calls = [0]

    def loss(logits, y):
        calls[0] += 1
        value = pbde.losses.bce(logits, y)
        return value * math.nan if calls[0] == step + 1 else value  # one call per step

    return loss


@pytest.mark.parametrize("k", [0, 3, 37])
@pytest.mark.parametrize("read", ["at the end", "every 5 steps", "per step (no fused step)"])
def test_a_non_finite_objective_stops_at_its_step_with_the_last_good_parameters(
    monkeypatch, k, read
):
    prefs = categorical_prefs()
    options = dict(lr=0.05, schedule="constant", progress=False, check_convergence=False)
    if read == "per step (no fused step)":
        monkeypatch.setattr(FIT, "_fused_supported", lambda parameters: False)
    if read == "every 5 steps":
        options["log_every"] = 5
    model = dpo_model()
    with pytest.raises(FloatingPointError, match=rf"at step {k} of 60;"):
        pbde.fit(model, prefs, loss=_nan_at(k), steps=60, **options)
    if k == 0:
        expected = parameters_of(dpo_model())
    else:
        independent = dpo_model()
        pbde.fit(independent, prefs, steps=k, **options)  # steps 0 … k − 1
        expected = parameters_of(independent)
    for got, want in zip(parameters_of(model), expected, strict=True):
        assert torch.equal(got, want)


def test_an_ensemble_with_a_non_finite_member_stops():
    prefs = energy_prefs()
    models = [energy_model()[0], energy_model(1)[0]]
    with pytest.raises(FloatingPointError, match="at step 4 of 30"):
        pbde.fit_ensemble(
            models, prefs, loss=[pbde.losses.bce, _nan_at(4)], steps=30, lr=1e-3, progress=False
        )


# -- ConvergenceWarning --------------------------------------------------------------------------


README_P_STAR = np.array([0.1, 0.2, 0.3, 0.4])


def _readme_fit(**options):
    """The README's fifteen-line example."""
    p_star = Categorical(probs=torch.tensor(README_P_STAR, dtype=torch.float32))
    annotator = pbde.Annotator(p_star, pbde.luce())
    pi_ref = Categorical(size=4)
    g = torch.Generator().manual_seed(0)
    xa, xb = pbde.sample_pairs(pi_ref, 20_000, generator=g)
    prefs = annotator.label(xa, xb, generator=g)
    model = pbde.Annotator(Categorical(size=4), pbde.dpo(2.0, pi_ref))
    return pbde.fit(model, prefs, progress=False, **options), prefs


def _loss_at_the_optimum(prefs, beta=2.0) -> float:
    """The objective on the data at the population optimum π_ref·p*^(1/β) (eq. 16), in numpy:
    a loss the model can reach."""
    p = README_P_STAR ** (1 / beta)
    p /= p.sum()
    omega = beta * (np.log(p) - np.log(0.25))
    h = omega[prefs.xa.numpy()] - omega[prefs.xb.numpy()]
    y = prefs.y.double().numpy()
    return float(np.mean(np.logaddexp(0, -h) * y + np.logaddexp(0, h) * (1 - y)))


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_an_under_trained_fit_warns(schedule):
    with pytest.warns(pbde.ConvergenceWarning, match="did not converge"):
        result, prefs = _readme_fit(steps=500, lr=3e-4, schedule=schedule)
    assert result.final_loss > _loss_at_the_optimum(prefs) + 0.01  # far from it


def test_a_converged_fit_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error", pbde.ConvergenceWarning)
        result, prefs = _readme_fit(steps=500, lr=0.05)
    assert result.final_loss < _loss_at_the_optimum(prefs) + 1e-4


@pytest.mark.parametrize(
    "options",
    [
        dict(steps=500, lr=3e-4, check_convergence=False),  # switched off
        dict(steps=499, lr=1e-4),  # a short run
        dict(steps=500, lr=3e-4, batch_size=256),  # mini-batches: a noisy loss
    ],
)
def test_no_convergence_check_where_it_does_not_apply(options):
    with warnings.catch_warnings():
        warnings.simplefilter("error", pbde.ConvergenceWarning)
        _readme_fit(**options)


def test_check_convergence_must_be_a_bool():
    with pytest.raises(TypeError, match="'check_convergence' must be True or False. Got 1"):
        pbde.fit(dpo_model(), categorical_prefs(100), steps=1, check_convergence=1)


def test_unconverged_reads_a_steady_descent_per_unit_of_learning_rate():
    """Hand-made histories: a straight descent is unconverged, whatever the schedule; a
    plateau, an oscillation and a rise are not."""
    n = 500
    constant = torch.full((n,), 1e-3, dtype=torch.float64)
    cosine = 0.5 * (1 + torch.cos(math.pi * torch.arange(n, dtype=torch.float64) / n)) * 1e-3
    for rates in (constant, cosine):
        spent = torch.cat([torch.zeros(1, dtype=torch.float64), rates.cumsum(0)[:-1]])
        line = 1.0 - 10 * spent  # the objective falls in proportion to the learning rate
        assert unconverged(line, rates) is not None
        plateau = 0.5 + 0.5 * torch.exp(-spent / spent[-1] * 30)
        assert unconverged(plateau, rates) is None
        wobble = plateau + 1e-3 * torch.tensor([(-1.0) ** t for t in range(n)])
        assert unconverged(wobble, rates) is None
        assert unconverged(line.flip(0), rates) is None


# -- on a GPU --------------------------------------------------------------------------------------


@cuda
@pytest.mark.parametrize("k", [0, 7])
def test_on_cuda_a_non_finite_objective_stops_with_the_last_good_parameters(k):
    prefs = categorical_prefs()
    options = dict(lr=0.05, schedule="constant", progress=False, device="cuda")
    model = dpo_model()
    with pytest.raises(FloatingPointError, match=rf"at step {k} of 40;"):
        pbde.fit(model, prefs, loss=_nan_at(k), steps=40, check_convergence=False, **options)
    independent = dpo_model()
    if k:
        pbde.fit(independent, prefs, steps=k, **options)
    for got, want in zip(parameters_of(model), parameters_of(independent), strict=True):
        assert torch.equal(got.cpu(), want.cpu())


@cuda
@pytest.mark.parametrize("kind", ["categorical", "energy"])
def test_on_cuda_the_steps_do_not_synchronize(kind):
    """torch's synchronization debug mode warns at each device read: a run of 120 steps warns
    as often as one of 20 (the reads at its start and end)."""
    prefs = categorical_prefs() if kind == "categorical" else energy_prefs()
    counts = []
    for steps in (20, 120):
        model = dpo_model() if kind == "categorical" else energy_model()[0]
        model.to("cuda")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                pbde.fit(model, prefs, steps=steps, lr=1e-3, progress=False, device="cuda",
                         check_convergence=False)  # fmt: skip
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts.append(sum("synchroniz" in str(w.message) for w in caught))
    assert counts[0] == counts[1], counts


@cuda
def test_on_cuda_the_fit_equals_the_cpu_fit():
    prefs = energy_prefs()
    on_cpu, _ = energy_model()
    on_gpu, _ = energy_model()
    pbde.fit(on_cpu, prefs, steps=30, lr=1e-2, progress=False)
    pbde.fit(on_gpu, prefs, steps=30, lr=1e-2, progress=False, device="cuda")
    for a, b in zip(parameters_of(on_cpu), parameters_of(on_gpu), strict=True):
        torch.testing.assert_close(a, b.cpu(), rtol=1e-9, atol=1e-11)  # float64


def test_cuda_graph_is_checked_and_means_nothing_on_the_cpu():
    prefs = categorical_prefs(200)
    with pytest.raises(TypeError, match="'cuda_graph' must be True or False. Got 'yes'"):
        pbde.fit(dpo_model(), prefs, steps=1, cuda_graph="yes")
    a, b = dpo_model(), dpo_model()
    pbde.fit(a, prefs, steps=20, lr=0.05, progress=False, cuda_graph=True)
    pbde.fit(b, prefs, steps=20, lr=0.05, progress=False, cuda_graph=False)
    for x, y in zip(parameters_of(a), parameters_of(b), strict=True):
        assert torch.equal(x, y)


class _GraphSpy:
    """Records the recordings and replays of the CUDA-graph step."""

    def __init__(self, monkeypatch):
        self.replays, self.steps = 0, []
        spy = self
        original_step, original_record = FIT._GraphedStep.step, FIT._GraphedStep._record

        def step(graphed):
            spy.replays += 1
            return original_step(graphed)

        def record(graphed):
            original_record(graphed)
            spy.steps.append(graphed)

        monkeypatch.setattr(FIT._GraphedStep, "step", step)
        monkeypatch.setattr(FIT._GraphedStep, "_record", record)


@cuda
@pytest.mark.parametrize("kind", ["categorical", "energy"])
def test_on_cuda_the_recorded_step_equals_the_ordinary_step(monkeypatch, kind):
    """Tolerance: the recorded step reads the learning rate as float32 (relative rounding
    < 6e-8 of each step's size); the parameters are float64."""
    prefs = categorical_prefs(dtype=torch.float64) if kind == "categorical" else energy_prefs()

    def model():
        return dpo_model(torch.float64) if kind == "categorical" else energy_model()[0]

    spy = _GraphSpy(monkeypatch)
    graphed, ordinary = model(), model()
    options = dict(steps=40, lr=1e-2, progress=False, device="cuda", check_convergence=False)
    first = pbde.fit(graphed, prefs, **options)
    assert [s.failure for s in spy.steps] == [None] and spy.replays == 40 - FIT._GraphedStep.warmup
    second = pbde.fit(ordinary, prefs, cuda_graph=False, **options)
    assert spy.replays == 40 - FIT._GraphedStep.warmup  # no more
    for a, b in zip(parameters_of(graphed), parameters_of(ordinary), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(first.losses, second.losses, rtol=1e-6, atol=1e-9)


def _nan_at_on_the_device(step: int, device):
    """A BCE loss that is NaN at ``step`` by a counter on the device (so in a recorded step too:
    a replay does not call the loss function)."""
    counter = torch.zeros((), device=device)

    def loss(logits, y):
        counter.add_(1)
        return pbde.losses.bce(logits, y) + torch.where(counter == step + 1, math.nan, 0.0)

    return loss


@cuda
def test_on_cuda_a_recorded_step_stops_at_a_non_finite_objective(monkeypatch):
    k = 11  # a replayed step
    prefs = categorical_prefs()
    options = dict(lr=0.05, schedule="constant", progress=False, device="cuda",
                   check_convergence=False)  # fmt: skip
    spy = _GraphSpy(monkeypatch)
    model = dpo_model()
    with pytest.raises(FloatingPointError, match=rf"at step {k} of 40;"):
        pbde.fit(model, prefs, loss=_nan_at_on_the_device(k, "cuda"), steps=40, **options)
    assert [s.failure for s in spy.steps] == [None]
    independent = dpo_model()
    pbde.fit(independent, prefs, loss=_nan_at_on_the_device(10**6, "cuda"), steps=k, **options)
    for got, want in zip(parameters_of(model), parameters_of(independent), strict=True):
        assert torch.equal(got.cpu(), want.cpu())


@cuda
def test_on_cuda_a_step_that_cannot_be_recorded_runs_as_ordinary_steps(monkeypatch):
    """A loss that reads a value on the host cannot be recorded: the run goes on with ordinary
    steps, as without recording."""

    def host_reading_bce(logits, y):
        float(logits.detach().sum())  # a host read: not allowed while recording
        return pbde.losses.bce(logits, y)

    prefs = categorical_prefs(dtype=torch.float64)
    spy = _GraphSpy(monkeypatch)
    options = dict(loss=host_reading_bce, steps=20, lr=0.05, progress=False, device="cuda",
                   check_convergence=False)  # fmt: skip
    tried, ordinary = dpo_model(torch.float64), dpo_model(torch.float64)
    pbde.fit(tried, prefs, **options)
    assert len(spy.steps) == 1 and spy.steps[0].failure is not None and spy.replays == 0
    pbde.fit(ordinary, prefs, cuda_graph=False, **options)
    for a, b in zip(parameters_of(tried), parameters_of(ordinary), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
