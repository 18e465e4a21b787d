"""The theory on sequences: SequenceSupport, ForcedEOS, mass_beyond, and the optima on them.

References are independent of the code under test: sequences enumerated with itertools, the
count Σ_l (V − 1)^(l − 1) derived by hand (l − 1 free non-EOS tokens, then EOS), Monte Carlo
lengths of ancestral samples for the mass beyond the maximum length, the closed forms of
Dumoulin et al. written out with torch (eqs. 16 and 18, Lemma 1), and Theorem 2's constant C
found by scipy's root finder. Everything runs in float64.
"""

from __future__ import annotations

import itertools
import math

import pytest
import scipy.optimize
import torch

import pbde
from pbde.densities import Autoregressive, ForcedEOS, Tabulated
from pbde.io import PAD_TOKEN
from pbde.support import SequenceSupport, sequence_count


@pytest.fixture(autouse=True)
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def enumerate_sequences(vocab_size, max_length, eos, min_length=1):
    others = [t for t in range(vocab_size) if t != eos]
    return {
        tuple(prefix) + (eos,)
        for length in range(min_length, max_length + 1)
        for prefix in itertools.product(others, repeat=length - 1)
    }


def as_tuples(points):
    return [tuple(t for t in row if t != PAD_TOKEN) for row in points.tolist()]


def gpt2(vocab_size, seed=0):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=vocab_size,
        n_positions=16,
        n_embd=16,
        n_layer=2,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
    )
    return pbde.densities.CausalLM(transformers.GPT2LMHeadModel(config).double())


def random_table(support, seed, scale=2.0):
    generator = torch.Generator().manual_seed(seed)
    values = scale * torch.randn(len(support), generator=generator, dtype=torch.float64)
    return Tabulated(support, values, normalize=True)


# -- the support ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "vocab_size, max_length, eos, min_length",
    [(2, 4, 0, 1), (3, 3, 0, 1), (4, 5, 2, 1), (5, 4, 4, 2), (3, 1, 1, 1)],
)
def test_support_enumerates_every_sequence_once(vocab_size, max_length, eos, min_length):
    support = SequenceSupport(vocab_size, max_length, eos=eos, min_length=min_length)
    expected = sum((vocab_size - 1) ** (n - 1) for n in range(min_length, max_length + 1))
    rows = as_tuples(support.points)
    assert len(support) == expected == sequence_count(vocab_size, max_length, min_length=min_length)
    assert len(set(rows)) == len(rows)  # each once
    assert set(rows) == enumerate_sequences(vocab_size, max_length, eos, min_length)
    assert support.points.shape == (expected, max_length)
    assert support.lengths.tolist() == [len(r) for r in rows]


def test_support_with_prompts_repeats_the_completions_per_prompt():
    prompts = [[3], [1, 2, 3, 1, 2, 3, 1]]  # the second prompt is wider than max_length
    support = SequenceSupport(3, 3, prompts=prompts)
    n = sequence_count(3, 3)
    assert support.points.shape == (2 * n, 2, 7) and support.num_groups == 2
    assert support.group_index.tolist() == [0] * n + [1] * n
    for g, prompt in enumerate(prompts):
        part = support.points[support.group_index == g]
        assert all(row == tuple(prompt) for row in as_tuples(part[:, 0]))
        assert set(as_tuples(part[:, 1])) == enumerate_sequences(3, 3, 0)


def test_support_refuses_a_size_above_the_limit_and_names_it():
    with pytest.raises(ValueError, match=r"1,111,111 items.*max_size=1,000,000"):
        SequenceSupport(11, 7, max_size=1_000_000)
    with pytest.raises(ValueError, match=r"2,046 items.*× 2 prompts.*max_size=2,000"):
        SequenceSupport(3, 10, prompts=[[1], [2]], max_size=2000)
    with pytest.raises(ValueError, match="'eos'"):
        SequenceSupport(3, 3, eos=3)
    with pytest.raises(ValueError, match="'prompts'"):
        SequenceSupport(3, 3, prompts=[[]])


# -- normalized language models on it -----------------------------------------------------------


