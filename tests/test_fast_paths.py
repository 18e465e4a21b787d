"""The training step's shortcuts keep the maths: each is checked against the plain computation.

- pair logits skip an energy model's normalizer when f is constant (it cancels);
- :func:`pbde.fit` scores each distinct item once (pairs from a grid repeat items);
- a frozen reference remembers its last answer, and forgets it when anything changes;
- :class:`~pbde.densities.EnergyModel` goes through its network in chunks.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import pbde
from pbde.densities import Categorical, EnergyModel, EnergyStack, TruncatedNormalMixture
from pbde.fit import distinct_items


def _plain_log_prob(model: EnergyModel, x: torch.Tensor) -> torch.Tensor:
    """log p(x) written out: the network on all points at once, trapezoid normalizer."""
    grid = model.grid.points
    scale = lambda t: (10 * (2 * (t - model.low) / (model.high - model.low) - 1))[:, None]  # noqa: E731
    energy = model.energy_net(scale(x)).squeeze(-1)
    grid_energy = model.energy_net(scale(grid)).squeeze(-1)
    h = (model.high - model.low) / (grid.shape[0] - 1)
    w = torch.full_like(grid, h)
    w[0] = w[-1] = h / 2
    return -energy - torch.logsumexp(-grid_energy + w.log(), 0)


@pytest.fixture
def energy():
    torch.manual_seed(0)
    return EnergyModel(-10.0, 10.0, grid_size=513)


def test_unnormalized_log_prob_differs_from_log_prob_by_one_constant(energy):
    x = torch.linspace(-9.0, 9.0, 37)
    gap = energy.log_prob(x) - energy.unnormalized_log_prob(x)
    assert float((gap.max() - gap.min()).detach()) < 1e-5
    # and the constant is log Z, not anything else
    assert torch.allclose(gap, -energy.log_normalizer().expand_as(gap), atol=1e-5)


@pytest.mark.parametrize(
    "behavior",
    [
        lambda ref: pbde.luce(),
        lambda ref: pbde.dpo(4.0, ref),
        lambda ref: pbde.geometric(0.25, ref),
        lambda ref: pbde.PBDE(f=lambda x: 1.0 + x.abs(), g=0.0),  # non-constant f keeps Z
    ],
)
def test_annotator_logits_equal_the_written_out_formula(energy, behavior):
    reference = copy.deepcopy(energy)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.1 * torch.randn_like(p))
    b = behavior(reference)
    model = pbde.Annotator(energy, b)
    xa, xb = torch.linspace(-9, 9, 11), torch.linspace(8, -8, 11)

    def omega(x):
        log_p = _plain_log_prob(energy, x)
        return b.f(x) * log_p + b.g(x)

    expected = omega(xa) - omega(xb)
    assert torch.allclose(model.logits(xa, xb), expected, atol=1e-4)


def test_distinct_items_rebuild_the_pairs():
    xa = torch.tensor([3.0, 1.0, 3.0, 2.0])
    xb = torch.tensor([1.0, 1.0, 2.0, 3.0])
    items, ia, ib = distinct_items(xa, xb)
    assert items.tolist() == [1.0, 2.0, 3.0]
    assert torch.equal(items[ia], xa) and torch.equal(items[ib], xb)
    tokens_a = torch.tensor([[1, 2, -1], [4, 5, 6], [1, 2, -1]])
    tokens_b = torch.tensor([[4, 5, 6], [7, -1, -1], [7, -1, -1]])
    items, ia, ib = distinct_items(tokens_a, tokens_b)
    assert items.shape == (3, 3)
    assert torch.equal(items[ia], tokens_a) and torch.equal(items[ib], tokens_b)


def test_indexed_logits_equal_logits_for_every_kind_of_annotator():
    torch.manual_seed(1)
    p = Categorical(probs=torch.tensor([0.1, 0.2, 0.3, 0.4]))
    q = Categorical(probs=torch.tensor([0.4, 0.3, 0.2, 0.1]))
    models = [
        pbde.Annotator(p, pbde.dpo(2.0, q)),
        pbde.MixtureAnnotator([pbde.Annotator(p), pbde.Annotator(q)], [0.3, 0.7]),
        pbde.DeterministicAnnotator(torch.tensor([0.0, 2.0, 1.0, 3.0])),
    ]
    xa, xb = torch.randint(0, 4, (2, 50))
    items, ia, ib = distinct_items(xa, xb)
    for model in models:
        assert torch.equal(model._indexed_logits(items, ia, ib), model.logits(xa, xb))


def _pairs(n, seed):
    g = torch.Generator().manual_seed(seed)
    xa, xb = torch.randint(0, 30, (2, n), generator=g).float() / 3 - 5  # many repeats
    truth = pbde.Annotator(TruncatedNormalMixture([1.0], [2.0], low=-10, high=10))
    return truth.label(xa, xb, generator=g)


@pytest.mark.parametrize("batch_size", [None, 64])
def test_fit_with_shared_items_follows_the_plain_objective(batch_size):
    """Same trajectory as minimizing the plain per-pair objective with the same optimizer."""
    prefs = _pairs(300, 0)
    torch.manual_seed(0)
    start = EnergyModel(-10.0, 10.0, hidden=(16, 16), grid_size=257)
    reference = copy.deepcopy(start)
    model = pbde.Annotator(copy.deepcopy(start), pbde.dpo(2.0, reference))
    fitted = pbde.fit(model, prefs, steps=15, lr=1e-2, batch_size=batch_size, progress=False)

    plain = copy.deepcopy(start)
    g = torch.Generator().manual_seed(0)  # the sampler fit uses (seed=0)
    optimizer = torch.optim.Adam(plain.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=15, eta_min=0.0)
    for _ in range(15):
        index = torch.arange(300) if batch_size is None else torch.randperm(300, generator=g)[:64]
        xa, xb, y = prefs.xa[index], prefs.xb[index], prefs.y[index]
        h = 2.0 * (_plain_log_prob(plain, xa) - _plain_log_prob(reference, xa))
        h = h - 2.0 * (_plain_log_prob(plain, xb) - _plain_log_prob(reference, xb))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(h, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    for a, b in zip(fitted.model.density.parameters(), plain.parameters(), strict=True):
        assert torch.allclose(a, b, atol=2e-5)
    x = torch.linspace(-10, 10, 101)
    with torch.no_grad():
        assert torch.allclose(fitted.model.density.log_prob(x), plain.log_prob(x), atol=1e-4)


def test_frozen_copy_remembers_and_forgets(energy):
    frozen = energy.frozen()
    x = torch.linspace(-5, 5, 9)
    first = frozen.log_prob(x)
    assert frozen.log_prob(x) is first  # remembered
    assert frozen.log_prob(x.clone()) is not first  # another tensor: computed again
    y = x.clone()
    value = frozen.log_prob(y)
    y.add_(1.0)  # in place: a new version
    assert torch.allclose(frozen.log_prob(y), energy.log_prob(y), atol=1e-6)
    assert not torch.allclose(frozen.log_prob(y), value)
    # new parameters (load_state_dict writes in place): recomputed
    other = EnergyModel(-10.0, 10.0, grid_size=513)
    frozen.log_prob(x)
    frozen.load_state_dict(other.state_dict())
    assert torch.allclose(frozen.log_prob(x), other.log_prob(x), atol=1e-6)
    # normalized and unnormalized answers are kept apart
    assert not torch.allclose(frozen.unnormalized_log_prob(x), frozen.log_prob(x))
    # moved: recomputed in the new dtype
    assert frozen.double().log_prob(x).dtype == torch.float64


def test_the_output_bias_is_not_trained(energy):
    """It shifts E by a constant, so the density ignores it; Adam would random-walk it."""
    bias = energy.energy_net[-1].bias
    assert not bias.requires_grad
    x = torch.linspace(-10, 10, 101)
    before = energy.log_prob(x).detach()
    with torch.no_grad():
        bias.add_(3.0)
    assert torch.allclose(energy.log_prob(x), before, atol=1e-5)


def test_chunked_energy_equals_one_pass(energy):
    # float64: the gradients sum 1000 items' terms in another order when chunked, which in
    # float32 moves elements of size ~100 by ~1e-4 (seen on this CPU); in float64 by ~1e-13
    energy = energy.double()
    x = torch.linspace(-10, 10, 1000, dtype=torch.float64)
    whole = energy.energy(x)
    energy.chunk_size = 64
    chunked = energy.energy(x)
    assert torch.allclose(whole, chunked, rtol=0, atol=1e-12)
    trained = [p for p in energy.parameters() if p.requires_grad]
    g1 = torch.autograd.grad(whole.sin().sum(), trained)
    g2 = torch.autograd.grad(chunked.sin().sum(), trained)
    for a, b in zip(g1, g2, strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-9)


def test_stacked_energies_equal_each_member_chunked_or_not():
    torch.manual_seed(4)
    # float64, so that summing the gradient in another order changes nothing visible
    members = [EnergyModel(-10.0, 10.0, hidden=(16, 16), grid_size=257).double() for _ in range(3)]
    stack = EnergyStack(members)
    x = torch.linspace(-10, 10, 1000, dtype=torch.float64)
    whole = stack.energies(x)
    stack.chunk_size = 64
    chunked = stack.energies(x)
    for k, member in enumerate(members):  # each member's own network is the reference
        assert torch.allclose(whole[k], member.energy(x), rtol=1e-12, atol=1e-12), k
    assert torch.allclose(whole, chunked, rtol=1e-12, atol=1e-12)
    trained = [p for p in stack.parameters() if p.requires_grad]
    g1 = torch.autograd.grad(whole.sin().sum(), trained)
    g2 = torch.autograd.grad(chunked.sin().sum(), trained)
    for a, b in zip(g1, g2, strict=True):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-10)


def _sweep_models(start, reference):
    return [
        pbde.Annotator(copy.deepcopy(start), pbde.dpo(1.0, reference)),
        pbde.Annotator(copy.deepcopy(start), pbde.dpo(4.0, reference)),
        pbde.Annotator(copy.deepcopy(start), pbde.geometric(0.25, reference)),
        pbde.Annotator(copy.deepcopy(start), pbde.luce()),
    ]


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("batch_size", [None, 50])
@pytest.mark.parametrize("on_grid", [False, True])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_ensemble_fit_equals_fitting_each_model_alone(batch_size, on_grid, device):
    """On the CPU the stack runs its members one by one; on a GPU as batched products (and the
    grid members, here the regularized one, as a batch of their own)."""
    torch.manual_seed(2)
    start = EnergyModel(-10.0, 10.0, hidden=(16, 16), grid_size=257)
    reference = start.frozen()
    if on_grid:  # items and samples are grid points: the stack reads them off the grid pass
        g = torch.Generator().manual_seed(3)
        xa, xb = start.grid.points[torch.randint(60, 200, (2, 200), generator=g)]
        truth = pbde.Annotator(TruncatedNormalMixture([1.0], [2.0], low=-10, high=10))
        prefs = truth.label(xa, xb, generator=g)
        samples = start.grid.points[100:140]
    else:
        prefs = _pairs(200, 3)
        samples = torch.linspace(-3, 3, 20)
    settings = dict(steps=12, lr=1e-2, batch_size=batch_size, progress=False, device=device)
    losses = ["bce", "ipo", "hinge", "bce"]
    kwargs = [{}, {"tau": 0.5}, {"delta": 1.0}, {}]
    regularizers = [None, None, pbde.nll_regularizer(samples, 1.0), None]
    together = pbde.fit_ensemble(
        _sweep_models(start, reference),
        prefs,
        loss=losses,
        loss_kwargs=kwargs,
        regularizer=regularizers,
        **settings,
    )
    assert isinstance(together[0].model.density, EnergyModel)
    for i, model in enumerate(_sweep_models(start, reference)):
        alone = pbde.fit(
            model, prefs, loss=losses[i], regularizer=regularizers[i], **kwargs[i], **settings
        )
        assert torch.allclose(together[i].losses, alone.losses, rtol=1e-4, atol=1e-5), i
        x = torch.linspace(-10, 10, 101)
        with torch.no_grad():
            assert torch.allclose(
                together[i].model.density.cpu().log_prob(x),
                alone.model.density.cpu().log_prob(x),
                atol=1e-4,
            ), i


def test_only_the_grid_members_evaluate_the_grid():
    """Members that need their normalizer every step read grid items from their pass over the
    grid; the others evaluate only the items asked of them, and only when one of them asks."""
    torch.manual_seed(5)
    members = [EnergyModel(-10.0, 10.0, hidden=(8, 8), grid_size=129).double() for _ in range(4)]
    stack = EnergyStack(members)
    stack.grid_members = (3, 1)
    calls = []
    energies = stack.energies

    def recording(x, members=None):
        calls.append((x.shape[0], tuple(members)))
        return energies(x, members)

    stack.energies = recording
    items = stack.grid.points[torch.tensor([5, 9, 9, 60, 100])]
    views = [stack.member(k) for k in range(4)]
    values = [view.unnormalized_log_prob(items) for view in views]
    samples = stack.grid.points[20:30]
    views[1].log_prob(samples)
    views[3].log_prob(samples)
    assert sorted(calls) == [(5, (0, 2)), (129, (1, 3))]  # none over the samples for 0 and 2
    for k, member in enumerate(members):
        torch.testing.assert_close(values[k], -member.energy(items), rtol=1e-12, atol=1e-12)
        with torch.no_grad():
            expected = member.log_prob(samples)
        torch.testing.assert_close(views[k].log_prob(samples), expected, rtol=1e-12, atol=1e-12)


def test_grid_index_of():
    grid = pbde.Grid(-1.0, 1.0, 5)
    assert grid.index_of(torch.tensor([-1.0, 0.5, 1.0, 0.0])).tolist() == [0, 3, 4, 2]
    assert grid.index_of(torch.tensor([0.25])) is None  # between points
    assert grid.index_of(torch.tensor([[0.5]])) is None  # not a batch of numbers
    assert grid.index_of(torch.tensor([1, 2])) is None  # ids, not points


def test_ensemble_of_other_models_is_fitted_one_by_one():
    truth = pbde.Annotator(Categorical(probs=torch.tensor([0.2, 0.3, 0.5])))
    xa, xb = torch.randint(0, 3, (2, 500), generator=torch.Generator().manual_seed(0))
    prefs = truth.label(xa, xb, generator=torch.Generator().manual_seed(1))
    models = [pbde.Annotator(Categorical(size=3)), pbde.Annotator(Categorical(size=3))]
    results = pbde.fit_ensemble(models, prefs, steps=50, lr=0.1, progress=False)
    alone = pbde.fit(pbde.Annotator(Categorical(size=3)), prefs, steps=50, lr=0.1, progress=False)
    for r in results:
        assert torch.allclose(r.losses, alone.losses)


def test_ensemble_arguments_are_checked():
    models = [pbde.Annotator(Categorical(size=3))] * 2
    prefs = pbde.Preferences(torch.tensor([0]), torch.tensor([1]), torch.tensor([1.0]))
    with pytest.raises(
        ValueError, match="'loss' must be one value for all 2 models or a list of 2"
    ):
        pbde.fit_ensemble(models, prefs, loss=["bce"])
    with pytest.raises(ValueError, match="'loss_kwargs'"):
        pbde.fit_ensemble(models, prefs, loss_kwargs=[{}, {}, {}])
    with pytest.raises(TypeError, match="'models'"):
        pbde.fit_ensemble([], prefs)


@pytest.mark.parametrize("activation", ["tanh", "relu", "silu", "gelu"])
def test_energy_equals_its_network_module(activation):
    """EnergyModel.energy evaluates its Linear layers by a faster function (an outer product
    for the one-feature first layer, tanh as 2σ(2z) − 1, a broadcast read-out gradient): in
    float64 the values and gradients equal nn.Sequential's, for any chunking."""
    torch.manual_seed(5)
    model = EnergyModel(-10.0, 10.0, hidden=(16, 8, 12), activation=activation).double()
    x = torch.linspace(-10, 10, 301, dtype=torch.float64)
    scaled = (x / 10.0 * model.input_range)[:, None]  # [−10, 10] onto [−input_range, ...]
    reference = model.energy_net(scaled).squeeze(-1)
    trained = [p for p in model.parameters() if p.requires_grad]
    g_ref = torch.autograd.grad(reference.sin().sum(), trained)
    for chunk in (8192, 64):
        model.chunk_size = chunk
        energy = model.energy(x)
        torch.testing.assert_close(energy, reference, rtol=1e-12, atol=1e-12)
        for a, b in zip(torch.autograd.grad(energy.sin().sum(), trained), g_ref, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_a_replaced_energy_network_is_called_as_it_is():
    torch.manual_seed(6)
    model = EnergyModel(-1.0, 1.0, hidden=(8,))
    model.energy_net = nn.Sequential(nn.Linear(1, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 1))
    x = torch.linspace(-1, 1, 11)
    expected = model.energy_net((x * model.input_range)[:, None]).squeeze(-1)
    torch.testing.assert_close(model.energy(x), expected)


def test_batched_stack_network_equals_each_member():
    """The batched form of the stacked networks (what EnergyStack runs off the CPU, e.g. on a
    GPU) gives each member's energies and gradients, in float64."""
    from pbde.densities.energy import _mlp

    torch.manual_seed(7)
    members = [EnergyModel(-10.0, 10.0, hidden=(16, 8), grid_size=257).double() for _ in range(3)]
    stack = EnergyStack(members)
    x = torch.linspace(-10, 10, 301, dtype=torch.float64)
    batched = _mlp(list(stack.weights), list(stack.biases), stack.activation)
    energies = batched(x[None, :, None]).squeeze(-1)  # the inputs are x itself on [−10, 10]
    torch.testing.assert_close(energies, stack.energies(x), rtol=1e-12, atol=1e-12)
    trained = [p for p in stack.parameters() if p.requires_grad]
    g1 = torch.autograd.grad(energies.sin().sum(), trained)
    g2 = torch.autograd.grad(stack.energies(x).sin().sum(), trained)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_models_with_a_replaced_network_are_not_stacked():
    from pbde.ensemble import stackable

    models = [EnergyModel(-1.0, 1.0, hidden=(8,)) for _ in range(2)]
    assert stackable(models)
    models[1].energy_net = nn.Sequential(
        nn.Linear(1, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 1)
    )
    assert not stackable(models)
