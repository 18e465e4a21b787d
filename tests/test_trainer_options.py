"""The trainer options of pbde.fit and pbde.evaluate, against independent references.

References: optimizer steps written by hand with ``torch.optim`` on the objective computed from
its definition, closed forms of the learning-rate schedules, per-pair sums in float64 for the
logged metrics, and exact bookkeeping of which pairs each step saw (recovered from the logits
and the labels of the batches a loss callable is handed).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

import pbde
from pbde.densities import Autoregressive, Categorical, Precomputed
from pbde.io import PAD_TOKEN

N_ITEMS = 6
BETA = 0.7


# -- small models and data ------------------------------------------------------------------


def dpo_model(seed: int = 0, dtype=torch.float64) -> pbde.Annotator:
    """DPO on 6 items: a policy and a reference Categorical with random logits."""
    generator = torch.Generator().manual_seed(seed)
    ref = Categorical(logits=torch.randn(N_ITEMS, generator=generator, dtype=dtype))
    policy = Categorical(logits=torch.randn(N_ITEMS, generator=generator, dtype=dtype))
    return pbde.Annotator(policy, pbde.dpo(BETA, ref))


def random_prefs(n: int, seed: int = 1, *, soft=False, weighted=False) -> pbde.Preferences:
    generator = torch.Generator().manual_seed(seed)
    xa = torch.randint(0, N_ITEMS, (n,), generator=generator)
    xb = torch.randint(0, N_ITEMS, (n,), generator=generator)
    if soft:
        y = torch.rand(n, generator=generator, dtype=torch.float64)
    else:
        y = (torch.rand(n, generator=generator) < 0.6).double()
    weight = torch.rand(n, generator=generator, dtype=torch.float64) * 2 if weighted else None
    return pbde.Preferences(xa, xb, y, weight=weight)


def log_probs(model: pbde.Annotator, logits: torch.Tensor | None = None):
    """(log π, log π_ref) of all items, float64, from the Categorical logits by hand."""
    theta = model.density.logits if logits is None else logits
    return (
        torch.log_softmax(theta.double(), 0),
        torch.log_softmax(model.references[0].logits.double(), 0),
    )


def dpo_objective(theta, log_ref, prefs, samples=None, reg_weight=0.0):
    """Weighted mean BCE of β·(log π − log π_ref) logits (+ reg_weight · mean NLL of samples)."""
    omega = BETA * (torch.log_softmax(theta, 0) - log_ref)
    h = omega[prefs.xa] - omega[prefs.xb]
    per_pair = F.binary_cross_entropy_with_logits(h, prefs.y.double(), reduction="none")
    w = torch.ones_like(per_pair) if prefs.weight is None else prefs.weight.double()
    value = (w * per_pair).sum() / w.sum()
    if samples is not None:
        value = value - reg_weight * torch.log_softmax(theta, 0)[samples].mean()
    return value


def lr_closed_form(schedule: str, lr: float, steps: int, warmup: int) -> torch.Tensor:
    """lr_t: linear warm-up lr·(t+1)/(W+1) for t < W, then with p = (t−W)/(T−W): cosine
    lr·(1 + cos πp)/2, linear lr·(1 − p), constant lr."""
    values = []
    for t in range(steps):
        if t < warmup:
            values.append(lr * (t + 1) / (warmup + 1))
            continue
        p = (t - warmup) / (steps - warmup)
        factor = {"cosine": (1 + math.cos(math.pi * p)) / 2, "linear": 1 - p, "constant": 1.0}
        values.append(lr * factor[schedule])
    return torch.tensor(values, dtype=torch.float64)


def hand_run(model, prefs, *, steps, lrs, make_optimizer, max_grad_norm=None):
    """Full-batch DPO steps written out with torch.optim: (final logits, pre-clipping norms)."""
    theta = model.density.logits.detach().clone().requires_grad_(True)
    _, log_ref = log_probs(model)
    optimizer = make_optimizer([theta])
    norms = []
    for t in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = float(lrs[t])
        optimizer.zero_grad()
        dpo_objective(theta, log_ref, prefs).backward()
        if max_grad_norm is not None:
            norms.append(float(torch.nn.utils.clip_grad_norm_([theta], max_grad_norm)))
        optimizer.step()
    return theta.detach(), norms


class PairRecorder:
    """A zero loss that records which pairs each call saw.

    The model is Luce on items 0..n with logits 0.1·k, pair i is (i + 1, 0) with label
    (i + 1)/(n + 1): the logit 0.1·(i + 1) and the label each name the pair, and must agree.
    The zero loss leaves Adam's parameters where they are, so the logits keep naming pairs.
    """

    def __init__(self, n: int):
        self.n = n
        self.batches: list[list[int]] = []
        self.from_logits: list[list[int]] = []

    def model(self) -> pbde.Annotator:
        logits = 0.1 * torch.arange(self.n + 1, dtype=torch.float64)
        return pbde.Annotator(Categorical(logits=logits))

    def prefs(self) -> pbde.Preferences:
        i = torch.arange(self.n)
        y = (i + 1).double() / (self.n + 1)
        return pbde.Preferences(i + 1, torch.zeros_like(i), y)

    def __call__(self, logits, y):
        self.batches.append(((y.double() * (self.n + 1)).round().long() - 1).tolist())
        self.from_logits.append(((logits.detach().double() * 10).round().long() - 1).tolist())
        return 0.0 * logits


# -- gradient accumulation ------------------------------------------------------------------


@pytest.mark.parametrize("parts", [2, 3, 5])
@pytest.mark.parametrize("batches", ["full", "mini", "epochs"])
@pytest.mark.parametrize("weighted_and_regularized", [False, True])
def test_gradient_accumulation_takes_the_unsplit_step(parts, batches, weighted_and_regularized):
    """K micro-batches (of unequal sizes: 20 pairs, batches of 7, epochs of 7 + 7 + 6) give the
    parameters, losses and logged metrics of K = 1 after 6 steps; weights normalize by the whole
    batch's weight, the regularizer counts once per step."""
    prefs = random_prefs(20, soft=True, weighted=weighted_and_regularized)
    regularizer = None
    if weighted_and_regularized:
        regularizer = pbde.nll_regularizer(torch.tensor([0, 0, 3, 5]), weight=0.5)
    length = dict(full=dict(steps=6), mini=dict(steps=6, batch_size=7))
    length["epochs"] = dict(epochs=2, batch_size=7)
    results = []
    for k in (1, parts):
        model = dpo_model()
        result = pbde.fit(
            model,
            prefs,
            lr=0.1,
            gradient_accumulation=k,
            regularizer=regularizer,
            log_every=2,
            progress=False,
            **length[batches],
        )
        results.append((model.density.logits.detach().clone(), result))
    (theta_1, result_1), (theta_k, result_k) = results
    assert result_k.steps == 6
    assert not torch.equal(theta_1, dpo_model().density.logits)  # it did move
    torch.testing.assert_close(theta_k, theta_1, rtol=0, atol=1e-12)
    torch.testing.assert_close(result_k.losses, result_1.losses, rtol=0, atol=1e-12)
    for record_k, record_1 in zip(result_k.metrics, result_1.metrics, strict=True):
        assert record_k.keys() == record_1.keys()
        for name in record_1:
            if name != "seconds":
                assert record_k[name] == pytest.approx(record_1[name], rel=1e-10, abs=1e-12)


