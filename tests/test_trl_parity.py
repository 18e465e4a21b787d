"""Parity with TRL's own DPO code: the same losses, gradients and training trajectory.

TRL's ``DPOTrainer`` is built on a tiny GPT-2 (from a config) with a word-level tokenizer made
here (nothing is downloaded). Its own dataset preparation tokenizes the examples, its own data
collator makes the batches and its own ``compute_loss`` computes the loss; pbde is given the token
ids of TRL's prepared dataset (``prompt_ids``, ``chosen_ids``, ``rejected_ids``) and a copy of the
same weights. The mapping of TRL's ``loss_type`` (with ``beta``) to a pbde behavior and loss:

==============  ==========================================  ===============================
TRL loss_type   pbde behavior                                pbde loss
==============  ==========================================  ===============================
sigmoid         ``dpo(β, ref)``                              ``bce``
hinge           ``dpo(β, ref)``: relu(1 − β·Δ)               ``hinge(delta=1)``
ipo             ``dpo(1, ref, length=lm.length)``            ``ipo(tau=β)``
sigmoid_norm    ``dpo(β, ref, length=lm.length)``            ``bce``
==============  ==========================================  ===============================

TRL computes the log-probabilities with a fused LM head that works in float32 whatever the
model's dtype, so agreement is limited by float32 rounding. Measured (1-2 threads): per-example
losses within 5e-7 relative and gradients within 6e-7 (per parameter tensor, in norm); over 50
full-batch Adam steps the losses within 2e-6 absolute, 1.4e-5 relative at worst (IPO's and the
hinge's losses fall to 2e-4 and 0.03, where a 5e-7 gap is a larger fraction). The test asks for
1e-5 relative on single steps, and ``rtol=1e-5, atol=1e-6`` along the trajectory. A wrong
mapping (β off by 10%, the length division left out, the hinge margin on the wrong scale) must
fail the same comparison.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

import pbde
from pbde.densities import CausalLM

trl = pytest.importorskip("trl")
transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")
tokenizers = pytest.importorskip("tokenizers")

WORDS = "the a cat dog sat ran on mat fast slow is was red blue big small".split()
PAD, EOS = "<pad>", "<eos>"
# completions start with a space, the usual convention: with a word-level tokenizer prompt and
# completion then tokenize separately, so TRL's prompt_ids are the prompt's own tokens
DATA = {
    "prompt": ["the cat", "a dog", "the mat is", "a big red", "the dog ran", "a cat"],
    "chosen": [" sat on the mat", " ran fast", " red", " dog sat on a mat", " on the mat", " is"],
    "rejected": [
        " is blue",
        " sat slow on the red mat",
        " big small",
        " cat",
        " fast slow fast",
        " was a big red dog",
    ],
}
STEPS, LR = 50, 1e-3


def word_tokenizer():
    vocab = {word: i for i, word in enumerate([PAD, EOS, *WORDS])}
    model = tokenizers.models.WordLevel(vocab, unk_token=PAD)
    tokenizer = tokenizers.Tokenizer(model)
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=EOS, pad_token=PAD
    )


def tiny_gpt2(seed: int):
    config = transformers.GPT2Config(
        vocab_size=len(WORDS) + 2,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=1,
        eos_token_id=1,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(config)


@dataclass
class Mapping:
    """How a TRL loss type is written in pbde."""

    loss_type: str
    beta: float
    behavior: Callable  # (beta, reference CausalLM, policy CausalLM) -> PBDE
    loss: Callable  # (beta) -> per-pair loss of (logits, y)


MAPPINGS = {
    "sigmoid": Mapping(
        "sigmoid", 0.1, lambda b, ref, lm: pbde.dpo(b, ref), lambda b: pbde.losses.bce
    ),
    "hinge": Mapping(
        "hinge",
        0.1,
        lambda b, ref, lm: pbde.dpo(b, ref),
        lambda b: lambda h, y: pbde.losses.hinge(h, y, delta=1.0),
    ),
    "ipo": Mapping(
        "ipo",
        0.3,
        lambda b, ref, lm: pbde.dpo(1.0, ref, length=lm.length),
        lambda b: lambda h, y: pbde.losses.ipo(h, y, tau=b),
    ),
    "sigmoid_norm": Mapping(
        "sigmoid_norm",
        0.2,
        lambda b, ref, lm: pbde.dpo(b, ref, length=lm.length),
        lambda b: pbde.losses.bce,
    ),
}


@pytest.fixture(scope="module")
def weights():
    """The policy's and the reference's initial weights (different: the losses depend on θ)."""
    return tiny_gpt2(0).state_dict(), tiny_gpt2(1).state_dict()


@pytest.fixture(scope="module")
def trainers(weights, tmp_path_factory):
    """``trainers(loss_type)``: the mapping and TRL's trainer, built once per loss type."""
    built = {}

    def get(loss_type: str):
        if loss_type not in built:
            built[loss_type] = make_trainer(MAPPINGS[loss_type], weights, tmp_path_factory)
        return built[loss_type]

    return get


