"""pbde.online: the annotator in the loop, against closed forms and scipy.

References, all computed here from the papers' formulas in numpy/scipy, never from pbde:

* the KL-regularised bandit's optimum π* ∝ π_0 · exp(r/η) (Dumoulin et al., eq. 13; Xiong et
  al.); a Bradley–Terry annotator with reward r is a Luce annotator with p* ∝ exp(r), so a DPO
  model with β = η has the same optimum by eq. 16, for any proposal of pairs (Lemma 1);
* rejection sampling: scipy.stats.chisquare (finite support) and scipy.stats.kstest against a
  scipy truncated normal (continuous), at significance level α = 0.01, seeded; acceptance rates
  against their exact values E_{π_{k−1}}[exp((r − M)(1/η_k − 1/η_{k−1}))];
* best-of-n / best-vs-worst: the law of the maximum (minimum) of n iid draws, F^n;
* the pooled optimum for a mixture of annotators: scipy.optimize.minimize of the population
  objective Σ_ab Q_ab KL(Bern(P_ab) ‖ Bern(σ(h_ab))) for the query-weighted mixture Q of the
  on-policy proposals used.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.optimize
import scipy.special
import scipy.stats
import torch

import pbde
from pbde import online, posterior
from pbde.densities import Categorical, TruncatedNormalMixture

ALPHA = 0.01  # significance level of every goodness-of-fit test here

REWARDS = np.array([1.0, 0.5, 0.0])  # the bandit of the acceptance criteria
ITEMS = torch.arange(3)


def gibbs_policy(reference: np.ndarray, rewards: np.ndarray, eta: float) -> np.ndarray:
    """π* ∝ π_0 · exp(r/η), in numpy float64."""
    logits = np.log(reference) + rewards / eta
    return np.exp(logits - scipy.special.logsumexp(logits))


def bt_annotator(rewards=REWARDS) -> pbde.Annotator:
    """Bradley–Terry with reward r: a Luce annotator with p* ∝ exp(r)."""
    return pbde.Annotator(Categorical(logits=torch.as_tensor(rewards, dtype=torch.float64)))


def dpo_model(eta: float, reference_probs=None) -> pbde.Annotator:
    probs = torch.full((3,), 1 / 3) if reference_probs is None else reference_probs
    return pbde.Annotator(Categorical(probs=probs), pbde.dpo(eta, Categorical(probs=probs)))


def probs_of(model: pbde.Annotator) -> np.ndarray:
    with torch.no_grad():
        return model.density.prob(ITEMS).double().numpy()


def tv_np(p: np.ndarray, q: np.ndarray) -> float:
    return 0.5 * float(np.abs(p - q).sum())


def test_reference_optimum_is_the_stated_one():
    """The issue's numbers for η = 1, uniform π_0: (0.5065, 0.3072, 0.1863)."""
    expected = np.array([0.5065, 0.3072, 0.1863])
    np.testing.assert_allclose(gibbs_policy(np.ones(3) / 3, REWARDS, 1.0), expected, atol=5e-5)


# -- the loop on the finite bandit -------------------------------------------------------------

# 60 000 queries in rounds of growing size: the MLE's sampling noise in the last fit is then far
# below 0.02 (final TV over seeds 0-5: at most 0.0054 for η = 1 and 0.0086 for η = 0.5)
ROUNDS = [2000, 6000, 16000, 36000]
REFIT = {"steps": 100, "lr": 0.1}


@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_iterative_dpo_on_policy_converges_to_gibbs_policy(eta):
    pi_star = gibbs_policy(np.ones(3) / 3, REWARDS, eta)
    model = dpo_model(eta)
    result = online.run(
        model,
        bt_annotator(),
        rounds=len(ROUNDS),
        queries_per_round=ROUNDS,
        proposal="on_policy",
        refit=REFIT,
        progress=False,
    )
    assert tv_np(np.ones(3) / 3, pi_star) > 0.15  # the start is far from the optimum
    assert result.initial_tv == pytest.approx(tv_np(np.ones(3) / 3, pi_star), abs=1e-6)
    learned = probs_of(model)
    assert tv_np(learned, pi_star) <= 0.02
    # what the loop recorded is the divergence of the fitted model to π*
    assert result.tv[-1] == pytest.approx(tv_np(learned, pi_star), abs=1e-6)
    kl = float(np.sum(pi_star * np.log(pi_star / learned)))
    assert result.kl[-1] == pytest.approx(kl, abs=1e-6)  # float32 model probabilities
    assert result.queries == list(np.cumsum(ROUNDS))
    assert len(result.data) == sum(ROUNDS)