def test_autoregressive_sums_to_one_and_forced_eos_of_a_longer_model_too():
    torch.manual_seed(0)
    support = SequenceSupport(4, 5)
    own = Autoregressive(4, 5, embedding_dim=8, hidden_size=8).double()
    longer = Autoregressive(4, 9, embedding_dim=8, hidden_size=8).double()
    with torch.no_grad():
        longer.eos_bias.fill_(-1.0)  # stops late: much mass beyond 5 tokens
        forced = ForcedEOS(longer, 5, eos=0)
        assert float(own.log_prob(support.points).exp().sum()) == pytest.approx(1, abs=1e-8)
        assert float(forced.log_prob(support.points).exp().sum()) == pytest.approx(1, abs=1e-8)
        raw = float(longer.log_prob(support.points).exp().sum())
    assert pbde.mass_beyond(own, support) == pytest.approx(0, abs=1e-8)
    beyond = pbde.mass_beyond(forced, support)
    assert beyond == pytest.approx(1 - raw, abs=1e-12) and beyond > 0.2
    # independent: the fraction of ancestral samples of the longer model past 5 tokens
    samples = longer.sample(20000, generator=torch.Generator().manual_seed(1))
    longer_than = float((pbde.densities.sequence.sequence_lengths(samples) > 5).double().mean())
    assert longer_than == pytest.approx(beyond, abs=4 * math.sqrt(beyond * (1 - beyond) / 20000))
    # below the maximum length the forced form is the model itself
    short = support.lengths < 5
    with torch.no_grad():
        assert torch.allclose(
            forced.log_prob(support.points[short]), longer.log_prob(support.points[short])
        )


def test_gpt2_with_forced_eos_sums_to_one_per_prompt():
    lm = gpt2(5)
    support = SequenceSupport(5, 4, prompts=[[0], [1, 2], [4, 4, 3]])
    forced = ForcedEOS(lm, 4, eos=0)
    with torch.no_grad():
        log_p = forced.log_prob(support.points)
        masses = support.log_integral_by_group(log_p).exp()
    assert torch.allclose(masses, torch.ones(3, dtype=torch.float64), atol=1e-8, rtol=0)
    beyond = pbde.mass_beyond(forced, support, by_prompt=True)
    assert beyond.shape == (3,) and bool((beyond > 0.05).all())
    # the raw model is not normalized there: optimal_density says so and names the fix
    with pytest.raises(ValueError, match=r"for prompt 0.*ForcedEOS\(model, 4, eos=0\)"):
        pbde.optimal_density(pbde.Annotator(lm), pbde.luce(), support)
    # a completion longer than the maximum length is not an item of the forced form
    with pytest.raises(ValueError, match="max_length=4"):
        forced.log_prob(pbde.densities.CausalLM.items([[0]], [[1, 1, 1, 1, 0]]))


# -- optima: closed forms -----------------------------------------------------------------------


def normalized(log_values, support):
    return log_values - support.log_integral_by_group(log_values)[support.group_index]


@pytest.mark.parametrize("beta", [0.5, 1.0, 4.0])
def test_dpo_optimum_is_eq16_per_prompt(beta):
    support = SequenceSupport(4, 4, prompts=[[0], [2, 3]])
    reference = ForcedEOS(gpt2(4), 4, eos=0)
    p_star = random_table(support, seed=1)
    pi = pbde.optimal_density(pbde.Annotator(p_star), pbde.dpo(beta, reference), support)
    with torch.no_grad():
        log_ref = reference.log_prob(support.points)
    expected = normalized(log_ref + p_star.values / beta, support)  # π ∝ π_ref · p*^{1/β}
    assert torch.allclose(pi.values, expected, atol=1e-8, rtol=0)


def test_geometric_optimum_is_eq18():
    torch.manual_seed(0)
    support = SequenceSupport(4, 5)
    reference = Autoregressive(4, 5, embedding_dim=8, hidden_size=8).double()
    p_star = random_table(support, seed=2)
    alpha = 0.3
    pi = pbde.optimal_density(pbde.Annotator(p_star), pbde.geometric(alpha, reference), support)
    with torch.no_grad():
        log_ref = reference.log_prob(support.points)
    expected = normalized((1 - alpha) * log_ref + alpha * p_star.values, support)
    assert torch.allclose(pi.values, expected, atol=1e-8, rtol=0)