def make_trainer(mapping: Mapping, weights, tmp_path_factory):
    policy, reference = tiny_gpt2(0), tiny_gpt2(1)
    policy.load_state_dict(weights[0])
    reference.load_state_dict(weights[1])
    args = trl.DPOConfig(
        output_dir=str(tmp_path_factory.mktemp(mapping.loss_type)),
        report_to="none",
        beta=mapping.beta,
        loss_type=mapping.loss_type,
        learning_rate=LR,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=0.0,  # no clipping
        optim="adamw_torch",
        per_device_train_batch_size=len(DATA["prompt"]),  # full batch
        max_steps=STEPS,
        logging_steps=1,
        max_length=None,
        precompute_ref_log_probs=False,
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        fp16=False,
        disable_tqdm=True,
        seed=0,
    )
    trainer = trl.DPOTrainer(
        policy,
        ref_model=reference,
        args=args,
        train_dataset=datasets.Dataset.from_dict(DATA),
        processing_class=word_tokenizer(),
    )
    return mapping, trainer


def trl_rows(trainer) -> list[dict]:
    return [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]


def pbde_model(mapping: Mapping, weights, beta: float | None = None):
    """pbde's annotator on a fresh copy of the same weights, and its data from TRL's token ids."""
    policy, reference = tiny_gpt2(0), tiny_gpt2(1)
    policy.load_state_dict(weights[0])
    reference.load_state_dict(weights[1])
    lm = CausalLM(policy)
    beta = mapping.beta if beta is None else beta
    model = pbde.Annotator(lm, mapping.behavior(beta, CausalLM(reference), lm))
    return model, mapping.loss(beta)


def pbde_preferences(trainer) -> pbde.Preferences:
    rows = trl_rows(trainer)
    prompts = [row["prompt_ids"] for row in rows]
    completions = [row["chosen_ids"] for row in rows] + [row["rejected_ids"] for row in rows]
    xa, xb = CausalLM.items(prompts + prompts, completions).chunk(2)
    return pbde.Preferences(xa, xb, torch.ones(len(rows)))  # chosen ≻ rejected


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def compare_per_example(trainer, weights, model, loss) -> tuple[float, float]:
    """Each example as a batch of one through TRL's collator and compute_loss, and through pbde.

    Returns the largest relative differences of the losses and of the parameter gradients
    (per parameter tensor, in norm); asserts both are <= 1e-5.
    """
    trainer.model.load_state_dict(weights[0])
    prefs = pbde_preferences(trainer)
    policy = model.density.model
    trl_parameters = dict(trainer.model.named_parameters())
    worst_loss = worst_gradient = 0.0
    for i, row in enumerate(trl_rows(trainer)):
        batch = trainer._prepare_inputs(trainer.data_collator([row]))
        trainer.model.zero_grad(set_to_none=True)
        trl_loss = trainer.compute_loss(trainer.model, batch)
        trl_loss.backward()
        model.zero_grad(set_to_none=True)
        pbde_loss = loss(model.logits(prefs.xa[i : i + 1], prefs.xb[i : i + 1]), prefs.y[i : i + 1])
        pbde_loss.mean().backward()
        worst_loss = max(worst_loss, abs(float(pbde_loss) / float(trl_loss) - 1.0))
        for name, parameter in policy.named_parameters():
            difference = relative_difference(parameter.grad, trl_parameters[name].grad)
            worst_gradient = max(worst_gradient, difference)
    assert worst_loss <= 1e-5, f"per-example losses differ by {worst_loss:.2e} relative"
    assert worst_gradient <= 1e-5, f"gradients differ by {worst_gradient:.2e} relative"
    return worst_loss, worst_gradient


