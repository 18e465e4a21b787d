"""Autoregressive sequence densities, the offline English corpus, and the §5.2 experiments.

References are independent of the code under test: exact enumeration of every sequence up to
the maximum length on a tiny vocabulary (normalization, the conditionals a sampler must follow),
scipy's chi-square test for the samplers, the empirical distribution of a corpus for maximum
likelihood, and eq. 9 / eq. 26 written out by hand for the annotators.
"""

from __future__ import annotations

import itertools
import math

import pytest
import scipy.stats
import torch

import pbde
from pbde.densities import Mixture
from pbde.densities.sequence import Autoregressive, sequence_lengths
from pbde.io import PAD_TOKEN
from pbde.text import WordTokenizer, english_sentences

MIN_P_VALUE = 1e-3  # fixed seeds: a correct sampler passes, a wrong one gives p ~ 0


# -- exact enumeration ------------------------------------------------------------------------


def all_sequences(vocab_size: int, max_length: int, eos: int, min_length: int = 1) -> torch.Tensor:
    """Every sequence of min_length..max_length tokens ending with its only EOS, padded with -1."""
    others = [t for t in range(vocab_size) if t != eos]
    rows = []
    for length in range(min_length, max_length + 1):
        for prefix in itertools.product(others, repeat=length - 1):
            rows.append(list(prefix) + [eos] + [PAD_TOKEN] * (max_length - length))
    return torch.tensor(rows)


def conditionals(x: torch.Tensor, probs: torch.Tensor, eos: int) -> dict[tuple, dict[int, float]]:
    """p(next token | prefix) for every prefix, from the probabilities of all sequences: the
    mass of the sequences extending ``prefix + (token,)`` over the mass extending ``prefix``."""
    mass: dict[tuple, float] = {}
    for row, p in zip(x.tolist(), probs.tolist(), strict=True):
        tokens = [t for t in row if t != PAD_TOKEN]
        for cut in range(len(tokens) + 1):
            key = tuple(tokens[:cut])
            mass[key] = mass.get(key, 0.0) + p
    result: dict[tuple, dict[int, float]] = {}
    for key, total in mass.items():
        if key and key[-1] == eos:
            continue
        result[key] = {
            token: mass.get(key + (token,), 0.0) / total
            for token in {k[-1] for k in mass if len(k) == len(key) + 1 and k[:-1] == key}
        }
    return result


def chi_square_p_value(samples: torch.Tensor, support: torch.Tensor, probs: torch.Tensor) -> float:
    """Goodness of fit of sampled sequences (rows) to the probabilities of the support's rows."""
    index = {tuple(row): i for i, row in enumerate(support.tolist())}
    counts = torch.zeros(len(index), dtype=torch.float64)
    for row in samples.tolist():
        counts[index[tuple(row)]] += 1  # a KeyError here is a sample outside the support
    expected = probs.double() / probs.double().sum() * samples.shape[0]
    return float(scipy.stats.chisquare(counts.numpy(), expected.numpy()).pvalue)


def tiny_model(
    seed: int = 0, *, vocab_size: int = 3, max_length: int = 5, eos: int = 0, min_length: int = 1
):
    torch.manual_seed(seed)
    model = Autoregressive(
        vocab_size, max_length, eos=eos, min_length=min_length, embedding_dim=4, hidden_size=6
    ).double()
    with torch.no_grad():  # spread the conditionals so that the tests see varied probabilities
        model.head.weight.mul_(4.0)
        model.head.bias.normal_(0.0, 1.0)
        model.eos_bias.normal_(0.0, 1.0)
    return model


# -- normalization ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vocab_size", "max_length", "eos", "seed", "min_length"),
    [(3, 5, 0, 0, 1), (3, 6, 2, 1, 1), (4, 4, 1, 2, 1), (2, 7, 0, 3, 1), (5, 1, 3, 4, 1)]
    + [(3, 5, 0, 5, 3), (4, 4, 2, 6, 4), (3, 6, 1, 7, 2)],
)
def test_probabilities_of_all_sequences_sum_to_one(vocab_size, max_length, eos, seed, min_length):
    model = tiny_model(
        seed, vocab_size=vocab_size, max_length=max_length, eos=eos, min_length=min_length
    )
    x = all_sequences(vocab_size, max_length, eos, min_length)
    probs = model.prob(x).detach()
    assert x.shape[0] == sum((vocab_size - 1) ** k for k in range(min_length - 1, max_length))
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-12)
    # the mass of full-length sequences is not negligible, so a model that did not force EOS at
    # max_length (whose probabilities would sum to less than 1) fails the check above
    if max_length > 1:
        assert float(probs[sequence_lengths(x) == max_length].sum()) > 1e-6