def test_gradient_accumulation_full_batch_equals_a_hand_written_adam_step():
    """K = 3 with a regularizer against Adam by hand on the objective's definition."""
    prefs = random_prefs(20, soft=True, weighted=True)
    samples = torch.tensor([0, 0, 3, 5])
    model = dpo_model()
    theta = model.density.logits.detach().clone().requires_grad_(True)
    _, log_ref = log_probs(model)
    optimizer = torch.optim.Adam([theta], lr=0.1)
    for _ in range(4):
        optimizer.zero_grad()
        dpo_objective(theta, log_ref, prefs, samples, 0.5).backward()
        optimizer.step()
    pbde.fit(
        model,
        prefs,
        steps=4,
        lr=0.1,
        schedule="constant",
        gradient_accumulation=3,
        regularizer=pbde.nll_regularizer(samples, weight=0.5),
        progress=False,
    )
    torch.testing.assert_close(model.density.logits.detach(), theta.detach(), rtol=0, atol=1e-12)


# -- epochs ---------------------------------------------------------------------------------


def test_epochs_use_every_pair_once_per_epoch_in_new_orders():
    n, batch, epochs = 10, 4, 3
    recorder = PairRecorder(n)
    result = pbde.fit(
        recorder.model(),
        recorder.prefs(),
        loss=recorder,
        epochs=epochs,
        batch_size=batch,
        lr=0.1,
        progress=False,
    )
    per_epoch = math.ceil(n / batch)
    assert result.steps == epochs * per_epoch == len(result.losses) == len(recorder.batches)
    assert recorder.batches == recorder.from_logits  # labels travel with their pairs
    assert [len(b) for b in recorder.batches] == [4, 4, 2] * epochs
    orders = []
    for e in range(epochs):
        order = sum(recorder.batches[e * per_epoch : (e + 1) * per_epoch], [])
        assert sorted(order) == list(range(n))  # each pair exactly once
        orders.append(order)
    assert len({tuple(o) for o in orders}) == epochs  # a new permutation each epoch