def test_best_vs_worst_with_deterministic_labels_goes_greedy():
    """The RLHFlow recipe with the reward model as annotator: labels are deterministic, the BCE
    optimum is at infinite logits, and DPO piles all mass on the best action, away from π*."""
    eta = 1.0
    rewards = torch.tensor(REWARDS)
    pi_star = gibbs_policy(np.ones(3) / 3, REWARDS, eta)
    target = Categorical(probs=torch.tensor(pi_star))
    reward_model = pbde.DeterministicAnnotator(rewards)
    model = dpo_model(eta)
    result = online.run(
        model,
        reward_model,
        rounds=3,
        queries_per_round=500,
        proposal=online.BestVsWorst(4, rewards),
        refit=REFIT,
        target=target,
        progress=False,
    )
    learned = probs_of(model)
    assert learned[0] >= 0.99  # greedy: the argmax of r
    # TV to π* is then at least 1 − π*(0) − 0.01
    assert tv_np(learned, pi_star) >= 1 - pi_star[0] - 0.01
    assert result.tv[-1] == pytest.approx(tv_np(learned, pi_star), abs=1e-6)
    # theory agrees: deterministic preferences have no finite optimum under BCE
    with pytest.raises(ValueError, match="finite optimum"):
        pbde.optimal_density(reward_model, model.behavior, ITEMS)


def test_best_vs_worst_with_stochastic_labels_keeps_the_gibbs_optimum():
    """The same pairs labelled by the Bradley–Terry annotator: they connect all actions, so by
    Lemma 1 the optimum is still π* — it is the deterministic labels that make DPO greedy."""
    eta = 1.0
    pi_star = gibbs_policy(np.ones(3) / 3, REWARDS, eta)
    model = dpo_model(eta)
    online.run(
        model,
        bt_annotator(),
        rounds=len(ROUNDS),
        queries_per_round=ROUNDS,
        proposal=online.BestVsWorst(4, torch.tensor(REWARDS)),
        refit=REFIT,
        progress=False,
    )
    assert tv_np(probs_of(model), pi_star) <= 0.02


def test_static_proposal_and_callable_refit():
    """A static π_0 proposal (the default reference is the DPO behavior's π_ref) and a callable
    refit that sees the pooled data of every round."""
    seen = []

    def refit(model, data):
        seen.append(len(data))
        return pbde.fit(model, data, steps=20, lr=0.1, progress=False)

    reference = torch.tensor([0.6, 0.3, 0.1])
    model = dpo_model(1.0, reference)
    result = online.run(
        model,
        bt_annotator(),
        rounds=3,
        queries_per_round=[10, 20, 30],
        proposal="static",
        refit=refit,
        progress=False,
    )
    assert seen == [10, 30, 60]
    assert result.queries == [10, 30, 60]
    assert all(r.fit_loss is not None for r in result.history)
    # items follow π_0 = (0.6, 0.3, 0.1): chi-square on the 120 queried items
    items = torch.cat([result.data.xa, result.data.xb]).numpy()
    counts = np.bincount(items, minlength=3)
    expected = counts.sum() * np.array([0.6, 0.3, 0.1])
    assert scipy.stats.chisquare(counts, expected).pvalue > ALPHA


def test_queries_to_reach():
    model = dpo_model(1.0)
    result = online.run(
        model, bt_annotator(), rounds=2, queries_per_round=50, refit=REFIT, progress=False
    )
    assert result.queries_to_reach(kl=10.0) == 50
    assert result.queries_to_reach(kl=result.kl[-1]) == min(
        q for q, k in zip(result.queries, result.kl, strict=True) if k <= result.kl[-1]
    )
    assert result.queries_to_reach(tv=1.0) == 50
    with pytest.raises(ValueError, match="exactly one"):
        result.queries_to_reach()