def test_single_token_support_is_certain():
    model = tiny_model(vocab_size=4, max_length=1, eos=3)
    assert model.log_prob(torch.tensor([[3]])).item() == 0.0


# -- EOS and padding --------------------------------------------------------------------------


def test_padding_width_and_batch_do_not_change_log_prob():
    model = tiny_model(0, max_length=5)
    x = all_sequences(3, 5, 0)
    wider = torch.cat([x, torch.full((x.shape[0], 4), PAD_TOKEN)], dim=1)
    alone = torch.cat([model.log_prob(row[None, : int(sequence_lengths(row[None]))]) for row in x])
    torch.testing.assert_close(model.log_prob(wider), model.log_prob(x), rtol=0, atol=1e-12)
    torch.testing.assert_close(alone, model.log_prob(x), rtol=0, atol=1e-12)


def test_length_counts_tokens_including_eos():
    model = tiny_model(0, max_length=5)
    x = torch.tensor([[0, -1, -1], [1, 2, 0], [2, 0, -1]])
    assert model.length(x).tolist() == [1, 3, 2]
    assert model.length(x).dtype == torch.int64


def test_samples_are_valid_padded_sequences(generator):
    model = tiny_model(1, max_length=6)
    x = model.sample(500, generator=generator)
    assert x.shape == (500, 6) and x.dtype == torch.int64
    lengths = sequence_lengths(x)
    for row, length in zip(x.tolist(), lengths.tolist(), strict=True):
        assert row[length - 1] == 0 and 0 not in row[: length - 1]
        assert all(t == PAD_TOKEN for t in row[length:])
    assert set(lengths.tolist()) == set(range(1, 7))  # every length occurs, the forced one too
    model.log_prob(x)  # validates


# -- sampling follows log_prob ----------------------------------------------------------------


def test_sampled_lengths_follow_the_length_distribution_of_log_prob(generator):
    model = tiny_model(2, max_length=6)
    x = all_sequences(3, 6, 0)
    probs = model.prob(x).detach()
    lengths = sequence_lengths(x)
    expected = torch.stack([probs[lengths == k].sum() for k in range(1, 7)])
    drawn = sequence_lengths(model.sample(20_000, generator=generator))
    counts = torch.bincount(drawn, minlength=7)[1:].double()
    p_value = scipy.stats.chisquare(counts.numpy(), (expected * 20_000).numpy()).pvalue
    assert p_value > MIN_P_VALUE


def test_sampled_sequences_follow_log_prob(generator):
    model = tiny_model(3, max_length=5)
    x = all_sequences(3, 5, 0)
    p_value = chi_square_p_value(
        model.sample(20_000, generator=generator), x, model.prob(x).detach()
    )
    assert p_value > MIN_P_VALUE


def test_wrong_model_fails_the_chi_square_test(generator):
    """The test above can fail: samples of one model against the probabilities of another."""
    x = all_sequences(3, 5, 0)
    other = tiny_model(4, max_length=5).prob(x).detach()
    samples = tiny_model(3, max_length=5).sample(20_000, generator=generator)
    assert chi_square_p_value(samples, x, other) < 1e-6


def test_temperature_divides_the_logits_of_each_conditional(generator):
    """At temperature T each conditional is ∝ p(token | prefix)^(1/T), the conditionals being
    read off the enumerated sequence probabilities; the last position stays EOS."""
    temperature = 2.0
    model = tiny_model(5, max_length=5)
    x = all_sequences(3, 5, 0)
    table = conditionals(x, model.prob(x).detach(), eos=0)
    tempered = []
    for row in x.tolist():
        tokens = [t for t in row if t != PAD_TOKEN]
        p = 1.0
        for cut in range(min(len(tokens), 4)):  # position 5 is forced to EOS
            options = table[tuple(tokens[:cut])]
            weights = {t: q ** (1 / temperature) for t, q in options.items()}
            p *= weights[tokens[cut]] / sum(weights.values())
        tempered.append(p)
    tempered = torch.tensor(tempered)
    assert float(tempered.sum()) == pytest.approx(1.0, abs=1e-9)
    samples = model.sample(20_000, temperature=temperature, generator=generator)
    assert chi_square_p_value(samples, x, tempered) > MIN_P_VALUE
    assert chi_square_p_value(samples, x, model.prob(x).detach()) < 1e-6  # T changed something


