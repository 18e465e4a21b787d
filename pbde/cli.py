"""The ``pbde`` command line."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import torch


def _demo(args: argparse.Namespace) -> int:
    from pbde.demo import DemoSettings, run_demo

    settings = DemoSettings(
        beta=args.beta,
        steps=args.steps,
        pairs=args.pairs,
        seed=args.seed,
        device=args.device,
        grid_size=args.grid_size,
    )
    if args.quick:
        settings.steps, settings.pairs, settings.pretrain_steps = 60, 2**11, 200
    report = run_demo(settings, args.out, progress=not args.no_progress)
    metrics = report["metrics"]
    print(
        f"DPO (beta={settings.beta:g}) under a Luce annotator, {settings.pairs} pairs, "
        f"{settings.steps} steps, {report['seconds']:.1f} s"
    )
    print(f"  TV(theory, pi_ref)    = {metrics['tv_theory_pretrained']:.4f}   (before fitting)")
    print(f"  TV(theory, learned)   = {metrics['tv_theory_learned']:.4f}")
    print(f"  KL(theory || learned) = {metrics['kl_theory_learned']:.5f}")
    if args.out is not None:
        print(f"  wrote {args.out / 'demo.png'} and {args.out / 'demo.json'}")
    if args.json:
        print(json.dumps(report, indent=2))
    return 0


class UsageError(Exception):
    """A user error: printed as one line, exit status 2, no traceback."""


class _HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default after its help, where it has one (not None or a flag). The
    description and epilog are filled paragraph by paragraph (blank lines between them), and
    lines that start with spaces (example lines) are kept as they are."""

    def _fill_text(self, text, width, indent):
        blocks = []
        for block in text.split("\n\n"):
            lines, prose = [], []
            for line in block.splitlines() + [""]:
                if line.startswith(" ") or not line:
                    if prose:
                        lines.append(super()._fill_text(" ".join(prose), width, indent))
                        prose = []
                    if line:
                        lines.append(indent + line)
                else:
                    prose.append(line)
            blocks.append("\n".join(lines))
        return "\n\n".join(blocks)

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):  # argparse would print the usage and exit; main prints one line
        raise UsageError(message)


def _positive_float(text: str) -> float:
    value = float(text)
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {text!r}")
    return value


def _grid_size(text: str) -> int:
    value = int(text)
    if not 2 <= value <= 2**24:
        raise argparse.ArgumentTypeError(f"must be an int in [2, 16777216], got {text!r}")
    return value


def _seed(text: str) -> int:
    value = int(text)
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be an int in [0, 2**63 - 1], got {text!r}")
    return value


def _finite_float(text: str) -> float:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    value = _finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def _check_device(device: str | None) -> None:
    """A --device that this torch can use, before any work."""
    if device is None:
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise UsageError(
            f"--device must be a torch device such as cpu, cuda or cuda:1; got {device!r}"
        ) from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(
                f"--device {device}: this torch sees no CUDA device (torch.cuda.is_available() "
                "is False)"
            )
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise UsageError(
                f"--device {device}: there are {torch.cuda.device_count()} CUDA device(s)"
            )
    elif parsed.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise UsageError(f"--device {device}: this torch has no MPS device")
    elif parsed.type != "cpu":
        raise UsageError(f"--device must be cpu, cuda[:N] or mps; got {device!r}")


def _check_out_folder(out: Path | None, option: str = "--out") -> None:
    """--out names a folder that exists or can be created, before any work."""
    if out is None:
        return
    if out.exists() and not out.is_dir():
        raise UsageError(f"{option} must be a folder; {str(out)!r} is a file")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{option} {str(out)!r} cannot be created: {str(parent)!r} is a file")


def _check_checkpoint(path: Path | None) -> None:
    if path is None:
        return
    if path.is_dir():
        raise UsageError(f"--checkpoint must be a file path; {str(path)!r} is a folder")
    if not path.parent.is_dir():
        raise UsageError(f"--checkpoint {str(path)!r}: its folder does not exist")


_LM_ONLY = (
    "max_length", "max_prompt_length", "lora_r", "lora_alpha", "epochs", "warmup_steps",
    "warmup_ratio", "schedule", "weight_decay", "max_grad_norm", "precision", "log_every",
    "eval_every",
)  # fmt: skip


# full-batch Adam steps and learning rate when --steps / --lr are not given. Categorical: the
# README's example (TV 0.0034 to eq. 16). Energy: the demo's recipe; on 8192 pairs on [-2, 2]
# from a two-bump p*, KL(p* || fit) was 0.0019 after 300 steps at 1e-2 (1000 steps: 0.0047).
DENSITY_DEFAULTS = {"categorical": (500, 0.05), "energy": (300, 1e-2)}