def test_pooled_target_for_a_mixture_of_annotators_matches_scipy():
    """A mixture of two annotators (eq. 25): the optimum depends on the pairs, so 'pooled'
    recomputes it for Q = Σ_t n_t π_{t−1} ⊗ π_{t−1} / N, the on-policy proposals actually used."""
    torch.set_default_dtype(torch.float64)
    p1, p2 = np.array([0.7, 0.2, 0.1]), np.array([0.1, 0.3, 0.6])
    annotator = pbde.MixtureAnnotator(
        [pbde.Annotator(Categorical(probs=torch.tensor(p))) for p in (p1, p2)], [0.5, 0.5]
    )
    model = dpo_model(1.0)
    policies = [probs_of(model)]  # π_0, then the fit after each round

    def refit(m, data):
        result = pbde.fit(m, data, steps=40, lr=0.1, progress=False)
        policies.append(probs_of(m))
        return result

    sizes = [40, 80]
    result = online.run(
        model,
        annotator,
        rounds=2,
        queries_per_round=sizes,
        refit=refit,
        target="pooled",
        progress=False,
    )
    weights = sum(n * np.outer(pi, pi) for n, pi in zip(sizes, policies, strict=False))
    weights = weights / weights.sum()
    # P_ab of the mixture, and the population objective in the scores w (DPO: w = log π + c)
    sig = scipy.special.expit
    probs = 0.5 * sig(np.log(p1)[:, None] - np.log(p1)[None, :]) + 0.5 * sig(
        np.log(p2)[:, None] - np.log(p2)[None, :]
    )

    def objective(w):
        h = w[:, None] - w[None, :]
        return float(
            np.sum(weights * (np.logaddexp(0, -h) * probs + np.logaddexp(0, h) * (1 - probs)))
        )

    w = scipy.optimize.minimize(objective, np.zeros(3), method="BFGS", options={"gtol": 1e-10}).x
    expected = np.exp(w - scipy.special.logsumexp(w))  # β = 1, uniform π_0: π ∝ exp(w)
    with torch.no_grad():
        got = result.target.prob(ITEMS).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert result.tv[-1] == pytest.approx(tv_np(probs_of(model), expected), abs=1e-6)


# -- proposals ---------------------------------------------------------------------------------


def test_active_picks_the_most_uncertain_distinct_pairs():
    reference = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    beta = 2.0
    model = pbde.Annotator(
        Categorical(probs=torch.tensor([0.2, 0.35, 0.45], dtype=torch.float64)),
        pbde.dpo(beta, Categorical(probs=reference)),
    )
    pool_a = torch.tensor([0, 0, 1, 2, 1, 2])
    pool_b = torch.tensor([0, 1, 2, 0, 1, 2])
    omega = beta * (np.log([0.2, 0.35, 0.45]) - np.log(reference.numpy()))
    margin = np.abs(omega[pool_a.numpy()] - omega[pool_b.numpy()])
    margin[pool_a.numpy() == pool_b.numpy()] = np.inf  # identical pairs say nothing
    assert len(set(margin[np.isfinite(margin)].round(6))) == 3  # no ties among distinct pairs

    def full_pool(m, size, generator):
        assert size == 6  # queries × pool
        return pool_a, pool_b

    def chosen(xa, xb):
        return sorted(i for i in range(6) if bool(((xa == pool_a[i]) & (xb == pool_b[i])).any()))

    # the two least certain distinct pairs
    uncertainty = {"base": full_pool, "criterion": "label_entropy"}
    xa, xb = online.Active(pool=3, **uncertainty)(model, 2, None)
    assert chosen(xa, xb) == sorted(np.argsort(margin, kind="stable")[:2].tolist())
    # all three distinct pairs before any identical one, whose label is "least certain" (logit 0)
    xa, xb = online.Active(pool=2, **uncertainty)(model, 3, None)
    assert chosen(xa, xb) == [1, 2, 3]


@pytest.mark.filterwarnings("ignore::pbde.SeparationWarning")  # a handful of queries
def test_run_accounts_for_choosing_and_fitting_per_round():
    result = online.run(
        dpo_model(1.0),
        bt_annotator(),
        rounds=3,
        queries_per_round=[8, 16, 32],
        proposal="active",
        refit={"steps": 20, "lr": 0.1},
        progress=False,
    )
    assert result.queries == [8, 24, 56] and len(result.data) == 56
    assert result.offline_pairs == 0
    for record in result.history:
        assert record.selection_seconds > 0.0 and record.fit_seconds > 0.0
    assert result.selection_seconds == pytest.approx(
        sum(r.selection_seconds for r in result.history)
    )
    assert result.selection_seconds + result.fit_seconds <= result.seconds
    elapsed = [r.seconds for r in result.history]
    assert elapsed == sorted(elapsed)