def test_temperature_near_zero_is_greedy(generator):
    model = tiny_model(6, max_length=5)
    x = all_sequences(3, 5, 0)
    table = conditionals(x, model.prob(x).detach(), eos=0)
    greedy: list[int] = []
    while (not greedy or greedy[-1] != 0) and len(greedy) < 4:
        options = table[tuple(greedy)]
        greedy.append(max(options, key=options.get))
    if greedy[-1] != 0:
        greedy.append(0)
    samples = model.sample(50, temperature=1e-4, generator=generator)
    expected = greedy + [PAD_TOKEN] * (5 - len(greedy))
    assert samples.tolist() == [expected] * 50


def test_minimum_length_is_respected_by_samples_and_log_prob(generator):
    model = tiny_model(13, max_length=5, min_length=3)
    x = all_sequences(3, 5, 0, min_length=3)
    samples = model.sample(20_000, generator=generator)
    assert int(sequence_lengths(samples).min()) == 3
    assert chi_square_p_value(samples, x, model.prob(x).detach()) > MIN_P_VALUE
    with pytest.raises(ValueError, match="at least min_length=3 tokens"):
        model.log_prob(torch.tensor([[1, 0, -1]]))


def test_sampling_is_reproducible_with_a_generator():
    model = tiny_model(0)
    a = model.sample(30, generator=torch.Generator().manual_seed(7))
    b = model.sample(30, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_eos_bias_changes_when_sequences_stop_and_nothing_else():
    """p(token | prefix, not EOS) is the same before and after changing eos_bias, read off the
    enumerated sequence probabilities; the length distribution changes."""
    model = tiny_model(12, max_length=5)
    x = all_sequences(3, 5, 0)
    before = conditionals(x, model.prob(x).detach(), eos=0)
    with torch.no_grad():
        model.eos_bias.add_(torch.tensor([1.5, -2.0, 0.5, 3.0, 0.0]))
    after = conditionals(x, model.prob(x).detach(), eos=0)
    changed = 0.0
    for prefix, options in before.items():
        if len(prefix) == 4:  # the forced EOS
            continue
        go_on = {t: q / (1 - options[0]) for t, q in options.items() if t != 0}
        go_on_after = {t: q / (1 - after[prefix][0]) for t, q in after[prefix].items() if t != 0}
        for token, q in go_on.items():
            assert go_on_after[token] == pytest.approx(q, abs=1e-12)
        changed = max(changed, abs(after[prefix][0] - options[0]))
    assert changed > 0.1


# -- maximum likelihood -----------------------------------------------------------------------


def test_maximum_likelihood_recovers_the_empirical_distribution():
    """MLE's optimum is the corpus's empirical distribution (a flexible enough model)."""
    g = torch.Generator().manual_seed(0)
    length_probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    n = 1000
    lengths = torch.multinomial(length_probs, n, replacement=True, generator=g) + 1
    tokens = 1 + (torch.rand(n, 4, generator=g) < 0.3).long()  # 1 w.p. 0.7, 2 w.p. 0.3
    positions = torch.arange(4)
    corpus = torch.where(positions < lengths[:, None] - 1, tokens, PAD_TOKEN)
    corpus[torch.arange(n), lengths - 1] = 0
    support = all_sequences(3, 4, 0)
    index = {tuple(r): i for i, r in enumerate(support.tolist())}
    empirical = torch.zeros(len(index), dtype=torch.float64)
    for row in corpus.tolist():
        empirical[index[tuple(row)]] += 1.0 / n

    torch.manual_seed(0)
    model = Autoregressive(3, 4, embedding_dim=8, hidden_size=16)
    before = 0.5 * float((model.prob(support).detach() - empirical).abs().sum())
    result = model.fit_mle(corpus, steps=150, lr=0.05, batch_size=None, progress=False)
    after = 0.5 * float((model.prob(support).detach() - empirical).abs().sum())
    assert before > 0.2
    assert after < 0.01  # total variation to the empirical distribution
    entropy = -float((empirical[empirical > 0] * empirical[empirical > 0].log()).sum())
    assert result.final_loss == pytest.approx(entropy, abs=0.02)  # NLL → empirical entropy


# -- annotators -------------------------------------------------------------------------------


def test_luce_and_length_normalized_annotators_by_hand():
    torch.set_default_dtype(torch.float64)  # f = 1/|x| is computed in the default dtype
    model = tiny_model(7, max_length=5)
    xa = torch.tensor([[1, 0, -1, -1, -1], [2, 2, 1, 1, 0], [0, -1, -1, -1, -1]])
    xb = torch.tensor([[2, 1, 2, 0, -1], [0, -1, -1, -1, -1], [1, 1, 0, -1, -1]])
    la, lb = torch.tensor([2.0, 5.0, 1.0]), torch.tensor([4.0, 1.0, 3.0])
    log_a, log_b = model.log_prob(xa).detach(), model.log_prob(xb).detach()
    eq26 = pbde.Annotator(model, pbde.length_normalized(model.length))
    expected = torch.sigmoid(log_a / la.double() - log_b / lb.double())  # eq. 26
    torch.testing.assert_close(eq26.prob(xa, xb).detach(), expected, rtol=0, atol=1e-12)
    eq9 = pbde.Annotator(model)
    expected = torch.exp(log_a) / (torch.exp(log_a) + torch.exp(log_b))  # eq. 9
    torch.testing.assert_close(eq9.prob(xa, xb).detach(), expected, rtol=0, atol=1e-12)


def test_mixture_of_sequence_densities_is_normalized(generator):
    torch.set_default_dtype(torch.float64)  # the mixture weights take the default dtype
    mixture = Mixture([tiny_model(8), tiny_model(9)], [0.3, 0.7])
    x = all_sequences(3, 5, 0)
    assert float(mixture.prob(x).detach().sum()) == pytest.approx(1.0, abs=1e-12)
    drawn = mixture.sample(20_000, generator=generator)
    assert chi_square_p_value(drawn, x, mixture.prob(x).detach()) > MIN_P_VALUE


def test_fit_with_length_normalized_behavior_moves_towards_preferred_sequences():
    """One annotator (eq. 26) prefers long sequences; fitting the same process increases the
    model's mean length (a gradient of the right sign through the whole pipeline)."""
    truth = tiny_model(10, max_length=5)
    with torch.no_grad():  # the truth puts little mass on EOS early on
        truth.head.bias[0] = -3.0
    model = tiny_model(11, max_length=5)
    x = all_sequences(3, 5, 0)
    lengths = sequence_lengths(x).double()

    def mean_length(density):
        return float((density.prob(x).detach() * lengths).sum())

    g = torch.Generator().manual_seed(0)
    xa, xb = pbde.sample_pairs(model, 2000, generator=g)
    prefs = pbde.Annotator(truth, pbde.length_normalized(truth.length)).label(xa, xb, generator=g)
    fitted = pbde.Annotator(model, pbde.length_normalized(model.length))
    before = mean_length(model)
    pbde.fit(fitted, prefs, steps=100, lr=0.05, progress=False)
    assert mean_length(model) > before + 0.5
    assert abs(mean_length(model) - mean_length(truth)) < abs(before - mean_length(truth))


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x", "error", "match"),
    [
        (torch.tensor([[1.0, 0.0]]), TypeError, "integer token ids"),
        (torch.tensor([1, 0]), ValueError, r"shape \(batch, width\)"),
        (torch.zeros((2, 0), dtype=torch.long), ValueError, r"shape \(batch, width\)"),
        (torch.tensor([[1, 3, 0]]), ValueError, r"token ids in \[0, 2\].*Got 3"),
        (torch.tensor([[1, -2, 0]]), ValueError, r"token ids in \[0, 2\].*Got -2"),
        (torch.tensor([[1, -1, 0]]), ValueError, "padding .* only after the last token"),
        (torch.tensor([[1, 2, -1]]), ValueError, "end with the EOS token 0"),
        (torch.tensor([[1, 0, 2, 0]]), ValueError, "exactly one EOS"),
        (torch.tensor([[-1, -1]]), ValueError, "all padding"),
        (torch.tensor([[1, 1, 1, 1, 1, 0]]), ValueError, "at most max_length=5"),
        ([[1, 0]], TypeError, "torch.Tensor"),
    ],
)
def test_bad_items_are_rejected(x, error, match):
    model = tiny_model(0, max_length=5)
    with pytest.raises(error, match=match):
        model.log_prob(x)
    with pytest.raises(error, match=match):
        model.length(x)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"vocab_size": 1, "max_length": 3}, "'vocab_size' must be an int >= 2"),
        ({"vocab_size": 3, "max_length": 0}, "'max_length' must be an int >= 1"),
        ({"vocab_size": 3, "max_length": 3, "eos": 3}, r"'eos' must be a token id in \[0, 2\]"),
        ({"vocab_size": 3, "max_length": 3, "hidden_size": 0}, "'hidden_size'"),
        ({"vocab_size": 3, "max_length": 3, "dropout": 1.0}, r"'dropout' must lie in \[0, 1\)"),
        (
            {"vocab_size": 3, "max_length": 3, "min_length": 4},
            r"'min_length' must be an int in \[1, max_length=3\]",
        ),
        ({"vocab_size": 3, "max_length": 3, "min_length": 0}, "'min_length'"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Autoregressive(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n": 0}, ValueError, "'n' must be an int >= 1"),
        ({"n": 2, "temperature": 0.0}, ValueError, "'temperature' must be finite and > 0"),
        ({"n": 2, "temperature": math.nan}, ValueError, "'temperature'"),
        ({"n": 2, "temperature": "hot"}, TypeError, "'temperature' must be a real number"),
    ],
)
def test_bad_sampling_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        tiny_model(0).sample(**kwargs)


