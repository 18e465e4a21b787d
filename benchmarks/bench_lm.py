"""DPO on a small causal LM: steps/s and peak memory, TRL's ``DPOTrainer`` against ``pbde.fit``.

The setting: a GPT-2 built from a config (vocabulary 8192, 2 layers, 64-dimensional embeddings,
2 heads, 128 positions, no dropout), ``--pairs`` synthetic comparisons (prompts of 12-20 tokens,
completions of 16-32 tokens ending with EOS, token ids uniform), DPO with β = 0.1, ``--batch``
pairs per optimizer step, Adam(W) with weight decay 0 at a constant learning rate, no gradient
clipping, the reference model a frozen copy of the initial policy evaluated at every step (TRL's
default: no precomputed reference log-probabilities). Both contenders see the same token ids:
TRL gets them as text over a word-level vocabulary ``t0 … t8191`` that its own dataset
preparation tokenizes back to those ids (checked), pbde gets them as
:meth:`pbde.densities.CausalLM.items`.

Contenders, run in turn (A B A B …), each round in a fresh subprocess per contender so that
neither's memory peak includes the other's:

- ``trl``: ``DPOTrainer(...).train()`` for ``--steps`` steps (``per_device_train_batch_size =
  batch / K``, ``gradient_accumulation_steps = K``);
- ``pbde``: ``pbde.fit(Annotator(CausalLM(policy), dpo(0.1, CausalLM(reference))), prefs,
  batch_size=batch, schedule="constant", gradient_accumulation=K)``: the same setting as TRL's;
- ``pbde-table``: the same with the reference evaluated once before training into a
  :class:`~pbde.densities.Precomputed` table (what ``pbde fit --model`` does; TRL's counterpart
  is its ``precompute_ref_log_probs`` option). The table's one-off cost is outside the timed
  call.

**Speed.** Each contender's own loss computation is wrapped to record a timestamp (TRL's
``compute_loss``, pbde's loss callable); both are called once per micro-batch, at the same point
of the step. Steps/s is the number of optimizer steps between the timestamps of step
``--warmup`` and the last step, divided by the time between them: the steady state, without
each library's set-up (``Trainer.train``'s data loader and accelerator preparation, ``fit``'s
first validated step). The wall time of the whole training call per step is printed too.

**Memory.** The peak resident set size (RSS) of the subprocess during the training call, minus
its RSS just before: the kernel's high-water mark ``VmHWM`` is reset after set-up (writing 5 to
``/proc/self/clear_refs``, Linux >= 4.0), so set-up peaks (tokenization, model construction) do
not count. RSS rather than ``tracemalloc``: PyTorch's tensors are allocated by its C++ allocator,
which ``tracemalloc`` does not see. On CUDA the peak of ``torch.cuda.max_memory_allocated``
during the call is reported as well. One caveat: glibc may keep freed memory mapped, so RSS
growth is an upper bound on what the step needs at once.

Usage:
    python benchmarks/bench_lm.py [--rounds 5] [--steps 30] [--pairs 256] [--batch 16]
    python benchmarks/bench_lm.py --gradient-accumulation 4
    python benchmarks/bench_lm.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

VOCAB, EOS_ID, PAD_ID = 8192, 1, 0
BETA, LR = 0.1, 1e-4
CONTENDERS = ("trl", "pbde", "pbde-table")


def token_data(pairs: int, seed: int = 0):
    """Prompt, chosen and rejected token-id lists (completions end with EOS)."""
    import torch

    generator = torch.Generator().manual_seed(seed)

    def sequence(low: int, high: int, eos: bool) -> list[int]:
        length = int(torch.randint(low, high + 1, (1,), generator=generator))
        body = torch.randint(2, VOCAB, (length - int(eos),), generator=generator).tolist()
        return body + [EOS_ID] * int(eos)

    prompts = [sequence(12, 20, eos=False) for _ in range(pairs)]
    chosen = [sequence(16, 32, eos=True) for _ in range(pairs)]
    rejected = [sequence(16, 32, eos=True) for _ in range(pairs)]
    return prompts, chosen, rejected


def gpt2():
    import torch
    import transformers

    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_positions=128,
        n_embd=64,
        n_layer=2,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=EOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config)


def rss_kib(field: str = "VmRSS") -> int:
    """A memory figure of this process from /proc/self/status, in KiB (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (VmHWM); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def trl_trainer(args, data):
    """TRL's trainer on the token data (as text its tokenizer maps back to the same ids)."""
    import datasets
    import tokenizers
    import transformers
    import trl

    words = ["<pad>", "<eos>"] + [f"t{i}" for i in range(2, VOCAB)]
    word_level = tokenizers.Tokenizer(
        tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>")
    )
    word_level.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=word_level, eos_token="<eos>", pad_token="<pad>"
    )

    def text(ids: list[int]) -> str:
        return "".join(f" {words[i]}" for i in ids)  # leading space: a word boundary

    prompts, chosen, rejected = data
    dataset = datasets.Dataset.from_dict(
        {
            "prompt": [text(p).lstrip() for p in prompts],
            "chosen": [text(c) for c in chosen],
            "rejected": [text(r) for r in rejected],
        }
    )
    k = args.gradient_accumulation
    config = trl.DPOConfig(
        output_dir=os.path.join(args.tmp, "trl"),
        report_to="none",
        beta=BETA,
        loss_type="sigmoid",
        learning_rate=LR,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=0.0,
        optim="adamw_torch",
        per_device_train_batch_size=args.batch // k,
        gradient_accumulation_steps=k,
        max_steps=args.steps,
        logging_steps=args.steps,
        max_length=None,
        save_strategy="no",
        use_cpu=args.device == "cpu",
        bf16=False,
        fp16=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    policy = gpt2()
    reference = gpt2()  # the same initial weights (seeded)
    trainer = trl.DPOTrainer(
        policy, ref_model=reference, args=config, train_dataset=dataset, processing_class=tokenizer
    )
    prepared = trainer.train_dataset[0]
    assert [prepared["prompt_ids"], prepared["chosen_ids"], prepared["rejected_ids"]] == [
        prompts[0],
        chosen[0],
        rejected[0],
    ], "TRL's tokenization does not give back the benchmark's token ids"
    return trainer


def run_trl(args, data, stamps: list[float]):
    trainer = trl_trainer(args, data)
    compute_loss = trainer.compute_loss

    def timed(*a, **kw):
        stamps.append(time.perf_counter())
        return compute_loss(*a, **kw)

    trainer.compute_loss = timed
    return trainer.train


def run_pbde(args, data, stamps: list[float]):
    import torch

    import pbde
    from pbde.densities import CausalLM, Precomputed

    prompts, chosen, rejected = data
    xa, xb = CausalLM.items(prompts + prompts, chosen + rejected).chunk(2)
    prefs = pbde.Preferences(xa, xb, torch.ones(len(prompts)))
    model = pbde.Annotator(CausalLM(gpt2()), pbde.dpo(BETA, CausalLM(gpt2())))

    def loss(logits, y):
        stamps.append(time.perf_counter())
        return pbde.losses.bce(logits, y)

    options = {"gradient_accumulation": args.gradient_accumulation}
    if args.child == "pbde-table":  # pbde fit --model's default: π_ref evaluated once, a table
        reference = Precomputed.of(CausalLM(gpt2()), torch.cat([xa, xb]), batch_size=args.batch)
        model = pbde.Annotator(model.density, pbde.dpo(BETA, reference))

    def train():
        return pbde.fit(
            model,
            prefs,
            loss=loss,
            steps=args.steps,
            lr=LR,
            batch_size=args.batch,
            schedule="constant",
            progress=False,
            device=args.device,
            **options,
        )

    return train


def child(args) -> None:
    """Runs in a subprocess: one contender, one round; prints one JSON line."""
    import torch

    data = token_data(args.pairs)
    stamps: list[float] = []
    train = {"trl": run_trl, "pbde": run_pbde, "pbde-table": run_pbde}[args.child](
        args, data, stamps
    )
    cuda = torch.device(args.device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        cuda_before = torch.cuda.memory_allocated()
    before = rss_kib()
    exact_peak = reset_peak_rss()
    began = time.perf_counter()
    train()
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - began
    k = args.gradient_accumulation
    if len(stamps) != args.steps * k:
        raise RuntimeError(f"expected {args.steps * k} loss calls, got {len(stamps)}")
    first, last = args.warmup * k, (args.steps - 1) * k
    result = {
        "steps_per_second": (args.steps - 1 - args.warmup) / (stamps[last] - stamps[first]),
        "wall_per_step": wall / args.steps,
        "peak_rss_growth_mib": (rss_kib("VmHWM") - before) / 1024 if exact_peak else None,
        "cuda_peak_growth_mib": (
            (torch.cuda.max_memory_allocated() - cuda_before) / 2**20 if cuda else None
        ),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per round")
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of the timing")
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16, help="pairs per optimizer step")
    parser.add_argument(
        "--gradient-accumulation",
        type=int,
        default=1,
        help="K micro-batches of batch/K pairs per optimizer step",
    )
    parser.add_argument("--device", default="cpu", help="where both contenders train, e.g. cuda")
    parser.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--tmp", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    k = args.gradient_accumulation
    if k < 1 or args.batch % k:
        parser.error(
            f"--gradient-accumulation must be >= 1 and divide --batch={args.batch}; got {k}"
        )
    if not 0 <= args.warmup < args.steps - 1:
        parser.error(f"--warmup must be in [0, --steps - 2]; got {args.warmup}")
    if args.child:
        child(args)
        return

    import tempfile

    results = {name: [] for name in CONTENDERS}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for name in CONTENDERS:
                command = [sys.executable, __file__, *sys.argv[1:], "--child", name, "--tmp", tmp]
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode != 0:
                    sys.exit(f"{name} failed:\n{done.stderr[-4000:]}")
                results[name].append(json.loads(done.stdout.strip().splitlines()[-1]))

    first = results["pbde"][0]
    print(f"machine: {platform.processor() or platform.machine()}, {first['threads']} threads, "
          f"torch {first['torch']}, device {args.device}")  # fmt: skip
    print(f"setting: GPT-2 vocab {VOCAB}, 2x64, {args.pairs} pairs, batch {args.batch} "
          f"(gradient accumulation {k}), {args.steps} steps per round ({args.warmup} untimed), "
          f"{args.rounds} rounds, one subprocess per contender per round")  # fmt: skip
    header = f"{'contender':10s} {'steps/s median (min-max)':>26s} {'wall ms/step':>13s}"
    header += f" {'peak RSS growth MiB':>20s}"
    if args.device != "cpu":
        header += f" {'CUDA peak MiB':>14s}"
    print(header)
    for name, rounds in results.items():
        rate = [r["steps_per_second"] for r in rounds]
        wall = statistics.median(1e3 * r["wall_per_step"] for r in rounds)
        rss = [r["peak_rss_growth_mib"] for r in rounds if r["peak_rss_growth_mib"] is not None]
        line = f"{name:11s} {statistics.median(rate):9.1f} ({min(rate):5.1f}-{max(rate):5.1f})"
        line += f"      {wall:13.1f}"
        line += f" {statistics.median(rss):20.0f}" if rss else f" {'n/a':>20s}"
        if args.device != "cpu":
            line += f" {statistics.median(r['cuda_peak_growth_mib'] for r in rounds):14.0f}"
        print(line)
    for name in ("pbde", "pbde-table"):
        per_round = [
            p["steps_per_second"] / t["steps_per_second"]
            for p, t in zip(results[name], results["trl"], strict=True)
        ]
        print(f"speed {name} / trl: {statistics.median(per_round):.2f}x "
              f"(rounds: {min(per_round):.2f}-{max(per_round):.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