@pytest.mark.filterwarnings("ignore::pbde.SeparationWarning")
def test_hybrid_run_pools_offline_data_and_active_reads_it():
    """Offline comparisons enter every fit and the posterior, and are not counted as queries;
    a posterior that has seen many (0, 1) comparisons asks about another pair first."""
    annotator = bt_annotator()
    generator = torch.Generator().manual_seed(0)
    offline = annotator.label(
        torch.zeros(400, dtype=torch.long), torch.ones(400, dtype=torch.long), generator=generator
    )
    seen = []

    class Recording(online.Active):
        def __call__(self, model, n, generator=None, *, data=None):
            seen.append(None if data is None else len(data))
            return super().__call__(model, n, generator, data=data)

    pool = (torch.tensor([0, 1, 0]), torch.tensor([1, 2, 2]))
    result = online.run(
        dpo_model(1.0),
        annotator,
        rounds=2,
        queries_per_round=1,
        proposal=Recording(base=pool, criterion="bald"),
        refit={"steps": 20, "lr": 0.1},
        offline=offline,
        progress=False,
    )
    assert seen == [400, 401]  # the proposal saw the offline data, then one query more
    assert result.queries == [1, 2] and result.offline_pairs == 400
    assert len(result.data) == 402 and torch.equal(result.data.xa[:400], offline.xa)
    first = (int(result.data.xa[400]), int(result.data.xb[400]))
    assert first != (0, 1)
    # without the data, the three pairs tie at the uniform start (equal logits and variances)
    belief = posterior.LaplacePosterior(dpo_model(1.0), None, pool)
    scores = posterior.bald(belief.logits, belief.variance())
    assert float(scores.max() - scores.min()) < 1e-12


def test_best_of_n_and_best_vs_worst_follow_the_law_of_extremes():
    """For n iid draws from π with items ordered by reward, P(best ≤ k) = F(k)^n and
    P(worst ≥ k) = (1 − F(k−1))^n."""
    probs = np.array([0.1, 0.2, 0.3, 0.4])
    rewards = torch.tensor([0.0, 1.0, 2.0, 3.0])  # ascending: item k is the k-th best
    model = pbde.Annotator(Categorical(probs=torch.tensor(probs)))
    n, draws = 3, 20000
    generator = torch.Generator().manual_seed(0)
    cdf = np.cumsum(probs)
    law_max = np.diff(np.concatenate([[0.0], cdf**n]))
    law_min = -np.diff(np.concatenate([(1 - np.concatenate([[0.0], cdf[:-1]])) ** n, [0.0]]))
    best = online.BestOfN(n, rewards)(model, draws, generator).numpy()
    assert scipy.stats.chisquare(np.bincount(best, minlength=4), draws * law_max).pvalue > ALPHA
    xa, xb = online.BestVsWorst(n, rewards)(model, draws, generator)
    assert bool((rewards[xa] >= rewards[xb]).all())
    counts_a, counts_b = np.bincount(xa.numpy(), minlength=4), np.bincount(xb.numpy(), minlength=4)
    assert scipy.stats.chisquare(counts_a, draws * law_max).pvalue > ALPHA
    assert scipy.stats.chisquare(counts_b, draws * law_min).pvalue > ALPHA
    # power: the best-of-3 law is not the base law
    assert scipy.stats.chisquare(np.bincount(best, minlength=4), draws * probs).pvalue < 1e-6


def test_main_enhancer_with_tempered_and_rejection_sampled_enhancers():
    probs = np.array([0.1, 0.2, 0.3, 0.4])
    rewards = np.array([2.0, 1.0, 0.0, 0.5])
    model = pbde.Annotator(Categorical(probs=torch.tensor(probs)))
    draws = 20000
    generator = torch.Generator().manual_seed(1)
    tempered = probs ** (1 / 2.5) / np.sum(probs ** (1 / 2.5))
    xa, xb = online.MainEnhancer(online.Tempered(2.5))(model, draws, generator)
    assert scipy.stats.chisquare(np.bincount(xa.numpy(), minlength=4), draws * probs).pvalue > ALPHA
    assert (
        scipy.stats.chisquare(np.bincount(xb.numpy(), minlength=4), draws * tempered).pvalue > ALPHA
    )
    tilted = gibbs_policy(probs, rewards, 0.5)
    enhancer = online.RejectionSampled(torch.tensor(rewards), 0.5)
    _, xb = online.MainEnhancer(enhancer)(model, draws, generator)
    assert (
        scipy.stats.chisquare(np.bincount(xb.numpy(), minlength=4), draws * tilted).pvalue > ALPHA
    )
    # their masses (used by target='pooled') are the same laws
    support = pbde.Support(torch.arange(4))
    np.testing.assert_allclose(online.Tempered(2.5).masses(model, support).numpy(), tempered)
    np.testing.assert_allclose(enhancer.masses(model, support).numpy(), tilted)
    pair = online.MainEnhancer(enhancer).pair_masses(model, support).numpy()
    np.testing.assert_allclose(pair, np.outer(probs, tilted))


