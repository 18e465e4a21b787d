# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Align a language model
#
# `pbde fit DATA --model DIR --out RUN` aligns a Hugging Face causal language model on
# prompt/chosen/rejected text, the data format of TRL and of most preference data sets. It is the
# same fit as every other in pbde: the model is a density $\pi_\theta(\text{completion} \mid \text{prompt})$
# (`pbde.densities.CausalLM`), the behavior says how an annotator with that density would turn it
# into preferences, $P(x_A \succ x_B) = \sigma (\Omega (x_A) - \Omega (x_B))$ with $\Omega (x) = f(x)\, \log \pi_\theta(x) + g(x)$
# (Dumoulin et al., eq. 11), and the loss is the negative log-likelihood of the labels. DPO is
# $f = \beta, g = -\beta \, \log \pi_{\mathrm{ref}}$ (eq. 15); the length-normalized rule is $f = 1/\lvert x\rvert, g = 0$ (eq. 26).
#
# Nothing is downloaded. This tutorial
#
# 1. builds a small GPT-2 from a `transformers.GPT2Config`, with a byte-level BPE tokenizer
#    trained on an offline English corpus, and pre-trains it by maximum likelihood: $\pi_{\mathrm{ref}}$;
# 2. invents an annotator whose taste is stated exactly — it likes long completions — and has it
#    label pairs of completions that $\pi_{\mathrm{ref}}$ samples for prompts from the corpus;
# 3. fits three behaviors to those labels: DPO and the length-normalized rule with the command
#    line, and a behavior of our own (DPO with the annotator's length taste in $g$) with
#    `pbde.fit`; then looks at the training curves, at samples, and at what each fit did to the
#    length of the completions.
#
# Run it with `python docs/tutorials/align_a_language_model.py` (minutes on a 2-core CPU; the
# time measured for this page is under the title, and pre-training $\pi_{\mathrm{ref}}$ takes a third of it).
# `PBDE_SMOKE=1` shrinks it to seconds, with models too small to mean much. Figures go to
# `PBDE_FIGURES_DIR` (default `docs/images/tutorials`); the model folders and runs go to a
# temporary folder.

# %%
import json
import os
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

import pbde  # noqa: E402
from pbde.cli import main as pbde_command  # noqa: E402
from pbde.densities import CausalLM, Precomputed  # noqa: E402
from pbde.experiments.lm_mixture import label_in_chunks  # noqa: E402
from pbde.text import bpe_tokenizer, english_sentences  # noqa: E402

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

SMOKE = os.environ.get("PBDE_SMOKE") == "1"
FIGURES = Path(
    os.environ.get("PBDE_FIGURES_DIR", Path(__file__).resolve().parents[1] / "images" / "tutorials")
)
FIGURES.mkdir(parents=True, exist_ok=True)
WORK = Path(tempfile.mkdtemp(prefix="pbde-align-"))  # model folders, data and runs

VOCAB = 400 if SMOKE else 1000  # BPE vocabulary
WIDTH, LAYERS = (32, 1) if SMOKE else (96, 3)  # GPT-2's n_embd and n_layer
MLE_STEPS = 30 if SMOKE else 600  # maximum-likelihood steps of 32 sentences
PAIRS = 96 if SMOKE else 1536  # prompts, each with two sampled completions
SAMPLES = 64 if SMOKE else 512  # completions sampled from each model to measure lengths
MAX_NEW = 24 if SMOKE else 60  # most tokens a sampled completion may have
GAMMA = 6.0  # the annotator's bonus per completion token (nats)
BETA = 0.1  # DPO's β (TRL's default)
LR = 1e-4
EPOCHS = 1 if SMOKE else 2
BATCH = 16
SEED = 0
torch.manual_seed(SEED)
began = time.perf_counter()

