"""pbde.save_model / pbde.load_model: round trips are exact, and loading never runs code."""

from __future__ import annotations

import pickle

import pytest
import torch

import pbde
from pbde.densities import (
    Categorical,
    EnergyModel,
    FromDistribution,
    Mixture,
    Tabulated,
    TruncatedNormalMixture,
)
from pbde.densities.sequence import Autoregressive, sequence_lengths


def _categorical(seed: int, size: int = 5) -> Categorical:
    return Categorical(logits=torch.randn(size, generator=torch.Generator().manual_seed(seed)))


def _sequences(seed: int, **options) -> Autoregressive:
    torch.manual_seed(seed)
    return Autoregressive(6, 5, eos=0, min_length=2, embedding_dim=4, hidden_size=8, **options)


def _lm_annotator() -> pbde.Annotator:
    lm = _sequences(13, num_layers=2, dropout=0.1)
    return pbde.Annotator(lm, pbde.length_normalized(lm.length)).eval()  # no dropout noise


def _dpo_per_token(lm: Autoregressive, reference: Autoregressive) -> pbde.Annotator:
    return pbde.Annotator(lm, pbde.dpo(0.7, reference, length=lm.length))


def _energy(seed: int, **options) -> EnergyModel:
    torch.manual_seed(seed)
    return EnergyModel(-2.0, 3.0, grid_size=65, **options)


MODELS = {
    "categorical_luce": lambda: pbde.Annotator(_categorical(0)),
    "categorical_dpo": lambda: pbde.Annotator(_categorical(1), pbde.dpo(2.5, _categorical(2))),
    "categorical_geometric": lambda: pbde.Annotator(
        _categorical(3), pbde.geometric(0.3, _categorical(4))
    ),
    "constant_pbde": lambda: pbde.Annotator(_categorical(5), pbde.PBDE(3.0, -1.5)),
    "energy_dpo": lambda: pbde.Annotator(
        _energy(6, hidden=(8, 8), activation="gelu"), pbde.dpo(0.5, _energy(7, hidden=(4,)))
    ),
    "truncated_normals": lambda: pbde.Annotator(
        TruncatedNormalMixture([-1.0, 1.0], [0.5, 2.0], [0.3, 0.7], low=-2, high=3, learnable=True)
    ),
    "tabulated_grid": lambda: pbde.Annotator(
        Tabulated(pbde.Grid(-2.0, 3.0, 11), torch.linspace(-1, 1, 11) ** 2, normalize=True),
        pbde.geometric(2.0, TruncatedNormalMixture([0.0], [1.0], low=-2, high=3)),
    ),
    "tabulated_finite": lambda: pbde.Annotator(
        Tabulated(torch.arange(5), torch.tensor([0.0, -1.0, 2.0, 0.5, -3.0]), normalize=True)
    ),
    "density_mixture": lambda: pbde.Annotator(
        Mixture([_categorical(8), _categorical(9)], [0.2, 0.8], learn_weights=True)
    ),
    "mixture_annotator": lambda: pbde.MixtureAnnotator(
        [
            pbde.Annotator(_categorical(10)),
            pbde.Annotator(_categorical(11), pbde.dpo(1.0, _categorical(12))),
        ],
        [0.35, 0.65],
        learn_weights=True,
    ),
    "sequences_length_normalized": _lm_annotator,
    "sequences_dpo": lambda: pbde.Annotator(_sequences(14), pbde.dpo(4.0, _sequences(15))),
    "sequences_token_count": lambda: pbde.Annotator(
        _sequences(16), pbde.length_normalized(sequence_lengths)
    ),
    "sequences_dpo_per_token": lambda: _dpo_per_token(_sequences(17), _sequences(18)),
}
SEQUENCES = {
    "sequences_length_normalized",
    "sequences_dpo",
    "sequences_token_count",
    "sequences_dpo_per_token",
}
FINITE = {"categorical_luce", "categorical_dpo", "categorical_geometric", "constant_pbde",
          "tabulated_finite", "density_mixture", "mixture_annotator"}  # fmt: skip


def pairs(name: str, generator: torch.Generator):
    if name in SEQUENCES:
        return _sequences(99).sample(128, generator=generator).chunk(2)
    if name in FINITE:
        return torch.randint(0, 5, (2, 64), generator=generator)
    return torch.rand(2, 64, generator=generator) * 5.0 - 2.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_round_trip_gives_identical_logits(tmp_path, name, dtype, generator):
    torch.set_default_dtype(dtype)
    model = MODELS[name]()
    path = tmp_path / "model.pt"
    pbde.save_model(model, path)
    loaded = pbde.load_model(path)
    assert type(loaded) is type(model)
    xa, xb = pairs(name, generator)
    torch.set_default_dtype(torch.float32)  # loading does not depend on the default dtype
    with torch.no_grad():
        assert torch.equal(loaded.logits(xa, xb), model.logits(xa, xb))
    saved, restored = model.state_dict(), loaded.state_dict()
    assert saved.keys() == restored.keys()
    for key in saved:
        assert restored[key].dtype == saved[key].dtype, key
        assert torch.equal(restored[key], saved[key]), key
    trainable = {n: p.requires_grad for n, p in model.named_parameters()}
    assert {n: p.requires_grad for n, p in loaded.named_parameters()} == trainable


