"""``pbde fit DATA --model DIR``: align a Hugging Face causal LM on prompt/chosen/rejected text.

The same pieces as every other fit, wired for language models: the reader returns
:class:`~pbde.TextPreferences`, :meth:`CausalLM.tokenize <pbde.densities.CausalLM.tokenize>`
turns them into token items with the model's own tokenizer, the reference π_ref is evaluated once
on every item and kept as a table (:class:`~pbde.densities.Precomputed`; the reference model is
then released), and :func:`pbde.fit` trains the policy under the chosen behavior and loss. The
run folder holds the model in Hugging Face format, the metrics, the curves and a report.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

#: the defaults of the language-model path (TRL's DPO defaults where it has one)
DEFAULTS = {
    "behavior": "dpo",
    "beta": 0.1,
    "lr": 1e-6,
    "batch_size": 8,
    "epochs": 1,
    "schedule": "linear",
    "optimizer": "adamw",
    "max_grad_norm": 1.0,
    "log_every": 10,
}

_ONE_D_OPTIONS = ("density", "items", "low", "high", "grid_size")


def check_options(args: argparse.Namespace, usage_error) -> None:
    """Option checks of the language-model path, before any work (after those every fit shares,
    in ``pbde.cli``); each error names the option."""
    for option in _ONE_D_OPTIONS:
        if getattr(args, option, None) is not None:
            raise usage_error(
                f"--{option.replace('_', '-')} describes a 1-D model; --model fits the language "
                "model of its folder"
            )
    if not args.model.is_dir():
        raise usage_error(
            f"--model must be a local folder written by save_pretrained (pbde downloads "
            f"nothing: save a hub model with save_pretrained first); got {str(args.model)!r}"
        )
    if args.reference is not None and not args.reference.is_dir():
        raise usage_error(
            f"--reference must be a local model folder (save_pretrained) with --model; got "
            f"{str(args.reference)!r}"
        )
    behavior = args.behavior or DEFAULTS["behavior"]
    if behavior in ("luce", "length-normalized") and args.reference is not None:
        raise usage_error(
            f"--reference applies to --behavior dpo, ipo or geometric, not {behavior}"
        )
    if behavior in ("luce", "length-normalized", "geometric") and args.beta is not None:
        raise usage_error(f"--beta applies to --behavior dpo, not {behavior}")
    if behavior == "ipo" and args.beta is not None:
        raise usage_error(
            "--beta applies to --behavior dpo (ipo fixes beta = 1; its strength is --tau)"
        )
    if behavior == "geometric" and args.alpha is None:
        raise usage_error("--behavior geometric needs --alpha A (> 0)")
    if behavior != "geometric" and args.alpha is not None:
        raise usage_error("--alpha applies only to --behavior geometric")
    if args.per_token and behavior not in ("dpo", "ipo"):
        raise usage_error("--per-token applies to --behavior dpo or ipo")
    if args.lora_r is None and args.lora_alpha is not None:
        raise usage_error("--lora-alpha needs --lora-r R")
    if args.fsdp:
        if int(os.environ.get("WORLD_SIZE", "1")) < 2:
            raise usage_error("--fsdp shards the model over processes: launch with torchrun")
        if args.lora_r is not None or args.checkpoint is not None:
            raise usage_error("--fsdp does not combine with --lora-r or --checkpoint yet")
    if args.steps is not None and args.epochs is not None:
        raise usage_error("give --steps or --epochs, not both")
    if args.eval_every is not None and args.test_fraction == 0:
        raise usage_error("--eval-every needs a held-out split (--test-fraction > 0)")
    if args.max_prompt_length is not None and args.max_length is not None:
        if args.max_prompt_length >= args.max_length:
            raise usage_error(
                f"--max-prompt-length ({args.max_prompt_length}) must be < --max-length "
                f"({args.max_length}), to leave room for the completion"
            )
    for option in ("weight_decay", "max_grad_norm", "warmup_steps"):
        value = getattr(args, option)
        if value is not None and not (0 <= value < float("inf")):
            raise usage_error(f"--{option.replace('_', '-')} must be >= 0, got {value:g}")
    if args.warmup_steps is not None and args.warmup_ratio is not None:
        raise usage_error("give --warmup-steps or --warmup-ratio, not both")
    if args.warmup_ratio is not None and not 0.0 <= args.warmup_ratio < 1.0:
        raise usage_error(f"--warmup-ratio must be in [0, 1), got {args.warmup_ratio:g}")
    if args.precision == "fp16" and not str(args.device or "cpu").startswith("cuda"):
        raise usage_error("--precision fp16 needs --device cuda (use bf16 on the CPU)")
    if args.out.exists() and not args.out.is_dir():
        raise usage_error(f"--out must be a folder; {str(args.out)!r} is a file")
    if args.checkpoint is not None:
        if args.checkpoint.is_dir():
            raise usage_error(
                f"--checkpoint must be a file path; {str(args.checkpoint)!r} is a folder"
            )
        if not args.checkpoint.parent.is_dir():
            raise usage_error(f"--checkpoint {str(args.checkpoint)!r}: its folder does not exist")


def fit_language_model(args: argparse.Namespace, usage_error) -> int:
    """The language-model run of ``pbde fit`` (see the module docstring)."""

    import pbde
    from pbde.densities import CausalLM, Precomputed
    from pbde.distributed import is_main_process, rank_and_world_size, shard_model_
    from pbde.io import write_preferences

    _quiet_libraries()
    began = time.perf_counter()
    behavior_name = args.behavior or DEFAULTS["behavior"]
    progress = False if args.no_progress else None
    try:
        policy = CausalLM.from_pretrained(
            args.model, tokenizer=True, lora_r=args.lora_r, lora_alpha=args.lora_alpha
        )
    except ValueError as error:
        raise usage_error(f"--model {error}") from None
    tokenizer = policy.tokenizer
    if tokenizer.eos_token_id is None:
        raise usage_error(
            f"--model {str(args.model)!r}: its tokenizer has no EOS token (eos_token_id is None); "
            "completions could not end with one"
        )
    read, tokenized = _read_tokenized(
        args, policy, args.max_length, args.max_prompt_length, "fit", usage_error
    )
    prefs = tokenized.prefs
    test_fraction = 0.2 if args.test_fraction is None else args.test_fraction
    if test_fraction > 0:
        try:
            train, test = prefs.split(float(test_fraction), seed=args.seed)
            _, test_text = read.prefs.split(float(test_fraction), seed=args.seed)
        except ValueError as error:
            raise usage_error(f"--test-fraction {error}") from None
    else:
        train, test, test_text = prefs, None, None
    batch_size = args.batch_size or DEFAULTS["batch_size"]

    # the reference: evaluated once on every item, then only a table is kept
    reference_table = None
    if behavior_name in ("dpo", "ipo", "geometric"):
        if args.reference is not None:
            try:
                reference = CausalLM.from_pretrained(args.reference, tokenizer=False)
            except ValueError as error:
                raise usage_error(f"--reference {error}") from None
            if reference.vocab_size != policy.vocab_size:
                raise usage_error(
                    f"--reference has a vocabulary of {reference.vocab_size} tokens, --model "
                    f"{policy.vocab_size}: the two must share one tokenizer"
                )
        elif policy.lora is not None:
            reference = policy.without_adapters()  # the same weights, adapters off
        else:
            reference = policy  # the starting model, evaluated before any step
        if args.device:
            reference.to(args.device)
        items = torch.cat([prefs.xa, prefs.xb])
        reference_table = Precomputed.of(reference, items, batch_size=batch_size, progress=progress)
        del reference
    behavior = _behavior(behavior_name, args, policy, reference_table)
    if args.fsdp:
        _check_fsdp_batches(args, len(train), batch_size, usage_error)
        if args.device:
            policy.to(args.device)
        shard_model_(policy.model)
    model = pbde.Annotator(policy, behavior)
    if args.gradient_checkpointing:
        policy.model.gradient_checkpointing_enable()
        if policy.lora is not None:
            policy.model.enable_input_require_grads()
    loss_kwargs = {}
    if args.tau is not None:
        loss_kwargs["tau"] = args.tau
    if args.delta is not None:
        loss_kwargs["delta"] = args.delta
    if args.device:
        model.to(args.device)
    initial = (
        None
        if test is None
        else pbde.evaluate(model, test, loss=args.loss, batch_size=batch_size, **loss_kwargs)
    )

    main = is_main_process()
    if main:
        args.out.mkdir(parents=True, exist_ok=True)
    metrics_path = args.out / "metrics.jsonl"
    resuming = args.checkpoint is not None and args.checkpoint.exists()
    if main and not resuming and metrics_path.exists():
        metrics_path.unlink()
    log = _Log(metrics_path, args.out) if main else None
    before = (
        [] if initial is None else [{"step": 0, **{f"eval/{k}": v for k, v in initial.items()}}]
    )
    if log is not None and before and not resuming:
        log(before[0])
    epochs = None if args.steps is not None else (args.epochs or DEFAULTS["epochs"])
    steps = args.steps
    if args.warmup_ratio is not None:
        total = steps or epochs * -(-len(train) // min(batch_size, len(train)))
        warmup = int(args.warmup_ratio * total)
    else:
        warmup = args.warmup_steps or 0
    try:
        result = pbde.fit(
            model,
            train,
            loss=args.loss,
            steps=steps,
            epochs=epochs,
            lr=args.lr or DEFAULTS["lr"],
            batch_size=batch_size,
            gradient_accumulation=args.gradient_accumulation,
            optimizer=DEFAULTS["optimizer"],
            weight_decay=args.weight_decay or 0.0,
            schedule=args.schedule or DEFAULTS["schedule"],
            warmup_steps=warmup,
            max_grad_norm=_clipping(args.max_grad_norm),
            precision=args.precision,
            seed=args.seed,
            progress=progress,
            device=args.device,
            checkpoint=args.checkpoint,
            log_every=args.log_every or DEFAULTS["log_every"],
            log=log,
            eval_prefs=test,
            eval_every=args.eval_every,
            eval_batch_size=batch_size,
            **loss_kwargs,
        )
    except FloatingPointError as error:
        print(f"pbde fit: error: {error}", file=sys.stderr)
        return 1
    finally:
        if log is not None:
            log.close()
    final = [r for r in result.metrics if "eval/loss" in r]
    heldout = (
        None if not final else {k[5:]: v for k, v in final[-1].items() if k.startswith("eval/")}
    )
    seconds = time.perf_counter() - began
    settings = {
        key: (str(value) if isinstance(value, Path) else value)
        for key, value in vars(args).items()
        if key not in ("handler", "command")
    }
    settings.update(behavior=behavior_name, test_fraction=test_fraction, batch_size=batch_size)
    train_records = [r for r in result.metrics if "loss" in r]
    report = {
        "model": str(args.model),
        "behavior": repr(behavior),
        "loss": args.loss,
        "final_loss": result.final_loss,
        "heldout": heldout,
        "initial_heldout": initial,
        "train_size": len(train),
        "test_size": 0 if test is None else len(test),
        "dropped_rows": read.dropped,
        "rows_truncated": tokenized.rows_truncated,
        "prompts_truncated": tokenized.prompts_truncated,
        "completions_truncated": tokenized.completions_truncated,
        "steps": result.steps,
        "tokens_per_second": (
            None
            if not train_records or "tokens_per_second" not in train_records[-1]
            else sum(r["tokens_per_second"] for r in train_records) / len(train_records)
        ),
        "processes": rank_and_world_size()[1],
        "seconds": seconds,
        "reference": None
        if reference_table is None
        else str(args.reference)
        if args.reference
        else "base model, adapters off"
        if policy.lora
        else "initial model",
        "settings": settings,
        "files": {
            "model": "model/",
            "metrics": "metrics.jsonl",
            "curves": "training.png",
            "report": "report.json",
        },
    }
    if test_text is not None:
        report["files"]["test"] = "test.jsonl"
    if args.fsdp:  # every process gives its shards; rank 0 writes an unsharded copy
        model = _gathered(model, args.model)
    if main:
        model.to("cpu")
        pbde.save_model(model, args.out / "model")
        if test_text is not None:
            write_preferences(test_text, args.out / "test.jsonl")
        plot_training(before + result.metrics, args.out / "training.png")
        (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        truncated = (
            ""
            if not tokenized.rows_truncated
            else f"; {tokenized.rows_truncated} rows truncated to --max-length/--max-prompt-length"
        )
        print(
            f"fitted {len(train)} comparisons ({result.steps} steps) in {seconds:.1f} s: final "
            f"loss {result.final_loss:.4f}{truncated}"
        )
        if heldout is not None:
            print(
                f"  held out ({len(test)} comparisons): loss {heldout['loss']:.4f} (was "
                f"{initial['loss']:.4f}), accuracy {heldout['accuracy']:.4f} (was "
                f"{initial['accuracy']:.4f}), reward margin {heldout.get('rewards/margins', 0):.4f}"
            )
        print(f"  wrote {args.out / 'model'}/, metrics.jsonl, training.png and report.json")
    return 0


def _read_tokenized(args, density, max_length, max_prompt_length, command: str, usage_error):
    """DATA read as text (``pbde.cli``'s reader: rows reported, ignored columns listed) and
    tokenized by ``density``'s tokenizer; what does not fit the model is a usage error."""
    from pbde.cli import _read_data
    from pbde.densities import CausalLM

    read = _read_data(
        args.data, "text", args.on_error, command=command, format=args.format, columns=args.columns
    )
    try:
        tokenized = CausalLM.tokenize(
            read.prefs,
            density.tokenizer,
            max_length=max_length,
            max_prompt_length=max_prompt_length,
        )
    except ValueError as error:
        raise usage_error(f"DATA {error}".replace("max_length=", "--max-length ")) from None
    positions = density.max_positions
    if positions is not None and tokenized.longest > positions:
        raise usage_error(
            f"DATA holds a prompt + completion of {tokenized.longest} tokens, more than the "
            f"model's {positions} positions: pass --max-length (at most {positions}) to truncate"
        )
    return read, tokenized


def _quiet_libraries() -> None:
    """pbde reports what matters, in one place: no logging, progress bars or deprecation notices
    of the libraries' internals (transformers, peft) on the command line."""
    import warnings

    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(transformers|peft)(\.|$)")


def _check_fsdp_batches(args, n: int, batch_size: int, usage_error) -> None:
    """Under FSDP every process must compute in every micro-batch (the layers gather their
    parameters collectively): each micro-batch needs at least one pair per process."""
    from pbde.distributed import rank_and_world_size

    world = rank_and_world_size()[1]
    smallest = min(batch_size, n) if n % batch_size == 0 or args.steps else n % batch_size
    if smallest < world * args.gradient_accumulation:
        raise usage_error(
            f"--fsdp needs at least {world * args.gradient_accumulation} pairs in every batch "
            f"({world} processes x --gradient-accumulation {args.gradient_accumulation}); "
            f"--batch-size {batch_size} over {n} training pairs leaves a batch of {smallest}"
        )


def _gathered(model, folder: Path):
    """The annotator with its FSDP-sharded policy gathered into an ordinary model (on rank 0;
    the other processes take part in the gathering and get ``model`` back)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    import pbde
    from pbde.densities import CausalLM
    from pbde.distributed import is_main_process

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(model.density.model, options=options)
    if not is_main_process():
        return model
    whole = CausalLM.from_pretrained(folder, tokenizer=True)
    whole.model.load_state_dict(state)
    return pbde.Annotator(whole, model.behavior)


def _clipping(value: float | None) -> float | None:
    if value is None:
        return DEFAULTS["max_grad_norm"]
    return None if value == 0 else value


def _behavior(name: str, args, policy, reference):
    import pbde

    if name == "luce":
        return pbde.luce()
    if name == "length-normalized":
        return pbde.length_normalized(policy.length)
    if name == "geometric":
        return pbde.geometric(args.alpha, reference)
    beta = 1.0 if name == "ipo" else (args.beta or DEFAULTS["beta"])
    return pbde.dpo(beta, reference, length=policy.length if args.per_token else None)


class _Log:
    """Each metrics record to ``metrics.jsonl`` (and to TensorBoard when it is installed)."""

    def __init__(self, path: Path, folder: Path):
        self.path = path
        self.writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # TensorBoard is optional
            SummaryWriter = None
        if SummaryWriter is not None:
            self.writer = SummaryWriter(os.fspath(folder / "tensorboard"))

    def __call__(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for name, value in record.items():
                if name != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(name, value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def plot_training(records: list[dict], path: Path) -> None:
    """Training curves of a run: the loss (training and held out), the reward margin and the
    reward accuracy, against the step; written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if "loss" in r]
    heldout = [r for r in records if "eval/loss" in r]
    panels = [
        ("loss", "loss per comparison"),
        ("rewards/margins", "reward margin (chosen − rejected)"),
        ("rewards/accuracies", "reward accuracy"),
    ]
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 8), sharex=True)
    for ax, (name, label) in zip(axes, panels, strict=True):
        for rows, key, style, legend in (
            (train, name, "-", "training"),
            (heldout, f"eval/{name}", "o--", "held out"),
        ):
            points = [(r["step"], r[key]) for r in rows if key in r]
            if points:
                ax.plot(*zip(*points, strict=True), style, label=legend)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
    axes[-1].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def evaluate_language_model(args: argparse.Namespace, usage_error) -> int:
    """``pbde evaluate RUN DATA`` for a language-model run (or its ``model/`` folder): the held-out
    metrics of :func:`pbde.evaluate` on DATA, tokenized as the run was."""

    import pbde
    from pbde.serialization import LM_RECORD, load_model

    _quiet_libraries()
    folder = args.model / "model" if (args.model / "model" / LM_RECORD).exists() else args.model
    settings = {}
    report_path = folder.parent / "report.json"
    if report_path.exists():
        try:
            settings = json.loads(report_path.read_text()).get("settings", {})
        except (OSError, ValueError):
            settings = {}
    try:
        model = load_model(folder)
    except (OSError, ValueError) as error:
        raise usage_error(f"MODEL {str(error).splitlines()[0]}") from None
    tokenizer = model.density.tokenizer
    if tokenizer is None:
        raise usage_error(f"MODEL {str(folder)!r} holds no tokenizer to read DATA's text with")
    max_length = args.max_length or settings.get("max_length")
    read, tokenized = _read_tokenized(
        args, model.density, max_length, settings.get("max_prompt_length"), "evaluate", usage_error
    )
    loss_kwargs = {k: settings[k] for k in ("tau", "delta") if settings.get(k) is not None}
    batch_size = args.batch_size or settings.get("batch_size") or DEFAULTS["batch_size"]
    metrics = pbde.evaluate(
        model,
        tokenized.prefs,
        loss=settings.get("loss", "bce"),
        batch_size=batch_size,
        **loss_kwargs,
    )
    metrics["dropped_rows"] = read.dropped
    metrics["rows_truncated"] = tokenized.rows_truncated
    if args.json:
        print(json.dumps(metrics))
    else:
        print(
            f"{metrics['comparisons']} comparisons: mean log-likelihood "
            f"{metrics['log_likelihood']:.6f} per comparison, accuracy {metrics['accuracy']:.6f}, "
            f"reward margin {metrics.get('rewards/margins', float('nan')):.6f}"
        )
    return 0