def enumerate_best_and_worst(probs, rewards, n):
    """P(best = a) and P(best = a, worst = b) of n i.i.d. draws, by summing over all
    len(probs)^n ordered draws and keeping, as the samplers do, the first draw of the highest
    (and of the lowest) reward."""
    m = len(probs)
    best, pair = np.zeros(m), np.zeros((m, m))
    for draw in itertools.product(range(m), repeat=n):
        p = np.prod([probs[i] for i in draw])
        scores = [rewards[i] for i in draw]
        a, b = draw[int(np.argmax(scores))], draw[int(np.argmin(scores))]
        best[a] += p
        pair[a, b] += p
    return best, pair


@pytest.mark.parametrize("n", [1, 2, 3, 4])
@pytest.mark.parametrize(
    "rewards",
    [[2.0, 1.0, 0.0, 0.5, -1.0], [1.0, 1.0, 0.0, 1.0, 0.0], [3.0, 3.0, 3.0, 3.0, 3.0]],
    ids=["distinct", "ties", "all-equal"],
)
def test_best_of_n_and_best_vs_worst_masses_by_enumeration(n, rewards):
    """The laws that target='pooled' uses for BestOfN (as an enhancer) and BestVsWorst, against
    exact enumeration of every sequence of n draws, ties included."""
    probs = np.array([0.1, 0.25, 0.3, 0.15, 0.2])
    model = pbde.Annotator(Categorical(probs=torch.tensor(probs)))
    support = pbde.Support(torch.arange(5))
    best, pair = enumerate_best_and_worst(probs, rewards, n)
    reward = torch.tensor(rewards)
    np.testing.assert_allclose(online.BestOfN(n, reward).masses(model, support), best, atol=1e-15)
    np.testing.assert_allclose(
        online.MainEnhancer(online.BestOfN(n, reward)).pair_masses(model, support),
        np.outer(probs, best),
        atol=1e-15,
    )
    if n >= 2:
        got = online.BestVsWorst(n, reward).pair_masses(model, support).numpy()
        np.testing.assert_allclose(got, pair, atol=1e-15)
        assert got.sum() == pytest.approx(1.0)


def test_best_vs_worst_pair_masses_match_its_sampler():
    probs = np.array([0.1, 0.25, 0.3, 0.15, 0.2])
    rewards = torch.tensor([1.0, 1.0, 0.0, 2.0, 0.0])
    model = pbde.Annotator(Categorical(probs=torch.tensor(probs)))
    proposal = online.BestVsWorst(3, rewards)
    q = proposal.pair_masses(model, pbde.Support(torch.arange(5))).numpy().reshape(-1)
    draws = 40000
    xa, xb = proposal(model, draws, torch.Generator().manual_seed(3))
    counts = np.bincount((xa * 5 + xb).numpy(), minlength=25)
    seen = q > 0
    assert counts[~seen].sum() == 0
    assert scipy.stats.chisquare(counts[seen], draws * q[seen]).pvalue > ALPHA


# -- the loop on sequences ---------------------------------------------------------------------

SEQUENCE_ROUNDS = [1000, 2000, 4000, 8000]


def sequence_policy(backbone: str):
    """A small untrained language model with EOS forced at length 4 on its SequenceSupport
    (V = 3: tokens 1, 2 and EOS = 0; 15 completions): the GRU alone, GPT-2 for two prompts."""
    vocab, length = 3, 4
    if backbone == "gru":
        policy = pbde.densities.Autoregressive(vocab, length, embedding_dim=8, hidden_size=16)
        return policy, pbde.SequenceSupport(vocab, length)
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        vocab_size=vocab,
        n_positions=length + 3,
        n_embd=16,
        n_layer=1,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
    )
    lm = pbde.densities.CausalLM(transformers.GPT2LMHeadModel(config))
    policy = pbde.densities.ForcedEOS(lm, length, eos=0)
    return policy, pbde.SequenceSupport(vocab, length, prompts=[[0, 1], [0, 2]])