def _check_fit_options(args: argparse.Namespace) -> None:
    """Option combinations argparse cannot express; each error names the option."""
    if args.loss == "ipo" and args.tau is None:
        raise UsageError("--loss ipo needs --tau T (> 0)")
    if args.loss != "ipo" and args.tau is not None:
        raise UsageError("--tau applies only to --loss ipo")
    if args.loss != "hinge" and args.delta is not None:
        raise UsageError("--delta applies only to --loss hinge")
    if args.test_fraction is not None and not 0.0 <= args.test_fraction < 1.0:
        raise UsageError(f"--test-fraction must be in [0, 1), got {args.test_fraction:g}")
    _check_out_folder(args.out)
    _check_checkpoint(args.checkpoint)
    if args.model is not None:
        from pbde.cli_language_model import check_options

        check_options(args, UsageError)
        return
    if args.density is None:
        raise UsageError("give --model DIR (a language model) or --density categorical|energy")
    for option in _LM_ONLY:
        if getattr(args, option) not in (None, False):
            raise UsageError(f"--{option.replace('_', '-')} applies only to --model")
    if (
        args.per_token
        or args.gradient_checkpointing
        or args.fsdp
        or args.gradient_accumulation != 1
    ):
        raise UsageError(
            "--per-token, --gradient-checkpointing, --fsdp and --gradient-accumulation apply only "
            "to --model"
        )
    if args.behavior == "length-normalized":
        raise UsageError("--behavior length-normalized applies to sequences (--model)")
    args.behavior = args.behavior or "luce"
    steps, lr = DENSITY_DEFAULTS[args.density]
    args.steps = steps if args.steps is None else args.steps
    args.lr = lr if args.lr is None else args.lr
    if args.density == "categorical":
        if args.items is None:
            raise UsageError("--density categorical needs --items N (the number of items)")
        for option in ("low", "high", "grid_size"):
            if getattr(args, option) is not None:
                raise UsageError(f"--{option.replace('_', '-')} applies only to --density energy")
    else:
        if args.low is None or args.high is None:
            raise UsageError("--density energy needs --low L and --high H (the domain)")
        if not args.low < args.high:
            raise UsageError(f"--low must be < --high, got {args.low:g} and {args.high:g}")
        if args.items is not None:
            raise UsageError("--items applies only to --density categorical")
    if args.behavior == "dpo" and args.beta is None:
        raise UsageError("--behavior dpo needs --beta B (> 0)")
    if args.behavior != "dpo" and args.beta is not None:
        raise UsageError("--beta applies only to --behavior dpo (ipo fixes beta = 1)")
    if args.behavior == "geometric" and args.alpha is None:
        raise UsageError("--behavior geometric needs --alpha A (> 0)")
    if args.behavior != "geometric" and args.alpha is not None:
        raise UsageError("--alpha applies only to --behavior geometric")
    if args.behavior == "luce" and args.reference is not None:
        raise UsageError("--reference applies only to --behavior dpo, geometric or ipo")


def _column_mapping(values: list[str] | None) -> dict[str, str | None] | None:
    """``--column FILE_COLUMN=NAME`` options as read_preferences' ``columns`` (``NAME`` empty:
    ignore the column)."""
    if not values:
        return None
    from pbde.io import _check_columns

    mapping = {}
    for value in values:
        source, equals, target = value.partition("=")
        if not equals or not source:
            raise UsageError(
                f"--column must be FILE_COLUMN=NAME (e.g. response_a=xa, or notes= to ignore "
                f"a column), got {value!r}"
            )
        if source in mapping:
            raise UsageError(f"--column names the file's column {source!r} twice")
        mapping[source] = target or None
    try:
        _check_columns(mapping, "--column")
    except ValueError as error:
        raise UsageError(str(error)) from None
    return mapping


def _read_data(
    path: Path,
    items: str,
    on_error: str,
    option: str = "DATA",
    command: str = "fit",
    format: str | None = None,
    columns: dict[str, str | None] | None = None,
):
    from pbde.io import read_preferences

    options = dict(on_error=on_error, format=format, columns=columns)
    try:
        read = read_preferences(path, items=items, **options)
        if items == "auto" and read.items in ("text", "number"):  # ids written as 1.0, names
            items = "name" if read.items == "text" else "id"
            read = read_preferences(path, items=items, **options)
    except (OSError, ValueError, ImportError) as error:
        message = str(error).replace("Pass on_error='drop'", "Pass --on-error drop")
        message = message.replace(
            "pass format='jsonl', 'csv' or 'parquet'", "pass --format jsonl, csv or parquet"
        )
        raise UsageError(f"{option} {message}") from None  # every problem, with its row
    unasked = [c for c in read.ignored_columns if c not in (columns or {})]  # not --column c=
    if unasked:
        print(
            f"pbde {command}: {option} columns ignored (not pbde columns): {', '.join(unasked)}",
            file=sys.stderr,
        )
    return read