def test_epochs_full_batch_and_argument_errors():
    prefs = random_prefs(10)
    result = pbde.fit(dpo_model(), prefs, epochs=4, lr=0.1, progress=False)
    assert result.steps == 4  # full batch: one step per epoch
    result = pbde.fit(dpo_model(), prefs, epochs=2, batch_size=10, lr=0.1, progress=False)
    assert result.steps == 2
    with pytest.raises(ValueError, match="'steps' or 'epochs'"):
        pbde.fit(dpo_model(), prefs, steps=3, epochs=2, batch_size=4, progress=False)
    with pytest.raises(ValueError, match="replacement"):
        pbde.fit(dpo_model(), prefs, epochs=2, batch_size=4, replacement=True, progress=False)
    with pytest.raises(ValueError, match="epochs"):
        pbde.fit(dpo_model(), prefs, epochs=0, batch_size=4, progress=False)


class Interrupt(Exception):
    pass


def interrupt_after(calls: int):
    """A zero regularizer that raises at its call number ``calls`` (0-based)."""
    count = [0]

    def regularizer(model):
        if count[0] == calls:
            raise Interrupt
        count[0] += 1
        return torch.zeros((), dtype=torch.float64)

    return regularizer


def test_epoch_run_interrupted_mid_epoch_resumes_bit_identically(tmp_path):
    """10 pairs in batches of 4 (3 per epoch), 3 epochs; checkpoint every 2 steps, interrupted
    at step 5: resumed from step 4, the second batch of epoch 2."""
    prefs = random_prefs(10, soft=True)
    options = dict(epochs=3, batch_size=4, lr=0.05, schedule="linear", progress=False)
    model_a = dpo_model()
    result_a = pbde.fit(model_a, prefs, **options)
    path = tmp_path / "run.pt"
    with pytest.raises(Interrupt):
        pbde.fit(
            dpo_model(),
            prefs,
            checkpoint=path,
            checkpoint_every=2,
            regularizer=interrupt_after(5),
            **options,
        )
    state = torch.load(path, weights_only=True)
    assert state["step"] == 4
    assert not any(k.startswith("references.") for k in state["model"])
    model_c = dpo_model()
    result_c = pbde.fit(model_c, prefs, checkpoint=path, checkpoint_every=2, **options)
    assert torch.equal(model_c.density.logits, model_a.density.logits)
    assert torch.equal(result_c.losses, result_a.losses)
    assert torch.equal(result_c.learning_rates, result_a.learning_rates)


# -- mini-batch alignment -------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [3, 10, 25])
def test_mini_batches_with_replacement_keep_labels_with_their_pairs(batch_size):
    """Batches drawn with replacement, of fewer, as many as, and more pairs than the data set."""
    recorder = PairRecorder(10)
    pbde.fit(
        recorder.model(),
        recorder.prefs(),
        loss=recorder,
        steps=4,
        batch_size=batch_size,
        replacement=True,
        progress=False,
    )
    assert all(len(b) == batch_size for b in recorder.batches)
    assert recorder.batches == recorder.from_logits