def test_bad_corpus_for_maximum_likelihood():
    model = tiny_model(0)
    with pytest.raises(ValueError, match="'sequences' must have shape"):
        model.fit_mle(torch.tensor([1, 0]), steps=1)
    with pytest.raises(ValueError, match="end with the EOS"):
        model.fit_mle(torch.tensor([[1, 2]]), steps=1)
    with pytest.raises(ValueError, match="'batch_size'"):
        model.fit_mle(torch.tensor([[1, 0]]), steps=1, batch_size=0)


# -- the offline corpus -----------------------------------------------------------------------


def test_english_sentences_are_prose():
    sentences = english_sentences()
    assert len(sentences) > 1000
    assert sentences == english_sentences()  # a fixed order
    assert not any("::=" in s or ">>>" in s for s in sentences)
    words = sum(len(s.split()) for s in sentences)
    assert words > 30_000
    common = WordTokenizer(sentences, vocab_size=30).words
    for word in ("the", "is", "a", "of"):  # English function words lead the counts
        assert word in common


def test_word_tokenizer_caps_the_vocabulary_and_round_trips():
    sentences = ["The cat sat on the mat.", "The dog sat.", "A cat!"]
    tok = WordTokenizer(sentences, vocab_size=6)
    # counts: the 3, sat 2, cat 2, . 2, then 1 each; ties alphabetical
    assert tok.words == ["<eos>", "<unk>", "the", ".", "cat", "sat"]
    x = tok.encode(sentences)
    assert x.shape == (3, 8)
    assert x[0].tolist() == [2, 4, 5, 1, 2, 1, 3, 0]
    assert sequence_lengths(x).tolist() == [8, 5, 4]
    assert tok.decode(x) == ["the cat sat <unk> the <unk> .", "the <unk> sat .", "<unk> cat <unk>"]
    assert tok.encode(sentences, max_length=5).shape == (2, 5)
    with pytest.raises(ValueError, match="at least one sentence"):
        tok.encode(sentences, max_length=2)
    with pytest.raises(ValueError, match="'vocab_size' must be an int >= 3"):
        WordTokenizer(sentences, vocab_size=2)
    with pytest.raises(TypeError, match="not one string"):
        WordTokenizer("The cat.")
    with pytest.raises(ValueError, match=r"ids in \[0, 5\]"):
        tok.decode(torch.tensor([[7, 0]]))