def _items_file(model_path: Path) -> Path:
    """The sidecar that keeps the item names of a model fitted on named items."""
    return Path(model_path).with_name("items.json")


def _strengths(model, names: list[str]) -> list[dict]:
    """The fitted probability of each named item under the model's density, strongest first."""
    with torch.no_grad():
        log_prob = model.density.log_prob(torch.arange(len(names))).double()
    order = torch.argsort(log_prob, descending=True).tolist()
    return [
        {
            "item": names[k],
            "id": k,
            "log_prob": float(log_prob[k]),
            "prob": float(log_prob[k].exp()),
        }
        for k in order
    ]


def _check_items(prefs, args: argparse.Namespace, names: list[str] | None = None) -> None:
    x = torch.cat([prefs.xa, prefs.xb])
    if args.density == "categorical":
        if names is not None and len(names) > args.items:
            raise UsageError(
                f"--items {args.items} allows {args.items} items; DATA names {len(names)} "
                f"(e.g. {', '.join(repr(n) for n in names[args.items : args.items + 3])})"
            )
        if int(x.min()) < 0 or int(x.max()) >= args.items:
            raise UsageError(
                f"--items {args.items} allows item ids 0..{args.items - 1}; DATA holds ids "
                f"from {int(x.min())} to {int(x.max())}"
            )
    elif float(x.min()) < args.low or float(x.max()) > args.high:
        raise UsageError(
            f"--low {args.low:g} --high {args.high:g}: DATA holds items from "
            f"{float(x.min()):g} to {float(x.max()):g}, outside the domain"
        )


def _initial_density(args: argparse.Namespace):
    from pbde.densities import Categorical, EnergyModel

    if args.density == "categorical":
        return Categorical(size=args.items)  # uniform
    torch.manual_seed(args.seed)  # the MLP's initialization
    grid_size = 2**16 if args.grid_size is None else args.grid_size
    return EnergyModel(args.low, args.high, grid_size=grid_size)


def _reference_density(args: argparse.Namespace, initial):
    """π_ref: the density of the --reference model, or else the initial model (uniform for
    categorical, the seeded MLP for energy)."""
    from pbde.annotators import Annotator
    from pbde.serialization import load_model

    if args.reference is None:
        return initial
    try:
        reference = load_model(args.reference)
    except (OSError, ValueError) as error:
        raise UsageError(f"--reference {str(error).splitlines()[0]}") from None
    if not isinstance(reference, Annotator):
        raise UsageError(
            f"--reference {str(args.reference)!r} holds a {type(reference).__name__}; it must "
            "be a single-annotator model (its density is pi_ref)"
        )
    density = reference.density
    if args.density == "categorical":
        probe = torch.arange(args.items)
    else:
        probe = torch.linspace(args.low, args.high, 5)
    try:
        with torch.no_grad():
            density.log_prob(probe)
    except (ValueError, TypeError) as error:
        raise UsageError(
            f"--reference {str(args.reference)!r} does not fit the items of --density "
            f"{args.density}: {str(error).splitlines()[0]}"
        ) from None
    return density


def _behavior(args: argparse.Namespace, reference):
    import pbde

    if args.behavior == "luce":
        return pbde.luce()
    if args.behavior == "dpo":
        return pbde.dpo(args.beta, reference)
    if args.behavior == "geometric":
        return pbde.geometric(args.alpha, reference)
    return pbde.dpo(1.0, reference)  # ipo: f = 1, g = -log pi_ref (use with --loss ipo)


def evaluate_model(model, prefs) -> dict:
    """Mean log-likelihood per comparison and accuracy of ``model`` on ``prefs`` (see
    :func:`pbde.evaluate`)."""
    from pbde.fit import evaluate

    metrics = evaluate(model, prefs)
    return {k: metrics[k] for k in ("log_likelihood", "accuracy", "comparisons")}