@pytest.mark.parametrize("loss_type", sorted(MAPPINGS))
def test_per_example_losses_and_gradients_match_trl(trainers, weights, loss_type):
    mapping, trainer = trainers(loss_type)
    model, loss = pbde_model(mapping, weights)
    compare_per_example(trainer, weights, model, loss)


def test_trl_prompt_ids_are_the_prompts_own_tokens(trainers):
    """With completions starting on a word boundary, TRL's split of prompt+completion keeps the
    prompt's tokens whole, and adds EOS to each completion (as pbde's CausalLM expects)."""
    _, trainer = trainers("sigmoid")
    tokenizer = trainer.processing_class
    for row in trl_rows(trainer):
        assert row["prompt_ids"] == tokenizer(row["prompt"])["input_ids"]
        assert row["chosen_ids"][-1] == row["rejected_ids"][-1] == tokenizer.eos_token_id


@pytest.mark.parametrize("loss_type", sorted(MAPPINGS))
def test_fifty_full_batch_adam_steps_match_trl(trainers, weights, loss_type):
    mapping, trainer = trainers(loss_type)
    trainer.model.load_state_dict(weights[0])
    recorded = []
    compute_loss = trainer.compute_loss

    def recording(*args, **kwargs):
        value = compute_loss(*args, **kwargs)
        recorded.append(float(value.detach()))
        return value

    trainer.compute_loss = recording  # TRL's own loss, only recorded on the way
    try:
        trainer.train()
    finally:
        del trainer.compute_loss
    model, loss = pbde_model(mapping, weights)
    result = pbde.fit(
        model,
        pbde_preferences(trainer),
        loss=loss,
        steps=STEPS,
        lr=LR,
        schedule="constant",
        progress=False,
    )
    trl_losses = torch.tensor(recorded, dtype=torch.float64)
    assert trl_losses.shape == (STEPS,)
    assert float(trl_losses[-1]) < 0.9 * float(trl_losses[0])  # it trained
    torch.testing.assert_close(result.losses, trl_losses, rtol=1e-5, atol=1e-6)


WRONG = {
    "beta_off_by_ten_percent": ("sigmoid", lambda m: (m.behavior, m.loss, 1.1 * m.beta)),
    "hinge_margin_on_the_log_ratio_scale": (
        "hinge",
        lambda m: (
            lambda b, ref, lm: pbde.dpo(1.0, ref),
            lambda b: lambda h, y: pbde.losses.hinge(h, y, delta=1.0 / b),
            m.beta,
        ),
    ),
    "ipo_without_the_length_division": (
        "ipo",
        lambda m: (lambda b, ref, lm: pbde.dpo(1.0, ref), m.loss, m.beta),
    ),
    "sigmoid_norm_without_the_length_division": (
        "sigmoid_norm",
        lambda m: (lambda b, ref, lm: pbde.dpo(b, ref), m.loss, m.beta),
    ),
}


@pytest.mark.parametrize("case", sorted(WRONG))
def test_a_wrong_mapping_fails_the_comparison(trainers, weights, case):
    loss_type, wrong = WRONG[case]
    mapping, trainer = trainers(loss_type)
    behavior, loss, beta = wrong(mapping)
    model, loss_fn = pbde_model(Mapping(loss_type, mapping.beta, behavior, loss), weights, beta)
    with pytest.raises(AssertionError, match="differ by"):
        compare_per_example(trainer, weights, model, loss_fn)