# %% [markdown]
# ## The reference policy: a small GPT-2, pre-trained by maximum likelihood
#
# The corpus is the English prose of Python's documentation, which ships with CPython
# (`pbde.text.english_sentences`: about 2 900 sentences). `pbde.text.bpe_tokenizer` trains a
# byte-level BPE tokenizer on it, the kind GPT-2 uses, with `<|endoftext|>` (id 0) as its
# end-of-sequence (EOS) token, and returns it as a Hugging Face tokenizer.
#
# The model is a GPT-2 built from its config, trained for a few hundred steps on the sentences.
# `CausalLM` is pbde's density for any causal LM: its items are (prompt, completion) pairs of
# token sequences, and `log_prob` is $\log \pi (\text{completion} \mid \text{prompt})$, the sum of the log-probabilities
# of the completion's tokens. Here each sentence's first token is the prompt and the rest, with
# EOS, the completion, so maximum likelihood is a plain loop on `-log_prob`. `save_pretrained`
# writes the model and the tokenizer to a folder, which is all `pbde fit --model` reads.

# %%
sentences = english_sentences()
tokenizer = bpe_tokenizer(sentences, vocab_size=VOCAB)
EOS = tokenizer.eos_token_id
token_ids = [ids for ids in tokenizer(sentences)["input_ids"] if 4 <= len(ids) <= 47]
corpus = CausalLM.items([ids[:1] for ids in token_ids], [ids[1:] + [EOS] for ids in token_ids])
tokens_per_sentence = (corpus[:, 1] >= 0).sum(1)

config = transformers.GPT2Config(
    vocab_size=len(tokenizer),
    n_positions=128,
    n_embd=WIDTH,
    n_layer=LAYERS,
    n_head=4,
    bos_token_id=EOS,
    eos_token_id=EOS,
    pad_token_id=EOS,
)
gpt2 = transformers.GPT2LMHeadModel(config)
density = CausalLM(gpt2, tokenizer=tokenizer)
optimizer = torch.optim.AdamW(gpt2.parameters(), lr=3e-3)
schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / MLE_STEPS)
batches = torch.Generator().manual_seed(SEED)
for _ in range(MLE_STEPS):
    batch = torch.randint(len(corpus), (32,), generator=batches)
    # negative log-likelihood per token of 32 sentences
    loss = -density.log_prob(corpus[batch]).sum() / tokens_per_sentence[batch].sum()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    schedule.step()
gpt2.eval()
REFERENCE = WORK / "pi_ref"
gpt2.save_pretrained(REFERENCE)
tokenizer.save_pretrained(REFERENCE)
print(
    f"π_ref: GPT-2 with {sum(p.numel() for p in gpt2.parameters()):,} parameters, vocabulary "
    f"{len(tokenizer)}, trained on {len(corpus)} sentences in {time.perf_counter() - began:.0f} s; "
    f"final NLL {float(loss.detach()):.2f} nats per token"
)

# %% [markdown]
# ## An annotator who likes long completions
#
# The prompts are the first three words of corpus sentences. For each, $\pi_{\mathrm{ref}}$ samples two
# completions (`generate` with `do_sample=True` and `top_k=0`, so that the samples are draws
# from the density itself, with a fixed seed). A completion ends at EOS; its length $\lvert x\rvert$ counts
# its tokens, EOS included.
#
# The annotator is a PBDE too, with $\pi_{\mathrm{ref}}$ as its density and a taste for length in $g$:
#
# $$
# \Omega^*(x) = \log \pi_{\mathrm{ref}}(x) + \gamma\lvert x\rvert, \qquad f = 1,\; g(x) = \gamma\lvert x\rvert, \qquad \gamma = 6 \text{ nats per token.}
# $$
#
# Under $\pi_{\mathrm{ref}}$ each token costs about 4 nats on average, so $\gamma = 6$ more than pays for it: the
# annotator still weighs how likely each completion is, but a longer one usually wins.
# `pbde.Annotator(π_ref, pbde.PBDE(f=1, g=...))` is this annotator, and `annotator.label` draws
# $y \sim \mathrm{Bernoulli}(\sigma (\Omega^*(x_A) - \Omega^*(x_B)))$ for each pair, on the pairs tokenized the way the fits will
# read them (`CausalLM.tokenize`). The labelled pairs are written as prompt/chosen/rejected JSON
# Lines (`pbde.io.write_preferences`).