def _fit(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from pbde.distributed import init_from_environment

    _check_fit_options(args)
    was_initialized = dist.is_available() and dist.is_initialized()
    args.device = init_from_environment(args.device)  # under torchrun: join its process group
    try:
        return _fit_and_report(args)
    finally:
        if not was_initialized and dist.is_available() and dist.is_initialized():
            # all ranks leave together: gloo aborted ("terminate called without an active
            # exception") in about one run of ten when rank 0 left while writing its outputs
            dist.barrier()
            dist.destroy_process_group()


def _fit_and_report(args: argparse.Namespace) -> int:
    import time

    if args.model is not None:
        from pbde.cli_language_model import fit_language_model

        return fit_language_model(args, UsageError)

    import pbde
    from pbde.distributed import is_main_process, rank_and_world_size
    from pbde.io import write_preferences

    began = time.perf_counter()
    items = "auto" if args.density == "categorical" else "number"  # ids or names
    read = _read_data(args.data, items, args.on_error, format=args.format, columns=args.columns)
    if args.density == "categorical" and read.items not in ("id", "name"):
        raise UsageError(
            f"--density categorical needs integer item ids or item names; DATA holds "
            f"{read.items} items"
        )
    prefs, names = read.prefs, read.item_names
    _check_items(prefs, args, names)
    test_fraction = 0.2 if args.test_fraction is None else args.test_fraction
    if test_fraction > 0:
        try:
            train, test = prefs.split(float(test_fraction), seed=args.seed)
        except ValueError as error:
            raise UsageError(f"--test-fraction {error}") from None
    else:
        train, test = prefs, None
    initial = _initial_density(args)
    reference = _reference_density(args, initial) if args.behavior != "luce" else None
    model = pbde.Annotator(initial, _behavior(args, reference) if reference is not None else None)
    loss_kwargs = {}
    if args.tau is not None:
        loss_kwargs["tau"] = args.tau
    if args.delta is not None:
        loss_kwargs["delta"] = args.delta
    initial_heldout = None if test is None else evaluate_model(model, test)
    try:
        result = pbde.fit(
            model,
            train,
            loss=args.loss,
            steps=args.steps,
            lr=args.lr,
            batch_size=args.batch_size,
            seed=args.seed,
            device=args.device,
            checkpoint=args.checkpoint,
            progress=False if args.no_progress else None,
            **loss_kwargs,
        )
    except FloatingPointError as error:
        print(f"pbde fit: error: {error}", file=sys.stderr)
        return 2
    model.to("cpu")
    heldout = None if test is None else evaluate_model(model, test)
    settings = {
        key: (str(value) if isinstance(value, Path) else value)
        for key, value in vars(args).items()
        if key not in ("handler", "command")
    }
    settings["test_fraction"] = test_fraction
    report = {
        "final_loss": result.final_loss,
        "heldout_log_likelihood": None if heldout is None else heldout["log_likelihood"],
        "heldout_accuracy": None if heldout is None else heldout["accuracy"],
        "initial_heldout_log_likelihood": (
            None if initial_heldout is None else initial_heldout["log_likelihood"]
        ),
        "train_size": len(train),
        "test_size": 0 if test is None else len(test),
        "dropped_rows": read.dropped,
        "steps": result.steps,
        "processes": rank_and_world_size()[1],
        "seconds": time.perf_counter() - began,
        "reference": (
            None
            if args.behavior == "luce"
            else str(args.reference)
            if args.reference
            else "initial model"
        ),
        "settings": settings,
        "files": {"model": "model.pt", "report": "report.json"},
        "ignored_columns": read.ignored_columns,
    }
    strengths = None
    if names is not None:  # named items: the names travel with the model
        strengths = _strengths(model, names + [f"#{k}" for k in range(len(names), args.items)])
        report["item_names"] = names
        report["strengths"] = strengths
        report["files"]["items"] = "items.json"
    if test is not None:
        report["files"]["test"] = "test.jsonl"  # item ids (names: see items.json)
    if is_main_process():  # under torchrun, rank 0 writes the outputs
        args.out.mkdir(parents=True, exist_ok=True)
        pbde.save_model(model, args.out / "model.pt")
        if names is not None:
            _items_file(args.out / "model.pt").write_text(
                json.dumps({"item_names": names}, indent=2, ensure_ascii=False) + "\n",
                encoding="utf-8",
            )
        if test is not None:
            write_preferences(test, args.out / "test.jsonl")
        (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        print(
            f"fitted {len(train)} comparisons in {report['seconds']:.1f} s: final loss "
            f"{report['final_loss']:.4f}"
            + (
                ""
                if heldout is None
                else f", held-out log-likelihood {heldout['log_likelihood']:.4f} per comparison"
                f", accuracy {heldout['accuracy']:.4f} ({len(test)} comparisons)"
            )
        )
        if strengths is not None:
            top = ", ".join(f"{s['item']} {s['prob']:.3f}" for s in strengths[:5])
            print(f"  strongest items (fitted probability): {top}")
        print(f"  wrote {args.out / 'model.pt'} and {args.out / 'report.json'}")
    return 0


def _item_kind(model) -> str:
    from pbde.annotators import Annotator
    from pbde.densities import Categorical, Mixture, Tabulated

    while not isinstance(model, Annotator):  # a MixtureAnnotator: its first annotator
        model = model.annotators[0]
    density = model.density
    while isinstance(density, Mixture):
        density = density.components[0]
    if isinstance(density, Categorical):
        return "id"
    if isinstance(density, Tabulated):
        points = density.support.points
        if points.ndim > 1:
            return "vector"
        return "number" if points.is_floating_point() else "id"
    return "number"


def _map_names(prefs, found: list[str], names: list[str], saved: Path):
    """Item ids of a new file (its own order of first appearance) → the model's ids."""
    from pbde.data import Preferences

    index = {name: k for k, name in enumerate(names)}
    unknown = [name for name in found if name not in index]
    if unknown:
        listed = ", ".join(repr(n) for n in unknown[:10])
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        raise UsageError(
            f"DATA names {len(unknown)} item(s) that MODEL does not know: {listed}{more} "
            f"(the model's items are listed in {saved})"
        )
    ids = torch.tensor([index[name] for name in found])
    return Preferences(ids[prefs.xa], ids[prefs.xb], prefs.y, prefs.annotator_id, prefs.weight)


def _evaluate(args: argparse.Namespace) -> int:
    from pbde.serialization import load_model

    if args.model.is_dir():  # a language-model run (or its model folder)
        from pbde.cli_language_model import evaluate_language_model

        return evaluate_language_model(args, UsageError)
    for option in ("batch_size", "max_length"):
        if getattr(args, option) is not None:
            raise UsageError(f"--{option.replace('_', '-')} applies to language-model runs")

    try:
        model = load_model(args.model)
    except (OSError, ValueError) as error:
        raise UsageError(f"MODEL {str(error).splitlines()[0]}") from None
    kind = _item_kind(model)
    saved = _items_file(args.model)
    names = None
    if kind == "id" and saved.exists():  # fitted on named items: read names too
        names = json.loads(saved.read_text(encoding="utf-8"))["item_names"]
        kind = "auto"
    read = _read_data(
        args.data, kind, args.on_error, command="evaluate", format=args.format, columns=args.columns
    )
    prefs = read.prefs
    if read.item_names is not None:
        if names is None:
            raise UsageError(
                f"DATA names its items ({', '.join(repr(n) for n in read.item_names[:3])}, ...) "
                f"but MODEL was not fitted on named items (no {saved.name} next to it)"
            )
        prefs = _map_names(prefs, read.item_names, names, saved)
    try:
        metrics = evaluate_model(model, prefs)
    except (ValueError, TypeError) as error:
        raise UsageError(f"DATA does not fit MODEL: {str(error).splitlines()[0]}") from None
    if metrics["log_likelihood"] != metrics["log_likelihood"]:
        raise UsageError(f"MODEL {str(args.model)!r} gives a NaN log-likelihood on DATA")
    metrics["dropped_rows"] = read.dropped
    if args.json:
        print(json.dumps(metrics))
    else:
        print(
            f"{metrics['comparisons']} comparisons: mean log-likelihood "
            f"{metrics['log_likelihood']:.6f} per comparison, accuracy {metrics['accuracy']:.6f}"
        )
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from pbde import experiments

    if args.from_json:
        given = [f"--{k}" for k in ("quick", "fast", "list", "json") if getattr(args, k)]
        given += [f"--{k}" for k in ("seed", "steps", "pairs", "device")
                  if getattr(args, k) is not None]  # fmt: skip
        if args.name or given:
            raise UsageError(f"--from-json redraws saved runs (the NAME is in each FILE): "
                             f"{' '.join(args.name + given)} does not apply")  # fmt: skip
        for source in args.from_json:
            print(f"wrote {experiments.redraw(source, args.out)}")
        return 0
    if args.list or not args.name:
        if not args.name and not args.list:
            raise UsageError("give an experiment NAME (or several), 'all', or --list")
        for name in experiments.names():
            print(f"{name:18s} {experiments.describe(name)}")
        return 0
    every = args.name == ["all"]
    if "all" in args.name and not every:
        raise UsageError(f"'all' runs every experiment: give it alone. Got {' '.join(args.name)}")
    names = experiments.names() if every else list(dict.fromkeys(args.name))
    overrides = {"seed": args.seed, "steps": args.steps, "pairs": args.pairs, "device": args.device}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    settings = {}  # unknown names and overrides fail here, before any work
    for name in names:
        settings[name] = experiments.settings_for(
            name, quick=args.quick, fast=args.fast, **overrides
        )  # which ignores the overrides its settings have no field for:
        missing = [f"--{k}" for k in overrides if not hasattr(settings[name], k)]
        if missing and not every:
            raise UsageError(f"{', '.join(missing)} does not apply to {name!r}: its settings "
                             f"have no such field")  # fmt: skip
        if missing:
            print(f"note: {', '.join(missing)} does not apply to {name!r}; it runs without",
                  file=sys.stderr)  # fmt: skip
    summaries = {}
    for name in names:
        result = experiments.run(name, settings[name], progress=not args.no_progress)
        written = result.save(args.out)
        summaries[name] = result.report()
        summaries[name].pop("figure", None)  # the figure's numbers stay in NAME.json
        top = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
        numbers = ", ".join(f"{k} = {v:.4g}" for k, v in top.items())
        print(f"{name}: {result.seconds:.1f} s" + (f"; {numbers}" if numbers else ""))
        if name == "length-bias":
            from pbde.experiments.length_bias import table

            print(table(result.metrics))
        print("  wrote " + " and ".join(str(path) for path in written))
    if args.json:
        print(json.dumps(summaries, indent=2))
    return 0


_FIT_DESCRIPTION = """\
Fit an annotator model to the comparisons of DATA.

With --model DIR (a local folder written by save_pretrained: a causal LM and its
tokenizer), DATA holds prompt/chosen/rejected text, the default is DPO (beta 0.1)
against the starting model, and the run writes OUT/model/ (Hugging Face format),
OUT/metrics.jsonl, OUT/training.png, OUT/report.json and OUT/test.jsonl.

With --density categorical|energy, DATA holds item ids, item names or numbers, and
the run writes OUT/model.pt, OUT/report.json and OUT/test.jsonl (the held-out
split). For --behavior dpo, geometric and ipo, pi_ref is the density of --reference
(a model file written by pbde fit or pbde.save_model) or, by default, the initial
model: the uniform distribution for --density categorical, the seeded initial MLP
for --density energy.

--behavior says how the annotator is modelled (the PBDE: Omega = f log p + g);
--loss says what is minimized over the pairs. --behavior ipo is the PBDE whose
optimum IPO targets; --loss ipo is IPO's squared loss, under any behavior.
Under torchrun the fit is data-parallel."""

_COLUMN_HELP = (
    "read a column of DATA under a pbde name, e.g. --column response_a=xa (repeat for more "
    "columns; notes= ignores a column)"
)

_DATA_FORMAT = """\
DATA: one comparison per row, as JSON Lines (.jsonl), CSV (.csv) or Parquet
(.parquet); other suffixes need --format. Rows of item ids or names, with y the
probability that xa was preferred (1, 0 or a soft label; ties: 0.5):
  {"xa": 3, "xb": 1, "y": 1}
  {"xa": "Boston", "xb": "Ohio State", "y": 0, "annotator_id": "ann7", "weight": 2}
  xa,xb,y            (CSV header; then rows such as 0.42,-1.3,1)
Text for --model (TRL's columns; chosen is preferred, no y):
  {"prompt": "Name a colour.", "chosen": " Blue.", "rejected": " Seven."}
  {"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
   "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "No."}]}
Aggregated counts (wins_a, wins_b, ties) and every column: docs, pbde.io."""


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(
        prog="pbde", description="Learning from pairwise preferences as density estimation."
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    demo = commands.add_parser(
        "demo",
        help="fit DPO to a synthetic Luce annotator and compare with the theory (Fig. 3)",
        description="The paper's 1-D toy in a few seconds: an energy-based pi_ref is pretrained, "
        "a Luce annotator with density p* labels pairs drawn from pi_ref, and DPO (--beta) is "
        "fitted to them. The fit is compared with its closed-form optimum, "
        "pi_ref * p*^{1/beta} normalized (Dumoulin et al., eq. 16): the distances are printed, "
        "and with --out the figure (demo.png) and the numbers (demo.json) are written.",
    )
    demo.add_argument("--beta", type=_positive_float, default=4.0,
                      help="DPO inverse temperature (> 0)")  # fmt: skip
    demo.add_argument("--steps", type=_positive_int, default=300, help="training steps")
    demo.add_argument("--pairs", type=_positive_int, default=2**13, help="annotator queries")
    demo.add_argument("--seed", type=_seed, default=0, help="seed of the pairs and the fit")
    demo.add_argument("--grid-size", type=_grid_size, default=2**11,
                      help="energy normalizer grid")  # fmt: skip
    demo.add_argument("--device", default="cpu", help="where to fit, e.g. cuda")
    demo.add_argument("--out", type=Path, default=None, help="folder for demo.png and demo.json")
    demo.add_argument("--quick", action="store_true", help="a few seconds, for smoke tests")
    demo.add_argument("--json", action="store_true", help="print the whole report as JSON")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    demo.set_defaults(handler=_demo)

    fit = commands.add_parser(
        "fit",
        help="fit an annotator model to a preference file (JSONL/CSV/Parquet)",
        description=_FIT_DESCRIPTION,
        epilog=_DATA_FORMAT,
    )
    fit.add_argument("data", type=Path, metavar="DATA", help="preference file (see pbde.io)")
    fit.add_argument("--model", type=Path, help="a causal LM folder (save_pretrained) to align")
    fit.add_argument("--density", choices=["categorical", "energy"],
                     help="the 1-D model to fit (instead of --model)")  # fmt: skip
    fit.add_argument("--items", type=_positive_int, help="number of items (categorical)")
    fit.add_argument("--low", type=_finite_float, help="left end of the domain (energy)")
    fit.add_argument("--high", type=_finite_float, help="right end of the domain (energy)")
    fit.add_argument("--grid-size", type=_grid_size, help="normalizer grid (energy; 65536)")
    fit.add_argument("--behavior", choices=["luce", "dpo", "geometric", "ipo", "length-normalized"],
                     help="the annotator model (luce; dpo with --model)")  # fmt: skip
    fit.add_argument("--per-token", action="store_true",
                     help="dpo/ipo on per-token log-ratios (TRL's ipo, sigmoid_norm)")  # fmt: skip
    fit.add_argument("--beta", type=_positive_float, help="DPO inverse temperature")
    fit.add_argument("--alpha", type=_positive_float, help="geometric mixing exponent")
    fit.add_argument("--reference", type=Path,
                     help="pi_ref: a model file, or a model folder with --model")  # fmt: skip
    fit.add_argument("--loss", choices=["bce", "ipo", "hinge", "rrhf"], default="bce",
                     help="per-pair loss (bce: the PBDE likelihood)")  # fmt: skip
    fit.add_argument("--tau", type=_positive_float, help="IPO regularization (--loss ipo)")
    fit.add_argument("--delta", type=_non_negative_float,
                     help="hinge margin (--loss hinge; default 1)")  # fmt: skip
    fit.add_argument("--format", choices=["jsonl", "csv", "parquet"],
                     help="DATA's format (default: from its suffix)")  # fmt: skip
    fit.add_argument("--column", action="append", metavar="FILE_COLUMN=NAME",
                     help=_COLUMN_HELP)  # fmt: skip
    fit.add_argument("--steps", type=_positive_int,
                     help="optimizer steps (categorical: 500; energy: 300; --model: 1 epoch)")  # fmt: skip
    fit.add_argument("--epochs", type=_positive_int, help="passes over the data (--model; 1)")
    fit.add_argument(
        "--lr",
        type=_positive_float,
        help="peak learning rate (categorical: 0.05; energy: 0.01; --model: 1e-6)",
    )
    fit.add_argument("--batch-size", type=_positive_int,
                     help="pairs per optimizer step (full batch; --model: 8)")  # fmt: skip
    fit.add_argument("--gradient-accumulation", type=_positive_int, default=1,
                     help="micro-batches per step (same step, less memory)")  # fmt: skip
    fit.add_argument("--max-length", type=_positive_int, help="most tokens of prompt + completion")
    fit.add_argument("--max-prompt-length", type=_positive_int,
                     help="most prompt tokens (cut on the left)")  # fmt: skip
    fit.add_argument("--lora-r", type=_positive_int, help="train LoRA adapters of this rank")
    fit.add_argument("--lora-alpha", type=_positive_float, help="LoRA scale (2 * rank)")
    fit.add_argument("--schedule", choices=["linear", "cosine", "constant"],
                     help="learning-rate schedule after warm-up (--model: linear)")  # fmt: skip
    fit.add_argument("--warmup-steps", type=int, help="linear warm-up steps (0)")
    fit.add_argument("--warmup-ratio", type=float, help="warm-up as a fraction of the steps")
    fit.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay (0)")
    fit.add_argument("--max-grad-norm", type=float, default=None,
                     help="clip gradients to this norm (--model: 1; 0: no clipping)")  # fmt: skip
    fit.add_argument("--precision", choices=["bf16", "fp16"], help="mixed precision (autocast)")
    fit.add_argument("--fsdp", action="store_true",
                     help="under torchrun: shard the model's layers over the processes (FSDP2)")  # fmt: skip
    fit.add_argument("--gradient-checkpointing", action="store_true",
                     help="recompute activations in the backward pass (less memory)")  # fmt: skip
    fit.add_argument("--log-every", type=_positive_int, help="steps between metrics records (10)")
    fit.add_argument("--eval-every", type=_positive_int,
                     help="steps between held-out evaluations (at the end)")  # fmt: skip
    fit.add_argument("--seed", type=_seed, default=0, help="split, batches, MLP initialization")
    fit.add_argument("--test-fraction", type=_finite_float,
                     help="held-out fraction (0.2; 0: none)")  # fmt: skip
    fit.add_argument("--checkpoint", type=Path, help="checkpoint file (resumes if it exists)")
    fit.add_argument("--on-error", choices=["raise", "drop"], default="raise",
                     help="bad rows of DATA: stop (default) or drop them")  # fmt: skip
    fit.add_argument("--device", default=None, help="where to fit, e.g. cuda")
    fit.add_argument("--out", type=Path, required=True, help="folder for the outputs")
    fit.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    fit.set_defaults(handler=_fit)

    evaluate = commands.add_parser(
        "evaluate",
        help="mean log-likelihood and accuracy of a saved model on a preference file",
        description="Score a model fitted by pbde fit (or saved with pbde.save_model) on the "
        "comparisons of DATA: the mean log-likelihood per comparison (the PBDE's, higher is "
        "better; -log 2 = -0.693 is a coin flip) and the accuracy (the share of comparisons "
        "whose preferred item the model ranks higher; ties count half). DATA has the format "
        "of pbde fit (pbde fit --help).",
        epilog=_DATA_FORMAT,
    )
    evaluate.add_argument("model", type=Path, metavar="MODEL",
                          help="model file (model.pt), or a language-model run folder")  # fmt: skip
    evaluate.add_argument("data", type=Path, metavar="DATA", help="preference file")
    evaluate.add_argument("--batch-size", type=_positive_int,
                          help="comparisons per forward pass (language models)")  # fmt: skip
    evaluate.add_argument("--max-length", type=_positive_int,
                          help="truncate as in training (language models; the run's value)")  # fmt: skip
    evaluate.add_argument("--on-error", choices=["raise", "drop"], default="raise",
                          help="bad rows of DATA: stop or drop them")  # fmt: skip
    evaluate.add_argument("--format", choices=["jsonl", "csv", "parquet"],
                          help="DATA's format (default: from its suffix)")  # fmt: skip
    evaluate.add_argument("--column", action="append", metavar="FILE_COLUMN=NAME",
                          help=_COLUMN_HELP)  # fmt: skip
    evaluate.add_argument("--json", action="store_true", help="print the metrics as JSON")
    evaluate.set_defaults(handler=_evaluate)

    reproduce = commands.add_parser(
        "reproduce",
        help="reproduce an experiment of the papers: figure, theory next to the fit, metrics",
        description="Run one experiment of the papers (or 'all') and write NAME.png and "
        "NAME.json into --out. Defaults are the papers' settings (Dumoulin et al.: 2^15 pairs, "
        "8192 steps, 2^16-point normalizer; minutes to an hour on a CPU); --fast is the faster "
        "recipe, --quick the test suite's smoke size.",
    )
    reproduce.add_argument(
        "name", nargs="*", metavar="NAME", help="experiment names (run in turn), or 'all'"
    )
    reproduce.add_argument("--list", action="store_true", help="list the experiments")
    size = reproduce.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smoke size (seconds)")
    size.add_argument("--fast", action="store_true", help="the faster recipe (documented)")
    reproduce.add_argument("--out", type=Path, default=Path("reproduce"), help="output folder")
    reproduce.add_argument(
        "--seed", type=_seed, default=None, help="seed (default: the experiment's own, usually 0)"
    )
    reproduce.add_argument("--steps", type=_positive_int, default=None, help="training steps")
    reproduce.add_argument(
        "--pairs", type=_positive_int, default=None, help="comparisons (the paper's: 32768)"
    )
    reproduce.add_argument("--device", default=None, help="where to fit, e.g. cuda")
    reproduce.add_argument("--json", action="store_true", help="print the reports as JSON")
    reproduce.add_argument(
        "--from-json", nargs="+", type=Path, metavar="FILE", default=None,
        help="draw the figure again from NAME.json files of earlier runs, into --out; runs nothing",
    )  # fmt: skip
    reproduce.add_argument("--no-progress", action="store_true", help="hide progress bars")
    reproduce.set_defaults(handler=_reproduce)

    arguments = sys.argv[1:] if argv is None else argv
    known = (["demo"], ["fit"], ["evaluate"], ["reproduce"])
    command = f"pbde {arguments[0]}" if arguments[:1] in known else "pbde"
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning(command, warnings.showwarning)
            return _run(parser, argv, command)
    except UsageError as error:
        print(f"{command}: error: {error}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, OSError) as error:
        print(f"{command}: error: {_first_line(error)}", file=sys.stderr)
        return 2
    except Exception as error:  # never a traceback: one line, naming what failed
        print(f"{command}: error: {type(error).__name__}: {_first_line(error)}", file=sys.stderr)
        return 2


def _run(parser: argparse.ArgumentParser, argv: list[str] | None, command: str) -> int:
    args = parser.parse_args(argv)
    if hasattr(args, "column"):
        args.columns = _column_mapping(args.column)
    _check_device(getattr(args, "device", None))
    if args.command in ("demo", "reproduce"):
        _check_out_folder(args.out)
    return args.handler(args)


def _one_line_warning(command: str, show):
    """``warnings.showwarning`` for the CLI: a warning is one line on stderr, without the source
    line it was raised from (pbde's own warnings say what to do; others keep their category)."""

    def one_line(message, category, filename, lineno, file=None, line=None):
        text = _first_line(message) if isinstance(message, Warning) else str(message)
        own = getattr(category, "__module__", "").split(".")[0] == "pbde"
        label = "" if own else f"{category.__name__}: "
        print(f"{command}: warning: {label}{text}", file=sys.stderr if file is None else file)

    return one_line


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


if __name__ == "__main__":
    raise SystemExit(main())