@pytest.mark.parametrize(("backbone", "beta"), [("gru", 0.5), ("gpt2", 1.0)])
def test_iterative_dpo_on_sequences_converges_to_eq16(backbone, beta):
    """On-policy iterative DPO with a language model that draws its own completions, labelled
    by a Luce annotator with known p*: the pairs drawn from π_θ have full support, so by
    Lemma 1 the pooled rounds have the optimum of eq. 16, π ∝ π_ref · p*^{1/β} (per prompt),
    computed here in numpy from π_ref's log-masses and the reward."""
    torch.manual_seed(0)
    policy, support = sequence_policy(backbone)
    with torch.no_grad():
        log_ref = policy.log_prob(support.points).double()
    reference = pbde.densities.Precomputed(support.points, log_ref)
    completions = support.points if support.prompts is None else support.points[:, 1]
    # the reward: one per token 1 (per token equal to the prompt's last), a liking for length 3
    favoured = torch.ones(len(support), dtype=torch.long)
    if support.prompts is not None:
        favoured = support.points[:, 0, 1]
    rewards = (completions == favoured[:, None]).sum(1).double()
    rewards = rewards - 0.5 * (support.lengths.double() - 3).abs()
    p_star = pbde.densities.Tabulated(support, rewards, normalize=True)
    model = pbde.Annotator(policy, pbde.dpo(beta, reference))
    result = online.run(
        model,
        pbde.Annotator(p_star),
        rounds=len(SEQUENCE_ROUNDS),
        queries_per_round=SEQUENCE_ROUNDS,
        support=support,
        refit={"steps": 150, "lr": 3e-2},
        progress=False,
    )
    groups = support.group_index.numpy()
    logits = log_ref.numpy() + rewards.numpy() / beta  # eq. 16, in logs
    optimum = np.zeros(len(support))
    for g in np.unique(groups):
        at = groups == g
        optimum[at] = np.exp(logits[at] - scipy.special.logsumexp(logits[at]))
    with torch.no_grad():
        learned = policy.log_prob(support.points).double().exp().numpy()
        target = result.target.prob(support.points).double().numpy()
    np.testing.assert_allclose(target, optimum, atol=1e-9)  # the loop's target is eq. 16

    def mean_kl(p, q):  # the mean over prompts of KL(p ‖ q)
        return np.mean([np.sum(p[groups == g] * np.log(p / q)[groups == g]) for g in set(groups)])

    reference_probs = log_ref.exp().numpy()
    assert mean_kl(optimum, reference_probs) > 0.2  # the start is far from the optimum
    assert mean_kl(optimum, learned) < 0.02
    assert result.kl[-1] == pytest.approx(mean_kl(optimum, learned), abs=1e-5)
    # the pairs were the policy's own completions of one prompt
    if support.prompts is not None:
        assert bool((result.data.xa[:, 0] == result.data.xb[:, 0]).all())


def test_on_policy_with_a_support_draws_pairs_within_a_prompt():
    """OnPolicy(support) on a conditional support: a prompt drawn uniformly, then both items
    from the density's conditional masses; checked with a chi-square test on the pair counts."""
    support = pbde.SequenceSupport(3, 2, prompts=[[1], [2]])  # 3 completions per prompt
    probs = np.array([0.2, 0.5, 0.3, 0.6, 0.1, 0.3])  # p(completion | prompt), per prompt
    density = pbde.densities.Tabulated(support, torch.tensor(np.log(probs)))
    model = pbde.Annotator(density)
    expected = np.zeros((6, 6))
    for block in (slice(0, 3), slice(3, 6)):
        expected[block, block] = 0.5 * np.outer(probs[block], probs[block])
    proposal = online.OnPolicy(support)
    np.testing.assert_allclose(proposal.pair_masses(model, support).numpy(), expected, atol=1e-12)
    draws = 20000
    xa, xb = proposal(model, draws, torch.Generator().manual_seed(0))
    points = support.points.reshape(6, -1)

    def index(x):
        return (x.reshape(draws, 1, -1) == points[None]).all(-1).double().argmax(1).numpy()

    counts = np.bincount(index(xa) * 6 + index(xb), minlength=36)
    seen = expected.reshape(-1) > 0
    assert counts[~seen].sum() == 0  # no pair mixes the prompts
    assert scipy.stats.chisquare(counts[seen], draws * expected.reshape(-1)[seen]).pvalue > ALPHA
    # power: the same pairs drawn uniformly within each prompt would fail
    assert (
        scipy.stats.chisquare(counts[seen], np.full(seen.sum(), draws / seen.sum())).pvalue < 1e-6
    )


# -- rejection sampling ------------------------------------------------------------------------

BASE = np.array([0.3, 0.25, 0.2, 0.12, 0.08, 0.05])
R = np.array([0.0, 0.4, 0.8, 1.2, 1.6, 2.0])  # the rare items pay most