# -- the §5.2 experiments, quick mode ---------------------------------------------------------


@pytest.fixture(scope="module")
def length_bias_result():
    from pbde.experiments import length_bias

    return length_bias.run(length_bias.quick(), progress=False)


@pytest.fixture(scope="module")
def lm_mixture_result():
    from pbde.experiments import lm_mixture

    return lm_mixture.run(lm_mixture.quick(), progress=False)  # reuses the pretrained models


def test_length_bias_table_2_pattern(length_bias_result):
    """Dumoulin et al. Table 2: under eq. 9 every annotator prefers the shorter bin, even *long*
    (which never samples a short sentence); under eq. 26 *long* prefers longer sentences and
    *short* shorter ones."""
    table = length_bias_result.metrics["table"]
    for annotator in ("whole", "short", "long"):
        for key in ("P(S>M)", "P(S>L)", "P(M>L)"):
            assert table["luce"][annotator][key] > 0.5, (annotator, key)
        assert table["luce"][annotator]["P(S>L)"] > 0.9, annotator  # paper: 0.97 to 1.00
    long_ = table["length_normalized"]["long"]
    for key in ("P(S>M)", "P(S>L)", "P(M>L)"):
        assert long_[key] < 0.5, key
    assert long_["P(S>L)"] < 0.3  # paper: 0.05; eq. 9 gives > 0.9 for the same annotator
    short = table["length_normalized"]["short"]
    assert short["P(S>M)"] > 0.5 and short["P(S>L)"] > 0.5


