"""Aligning a Hugging Face causal LM on text: tokenization, the reference table, ``pbde fit
--model``, ``pbde evaluate``, saving and loading, LoRA, bad input, torchrun.

A tiny GPT-2 is built from a config with a byte-level BPE tokenizer trained on the offline corpus
(nothing is downloaded) and saved with ``save_pretrained``. Independent references: the text the
token ids decode to, DPO's loss at π = π_ref (log 2 in closed form), log-probabilities recomputed
by a second forward pass of a separately loaded model, a reference model's weights read back from
its folder.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pbde
import pbde.cli
from pbde.densities import CausalLM, Precomputed
from pbde.io import PAD_TOKEN

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tokenizer():
    from pbde.text import bpe_tokenizer, english_sentences

    return bpe_tokenizer(english_sentences()[:400], vocab_size=400)


def save_tiny_gpt2(folder: Path, tokenizer, seed: int = 0, vocab: int | None = None) -> Path:
    config = transformers.GPT2Config(
        vocab_size=vocab or len(tokenizer),
        n_positions=128,
        n_embd=16,
        n_layer=1,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory, tokenizer):
    return save_tiny_gpt2(tmp_path_factory.mktemp("lm") / "model", tokenizer)


def records(n: int = 24, seed: int = 0) -> list[dict]:
    from pbde.text import english_sentences

    generator = torch.Generator().manual_seed(seed)
    sentences = [s for s in english_sentences()[:400] if 6 <= len(s.split()) <= 14]
    rows = []
    for i in torch.randperm(len(sentences), generator=generator)[:n].tolist():
        words = sentences[i].split()
        rows.append(
            {
                "prompt": " ".join(words[:3]),
                "chosen": " " + " ".join(words[3:]),
                "rejected": " " + " ".join(words[3:5]),
            }
        )
    return rows


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records()))
    return path


def ids(row: torch.Tensor) -> list[int]:
    return [t for t in row.tolist() if t != PAD_TOKEN]


# -- tokenization --------------------------------------------------------------------------------


def test_tokenize_keeps_the_text_adds_eos_once_and_splits_where_tokenizations_agree(tokenizer):
    eos = tokenizer.eos_token
    data = pbde.TextPreferences(
        ["The name", "Hello wor"], [" of the variable", "ld" + eos], [" is", "k"], y=[1.0, 0.0]
    )
    out = CausalLM.tokenize(data, tokenizer)
    x = torch.cat([out.prefs.xa, out.prefs.xb])
    texts = [(data.prompt[i % 2], (data.xa + data.xb)[i]) for i in range(4)]
    for item, (prompt, completion) in zip(x, texts, strict=True):
        prompt_ids, completion_ids = ids(item[0]), ids(item[1])
        # prompt + completion decode to the text (EOS once at the end), whatever the boundary
        whole = tokenizer.decode(prompt_ids + completion_ids)
        assert whole == prompt + completion.removesuffix(eos) + eos
        assert completion_ids[-1] == tokenizer.eos_token_id
        assert completion_ids.count(tokenizer.eos_token_id) == 1
        # the prompt part is a prefix of the joint tokenization of prompt + completion
        joint = tokenizer(prompt + completion.removesuffix(eos))["input_ids"]
        assert joint[: len(prompt_ids)] == prompt_ids
    torch.testing.assert_close(out.prefs.y, torch.tensor([1.0, 0.0]))
    assert out.rows_truncated == 0


def test_a_bpe_merge_across_the_boundary_moves_it_into_the_prompt(tokenizer):
    """When prompt + completion tokenize with a token spanning the boundary, the completion starts
    where the two tokenizations stop agreeing (TRL's rule): nothing is scored twice or lost."""
    for prompt, completion in [("The nam", "e of it"), ("The na", "me"), ("Th", "e name")]:
        alone = tokenizer(prompt)["input_ids"]
        joint = tokenizer(prompt + completion)["input_ids"]
        if joint[: len(alone)] == alone:
            continue  # no merge for this pair
        data = pbde.TextPreferences([prompt], [completion], [completion + " x"])
        item = CausalLM.tokenize(data, tokenizer).prefs.xa[0]
        cut = next(i for i, (a, b) in enumerate(zip(alone, joint, strict=False)) if a != b)
        assert ids(item[0]) == joint[:cut]
        assert ids(item[1]) == joint[cut:] + [tokenizer.eos_token_id]
        return
    pytest.fail("no prompt/completion pair merged across the boundary with this tokenizer")


def test_truncation_cuts_prompts_on_the_left_and_completions_on_the_right(tokenizer):
    prompt = "The name of the variable is bound to the object"
    data = pbde.TextPreferences([prompt, "A"], [" is one of many words here", " b"], [" x", " c"])
    full = CausalLM.tokenize(data, tokenizer)
    cut = CausalLM.tokenize(data, tokenizer, max_length=9, max_prompt_length=4)
    long_prompt = ids(full.prefs.xa[0, 0])
    assert ids(cut.prefs.xa[0, 0]) == long_prompt[-4:]  # the end of the prompt is kept
    assert ids(cut.prefs.xa[0, 1]) == ids(full.prefs.xa[0, 1])[:5]  # 4 + 5 = max_length
    assert ids(cut.prefs.xb[0, 1]) == ids(full.prefs.xb[0, 1])  # short enough already
    for part in (0, 1):  # the second comparison untouched
        assert ids(cut.prefs.xa[1, part]) == ids(full.prefs.xa[1, part])
    assert (cut.rows_truncated, cut.prompts_truncated, cut.completions_truncated) == (1, 1, 1)
    with pytest.raises(ValueError, match=r"Row 0: its prompt has \d+ tokens.*max_length=3"):
        CausalLM.tokenize(data, tokenizer, max_length=3)
    with pytest.raises(ValueError, match="'max_length' must be None or an int >= 1. Got 0"):
        CausalLM.tokenize(data, tokenizer, max_length=0)


def test_conversational_rows_use_the_chat_template(tokenizer):
    user = [{"role": "user", "content": "Name a colour"}]
    chosen, rejected = (
        [{"role": "assistant", "content": "Blue."}],
        [{"role": "assistant", "content": "No."}],
    )
    with_prompt = pbde.TextPreferences([user], [chosen], [rejected])
    without = pbde.TextPreferences(None, [user + chosen], [user + rejected])
    a, b = (CausalLM.tokenize(d, tokenizer).prefs for d in (with_prompt, without))
    assert torch.equal(a.xa, b.xa) and torch.equal(a.xb, b.xb)
    item = a.xa[0]
    rendered = tokenizer.apply_chat_template(user + chosen, tokenize=False)
    assert tokenizer.decode(ids(item[0]) + ids(item[1])) == rendered
    assert tokenizer.decode(ids(item[0])) == tokenizer.apply_chat_template(
        user, tokenize=False, add_generation_prompt=True
    )
    # the template ends the assistant's turn with EOS: no second one is added
    assert ids(item[1]).count(tokenizer.eos_token_id) == 1


def test_tokenize_rejects_bad_input(tokenizer):
    data = pbde.TextPreferences(["a"], ["b"], ["c"])
    with pytest.raises(TypeError, match="'data' must be pbde.TextPreferences"):
        CausalLM.tokenize([{"prompt": "a"}], tokenizer)

    class NoEos:
        eos_token_id = None

    with pytest.raises(ValueError, match="'tokenizer' has no EOS token"):
        CausalLM.tokenize(data, NoEos())
    with pytest.raises(ValueError, match="'xa' must hold non-empty text. Row 0 is empty"):
        pbde.TextPreferences(["a"], [""], ["c"])
    with pytest.raises(ValueError, match="'prompt' is missing in row 1"):
        pbde.TextPreferences(["a", None], ["b", "c"], ["c", "d"])


# -- the reference as a table ----------------------------------------------------------------------


def test_the_precomputed_reference_equals_the_model(model_folder, tokenizer):
    lm = CausalLM.from_pretrained(model_folder)
    prefs = CausalLM.tokenize(pbde.io.from_records(records(10)).prefs, tokenizer).prefs
    items = torch.cat([prefs.xa, prefs.xb])
    table = Precomputed.of(lm, items, batch_size=3)
    with torch.no_grad():
        direct = lm.log_prob(items)
    torch.testing.assert_close(table.log_prob(items), direct, rtol=1e-6, atol=1e-5)
    # a narrower padding of the same items (as a batch of other comparisons would have)
    narrow = items[:2, :, : int((items[:2] != PAD_TOKEN).sum(-1).max())]
    torch.testing.assert_close(table.log_prob(narrow), direct[:2], rtol=1e-6, atol=1e-5)


# -- pbde fit --model ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory, model_folder, data_file):
    out = tmp_path_factory.mktemp("run") / "run"
    code = pbde.cli.main(
        [
            "fit", str(data_file), "--model", str(model_folder), "--out", str(out),
            "--lr", "0.01", "--epochs", "2", "--batch-size", "6", "--log-every", "2",
            "--eval-every", "3", "--test-fraction", "0.25", "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    return out


def test_fit_writes_a_hugging_face_model_metrics_curves_and_a_report(run, model_folder):
    assert {"model", "metrics.jsonl", "training.png", "report.json", "test.jsonl"} <= set(
        os.listdir(run)
    )
    report = json.loads((run / "report.json").read_text())
    assert (report["train_size"], report["test_size"]) == (18, 6)
    assert report["steps"] == 2 * 3  # 2 epochs of ceil(18 / 6) batches
    # before any step π = π_ref: every logit is 0 and the DPO loss is log 2, exactly
    assert report["initial_heldout"]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert report["heldout"]["loss"] < math.log(2)
    # the saved model is a plain Hugging Face folder
    loaded = transformers.AutoModelForCausalLM.from_pretrained(run / "model")
    original = transformers.AutoModelForCausalLM.from_pretrained(model_folder)
    assert not torch.equal(loaded.lm_head.weight, original.lm_head.weight)  # it trained
    records_ = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records_ if "loss" in r] == [2, 4, 6]
    assert [r["step"] for r in records_ if "eval/loss" in r] == [0, 3, 6]  # 0: before training
    # at π = π_ref every logit is 0 up to rounding (the reference is a table computed in other
    # batches): every comparison is a tie, and the accuracy is ½, not the sign of the noise
    assert report["initial_heldout"]["accuracy"] == 0.5
    assert records_[0]["eval/accuracy"] == 0.5 and records_[0]["eval/rewards/accuracies"] == 0.5
    for record in (r for r in records_ if "loss" in r):
        assert record["rewards/margins"] == pytest.approx(
            record["rewards/chosen"] - record["rewards/rejected"], abs=1e-9
        )
        assert record["tokens_per_second"] > 0
    final_eval = [r for r in records_ if "eval/loss" in r][-1]
    assert final_eval["eval/loss"] == pytest.approx(report["heldout"]["loss"])


def test_evaluate_a_run_reproduces_its_heldout_metrics(run, capsys):
    capsys.readouterr()
    assert pbde.cli.main(["evaluate", str(run), str(run / "test.jsonl"), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    report = json.loads((run / "report.json").read_text())
    assert metrics["comparisons"] == report["test_size"]
    assert metrics["log_likelihood"] == pytest.approx(report["heldout"]["log_likelihood"], abs=1e-5)
    assert metrics["accuracy"] == pytest.approx(report["heldout"]["accuracy"])


def test_load_model_rebuilds_the_dpo_annotator(run, model_folder, tokenizer):
    model = pbde.load_model(run / "model")
    assert isinstance(model.density, CausalLM) and model.behavior._builtin["beta"] == 0.1
    data = CausalLM.tokenize(pbde.io.read_preferences(run / "test.jsonl").prefs, tokenizer).prefs
    policy = transformers.AutoModelForCausalLM.from_pretrained(run / "model")
    reference = transformers.AutoModelForCausalLM.from_pretrained(model_folder)
    with torch.no_grad():
        expected = 0.1 * (
            CausalLM(policy).log_prob(data.xa)
            - CausalLM(reference).log_prob(data.xa)
            - CausalLM(policy).log_prob(data.xb)
            + CausalLM(reference).log_prob(data.xb)
        )
        got = model.logits(data.xa, data.xb)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_lora_trains_adapters_against_the_base_with_adapters_off(tmp_path, model_folder, data_file):
    pytest.importorskip("peft")
    out = tmp_path / "lora"
    code = pbde.cli.main(
        [
            "fit", str(data_file), "--model", str(model_folder), "--out", str(out),
            "--lora-r", "4", "--lr", "0.01", "--epochs", "1", "--batch-size", "6",
            "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    files = os.listdir(out / "model")
    assert "adapter_config.json" in files and "model.safetensors" not in files
    report = json.loads((out / "report.json").read_text())
    assert report["initial_heldout"]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert report["reference"] == "base model, adapters off"
    model = pbde.load_model(out / "model")
    # the reference is the base model read back from its folder
    base = transformers.AutoModelForCausalLM.from_pretrained(model_folder)
    data = CausalLM.tokenize(
        pbde.io.read_preferences(out / "test.jsonl").prefs, model.density.tokenizer
    ).prefs
    with torch.no_grad():
        reference = model.behavior.references[0].log_prob(data.xa)
        torch.testing.assert_close(reference, CausalLM(base).log_prob(data.xa), atol=1e-5, rtol=0)
        assert not torch.allclose(model.density.log_prob(data.xa), reference)  # adapters on


def test_another_reference_model(tmp_path, model_folder, data_file, tokenizer):
    other = save_tiny_gpt2(tmp_path / "other", tokenizer, seed=1)
    out = tmp_path / "run"
    code = pbde.cli.main(
        [
            "fit", str(data_file), "--model", str(model_folder), "--reference", str(other),
            "--out", str(out), "--steps", "1", "--lr", "1e-9", "--beta", "0.5",
            "--test-fraction", "0.25", "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    data = CausalLM.tokenize(pbde.io.read_preferences(out / "test.jsonl").prefs, tokenizer).prefs
    policy = CausalLM.from_pretrained(model_folder)
    reference = CausalLM.from_pretrained(other)
    with torch.no_grad():
        h = 0.5 * (
            policy.log_prob(data.xa)
            - reference.log_prob(data.xa)
            - policy.log_prob(data.xb)
            + reference.log_prob(data.xb)
        )
    expected = float(torch.nn.functional.softplus(-h).mean())
    assert report["initial_heldout"]["loss"] == pytest.approx(expected, abs=1e-5)


def test_a_checkpointed_run_resumes_to_the_same_model(tmp_path, model_folder, data_file):
    options = ["fit", str(data_file), "--model", str(model_folder), "--lr", "0.01",
               "--epochs", "2", "--batch-size", "8", "--no-progress"]  # fmt: skip
    checkpoint = tmp_path / "run.ckpt"
    assert (
        pbde.cli.main([*options, "--out", str(tmp_path / "a"), "--checkpoint", str(checkpoint)])
        == 0
    )
    state = torch.load(checkpoint, weights_only=True)
    assert not any(key.startswith("references.") for key in state["model"])  # never the reference
    # the finished checkpoint resumes at its end: the same final loss, nothing trained again
    assert (
        pbde.cli.main([*options, "--out", str(tmp_path / "b"), "--checkpoint", str(checkpoint)])
        == 0
    )
    a, b = (json.loads((tmp_path / n / "report.json").read_text()) for n in ("a", "b"))
    assert a["final_loss"] == b["final_loss"]


# -- bad input: one line, exit status 2, before any training -----------------------------------------


@pytest.fixture(scope="module")
def bad_folders(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("bad")
    no_tokenizer = root / "no_tokenizer"
    save_tiny_gpt2(no_tokenizer, tokenizer)
    for name in os.listdir(no_tokenizer):
        if "token" in name or "chat_template" in name:
            os.remove(no_tokenizer / name)
    small_vocab = save_tiny_gpt2(root / "small_vocab", tokenizer, vocab=len(tokenizer) + 5)
    no_eos = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer)
    assert no_eos.eos_token_id is None
    save_tiny_gpt2(root / "no_eos", no_eos, vocab=len(tokenizer))
    return {"no_tokenizer": no_tokenizer, "other_vocab": small_vocab, "no_eos": root / "no_eos"}


def bad_cases(model, data, folders, tmp):
    long_text = tmp / "long.jsonl"
    long_text.write_text(
        json.dumps({"prompt": "a", "chosen": " word" * 200, "rejected": " b"}) + "\n"
    )
    empty = tmp / "empty.jsonl"
    empty.write_text(
        json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n"
        + json.dumps({"prompt": "a", "chosen": "", "rejected": "c"}) + "\n"
    )  # fmt: skip
    no_prompt = tmp / "no_prompt.jsonl"
    no_prompt.write_text(
        json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n"
        + json.dumps({"chosen": "b", "rejected": "c"}) + "\n"
    )  # fmt: skip
    base = ["fit", str(data), "--model", str(model), "--out", str(tmp / "out"), "--no-progress"]
    return [
        (["fit", str(data), "--model", "gpt2", "--out", str(tmp / "o")], "--model must be a local folder"),
        ([*base[:3], str(folders["no_tokenizer"]), *base[4:]], "holds no tokenizer"),
        ([*base, "--reference", str(folders["other_vocab"])], "--reference has a vocabulary of"),
        ([*base[:3], str(folders["no_eos"]), *base[4:]], "its tokenizer has no EOS token"),
        (["fit", str(long_text), *base[2:]], "more than the model's 128 positions: pass --max-length"),
        (["fit", str(empty), *base[2:]], "row 2, column 'chosen'"),
        (["fit", str(no_prompt), *base[2:]], "row 2"),
        ([*base, "--density", "categorical"], "--density describes a 1-D model"),
        ([*base, "--behavior", "luce", "--per-token"], "--per-token applies to --behavior dpo or ipo"),
        ([*base, "--behavior", "luce", "--beta", "2"], "--beta applies to --behavior dpo"),
        ([*base, "--loss", "ipo"], "--loss ipo needs --tau"),
        ([*base, "--precision", "fp16"], "--precision fp16 needs --device cuda"),
        ([*base, "--steps", "3", "--epochs", "1"], "give --steps or --epochs, not both"),
        ([*base, "--max-length", "4", "--max-prompt-length", "4"], "--max-prompt-length (4) must be < --max-length (4)"),
        ([*base, "--lora-alpha", "8"], "--lora-alpha needs --lora-r"),
        ([*base, "--max-length", "1"], "leaves no room for the completion within --max-length 1"),
    ]  # fmt: skip


def test_bad_input_is_one_line_and_exit_status_2(
    tmp_path, model_folder, data_file, bad_folders, capsys
):
    """In process (an exception escaping main would fail the test), and the first case through
    the console entry point as a user runs it."""
    cases = bad_cases(model_folder, data_file, bad_folders, tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "pbde.cli", *cases[0][0]],
        capture_output=True,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        timeout=120,
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr[-2000:]
    assert cases[0][1] in done.stderr
    for argv, expected in cases:
        capsys.readouterr()
        code = pbde.cli.main(argv)
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert code == 2, (argv, err[-2000:])
        assert "Traceback" not in err and lines[0].startswith("pbde fit: error: ")
        if expected.startswith("row "):  # bad rows: one line each, after the summary
            assert any(line.strip().startswith(expected) for line in lines[1:]), lines
        else:
            assert len(lines) == 1 and expected in lines[0], (argv, lines)
        assert not (tmp_path / "out" / "model").exists()  # stopped before training


# -- several processes ----------------------------------------------------------------------------


def test_language_model_fit_under_torchrun(tmp_path, model_folder, data_file):
    """Two gloo processes on the CPU give the single-process run's model (float32 rounding)."""
    options = ["fit", str(data_file), "--model", str(model_folder), "--lr", "0.01",
               "--epochs", "1", "--batch-size", "6", "--no-progress"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
    done = subprocess.run(
        [*launcher, "-m", "pbde", *options, "--out", str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert pbde.cli.main([*options, "--out", str(tmp_path / "one")]) == 0
    reports = [json.loads((tmp_path / n / "report.json").read_text()) for n in ("two", "one")]
    assert [r["processes"] for r in reports] == [2, 1]
    assert reports[0]["final_loss"] == pytest.approx(reports[1]["final_loss"], abs=1e-5)
    two, one = (
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path / n / "model")
        for n in ("two", "one")
    )
    for (name, a), b in zip(two.state_dict().items(), one.state_dict().values(), strict=True):
        assert float((a - b).abs().max()) <= 1e-5, name


# -- the PBDE view on language models --------------------------------------------------------------


def tokenized_records(model_folder, n=12):
    policy = CausalLM.from_pretrained(model_folder)
    text = pbde.io.from_records(records(n)).prefs
    return policy, CausalLM.tokenize(text, policy.tokenizer).prefs


def test_a_custom_behavior_on_a_language_model(model_folder):
    """DPO plus a length bonus, written as a PBDE(f, g) over a precomputed reference: its logits
    are β·Δlog π − β·Δlog π_ref + bonus·Δ|x|, computed here from the two models directly."""
    policy, prefs = tokenized_records(model_folder)
    reference = Precomputed.of(policy, torch.cat([prefs.xa, prefs.xb]))
    beta, bonus = 0.1, 0.05
    behavior = pbde.PBDE(
        beta,
        lambda x: -beta * reference.log_prob(x) + bonus * policy.length(x),
        references=(reference,),
    )
    model = pbde.Annotator(policy, behavior)
    with torch.no_grad():
        log_pi = [policy.log_prob(x) for x in (prefs.xa, prefs.xb)]
        lengths = [policy.length(x).to(log_pi[0]) for x in (prefs.xa, prefs.xb)]
        expected = beta * (log_pi[0] - log_pi[1]) - beta * (log_pi[0] - log_pi[1])
        expected = expected + bonus * (lengths[0] - lengths[1])  # π = π_ref here
        torch.testing.assert_close(model.logits(prefs.xa, prefs.xb), expected, atol=1e-5, rtol=0)
    result = pbde.fit(model, prefs, steps=3, lr=1e-3, progress=False)
    assert result.losses[-1] < result.losses[0]


def test_a_latent_mixture_of_language_model_annotators(model_folder):
    """Two CausalLM components under DPO: the marginal likelihood of the mixture (eq. 30) is
    what its objective reports, and fitting lowers it."""
    policy, prefs = tokenized_records(model_folder)
    reference = Precomputed.of(policy, torch.cat([prefs.xa, prefs.xb]))
    components = [
        pbde.Annotator(CausalLM.from_pretrained(model_folder), pbde.dpo(0.1, reference))
        for _ in range(2)
    ]
    mixture = pbde.LatentMixture(components)
    with torch.no_grad():
        h = torch.stack([c.logits(prefs.xa, prefs.xb) for c in components], -1)
        y = prefs.y[:, None]
        per_type = y * torch.nn.functional.logsigmoid(h) + (1 - y) * torch.nn.functional.logsigmoid(
            -h
        )
        expected = -torch.logsumexp(per_type + mixture.weights.log(), -1).mean()
        torch.testing.assert_close(mixture.objective(prefs), expected, atol=1e-5, rtol=0)
    result = mixture.fit(prefs, steps=4, lr=1e-3, noise=0.01, progress=False)
    assert result.losses[-1] < result.losses[0]


def test_gradient_checkpointing_and_accumulation_change_nothing_but_memory(
    tmp_path, model_folder, data_file
):
    options = ["fit", str(data_file), "--model", str(model_folder), "--lr", "0.01",
               "--steps", "3", "--batch-size", "6", "--no-progress"]  # fmt: skip
    variants = {
        "plain": [],
        "checkpointing": ["--gradient-checkpointing"],
        "accumulation": ["--gradient-accumulation", "3"],
    }
    losses = {}
    for name, extra in variants.items():
        assert pbde.cli.main([*options, *extra, "--out", str(tmp_path / name)]) == 0
        losses[name] = json.loads((tmp_path / name / "report.json").read_text())["final_loss"]
    assert losses["checkpointing"] == pytest.approx(losses["plain"], abs=1e-6)
    assert losses["accumulation"] == pytest.approx(losses["plain"], abs=1e-6)


def test_fsdp_under_torchrun_gives_the_single_process_model(tmp_path, model_folder, data_file):
    """The model's layers sharded over two gloo processes (FSDP2): the same model as one
    process, up to float32 rounding of the reordered sums."""
    options = ["fit", str(data_file), "--model", str(model_folder), "--lr", "0.01",
               "--epochs", "1", "--batch-size", "5", "--max-grad-norm", "0.5",
               "--no-progress"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
    done = subprocess.run(
        [*launcher, "-m", "pbde", *options, "--fsdp", "--out", str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert pbde.cli.main([*options, "--out", str(tmp_path / "one")]) == 0
    reports = [json.loads((tmp_path / n / "report.json").read_text()) for n in ("two", "one")]
    assert reports[0]["final_loss"] == pytest.approx(reports[1]["final_loss"], abs=1e-5)
    assert reports[0]["heldout"]["loss"] == pytest.approx(reports[1]["heldout"]["loss"], abs=1e-5)
    two, one = (
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path / n / "model")
        for n in ("two", "one")
    )
    for (name, a), b in zip(two.state_dict().items(), one.state_dict().values(), strict=True):
        assert float((a - b).abs().max()) <= 1e-5, name
    # without torchrun, --fsdp is a usage error
    assert pbde.cli.main([*options, "--fsdp", "--out", str(tmp_path / "x")]) == 2
