"""CausalLM: a Hugging Face causal LM as p(completion | prompt).

A tiny randomly initialised GPT-2 is built from a config (nothing is downloaded). References:
the log-probabilities are recomputed by hand from the logits of each unpadded sequence run on
its own; DPO's loss at π = π_ref is log 2 in closed form, and one DPO step must increase the
chosen-vs-rejected margin of the implicit reward.
"""

from __future__ import annotations

import math

import pytest
import torch

import pbde
from pbde.densities.hf import CausalLM
from pbde.io import PAD_TOKEN

transformers = pytest.importorskip("transformers")

VOCAB = 23


def tiny_gpt2(seed: int = 0):
    config = transformers.GPT2Config(
        vocab_size=VOCAB,
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


PROMPTS = [[5, 6, 7], [8], [9, 10], [11, 12, 13, 14]]
CHOSEN = [[2, 3, 1], [4, 4, 4, 4, 1], [15, 1], [16, 17, 1]]
REJECTED = [[18, 1], [19, 20, 1], [21, 22, 2, 3, 1], [3, 1]]


def manual_log_prob(model, prompt: list[int], completion: list[int]) -> float:
    """Σ_t log softmax(logits)[c_t] from one forward pass of prompt + completion, unpadded."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    log_probs = torch.log_softmax(logits, dim=-1)
    total = 0.0
    for offset, token in enumerate(completion):
        position = len(prompt) + offset  # the token at `position` is predicted at position - 1
        total += float(log_probs[position - 1, token])
    return total


def test_log_probs_equal_a_manual_computation_from_the_logits():
    model = tiny_gpt2()
    lm = CausalLM(model)
    x = CausalLM.items(PROMPTS + PROMPTS, CHOSEN + REJECTED)
    expected = torch.tensor(
        [
            manual_log_prob(model, p, c)
            for p, c in zip(PROMPTS + PROMPTS, CHOSEN + REJECTED, strict=True)
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(lm.log_prob(x).detach().double(), expected, rtol=0, atol=1e-4)
    # wider padding changes nothing
    wider = torch.cat([x, torch.full((x.shape[0], 2, 3), PAD_TOKEN)], dim=2)
    torch.testing.assert_close(lm.log_prob(wider), lm.log_prob(x), rtol=0, atol=1e-5)


def test_prompt_is_conditioned_on_but_not_scored():
    lm = CausalLM(tiny_gpt2())
    # the same completion after two prompts of different likelihood: log p(completion | prompt)
    # differs (the prompt is conditioned on) and is the log-probability of the whole sequence
    # minus that of the prompt, each computed by hand
    a = CausalLM.items([[5, 6]], [[2, 1]])
    b = CausalLM.items([[7, 8]], [[2, 1]])
    assert not torch.allclose(lm.log_prob(a), lm.log_prob(b))
    whole = manual_log_prob(lm.model, [5], [6, 2, 1])
    prompt_only = manual_log_prob(lm.model, [5], [6])
    assert lm.log_prob(a).item() == pytest.approx(whole - prompt_only, abs=1e-4)


def test_length_counts_completion_tokens():
    lm = CausalLM(tiny_gpt2())
    x = CausalLM.items(PROMPTS, CHOSEN)
    assert lm.length(x).tolist() == [3, 5, 2, 3]
    annotator = pbde.Annotator(lm, pbde.length_normalized(lm.length))  # eq. 26
    xa, xb = CausalLM.items(PROMPTS, CHOSEN), CausalLM.items(PROMPTS, REJECTED)
    expected = torch.sigmoid(lm.log_prob(xa) / lm.length(xa) - lm.log_prob(xb) / lm.length(xb))
    torch.testing.assert_close(annotator.prob(xa, xb), expected)


def test_one_dpo_step_increases_the_chosen_vs_rejected_margin():
    policy = CausalLM(tiny_gpt2(1))
    reference = CausalLM(tiny_gpt2(1))  # the same weights, kept fixed
    beta = 0.5
    model = pbde.Annotator(policy, pbde.dpo(beta, reference))
    xa, xb = CausalLM.items(PROMPTS, CHOSEN), CausalLM.items(PROMPTS, REJECTED)
    prefs = pbde.Preferences(xa, xb, torch.ones(len(PROMPTS)))  # chosen ≻ rejected

    def margins():
        with torch.no_grad():
            return (policy.log_prob(xa) - reference.log_prob(xa)) - (
                policy.log_prob(xb) - reference.log_prob(xb)
            )

    assert torch.allclose(margins(), torch.zeros(len(PROMPTS)), atol=1e-5)
    result = pbde.fit(model, prefs, steps=1, lr=1e-2, progress=False)
    assert result.losses[0] == pytest.approx(math.log(2.0), abs=1e-5)  # σ(0): π = π_ref
    after = margins()
    assert bool((after > 0).all()), after
    with torch.no_grad():
        loss_after = float(pbde.losses.bce(model.logits(xa, xb), prefs.y).mean())
    assert loss_after < math.log(2.0)


def test_preferences_from_prompt_chosen_rejected_records():
    records = [
        {"prompt": p, "chosen": c, "rejected": r}
        for p, c, r in zip(PROMPTS, CHOSEN, REJECTED, strict=True)
    ]
    prefs = CausalLM.preferences(pbde.io.from_records(records))
    assert torch.equal(prefs.xa, CausalLM.items(PROMPTS, CHOSEN).narrow(2, 0, prefs.xa.shape[2]))
    assert torch.equal(prefs.y, torch.ones(4))
    lm = CausalLM(tiny_gpt2())
    expected = [manual_log_prob(lm.model, p, r) for p, r in zip(PROMPTS, REJECTED, strict=True)]
    torch.testing.assert_close(
        lm.log_prob(prefs.xb).detach().double(),
        torch.tensor(expected, dtype=torch.float64),
        rtol=0,
        atol=1e-4,
    )


def test_from_pretrained_loads_a_local_directory(tmp_path):
    model = tiny_gpt2(2)
    model.save_pretrained(tmp_path)
    x = CausalLM.items(PROMPTS, CHOSEN)
    loaded = CausalLM.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.log_prob(x), CausalLM(model).log_prob(x))


def test_dropout_is_disabled_by_default():
    config = tiny_gpt2().config
    config.resid_pdrop = 0.5
    model = transformers.GPT2LMHeadModel(config).train()
    lm = CausalLM(model)
    x = CausalLM.items(PROMPTS, CHOSEN)
    torch.testing.assert_close(lm.log_prob(x), lm.log_prob(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("x", "error", "match"),
    [
        (torch.tensor([[5, 1]]), ValueError, r"shape \(batch, 2, width\)"),
        (torch.zeros((1, 3, 2), dtype=torch.long), ValueError, r"shape \(batch, 2, width\)"),
        (torch.tensor([[[5.0, 6.0], [1.0, 2.0]]]), TypeError, "integer token ids"),
        (
            torch.tensor([[[5, 23], [1, 2]]]),
            ValueError,
            r"x\[:, 0\]. \(the prompts\) must hold token ids in \[0, 22\]",
        ),
        (torch.tensor([[[-1, -1], [1, 2]]]), ValueError, r"\(the prompts\) .* all padding"),
        (torch.tensor([[[5, -1], [-1, -1]]]), ValueError, r"\(the completions\) .* all padding"),
        (torch.tensor([[[5, -1], [-1, 2]]]), ValueError, "only after the last token"),
        (torch.tensor([[list(range(20)), list(range(20))]]), ValueError, "32 positions"),
    ],
)
def test_bad_items_are_rejected(x, error, match):
    lm = CausalLM(tiny_gpt2())
    with pytest.raises(error, match=match):
        lm.log_prob(x)


def test_bad_arguments():
    with pytest.raises(TypeError, match="'model' must be a torch.nn.Module"):
        CausalLM("gpt2")
    with pytest.raises(ValueError, match="'vocab_size' must be given"):
        CausalLM(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"'pad_token_id' must be a token id in \[0, 22\]"):
        CausalLM(tiny_gpt2(), pad_token_id=23)
    with pytest.raises(ValueError, match="same number"):
        CausalLM.items([[1]], [[2], [3]])
    with pytest.raises(ValueError, match="non-empty sequences"):
        CausalLM.items([[]], [[2]])
    with pytest.raises(TypeError, match="tokenize it first"):
        CausalLM.items(["hello"], [[2]])
    with pytest.raises(TypeError, match="integer token ids"):
        CausalLM.items([[1.5]], [[2]])
    with pytest.raises(ValueError, match="must hold prompts"):
        CausalLM.preferences(pbde.io.from_records([{"chosen": [1], "rejected": [2]}]))
    with pytest.raises(NotImplementedError, match="cannot be sampled"):
        CausalLM(tiny_gpt2()).sample(2)