def test_length_bias_models_differ_in_length(length_bias_result):
    fractions = length_bias_result.metrics["bin_fractions"]
    assert fractions["short"]["short"] > 0.95
    assert fractions["long"]["long"] > 0.95
    assert 0.3 < fractions["whole"]["short"] < 0.9 and fractions["whole"]["long"] > 0.05
    counts = length_bias_result.metrics["bin_counts"]
    assert min(counts.values()) >= 50  # every average of Table 2 is over many pairs
    report = length_bias_result.report()
    assert report["experiment"] == "length-bias" and length_bias_result.plot is None


def test_lm_mixture_figure_6_pattern(lm_mixture_result, tmp_path):
    """Dumoulin et al. Fig. 6: adapted on density-mixture data (eq. 28, well specified) the
    model drops medium lengths and is bimodal; adapted on annotator-mixture data (eq. 27,
    misspecified) it keeps producing medium lengths, which neither annotator samples."""
    fractions = lm_mixture_result.metrics["bin_fractions"]
    whole, density, annotators = (
        fractions["whole"],
        fractions["density_mixture"],
        fractions["annotator_mixture"],
    )
    assert fractions["density_mixture_target"]["medium"] < 0.02  # π_mix, eq. 28's optimum
    # eq. 28: medium lengths removed, both modes kept
    assert density["medium"] < whole["medium"] - 0.1
    assert density["medium"] < density["short"] and density["medium"] < density["long"]
    # eq. 27: far more medium lengths than eq. 28, than short or than long
    assert annotators["medium"] > density["medium"] + 0.1
    neither = max(fractions["short"]["medium"], fractions["long"]["medium"])
    assert annotators["medium"] > neither + 0.1
    written = lm_mixture_result.save(tmp_path)
    assert [p.name for p in written] == ["lm-mixture.json", "lm-mixture.png"]
    assert written[1].stat().st_size > 10_000


def test_length_bias_table_text_and_settings(length_bias_result):
    from pbde.experiments import length_bias, lm_mixture

    text = length_bias.table(length_bias_result.metrics)
    lines = text.splitlines()
    assert len(lines) == 4 and lines[3].startswith("long")
    assert "[0.0533]" in lines[3]  # the paper's eq. 26 P(S>L) of the long annotator
    for module in (length_bias, lm_mixture):
        fast, default = module.fast(), module.Settings()
        assert fast.models.steps < default.models.steps
        assert fast.models.hidden_size < default.models.hidden_size
    with pytest.raises(ValueError, match="'adapt' must be 'length' or 'all'"):
        lm_mixture.run(lm_mixture.Settings(adapt="lora"))
    with pytest.raises(ValueError, match="short_max < long_min"):
        length_bias.pretrained_language_models(
            length_bias.LanguageModelSettings(short_max=30, long_min=20)
        )