# -- schedules ------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
@pytest.mark.parametrize("warmup", [0, 3])
def test_learning_rates_follow_the_closed_forms(schedule, warmup):
    steps, lr = 12, 0.2
    result = pbde.fit(
        dpo_model(),
        random_prefs(8),
        steps=steps,
        lr=lr,
        schedule=schedule,
        warmup_steps=warmup,
        progress=False,
    )
    expected = lr_closed_form(schedule, lr, steps, warmup)
    torch.testing.assert_close(result.learning_rates, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "options, name",
    [
        (dict(warmup_steps=5), "warmup_steps"),
        (dict(warmup_steps=7), "warmup_steps"),
        (dict(warmup_steps=-1), "warmup_steps"),
        (dict(warmup_steps=1.5), "warmup_steps"),
        (dict(schedule="step"), "schedule"),
        (dict(optimizer="sgd"), "optimizer"),
        (dict(weight_decay=-0.1, optimizer="adamw"), "weight_decay"),
        (dict(weight_decay=0.1), "weight_decay"),  # with the default optimizer="adam"
        (dict(max_grad_norm=0.0), "max_grad_norm"),
        (dict(gradient_accumulation=0), "gradient_accumulation"),
        (dict(log_every=0), "log_every"),
        (dict(eval_every=2), "eval_every"),  # without eval_prefs
        (dict(precision="fp8"), "precision"),
        (dict(precision="fp16"), "fp16"),  # float16 needs CUDA
    ],
)
def test_bad_trainer_options_name_the_argument(options, name):
    with pytest.raises(ValueError, match=name):
        pbde.fit(dpo_model(), random_prefs(8), steps=5, progress=False, **options)


# -- optimizer, weight decay, clipping ------------------------------------------------------


def test_adamw_with_weight_decay_equals_torch_adamw_by_hand():
    steps, lr, warmup = 10, 0.05, 2
    prefs = random_prefs(16, soft=True, weighted=True)
    model = dpo_model()
    lrs = lr_closed_form("linear", lr, steps, warmup)
    expected, _ = hand_run(
        model,
        prefs,
        steps=steps,
        lrs=lrs,
        make_optimizer=lambda p: torch.optim.AdamW(p, lr=lr, weight_decay=0.3),
    )
    without_decay, _ = hand_run(
        model, prefs, steps=steps, lrs=lrs, make_optimizer=lambda p: torch.optim.Adam(p, lr=lr)
    )
    assert (expected - without_decay).abs().max() > 1e-4  # the decay matters here
    result = pbde.fit(
        model,
        prefs,
        steps=steps,
        lr=lr,
        optimizer="adamw",
        weight_decay=0.3,
        schedule="linear",
        warmup_steps=warmup,
        progress=False,
    )
    torch.testing.assert_close(result.learning_rates, lrs, rtol=0, atol=1e-12)
    torch.testing.assert_close(model.density.logits.detach(), expected, rtol=0, atol=1e-12)


def test_clipping_equals_clip_grad_norm_by_hand_and_logs_the_norm_before_clipping():
    steps, lr, max_norm = 8, 0.1, 0.05
    prefs = random_prefs(16, soft=True)
    model = dpo_model()
    lrs = lr_closed_form("cosine", lr, steps, 0)
    expected, norms = hand_run(
        model,
        prefs,
        steps=steps,
        lrs=lrs,
        make_optimizer=lambda p: torch.optim.Adam(p, lr=lr),
        max_grad_norm=max_norm,
    )
    assert max(norms) > 2 * max_norm  # clipping is active
    result = pbde.fit(
        model, prefs, steps=steps, lr=lr, max_grad_norm=max_norm, log_every=1, progress=False
    )
    torch.testing.assert_close(model.density.logits.detach(), expected, rtol=0, atol=1e-12)
    logged = [r["grad_norm"] for r in result.metrics]
    torch.testing.assert_close(
        torch.tensor(logged, dtype=torch.float64),
        torch.tensor(norms, dtype=torch.float64),
        rtol=1e-12,
        atol=0,
    )


# -- logging --------------------------------------------------------------------------------


def hand_metrics(model, theta, prefs) -> dict:
    """The metrics of the pairs at parameters ``theta``, summed pair by pair in float64."""
    log_p, log_ref = log_probs(model, theta)
    omega = BETA * (log_p - log_ref)
    y = prefs.y.double()
    w = torch.ones_like(y) if prefs.weight is None else prefs.weight.double()
    a, b = prefs.xa, prefs.xb
    h = omega[a] - omega[b]
    chosen = y * omega[a] + (1 - y) * omega[b]
    rejected = y * omega[b] + (1 - y) * omega[a]
    right = y * (h > 0) + (1 - y) * (h < 0) + 0.5 * (h == 0)
    log_likelihood = y * F.logsigmoid(h) + (1 - y) * F.logsigmoid(-h)

    def mean(v):
        return float((w * v).sum() / w.sum())

    return {
        "loss": -mean(log_likelihood),
        "log_likelihood": mean(log_likelihood),
        "accuracy": mean(right),
        "rewards/chosen": mean(chosen),
        "rewards/rejected": mean(rejected),
        "rewards/margins": mean(chosen - rejected),
        "rewards/accuracies": mean(right),
        "logps/chosen": mean(y * log_p[a] + (1 - y) * log_p[b]),
        "logps/rejected": mean(y * log_p[b] + (1 - y) * log_p[a]),
    }