# %%
def sample_completions(model, prompts: list[str], *, seed: int) -> tuple[list[str], torch.Tensor]:
    """One completion per prompt, sampled from the model; its text and its length in tokens
    (EOS included; a completion that has not ended after MAX_NEW tokens counts MAX_NEW)."""
    tokenizer.padding_side = "left"  # prompts of different lengths, generated as one batch
    torch.manual_seed(seed)
    texts, lengths = [], []
    for start in range(0, len(prompts), 256):
        encoded = tokenizer(prompts[start : start + 256], return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(
                **encoded,
                do_sample=True,
                top_k=0,
                max_new_tokens=MAX_NEW,
                pad_token_id=EOS,
                eos_token_id=EOS,
            )
        for row in out[:, encoded["input_ids"].shape[1] :].tolist():
            ended = EOS in row
            stop = row.index(EOS) if ended else len(row)
            texts.append(tokenizer.decode(row[:stop]))
            lengths.append(stop + 1 if ended else MAX_NEW)
    return texts, torch.tensor(lengths)


starts = [" ".join(s.split()[:3]) for s in sentences if len(s.split()) >= 8]
order = torch.randperm(len(starts), generator=torch.Generator().manual_seed(SEED)).tolist()
prompts = [starts[i] for i in order[:PAIRS]]
eval_prompts = [starts[i] for i in order[PAIRS : PAIRS + SAMPLES]]  # to measure lengths

pi_ref = CausalLM.from_pretrained(REFERENCE)
completions, _ = sample_completions(pi_ref.model, prompts + prompts, seed=1)
first, second = completions[:PAIRS], completions[PAIRS:]
kept = [i for i in range(PAIRS) if first[i].strip() and second[i].strip()]
pairs = pbde.TextPreferences(
    [prompts[i] for i in kept], [first[i] for i in kept], [second[i] for i in kept]
)
tokenized = CausalLM.tokenize(pairs, tokenizer)
xa, xb = tokenized.prefs.xa, tokenized.prefs.xb


def length_bonus(x: torch.Tensor) -> torch.Tensor:
    return GAMMA * pi_ref.length(x).to(torch.get_default_dtype())


annotator = pbde.Annotator(pi_ref, pbde.PBDE(f=1.0, g=length_bonus, name="likes long"))
labels = label_in_chunks(annotator, xa, xb, chunk=128, generator=torch.Generator().manual_seed(2))
a_wins = labels.y.bool().tolist()
chosen = [a if win else b for a, b, win in zip(pairs.xa, pairs.xb, a_wins, strict=True)]
rejected = [b if win else a for a, b, win in zip(pairs.xa, pairs.xb, a_wins, strict=True)]
DATA = WORK / "prefs.jsonl"
pbde.io.write_preferences(pbde.TextPreferences(pairs.prompt, chosen, rejected), DATA)

length_a, length_b = pi_ref.length(xa), pi_ref.length(xb)
longer_won = torch.where(labels.y.bool(), length_a > length_b, length_b > length_a)
differ = length_a != length_b
length_chosen = torch.where(labels.y.bool(), length_a, length_b).double()
length_rejected = torch.where(labels.y.bool(), length_b, length_a).double()
print(
    f"{len(kept)} pairs ({PAIRS - len(kept)} dropped: an empty completion); the longer completion "
    f"won {float(longer_won[differ].double().mean()):.0%} of the pairs of unequal lengths"
)
print(
    f"mean length: chosen {float(length_chosen.mean()):.1f} tokens, rejected "
    f"{float(length_rejected.mean()):.1f}"
)
print(DATA.read_text().splitlines()[0])

# %% [markdown]
# ## Fit DPO and the length-normalized rule with `pbde fit`
#
# `pbde fit DATA --model DIR --out RUN` reads the file, tokenizes it with the folder's tokenizer,
# holds out 20 % of the comparisons, evaluates $\pi_{\mathrm{ref}}$ once on every completion (DPO's reference is
# then a table), and trains with AdamW, a linear schedule and gradient clipping. It writes the
# fitted model as a Hugging Face folder (`RUN/model/`, with `pbde.json` naming the behavior and the
# reference), the metrics (`RUN/metrics.jsonl`), the curves (`RUN/training.png`), a report
# (`RUN/report.json`) and the held-out comparisons (`RUN/test.jsonl`). `pbde.cli.main` runs the
# same command in this process; in a shell it is
#
#     pbde fit prefs.jsonl --model pi_ref --out dpo --behavior dpo --beta 0.1 --lr 1e-4 \
#         --epochs 2 --batch-size 16 --eval-every 19
#
# TRL's default learning rate (1e-6, the CLI's default too) is meant for models of billions of
# parameters; this one is tiny and takes 1e-4.

# %%
STEPS_PER_EPOCH = -(-int(0.8 * len(kept)) // BATCH)
EVAL_EVERY = max(1, STEPS_PER_EPOCH // 4)
common = ["--lr", str(LR), "--epochs", str(EPOCHS), "--batch-size", str(BATCH)]
common += ["--eval-every", str(EVAL_EVERY), "--log-every", "5", "--no-progress"]
RUNS = {"DPO": WORK / "dpo", "length-normalized": WORK / "length_normalized"}
seconds = {}
for name, behavior in (
    ("DPO", ["dpo", "--beta", str(BETA)]),
    ("length-normalized", ["length-normalized"]),
):
    start = time.perf_counter()
    status = pbde_command(
        ["fit", str(DATA), "--model", str(REFERENCE), "--out", str(RUNS[name]), "--behavior"]
        + behavior
        + common
    )
    assert status == 0, f"pbde fit ({name}) failed"
    seconds[name] = time.perf_counter() - start

# %% [markdown]
# ## A behavior of our own: DPO that knows the annotator likes length
#
# A behavior is any $f > 0$ and $g$. If we know the annotator adds $\gamma$ per token, we can put that
# taste in the model's $g$ instead of asking $\pi_\theta$ to learn it:
#
# $$
# \Omega_\theta(x) = \beta\log \pi_\theta(x) - \beta\log \pi_{\mathrm{ref}}(x) + \gamma\lvert x\rvert, \qquad f = \beta, \qquad g(x) = -\beta\log \pi_{\mathrm{ref}}(x) + \gamma\lvert x\rvert.
# $$
#
# (The idea of length-regularized DPO, Park et al., 2024, written as a PBDE.) The preference logit
# of a pair then already holds $\gamma \, (\lvert x_A\rvert - \lvert x_B\rvert)$, and $\pi_\theta$ is free to learn the rest of the
# annotator's taste, which is $\log \pi_{\mathrm{ref}}$ itself. The fit is the command's, done by hand: read and
# tokenize the file, split it the same way (20 %, seed 0), tabulate $\pi_{\mathrm{ref}}$
# (`Precomputed.of`), build `pbde.PBDE(f, g)`, and call `pbde.fit` with the same optimizer
# settings.

# %%
policy = CausalLM.from_pretrained(REFERENCE)
text = pbde.io.read_preferences(DATA, items="text").prefs
data = CausalLM.tokenize(text, policy.tokenizer).prefs
train, test = data.split(0.2, seed=0)
reference = Precomputed.of(policy, torch.cat([data.xa, data.xb]), progress=False)


def dpo_with_length_in_g(x: torch.Tensor) -> torch.Tensor:
    return -BETA * reference.log_prob(x) + GAMMA * policy.length(x).to(torch.get_default_dtype())


custom = pbde.Annotator(
    policy,
    pbde.PBDE(f=BETA, g=dpo_with_length_in_g, name="DPO + γ|x|", references=(reference,)),
)
RUNS["DPO + γ|x| in g"] = WORK / "dpo_length_in_g"
RUNS["DPO + γ|x| in g"].mkdir()
start = time.perf_counter()
custom_initial = pbde.evaluate(custom, test, batch_size=BATCH)
pbde.fit(
    custom,
    train,
    epochs=EPOCHS,
    lr=LR,
    batch_size=BATCH,
    optimizer="adamw",
    schedule="linear",
    max_grad_norm=1.0,
    progress=False,
    log=RUNS["DPO + γ|x| in g"] / "metrics.jsonl",
    log_every=5,
    eval_prefs=test,
    eval_every=EVAL_EVERY,
)
seconds["DPO + γ|x| in g"] = time.perf_counter() - start
policy.eval()

# %% [markdown]
# ## The curves
#
# Each run's `metrics.jsonl` holds one record every 5 steps (the training loss, the reward margin
# $\Omega$(chosen) − $\Omega$(rejected), the reward accuracy, …) and, with `eval/` names, the held-out ones.
# The report of a `pbde fit` run also has the held-out metrics before training
# (`initial_heldout`).

# %%
records, before = {}, {}
for name, run in RUNS.items():
    records[name] = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    if (run / "report.json").exists():
        before[name] = json.loads((run / "report.json").read_text())["initial_heldout"]
before["DPO + γ|x| in g"] = custom_initial
print(f"{'run':<18} {'held-out loss':>20} {'held-out accuracy':>20} {'seconds':>8}")
for name in RUNS:
    after = [r for r in records[name] if "eval/loss" in r][-1]
    print(
        f"{name:<18} {before[name]['loss']:>9.3f} → {after['eval/loss']:<8.3f} "
        f"{before[name]['accuracy']:>9.3f} → {after['eval/accuracy']:<8.3f} {seconds[name]:>8.1f}"
    )

COLORS = {"DPO": "tab:blue", "length-normalized": "tab:green", "DPO + γ|x| in g": "tab:purple"}
PANELS = [
    ("loss", "loss per comparison\n(BCE, log scale)"),
    ("rewards/margins", "reward margin\nΩ(chosen) − Ω(rejected)"),
    ("accuracy", "held-out accuracy"),
]
plt.rcParams.update({"font.size": 12})
fig, axes = plt.subplots(3, 1, figsize=(7.5, 10), sharex=True, dpi=110)
for name in RUNS:
    train_rows = [r for r in records[name] if "loss" in r]
    eval_rows = [r for r in records[name] if "eval/loss" in r]
    for ax, (key, _) in zip(axes, PANELS, strict=True):
        if key in train_rows[0]:
            steps = [r["step"] for r in train_rows]
            ax.plot(steps, [r[key] for r in train_rows], "-", color=COLORS[name], alpha=0.6)
        ax.plot(
            [0] + [r["step"] for r in eval_rows],
            [before[name][key]] + [r[f"eval/{key}"] for r in eval_rows],
            "o--",
            color=COLORS[name],
            ms=5,
            label=name,
        )
for ax, (_, label) in zip(axes, PANELS, strict=True):
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
axes[0].set_yscale("log")
axes[1].set_yscale("symlog", linthresh=1.0)
axes[0].set_title("Solid: training (every 5 steps); dots: held out", fontsize=12)
axes[0].legend(frameon=False, fontsize=11, loc="center right")
axes[-1].set_xlabel(f"step ({BATCH} comparisons each)")
fig.tight_layout()
fig.savefig(FIGURES / "align_a_language_model.png")
plt.close(fig)

# %% [markdown]
# ![Training curves](../images/tutorials/align_a_language_model.png)
#
# The printed table at full size:
#
# | run | held-out loss | held-out accuracy |
# |---|---|---|
# | DPO ($\beta = 0.1$) | 0.693 → 0.609 | 0.500 → 0.751 |
# | length-normalized (eq. 26) | 0.733 → 0.427 | 0.541 → 0.895 |
# | DPO + $\gamma\lvert x\rvert$ in $g$ | 9.20 → 8.97 | 0.787 → 0.787 |
#
# DPO starts at $\pi_\theta = \pi_{\mathrm{ref}}$, where every logit is zero (up to float round-off, which
# `pbde.evaluate` counts as a tie): loss $\log 2$, accuracy ½. Two epochs take it to 75 % held-out
# accuracy. The length-normalized
# model predicts the labels best (90 %). The third run is different in kind: its $g$ alone,
# $\gamma \, (\lvert x_A\rvert - \lvert x_B\rvert)$, orders 78.7 % of the held-out pairs right before any step, and it is
# confidently wrong, by tens of nats, on the pairs where the annotator chose the shorter
# completion, hence a loss of 9. What is left for $\pi_\theta$ to learn is the annotator's other taste,
# $\log \pi_{\mathrm{ref}}$: to score it, $\beta \, \log(\pi_\theta/\pi_{\mathrm{ref}})$ has to reach the size of $\log \pi_{\mathrm{ref}}$ itself, tens of nats,
# and two epochs of clipped steps at lr 1e-4 move the loss only from 9.20 to 8.97.

# %% [markdown]
# ## Samples before and after
#
# `pbde.load_model(RUN / "model")` reads a run's model back as an annotator (its density a
# `CausalLM`, its behavior and reference from `pbde.json`); `.density.model` is the
# `transformers` model, so `generate` works as usual. The same prompts and the same seed for
# every model:

# %%
models = {"π_ref": pi_ref.model}
for name in ("DPO", "length-normalized"):
    models[name] = pbde.load_model(RUNS[name] / "model").density.model
models["DPO + γ|x| in g"] = policy.model
shown = eval_prompts[:3]
samples = {name: sample_completions(model, shown, seed=3)[0] for name, model in models.items()}
for i, prompt in enumerate(shown):
    print(f"prompt: {prompt!r}")
    for name in models:
        print(f"  {name:<18} {samples[name][i]!r}")

# %% [markdown]
# At full size (one sample each, so the lengths vary; the next section counts 512):
#
# ```
# prompt: 'For explicitly created'
#   π_ref              ' as string0, y= wracxing use list to a cury.'
#   DPO                ', the ared string wmigtarn builds, or subclass__ wguxly defined invomation, and by tuple refmiutable.'
#   length-normalized  ' as use ared y use,racleing use list to a cury, all wguke ltpytional, elemhotecoly is mainledh comparison has alls, mrepleyting that that rever an default and'
#   DPO + γ|x| in g    ' in the ared list.'
# prompt: 'The class name'
#   π_ref              ' block dearep implement it is matngeing a loost in the way as then then an exception has an exception of the target.'
#   DPO                ' block dearepver less names despment:'
#   length-normalized  ' the dearepver less items despment: such dicside as assignment of then then an exception has an exception of name with thentations, prp evaluatorary is such as the loor.'
#   DPO + γ|x| in g    ' that dearey implement the string.'
# prompt: 'Return a copy'
#   π_ref              ' should be a descriptor exception, all upd vdeing bmpleme context, that is an object not raised.'
#   DPO                ' should be a descriptor exception, all upd vdeing an contexting methods, the same __gginerslots__() and continueally generined exception is used by yn.'
#   length-normalized  " should bImpletete all up to a new method (mpleme coam() builtin not suppc, a continueally the expression exception on dicts yn.O '_= C this specifich is provind.warch of the U characters occuri"
#   DPO + γ|x| in g    ' of the function of the fodt is a new method ( being methods, Python.'
# ```

# %% [markdown]
# ## What each behavior did to the length of the completions
#
# 512 completions from each model (64 at smoke size) for prompts no pair was built from; a
# completion that has not ended after 60 tokens is cut there and counted as 60 tokens.

# %%
lengths = {
    name: sample_completions(model, eval_prompts, seed=4)[1] for name, model in models.items()
}
print(f"{'model':<18} {'mean length':>12} {'± s.e.':>7} {'unfinished':>11}")
for name, drawn in lengths.items():
    drawn = drawn.double()
    print(
        f"{name:<18} {float(drawn.mean()):>12.1f} {float(drawn.std() / len(drawn) ** 0.5):>7.1f} "
        f"{float((drawn >= MAX_NEW).double().mean()):>11.1%}"
    )

fig, axes = plt.subplots(2, 1, figsize=(7.5, 8), dpi=110, height_ratios=[1, 1.3])
names = list(lengths)
colors = ["tab:gray"] + [COLORS[n] for n in names[1:]]
means = [float(lengths[n].double().mean()) for n in names]
errors = [float(lengths[n].double().std() / len(lengths[n]) ** 0.5) for n in names]
bars = axes[0].barh(names[::-1], means[::-1], xerr=errors[::-1], color=colors[::-1], alpha=0.85)
axes[0].bar_label(bars, fmt="%.1f", padding=6)
axes[0].axvline(float(length_chosen.mean()), color="black", ls=":", label="chosen in the data")
axes[0].axvline(float(length_rejected.mean()), color="0.5", ls="--", label="rejected in the data")
axes[0].set_xlabel("mean completion length (tokens, EOS included)")
axes[0].set_title(f"Mean length of {len(eval_prompts)} sampled completions")
axes[0].legend(frameon=False, fontsize=10, loc="lower right")
edges = np.arange(0.5, MAX_NEW + 1.5, 2)
for name, color in zip(names, colors, strict=True):
    axes[1].hist(lengths[name].numpy(), bins=edges, histtype="step", lw=2, color=color, label=name)
axes[1].set_xlabel("completion length (tokens, EOS included)")
axes[1].set_ylabel("completions")
axes[1].set_title("Length distribution")
axes[1].legend(frameon=False)
fig.tight_layout()
fig.savefig(FIGURES / "align_a_language_model_lengths.png")
plt.close(fig)
print(f"total {time.perf_counter() - began:.0f} s")

# %% [markdown]
# ![Completion lengths](../images/tutorials/align_a_language_model_lengths.png)
#
# At full size:
#
# | model | mean length (tokens) | not ended after 60 |
# |---|---|---|
# | $\pi_{\mathrm{ref}}$ | 21.5 ± 0.4 | 0 % |
# | DPO | 39.3 ± 0.5 | 10 % |
# | length-normalized | 54.4 ± 0.4 (at least) | 70 % |
# | DPO + $\gamma\lvert x\rvert$ in $g$ | 10.3 ± 0.3 | 0 % |
#
# **What the numbers show.** The annotator chose completions 27 tokens long on average and
# rejected ones of 18; the three behaviors read that in three different ways.
#
# * **DPO** nearly doubles the length ($21.5 \to 39.3$ tokens). The annotator is a Luce rule on
#   $p^* \propto \pi_{\mathrm{ref}}\, e^{\gamma \lvert x\rvert}$, and under a Luce annotator DPO's optimum is $\pi \propto \pi_{\mathrm{ref}}\, {p^*}^{1/\beta}$ (eq. 16),
#   here $\pi_{\mathrm{ref}}^{1+1/\beta}\, e^{\gamma \lvert x\rvert /\beta}$: per token, the bonus $\gamma /\beta = 60$ nats outweighs the roughly
#   $11 \times 4$ nats that $\pi_{\mathrm{ref}}^{11}$ charges, so the optimum favours long completions, and two epochs
#   move the model that way.
# * **The length-normalized rule** has no reference to hold it back. $\Omega = \log \pi_\theta(x)/\lvert x\rvert$ can only
#   say "longer is better" by making long completions likely per token, and the fitted model
#   learns to stop rarely: 70 % of its samples run past 60 tokens, so its mean of 54.4 is a lower
#   bound, and its samples ramble on. It is also the run that predicts the held-out labels best.
# * **DPO with $\gamma\lvert x\rvert$ in $g$** (the annotator's length taste given to the model) *halves* the length
#   ($21.5 \to 10.3$). With length accounted for by $g$, the labels that are left say that the
#   annotator likes completions $\pi_{\mathrm{ref}}$ finds likely, which Lemma 1 turns into
#   $\pi \propto \pi_{\mathrm{ref}}^{1+1/\beta}$: a sharper $\pi_{\mathrm{ref}}$, and, since every token costs about 4 nats, a shorter
#   one. Its loss barely moved, yet its samples changed the most: the loss is dominated by the
#   pairs $g$ gets wrong, which the policy cannot fix.
#
# Where the model's behavior puts the annotator's taste for length (in $\pi_\theta$, as DPO and eq. 26
# do, or in $g$) decides what the policy learns about length. Had we given the model the
# annotator's own behavior, $f = 1$ and $g = \gamma\lvert x\rvert$ (`pbde.PBDE(f=1.0, g=length_bonus)`), Theorem 2
# would put its optimum at the annotator's density, $\pi_{\mathrm{ref}}$ itself: nothing to learn, and the
# lengths would stay where they are.
#
# The text is not good English: the model has 444 000 parameters and saw 2 300 sentences for a
# minute. The same commands run unchanged on a real model folder (`save_pretrained` of any
# causal LM), on a GPU with `--device cuda`, with LoRA (`--lora-r`) and under `torchrun`.