def test_length_normalized_rule_and_theorem_2():
    support = SequenceSupport(4, 5)
    length = support.lengths.double()
    p_star = random_table(support, seed=3, scale=1.0)

    def lengths(x):
        return pbde.densities.sequence.sequence_lengths(x)

    ln_annotator = pbde.Annotator(p_star, pbde.length_normalized(lengths))
    # well specified: the length-normalized rule fitted to a length-normalized annotator → p*
    pi = pbde.optimal_density(ln_annotator, pbde.length_normalized(lengths), support)
    assert torch.allclose(pi.values, p_star.values, atol=1e-8, rtol=0)

    # Theorem 2: under a Luce annotator the length-normalized model is π = exp(|x|(log p* − C))
    # with the unique C that normalizes it; C from scipy's root finder
    pi = pbde.optimal_density(pbde.Annotator(p_star), pbde.length_normalized(lengths), support)
    log_p = p_star.values

    def log_mass(c):
        return float(torch.logsumexp(length * (log_p - c), 0))

    c = scipy.optimize.brentq(log_mass, -50, 50, xtol=1e-15)
    assert torch.allclose(pi.values, length * (log_p - c), atol=1e-8, rtol=0)
    assert abs(c) > 0.1  # not p*: C ≠ 0 and the lengths are not all equal

    # a Luce model fitted to the length-normalized annotator (the pairwise convex solver, with
    # a non-uniform proposal): π ∝ p*^{1/|x|}, whatever the proposal — not p*
    proposal = torch.linspace(1.0, 3.0, len(support))

    def bce(logits, y):  # a callable loss: the general solver, not Lemma 1's closed form
        return pbde.losses.bce(logits, y)

    pi = pbde.optimal_density(ln_annotator, pbde.luce(), support, proposal=proposal, loss=bce)
    expected = normalized(log_p / length, support)
    assert torch.allclose(pi.values, expected, atol=1e-8, rtol=0)
    assert pbde.kl(p_star, pi, support) > 0.05


# -- conditional supports in kl, tv, psipo_optimum and sampling ---------------------------------


def test_kl_and_tv_are_per_prompt_means():
    support = SequenceSupport(3, 4, prompts=[[1], [2], [1, 1]])
    p, q = random_table(support, seed=4), random_table(support, seed=5)
    per_prompt = []
    for index in support.groups():
        a, b = p.values[index].exp(), q.values[index].exp()
        per_prompt.append((float((a * (a / b).log()).sum()), float(0.5 * (a - b).abs().sum())))
    kl_by = pbde.kl(p, q, support, by_prompt=True)
    tv_by = pbde.tv(p, q, support, by_prompt=True)
    assert torch.allclose(kl_by, torch.tensor([k for k, _ in per_prompt]), atol=1e-12)
    assert torch.allclose(tv_by, torch.tensor([t for _, t in per_prompt]), atol=1e-12)
    assert pbde.kl(p, q, support) == pytest.approx(sum(k for k, _ in per_prompt) / 3, abs=1e-12)


def test_psipo_optimum_solves_each_prompt_on_its_own():
    support = SequenceSupport(3, 3, prompts=[[1], [2]])
    p_star, reference = random_table(support, seed=6), random_table(support, seed=7)
    annotator = pbde.Annotator(p_star)
    pi = pbde.psipo_optimum(annotator, "identity", 0.5, reference, None, support)
    for index in support.groups():
        part = support.subset(index)
        p_part = Tabulated(part, p_star.values[index])
        ref_part = Tabulated(part, reference.values[index])
        alone = pbde.psipo_optimum(pbde.Annotator(p_part), "identity", 0.5, ref_part, None, part)
        assert torch.allclose(pi.values[index], alone.values, atol=1e-10)


def test_tabulated_on_a_conditional_support_samples_pairs_within_a_prompt():
    support = SequenceSupport(3, 3, prompts=[[1], [2], [1, 2]])
    table = random_table(support, seed=8)
    xa, xb = pbde.sample_pairs(table, 3000, generator=torch.Generator().manual_seed(0))
    assert xa.shape == (3000, 2, 3) and torch.equal(xa[:, 0], xb[:, 0])
    # each prompt's completions follow p(· | prompt): compare frequencies with the masses
    first = (xa[:, 0] == support.points[0, 0]).all(1)
    counts = torch.stack([(xa[first][:, 1] == row).all(1).sum() for row in support.sequences])
    expected = table.values[support.group_index == 0].exp() * int(first.sum())
    assert float(((counts - expected) ** 2 / expected).sum()) < 30  # chi-square, 6 dof