def exact_stage_rates(etas) -> list[float]:
    """E_{π_{k−1}}[exp((r − M)(1/η_k − 1/η_{k−1}))], π_0 = BASE, M = max r."""
    rates, previous, inverse = [], BASE, 0.0
    for eta in etas:
        delta = 1 / eta - inverse
        rates.append(float(np.sum(previous * np.exp((R - R.max()) * delta))))
        previous, inverse = gibbs_policy(BASE, R, eta), 1 / eta
    return rates


def test_rejection_sample_matches_its_target():
    eta, n = 0.5, 20000
    base = Categorical(probs=torch.tensor(BASE))
    out = online.rejection_sample(
        base, torch.tensor(R), eta, n, generator=torch.Generator().manual_seed(2)
    )
    counts = np.bincount(out.samples.numpy(), minlength=6)
    target = gibbs_policy(BASE, R, eta)
    assert scipy.stats.chisquare(counts, n * target).pvalue > ALPHA
    assert scipy.stats.chisquare(counts, n * BASE).pvalue < 1e-6  # the test has power
    (rate,) = exact_stage_rates([eta])
    sd = math.sqrt(rate * (1 - rate) / out.proposals)
    assert abs(out.acceptance_rate - rate) < 4 * sd
    assert out.stage_acceptance_rates == (pytest.approx(out.acceptance_rate),)


def test_multistep_rejection_sample_matches_its_target_with_higher_stage_acceptance():
    etas, n = (2.0, 1.0, 0.5), 20000
    base = Categorical(probs=torch.tensor(BASE))
    reward = torch.tensor(R)
    single = online.rejection_sample(
        base, reward, etas[-1], n, generator=torch.Generator().manual_seed(3)
    )
    multi = online.multistep_rejection_sample(
        base, reward, etas, n, generator=torch.Generator().manual_seed(4)
    )
    counts = np.bincount(multi.samples.numpy(), minlength=6)
    assert scipy.stats.chisquare(counts, n * gibbs_policy(BASE, R, etas[-1])).pvalue > ALPHA
    exact = exact_stage_rates(etas)
    (exact_single,) = exact_stage_rates(etas[-1:])
    # the promise: every stage accepts more often than the single step does ...
    assert all(rate > exact_single for rate in exact)
    assert all(rate > single.acceptance_rate for rate in multi.stage_acceptance_rates)
    for got, want in zip(multi.stage_acceptance_rates, exact, strict=True):
        assert abs(got - want) < 4 * math.sqrt(want * (1 - want) / (n * 0.5 / want))
    # ... and the rates telescope: their product is the single-step rate
    assert math.prod(exact) == pytest.approx(exact_single, rel=1e-12)
    assert multi.acceptance_rate == pytest.approx(math.prod(multi.stage_acceptance_rates))
    assert abs(multi.acceptance_rate - exact_single) < 4 * math.sqrt(exact_single / multi.proposals)


def test_rejection_sample_on_a_continuous_density():
    """π_0 = N(0, 1) truncated to [−3, 3], r(x) = x, η = 1: the target is N(1, 1) truncated to
    [−3, 3] (completing the square); Kolmogorov–Smirnov against scipy."""
    base = TruncatedNormalMixture([0.0], [1.0], low=-3.0, high=3.0)
    out = online.rejection_sample(
        base, lambda x: x.double(), 1.0, 4000, bound=3.0, generator=torch.Generator().manual_seed(5)
    )
    target = scipy.stats.truncnorm(-4.0, 2.0, loc=1.0, scale=1.0)
    assert scipy.stats.kstest(out.samples.double().numpy(), target.cdf).pvalue > ALPHA
    assert (
        scipy.stats.kstest(out.samples.double().numpy(), scipy.stats.truncnorm(-3, 3).cdf).pvalue
        < 1e-6
    )
    with pytest.raises(ValueError, match="exceeds 'bound'"):
        online.rejection_sample(base, lambda x: x.double(), 1.0, 10, bound=0.0)


# -- bad input ---------------------------------------------------------------------------------