@pytest.mark.parametrize("soft", [False, True])
def test_logged_training_metrics_equal_a_recomputation_from_the_model(soft):
    """Full batch, log_every=1: record t holds the metrics of the pairs at the parameters the
    step's forward pass saw (those after t − 1 steps)."""
    prefs = random_prefs(15, soft=soft, weighted=True)
    # a tie (h = 0 exactly) counts ½ in the accuracy
    prefs = pbde.Preferences(
        torch.cat([prefs.xa, torch.tensor([2])]),
        torch.cat([prefs.xb, torch.tensor([2])]),
        torch.cat([prefs.y, torch.tensor([1.0], dtype=torch.float64)]),
        weight=torch.cat([prefs.weight, torch.tensor([1.5], dtype=torch.float64)]),
    )
    model = dpo_model()
    thetas = [model.density.logits.detach().clone()]
    records = []

    def log(record):
        records.append(record)
        thetas.append(model.density.logits.detach().clone())

    result = pbde.fit(model, prefs, steps=5, lr=0.2, log_every=1, log=log, progress=False)
    assert records == result.metrics
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    for t, record in enumerate(records):
        expected = hand_metrics(model, thetas[t], prefs)
        for name in (
            "rewards/chosen",
            "rewards/rejected",
            "rewards/margins",
            "rewards/accuracies",
            "logps/chosen",
            "logps/rejected",
            "loss",
        ):
            assert record[name] == pytest.approx(expected[name], rel=1e-10, abs=1e-12), name
        assert record["learning_rate"] == float(result.learning_rates[t])
        assert record["seconds"] >= 0
        assert "grad_norm" not in record and "tokens_per_second" not in record


def test_logged_metrics_are_averages_over_log_every_steps(tmp_path):
    """log_every=3 over 6 full-batch steps: two records, each the mean of its three steps; the
    JSON Lines file holds one line per record (appended by a second run)."""
    prefs = random_prefs(12, soft=True)
    model = dpo_model()
    thetas = []

    def snapshot(model):
        thetas.append(model.density.logits.detach().clone())
        return torch.zeros((), dtype=torch.float64)

    path = tmp_path / "metrics.jsonl"
    result = pbde.fit(
        model, prefs, steps=6, lr=0.2, log=path, log_every=3, regularizer=snapshot, progress=False
    )
    assert [r["step"] for r in result.metrics] == [3, 6]
    for record, window in zip(result.metrics, (thetas[:3], thetas[3:]), strict=True):
        per_step = [hand_metrics(model, theta, prefs) for theta in window]
        for name in ("loss", "rewards/margins", "logps/chosen"):
            expected = sum(m[name] for m in per_step) / 3
            assert record[name] == pytest.approx(expected, rel=1e-10, abs=1e-12), name
    lines = path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == result.metrics
    pbde.fit(dpo_model(), prefs, steps=6, lr=0.2, log=path, log_every=2, progress=False)
    assert len(path.read_text().splitlines()) == 2 + 3


def test_eval_records_equal_evaluate_at_that_step():
    prefs, eval_prefs = random_prefs(12, soft=True), random_prefs(9, seed=7, weighted=True)
    model = dpo_model()
    checks = []

    def log(record):
        if "eval/loss" in record:
            direct = pbde.evaluate(model, eval_prefs)
            by_hand = hand_metrics(model, model.density.logits.detach(), eval_prefs)
            checks.append((record, direct, by_hand))

    result = pbde.fit(
        model,
        prefs,
        steps=6,
        lr=0.2,
        batch_size=5,
        eval_prefs=eval_prefs,
        eval_every=2,
        eval_batch_size=4,
        log=log,
        log_every=3,
        progress=False,
    )
    assert [r["step"] for r in result.metrics] == [2, 3, 4, 6, 6]
    assert [record["step"] for record, _, _ in checks] == [2, 4, 6]
    for record, direct, by_hand in checks:
        assert {k[len("eval/") :] for k in record if k != "step"} == set(direct)
        for name, value in direct.items():
            assert record[f"eval/{name}"] == pytest.approx(value, rel=1e-12, abs=1e-12)
            if name in by_hand:
                assert value == pytest.approx(by_hand[name], rel=1e-10, abs=1e-12), name
        assert direct["comparisons"] == 9
    # the training records hold no eval/ names and the model ends in eval mode
    assert not any(k.startswith("eval/") for k in result.metrics[1])
    assert not model.training