def test_a_sequence_model_keeps_its_architecture(tmp_path):
    model = _lm_annotator()
    pbde.save_model(model, tmp_path / "m.pt")
    loaded = pbde.load_model(tmp_path / "m.pt")
    for attribute in ("vocab_size", "max_length", "eos", "min_length"):
        assert getattr(loaded.density, attribute) == getattr(model.density, attribute)
    assert (loaded.density.gru.num_layers, loaded.density.gru.dropout) == (2, 0.1)
    # the behavior divides by the loaded model's own token counts (eq. 26)
    x = torch.tensor([[3, 0, -1, -1, -1], [1, 2, 3, 4, 0]])
    assert torch.allclose(loaded.behavior.f(x), torch.tensor([1 / 2, 1 / 5]))


def test_dpo_per_token_keeps_dividing_by_token_counts(tmp_path):
    model = _dpo_per_token(_sequences(20), _sequences(21))
    pbde.save_model(model, tmp_path / "m.pt")
    loaded = pbde.load_model(tmp_path / "m.pt")
    x = torch.tensor([[3, 0, -1, -1, -1], [1, 2, 3, 4, 0]])
    with torch.no_grad():
        log_ratio = model.density.log_prob(x) - model.behavior.references[0].log_prob(x)
        assert torch.allclose(loaded.omega(x), 0.7 * log_ratio / torch.tensor([2.0, 5.0]))
    assert torch.allclose(loaded.behavior.f(x), torch.tensor([0.7 / 2, 0.7 / 5]))


def test_the_reference_of_dpo_is_saved_and_used(tmp_path):
    """With a reference other than the default, only the saved weights give the same logits."""
    reference = Categorical(probs=torch.tensor([0.7, 0.1, 0.1, 0.05, 0.05]))
    model = pbde.Annotator(Categorical(size=5), pbde.dpo(2.0, reference))
    pbde.save_model(model, tmp_path / "m.pt")
    loaded = pbde.load_model(tmp_path / "m.pt")
    x = torch.arange(5)
    with torch.no_grad():
        # uniform model: h(a, b) = -β (log ref(a) - log ref(b)), computed from the probabilities
        expected = -2.0 * torch.log(torch.tensor([0.7, 0.1, 0.1, 0.05, 0.05]))
        got = loaded.logits(x, torch.zeros(5, dtype=torch.long))
    assert torch.allclose(got, expected - expected[0], atol=1e-6)
    assert not any(p.requires_grad for p in loaded.references.parameters())


def test_a_loaded_model_trains_further(tmp_path, generator):
    model = pbde.Annotator(Categorical(size=3))
    pbde.save_model(model, tmp_path / "m.pt")
    loaded = pbde.load_model(tmp_path / "m.pt")
    prefs = pbde.Preferences(torch.tensor([0, 0, 1]), torch.tensor([1, 2, 2]), torch.ones(3))
    pbde.fit(loaded, prefs, steps=20, lr=0.1, progress=False)
    with torch.no_grad():
        probs = loaded.density.prob(torch.arange(3))
    assert probs[0] > probs[1] > probs[2]


@pytest.mark.parametrize(
    ("model", "names"),
    [
        (lambda: pbde.Annotator(Categorical(size=3), pbde.length_normalized(lambda x: x + 1.0)),
         "length_normalized"),
        (lambda: pbde.Annotator(Categorical(size=3), pbde.PBDE(1.0, lambda x: x.float())), "callables"),
        (lambda: pbde.Annotator(
            Categorical(size=3), pbde.dpo(1.0, Categorical(size=3), length=lambda x: x + 1.0)
        ), "per length"),
        (lambda: pbde.Annotator(FromDistribution(torch.distributions.Normal(0.0, 1.0))),
         "FromDistribution"),
        (lambda: pbde.DeterministicAnnotator(torch.tensor([1.0, 2.0])), "DeterministicAnnotator"),
    ],
)  # fmt: skip
def test_models_with_code_cannot_be_saved(tmp_path, model, names):
    with pytest.raises(TypeError, match="save") as error:
        pbde.save_model(model(), tmp_path / "m.pt")
    assert names in str(error.value)
    assert not (tmp_path / "m.pt").exists()


class _Payload:
    """Unpickling this creates a file: stands for any code a malicious file would run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_loading_refuses_a_file_that_would_run_code(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pt"
    # a valid-looking model file with an object smuggled into its config
    model = pbde.Annotator(Categorical(size=3))
    pbde.save_model(model, path)
    payload = torch.load(path, weights_only=True)
    payload["config"]["density"] = _Payload(marker)
    torch.save(payload, path)
    with pytest.raises(ValueError, match="refuses to unpickle"):
        pbde.load_model(path)
    assert not marker.exists()
    # the payload is live: an unsafe load would have run it (so the test can fail)
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")  # the point of it
def test_loading_refuses_a_plain_pickle(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ValueError, match="refuses to unpickle"):
        pbde.load_model(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content", [b"not a torch file at all", None], ids=["garbage", "tensors_without_format"]
)
def test_loading_other_files_says_what_is_wrong(tmp_path, content):
    path = tmp_path / "other.pt"
    if content is None:
        torch.save({"weight": torch.zeros(3)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match="not a pbde model file"):
        pbde.load_model(path)