def test_bad_input_is_named():
    model, annotator = dpo_model(1.0), bt_annotator()
    kwargs = {"rounds": 1, "queries_per_round": 4, "progress": False}
    with pytest.raises(TypeError, match="'model'"):
        online.run(annotator.density, annotator, **kwargs)
    with pytest.raises(TypeError, match="'annotator'"):
        online.run(model, "bt", **kwargs)
    with pytest.raises(ValueError, match="'rounds'"):
        online.run(model, annotator, rounds=0, queries_per_round=4)
    with pytest.raises(ValueError, match="one entry per round"):
        online.run(model, annotator, rounds=2, queries_per_round=[4])
    with pytest.raises(ValueError, match="'proposal'"):
        online.run(model, annotator, proposal="greedy", **kwargs)
    with pytest.raises(TypeError, match="'refit'"):
        online.run(model, annotator, refit=3, **kwargs)
    with pytest.raises(ValueError, match="'reference'"):
        plain = pbde.Annotator(Categorical(size=3))  # Luce: no π_ref to draw from
        online.run(plain, annotator, proposal="static", **kwargs)
    mixture = pbde.MixtureAnnotator([annotator, bt_annotator(REWARDS[::-1].copy())])
    with pytest.raises(ValueError, match="Lemma 1"):
        online.run(model, mixture, **kwargs)
    with pytest.raises(ValueError, match="Lemma 1"):
        online.run(model, pbde.DeterministicAnnotator(torch.tensor(REWARDS)), **kwargs)
    with pytest.raises(ValueError, match="pair masses"):
        online.run(model, mixture, proposal="active", target="pooled", **kwargs)
    with pytest.raises(ValueError, match="'target'"):
        online.run(model, annotator, target="best", **kwargs)
    base = Categorical(probs=torch.tensor(BASE))
    with pytest.raises(ValueError, match="strictly decreasing"):
        online.multistep_rejection_sample(base, torch.tensor(R), (0.5, 1.0), 10)
    with pytest.raises(ValueError, match="'eta'"):
        online.rejection_sample(base, torch.tensor(R), -1.0, 10)
    with pytest.raises(ValueError, match="'bound'"):
        online.rejection_sample(
            TruncatedNormalMixture([0.0], [1.0], low=-1.0, high=1.0), lambda x: x, 1.0, 10
        )
    with pytest.raises(ValueError, match="'n'"):
        online.BestVsWorst(1, torch.tensor(R))
    with pytest.raises(ValueError, match="'pool'"):
        online.Active(pool=0)
    with pytest.raises(TypeError, match="'reward'"):
        online.BestOfN(2, "reward")
    with pytest.raises(TypeError, match="'offline'"):
        online.run(model, annotator, offline=(ITEMS, ITEMS), **kwargs)
    with pytest.raises(ValueError, match="fixed pool holds 1 pairs"):
        pool = (torch.tensor([0]), torch.tensor([1]))
        online.run(model, annotator, proposal=online.Active(base=pool), **kwargs)
    continuous = pbde.Annotator(TruncatedNormalMixture([0.0], [1.0], low=-1.0, high=1.0))
    with pytest.raises(ValueError, match="no trainable parameters"):
        online.Active(criterion="bald")(continuous, 2, None)
    with pytest.raises(ValueError, match="finite support or grid"):
        online.Active()(continuous, 2, None)


# -- the reproduction --------------------------------------------------------------------------


def test_reproduce_online_quick(tmp_path):
    from pbde.experiments import online as experiment

    settings = experiment.quick()
    result = experiment.run(settings, progress=False)
    metrics = result.metrics
    assert set(metrics["toy_queries_to_threshold"]) == set(settings.strategies)
    # the bandit's optimum is π* ∝ π_0 exp(r/η), and every strategy learns it well
    np.testing.assert_allclose(
        metrics["bandit_optimum"], gibbs_policy(np.ones(3) / 3, REWARDS, 1.0), atol=1e-9
    )
    assert metrics["bandit_initial_kl"] == pytest.approx(
        float(
            np.sum(
                gibbs_policy(np.ones(3) / 3, REWARDS, 1.0)
                * np.log(3 * gibbs_policy(np.ones(3) / 3, REWARDS, 1.0))
            )
        ),
        rel=1e-6,
    )
    for strategy in ("static", "on_policy"):
        assert metrics["bandit"][strategy]["final_kl"] < 0.005
        # DPO moves the toy model from π_pre towards π_pre·p*^{1/β}: KL falls by half at least
        assert metrics["toy"][strategy]["final_kl"] < 0.5 * metrics["toy_initial_kl"]
    # active queries never spend a query on two identical items
    for strategy in ("active", "uncertainty"):
        assert metrics["bandit"][strategy]["identical_pair_fraction"] == 0.0
    for part in ("toy", "bandit"):  # the time per round, choosing and re-fitting
        assert metrics[part]["active"]["selection_seconds_per_round"] > 0.0
        assert metrics[part]["static"]["fit_seconds_per_round"] > 0.0
    written = result.save(tmp_path)
    assert [p.name for p in written] == ["online.json", "online.png"]
    assert written[1].stat().st_size > 10_000