# -- evaluate -------------------------------------------------------------------------------


def test_evaluate_against_a_direct_computation_batched_and_not():
    prefs = random_prefs(23, soft=True, weighted=True)
    model = dpo_model()
    model.train()
    expected = hand_metrics(model, model.density.logits.detach(), prefs)
    whole = pbde.evaluate(model, prefs)
    assert model.training  # put back in the mode it was in
    assert set(whole) == set(expected) | {"comparisons"}
    for name, value in expected.items():
        assert whole[name] == pytest.approx(value, rel=1e-10, abs=1e-12), name
    assert whole["comparisons"] == 23
    for batch_size in (1, 4, 23, 50):
        batched = pbde.evaluate(model, prefs, batch_size=batch_size)
        assert batched.keys() == whole.keys()
        for name in whole:
            assert batched[name] == pytest.approx(whole[name], rel=1e-10, abs=1e-12), name
    # another loss: the weighted mean of its per-pair values
    hinge = pbde.evaluate(model, prefs, loss="hinge", delta=0.5)
    log_p, log_ref = log_probs(model, model.density.logits.detach())
    omega = BETA * (log_p - log_ref)
    h = omega[prefs.xa] - omega[prefs.xb]
    y, w = prefs.y, prefs.weight
    per_pair = y * torch.relu(0.5 - h) + (1 - y) * torch.relu(0.5 + h)
    assert hinge["loss"] == pytest.approx(float((w * per_pair).sum() / w.sum()), rel=1e-10)


def test_evaluate_accuracy_counts_ties_half_and_soft_labels_fractionally():
    """Luce on probabilities (.2, .3, .5): pair logits are exact log-ratios."""
    model = pbde.Annotator(Categorical(probs=torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)))
    prefs = pbde.Preferences(
        torch.tensor([2, 0, 1, 1]),
        torch.tensor([0, 2, 1, 2]),
        torch.tensor([1.0, 1.0, 0.0, 0.25], dtype=torch.float64),
    )
    # right: 1 (h > 0, y = 1), 0 (h < 0, y = 1), ½ (a tie), 0.75 (h < 0, y = ¼)
    assert pbde.evaluate(model, prefs)["accuracy"] == pytest.approx((1 + 0 + 0.5 + 0.75) / 4)
    weighted = pbde.Preferences(prefs.xa, prefs.xb, prefs.y, weight=[1.0, 3.0, 0.0, 4.0])
    assert pbde.evaluate(model, weighted)["accuracy"] == pytest.approx((1 + 0 + 3) / 8)


# -- Precomputed ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_precomputed_equals_the_density_on_its_items(dtype):
    density = Categorical(logits=torch.randn(N_ITEMS, generator=torch.Generator().manual_seed(3)))
    density = density.to(dtype)
    table = Precomputed.of(density, torch.tensor([4, 1, 1, 0, 5, 2, 3, 4]), batch_size=3)
    assert table.items.shape[0] == N_ITEMS  # each distinct item once
    query = torch.tensor([5, 0, 0, 3, 1, 4, 2, 2, 5])  # any order, duplicates
    assert torch.equal(table.log_prob(query), density.log_prob(query).detach())
    with pytest.raises(ValueError, match="Row 2 "):
        Precomputed.of(density, torch.tensor([0, 1])).log_prob(torch.tensor([1, 0, 4]))


def test_precomputed_token_items_at_other_padding_widths():
    """A table stored at width 10 answers items padded to 12 and trimmed to their longest."""
    torch.manual_seed(0)
    lm = Autoregressive(vocab_size=4, max_length=7, embedding_dim=4, hidden_size=8)
    items = lm.sample(12, generator=torch.Generator().manual_seed(1))
    width = int((items != PAD_TOKEN).sum(1).max())
    expected = lm.log_prob(items).detach()

    def padded(x, to):
        return torch.cat([x, torch.full((x.shape[0], to - x.shape[1]), PAD_TOKEN)], 1)

    table = Precomputed.of(lm, padded(items, 10), batch_size=5)
    order = torch.tensor([3, 3, 0, 11, 5])
    for x in (items[:, :width], items, padded(items, 10), padded(items, 12)):
        assert torch.equal(table.log_prob(x[order]), expected[order])
    unknown = items[:3].clone()
    for tokens in ([1, 0], [2, 0], [3, 0], [1, 1, 0], [1, 2, 0], [2, 1, 0], [3, 3, 0]):
        unknown[1] = PAD_TOKEN
        unknown[1, : len(tokens)] = torch.tensor(tokens)  # ends with EOS = 0
        if not (unknown[1] == items).all(1).any():
            break
    assert not (unknown[1] == items).all(1).any()
    with pytest.raises(ValueError, match="Row 1 "):
        table.log_prob(unknown)


def test_dpo_with_a_precomputed_reference_equals_the_live_reference():
    prefs = random_prefs(30, soft=True)
    live = dpo_model()
    table = Precomputed.of(live.references[0], torch.cat([prefs.xa, prefs.xb]))
    cached = pbde.Annotator(
        Categorical(logits=live.density.logits.detach().clone()), pbde.dpo(BETA, table)
    )
    options = dict(steps=8, lr=0.1, batch_size=7, log_every=2, progress=False)
    result_live = pbde.fit(live, prefs, **options)
    result_cached = pbde.fit(cached, prefs, **options)
    torch.testing.assert_close(
        cached.density.logits.detach(), live.density.logits.detach(), rtol=0, atol=1e-12
    )
    torch.testing.assert_close(result_cached.losses, result_live.losses, rtol=0, atol=1e-12)
    for a, b in zip(result_cached.metrics, result_live.metrics, strict=True):
        assert a["rewards/margins"] == pytest.approx(b["rewards/margins"], rel=1e-10)


# -- frozen densities and checkpoints -------------------------------------------------------


def test_frozen_density_is_frozen_once_and_stays_in_eval_mode():
    density = Categorical(size=3)
    frozen = density.frozen()
    assert frozen is not density and frozen.frozen() is frozen
    assert not any(p.requires_grad for p in frozen.parameters())
    model = dpo_model()
    model.train()
    assert model.density.training and not model.references[0].training
    modes = []

    def spy(model):
        modes.append((model.density.training, model.references[0].training))
        return torch.zeros((), dtype=torch.float64)

    pbde.fit(model, random_prefs(8), steps=3, regularizer=spy, progress=False)
    assert modes == [(True, False)] * 3


@pytest.mark.parametrize("precomputed", [False, True])
def test_checkpoint_leaves_out_the_reference_and_resumes(tmp_path, precomputed):
    prefs = random_prefs(12, soft=True)

    def setup():
        model = dpo_model()
        if precomputed:
            table = Precomputed.of(model.references[0], torch.arange(N_ITEMS))
            model = pbde.Annotator(model.density, pbde.dpo(BETA, table))
        return model

    options = dict(steps=9, lr=0.1, batch_size=5, progress=False)
    model_a = setup()
    result_a = pbde.fit(model_a, prefs, **options)
    path = tmp_path / "run.pt"
    with pytest.raises(Interrupt):
        pbde.fit(
            setup(),
            prefs,
            checkpoint=path,
            checkpoint_every=3,
            regularizer=interrupt_after(7),
            **options,
        )
    state = torch.load(path, weights_only=True)
    assert any(k.startswith("references.") for k in model_a.state_dict())
    assert not any(k.startswith("references.") for k in state["model"])
    assert set(state["model"]) == {"density.logits"}
    model_c = setup()
    result_c = pbde.fit(model_c, prefs, checkpoint=path, checkpoint_every=3, **options)
    assert torch.equal(model_c.density.logits, model_a.density.logits)
    assert torch.equal(result_c.losses, result_a.losses)


# -- mixed precision and token items --------------------------------------------------------


def test_bf16_on_the_cpu_is_close_to_float32_and_fp16_is_refused():
    torch.manual_seed(0)
    lm = Autoregressive(vocab_size=5, max_length=6, embedding_dim=8, hidden_size=16)
    generator = torch.Generator().manual_seed(2)
    xa, xb = lm.sample(24, generator=generator), lm.sample(24, generator=generator)
    prefs = pbde.Preferences(xa, xb, (torch.rand(24, generator=generator) < 0.5).float())
    state = {k: v.clone() for k, v in lm.state_dict().items()}
    runs = {}
    for precision in (None, "bf16"):
        lm.load_state_dict(state)
        model = pbde.Annotator(lm, pbde.dpo(0.5, lm))
        runs[precision] = pbde.fit(
            model, prefs, steps=6, lr=0.01, precision=precision, progress=False
        ).losses
    assert torch.isfinite(runs["bf16"]).all()
    assert not torch.equal(runs["bf16"], runs[None])  # bfloat16 did run
    # bfloat16 keeps 8 bits of mantissa: relative errors of ~1e-2 per operation
    torch.testing.assert_close(runs["bf16"], runs[None], rtol=3e-2, atol=3e-2)
    with pytest.raises(ValueError, match="fp16"):
        pbde.fit(pbde.Annotator(lm), prefs, steps=2, precision="fp16", progress=False)


def test_tokens_per_second_for_token_items():
    torch.manual_seed(0)
    lm = Autoregressive(vocab_size=4, max_length=5, embedding_dim=4, hidden_size=8)
    generator = torch.Generator().manual_seed(4)
    xa, xb = lm.sample(10, generator=generator), lm.sample(10, generator=generator)
    prefs = pbde.Preferences(xa, xb, torch.ones(10))
    result = pbde.fit(pbde.Annotator(lm), prefs, steps=3, log_every=1, progress=False)
    items = torch.unique(torch.cat([xa, xb]), dim=0)
    tokens = int((items != PAD_TOKEN).sum())
    for record in result.metrics:
        assert record["tokens_per_second"] * record["seconds"] == pytest.approx(tokens, rel=1e-6)


def tiny_gpt2(transformers, seed: int):
    config = transformers.GPT2Config(
        vocab_size=23,
        n_positions=32,
        n_embd=16,
        n_layer=1,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=1,
    )
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(config).eval()


def test_causal_lm_dpo_with_a_precomputed_reference_logs_what_the_live_reference_does():
    """A tiny GPT-2: DPO with the reference as a table (built at another padding width) takes
    the steps and logs the rewards and log-probabilities of the live reference; rewards/chosen
    at the first step is β·(log π − log π_ref) of the chosen items, recomputed by hand."""
    transformers = pytest.importorskip("transformers")
    from pbde.densities import CausalLM

    prompts = [[5, 6, 7], [8], [9, 10], [11, 12, 13, 14]]
    chosen = [[2, 3, 1], [4, 4, 4, 4, 1], [15, 1], [16, 17, 1]]
    rejected = [[18, 1], [19, 20, 1], [21, 22, 2, 3, 1], [3, 1]]
    xa, xb = CausalLM.items(prompts, chosen), CausalLM.items(prompts, rejected)
    prefs = pbde.Preferences(xa, xb, torch.ones(4))
    beta = 0.1
    reference = CausalLM(tiny_gpt2(transformers, 1))
    wide = torch.cat([torch.cat([xa, xb]), torch.full((8, 2, 3), PAD_TOKEN)], dim=2)
    table = Precomputed.of(reference, wide, batch_size=3)
    runs = []
    for ref in (reference, table):
        policy = CausalLM(tiny_gpt2(transformers, 0))
        model = pbde.Annotator(policy, pbde.dpo(beta, ref))
        with torch.no_grad():
            first = beta * (policy.log_prob(xa) - reference.log_prob(xa)).mean()
        result = pbde.fit(model, prefs, steps=3, lr=1e-3, log_every=1, progress=False)
        runs.append((result, float(first)))
    (live, first), (cached, _) = runs
    assert live.metrics[0]["rewards/chosen"] == pytest.approx(first, abs=1e-5)
    torch.testing.assert_close(cached.losses, live.losses, rtol=0, atol=1e-5)
    for a, b in zip(cached.metrics, live.metrics, strict=True):
        for name in ("rewards/chosen", "rewards/margins", "logps/chosen", "logps/rejected"):
            assert a[name] == pytest.approx(b[name], abs=1e-4), name
        assert a["tokens_per_second"] > 0


def test_a_precomputed_reference_is_kept_not_copied():
    """A table of a language model's items can be large: dpo keeps the table it is given (it is
    frozen by nature), where a live density is copied and frozen."""
    from pbde.densities import Categorical, Precomputed

    live = Categorical(probs=torch.tensor([0.2, 0.3, 0.5]))
    table = Precomputed.of(live, torch.arange(3))
    assert pbde.dpo(1.0, table).references[0] is table
    assert pbde.dpo(1.0, live).references[0] is not live
    assert not any(p.requires_grad for p in table.parameters()) and not table.training
