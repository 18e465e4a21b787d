"""Saving fitted annotator models to files and loading them back, without pickled code.

A model file is a ``torch.save``'d dict with three entries: ``"format"`` (``"pbde-model"``),
``"config"`` (plain ``str``/``int``/``float``/``bool``/``list``/``dict`` data describing how to
rebuild the model) and ``"state"`` (the model's ``state_dict``: tensors only). It is read back
with ``torch.load(..., weights_only=True)``, which refuses anything but tensors and plain data, so
loading a file never runs code from it.

What can be saved: an :class:`~pbde.Annotator` (or a :class:`~pbde.MixtureAnnotator` of them)
whose density is a :class:`~pbde.densities.Categorical`, :class:`~pbde.densities.EnergyModel`,
:class:`~pbde.densities.TruncatedNormalMixture`, :class:`~pbde.densities.Tabulated`,
:class:`~pbde.densities.Autoregressive` or a :class:`~pbde.densities.Mixture` of those, and whose
behavior is :func:`pbde.luce`, :func:`pbde.dpo`, :func:`pbde.geometric` (the reference density
is saved with it), :func:`pbde.length_normalized` or ``pbde.dpo(..., length=...)`` counting
tokens (``Autoregressive.length`` or :func:`~pbde.densities.sequence.sequence_lengths`) or a
:class:`~pbde.PBDE` with constant ``f`` and ``g``. A behavior made of other callables is code,
not data: it cannot be saved. A Hugging Face :class:`~pbde.densities.CausalLM` is saved the
Hugging Face way (``model.model.save_pretrained``).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re

import torch
from torch import nn

from pbde.annotators import Annotator, MixtureAnnotator
from pbde.behavior import PBDE, dpo, geometric, length_normalized, luce
from pbde.densities.base import Density
from pbde.densities.continuous import Mixture, TruncatedNormalMixture
from pbde.densities.energy import _ACTIVATIONS, EnergyModel
from pbde.densities.finite import Categorical, Tabulated
from pbde.densities.hf import CausalLM
from pbde.densities.sequence import Autoregressive, sequence_lengths
from pbde.support import Grid, Support

__all__ = ["save_model", "load_model"]

FORMAT = "pbde-model"
VERSION = 1


def save_model(model: Annotator | MixtureAnnotator, path: str | os.PathLike) -> None:
    """Write a fitted annotator model to ``path`` (tensors and plain data only).

    Args:
        model: an :class:`~pbde.Annotator` or :class:`~pbde.MixtureAnnotator` (see the module
            docstring for the densities and behaviors that can be saved).
        path: the file to write (overwritten atomically).

    Raises:
        TypeError: if the model, its density or its behavior cannot be described as data (e.g. a
            PBDE built from user callables); the message names the part.

    Example:
        >>> import tempfile, torch, pbde
        >>> model = pbde.Annotator(pbde.densities.Categorical(probs=torch.tensor([0.2, 0.8])))
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     pbde.save_model(model, f"{folder}/model.pt")
        ...     loaded = pbde.load_model(f"{folder}/model.pt")
        >>> loaded.density.prob(torch.tensor([1]))
        tensor([0.8000], grad_fn=<ExpBackward0>)
    """
    if isinstance(model, Annotator) and isinstance(model.density, CausalLM):
        _save_causal_lm(model, path)
        return
    config = _describe_process(model, "model")
    config["frozen"] = [name for name, p in model.named_parameters() if not p.requires_grad]
    json.dumps(config)  # plain data only: fails loudly here rather than at load time
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    payload = {"format": FORMAT, "version": VERSION, "config": config, "state": state}
    tmp = f"{os.fspath(path)}.tmp"
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _check_torch_file(path, what: str) -> None:
    """Refuse a file that is not a torch archive before unpickling anything: torch.save writes a
    zip archive (and older torch a pickle), so a text file (a preference file passed by mistake)
    is named for what it looks like instead of failing inside the unpickler."""
    with open(path, "rb") as file:
        head = file.read(64)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):
        return
    if not head:
        found = "it is empty"
    else:
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError:
            found = f"it starts with the bytes {head[:8]!r}"
        else:
            first = text.lstrip().splitlines()[0] if text.strip() else text
            found = f"it is text, starting {first[:40]!r}"
    raise ValueError(f"{os.fspath(path)!r} is not {what}: {found}.")


def load_model(
    path: str | os.PathLike, *, map_location: str | torch.device = "cpu"
) -> Annotator | MixtureAnnotator:
    """Read a model written by :func:`save_model`.

    The file is opened with ``torch.load(weights_only=True)``: a file holding pickled objects
    other than tensors and plain data is refused, and no code from it runs.

    Args:
        path: the model file.
        map_location: where to put the tensors (default the CPU).

    Returns:
        The model, in eval mode, with the saved parameters (same dtypes as when saved).

    Everything in the file is checked before use: the configuration's types and ranges (a
    size is an int, a bound a finite number, a grid at most :data:`MAX_GRID_SIZE` points and no
    larger than the tensors the file holds), the tensors' shapes and finiteness, and a
    tabulated density's normalization (within 1e-6).

    Raises:
        ValueError: if the file is not a pbde model file, holds anything but tensors and plain
            data, or holds a configuration or tensors that fail those checks; the message names
            the file.
        OSError: if the file cannot be read.
    """
    if os.path.isdir(path):
        return _load_causal_lm(os.fspath(path), map_location)
    _check_torch_file(path, "a pbde model file (written by pbde fit or pbde.save_model)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(error))
        detail = found.group(1).strip() if found else str(error).splitlines()[0]
        raise ValueError(
            f"{os.fspath(path)!r} is not a pbde model file that can be loaded safely ({detail}); "
            "pbde refuses to unpickle anything but tensors and plain data, which could run code "
            "from the file."
        ) from None
    except OSError:
        raise
    except Exception as error:  # RuntimeError, EOFError (an empty file), ...
        detail = str(error).splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"{os.fspath(path)!r} is not a pbde model file (unreadable as a torch file: {detail})."
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{os.fspath(path)!r} is not a pbde model file (no 'format' tag).")
    if payload.get("version") != VERSION:
        raise ValueError(
            f"{os.fspath(path)!r} is a pbde model file of version {payload.get('version')!r}; "
            f"this pbde reads version {VERSION}."
        )
    config, state = payload.get("config"), payload.get("state")
    where = os.fspath(path)
    if not isinstance(config, dict) or not isinstance(state, dict):
        raise ValueError(f"{where!r} is a damaged pbde model file: no 'config' or 'state' dict.")
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(
                f"{where!r} is a damaged pbde model file: state entry {name!r} is a "
                f"{type(tensor).__name__}, not a tensor."
            )
        if (tensor.is_floating_point() or tensor.is_complex()) and not bool(
            torch.isfinite(tensor).all()
        ):
            raise ValueError(
                f"{where!r} is a damaged pbde model file: the tensor {name!r} holds NaN or "
                "infinite values."
            )
    # a size in the configuration allocates memory before the state is read: bounded by what
    # the file holds (a 1.5 KB file may not ask for a 2^27-point grid)
    _limit[0] = max(sum(t.numel() for t in state.values()), 2**16)
    try:
        model = _build_process(config)
        # assign=True keeps the saved dtypes (a float64 model stays float64); the closures of
        # dpo/geometric hold the same reference modules, which get the saved weights here
        model.load_state_dict(state, assign=True)
        _check_loaded(model)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as error:
        detail = " ".join(str(error).split()) or type(error).__name__
        raise ValueError(f"{where!r} is a damaged pbde model file: {detail}") from None
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name not in config.get("frozen", []))
    model.eval()
    return model


# -- model -> config ---------------------------------------------------------------------------


def _describe_process(model, where: str) -> dict:
    if isinstance(model, Annotator):
        return {
            "kind": "annotator",
            "density": _describe_density(model.density, f"{where}.density"),
            "behavior": _describe_behavior(model.behavior, f"{where}.behavior"),
        }
    if isinstance(model, MixtureAnnotator):
        return {
            "kind": "mixture_annotator",
            "annotators": [
                _describe_process(a, f"{where}.annotators[{i}]")
                for i, a in enumerate(model.annotators)
            ],
            "learn_weights": isinstance(model.weight_logits, nn.Parameter),
        }
    raise TypeError(
        f"pbde.save_model can save a pbde.Annotator or MixtureAnnotator; {where} is a "
        f"{type(model).__name__}."
    )


def _describe_behavior(behavior: PBDE, where: str, describe_reference=None) -> dict:
    builtin = getattr(behavior, "_builtin", None)
    if builtin is not None:
        config = dict(builtin)
        if config["name"] in ("dpo", "geometric"):
            config["reference"] = (describe_reference or _describe_density)(
                behavior.references[0], f"{where} reference density"
            )
        divides_by_length = config["name"] == "length_normalized" or config.get(
            "length_normalized", False
        )
        if not divides_by_length or _counts_tokens(behavior._length):
            return config
    if behavior.constant_f is not None and isinstance(behavior._g, float):
        return {"name": "constant", "f": behavior.constant_f, "g": behavior._g}
    raise TypeError(
        f"pbde.save_model cannot save {where} {behavior!r}: it is built from Python callables "
        "(code, not data). Only pbde.luce(), pbde.dpo(beta, reference), "
        "pbde.geometric(alpha, reference), pbde.length_normalized and "
        "pbde.dpo(beta, reference, length=...) with a length counting tokens, and PBDEs "
        "with constant f and g can be saved; save the density (e.g. its state_dict) and "
        "rebuild the behavior in code."
    )


def _counts_tokens(length) -> bool:
    """Whether ``length`` is the token count of padded sequences (rebuilt on loading)."""
    bound_to = getattr(length, "__self__", None)
    return length is sequence_lengths or (
        isinstance(bound_to, (Autoregressive, CausalLM))
        and length.__func__ is type(bound_to).length
    )


def _describe_density(density: Density, where: str) -> dict:
    if type(density) is Categorical:
        return {"type": "Categorical", "size": density.size}
    if type(density) is EnergyModel:
        linear = [m for m in density.energy_net if isinstance(m, nn.Linear)]
        activation = next(
            name for name, cls in _ACTIVATIONS.items() if isinstance(density.energy_net[1], cls)
        )
        return {
            "type": "EnergyModel",
            "low": density.low,
            "high": density.high,
            "hidden": [m.out_features for m in linear[:-1]],
            "activation": activation,
            "grid_size": density.grid.size,
        }
    if type(density) is TruncatedNormalMixture:
        return {
            "type": "TruncatedNormalMixture",
            "components": int(density.loc.shape[0]),
            "low": density.low,
            "high": density.high,
            "learnable": isinstance(density.loc, nn.Parameter),
        }
    if type(density) is Tabulated:
        support = density.support
        if type(support) is Grid:
            described = {
                "grid": {
                    "low": support.low,
                    "high": support.high,
                    "size": support.size,
                    "dtype": str(support.points.dtype).removeprefix("torch."),
                }
            }
        elif type(support) is Support:
            # the points and weights travel as lists of numbers: a support is data, small
            # enough for tabulated densities, and the state dict only holds the values
            described = {
                "points": support.points.tolist(),
                "points_dtype": str(support.points.dtype).removeprefix("torch."),
                "log_weights": support.log_weights.tolist(),
            }
        else:
            raise TypeError(
                f"pbde.save_model cannot save {where}: a Tabulated density on a "
                f"{type(support).__name__} support (only Support and Grid)."
            )
        return {"type": "Tabulated", "support": described}
    if type(density) is Autoregressive:
        return {
            "type": "Autoregressive",
            "vocab_size": density.vocab_size,
            "max_length": density.max_length,
            "eos": density.eos,
            "min_length": density.min_length,
            "embedding_dim": density.token_embedding.embedding_dim,
            "hidden_size": density.gru.hidden_size,
            "num_layers": density.gru.num_layers,
            "dropout": float(density.gru.dropout),
        }
    if type(density) is Mixture:
        return {
            "type": "Mixture",
            "components": [
                _describe_density(c, f"{where}.components[{i}]")
                for i, c in enumerate(density.components)
            ],
            "learn_weights": isinstance(density.weight_logits, nn.Parameter),
        }
    raise TypeError(
        f"pbde.save_model cannot save {where}, a {type(density).__name__}: only Categorical, "
        "EnergyModel, TruncatedNormalMixture, Tabulated, Autoregressive and Mixture densities "
        "can be saved (a Hugging Face CausalLM: model.model.save_pretrained(folder))."
    )


# -- config -> model (placeholder values; the state dict fills them in) -------------------------

#: the most points of an energy model's normalizer grid that :func:`load_model` builds from a
#: file's configuration (the grid is not stored: 2^24 float32 points are 64 MiB)
MAX_GRID_SIZE = 2**24
# the largest size the file being loaded may ask for: the number of values its tensors hold
# (at least 2^16, which costs nothing)
_limit = [2**16]


def _int(config: dict, key: str, minimum: int = 0, maximum: int | None = None) -> int:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{key!r} must be an int. Got {value!r}.")
    maximum = _limit[0] if maximum is None else maximum
    if not minimum <= value <= maximum:
        raise ValueError(f"{key!r} must be an int in [{minimum}, {maximum}]. Got {value!r}.")
    return value


def _real(config: dict, key: str) -> float:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{key!r} must be a number. Got {value!r}.")
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{key!r} must be finite. Got {value!r}.")
    return float(value)


def _flag(config: dict, key: str) -> bool:
    value = config[key]
    if not isinstance(value, bool):
        raise TypeError(f"{key!r} must be true or false. Got {value!r}.")
    return value


def _check_loaded(model) -> None:
    """What the constructors check of values the state dict assigned afterwards."""
    for module in model.modules():
        if type(module) is Tabulated:
            log_total = float(module.support.log_integral(module.values.to(torch.float64)))
            if not abs(log_total) <= 1e-6:
                raise ValueError(
                    "a Tabulated density is not normalized (its integral is "
                    f"{math.exp(log_total) if log_total < 700 else math.inf!r}, not 1)."
                )


def _build_process(config: dict):
    if config["kind"] == "annotator":
        density = _build_density(config["density"])
        return Annotator(density, _build_behavior(config["behavior"], density))
    if config["kind"] == "mixture_annotator":
        return MixtureAnnotator(
            [_build_process(c) for c in config["annotators"]],
            learn_weights=_flag(config, "learn_weights"),
        )
    raise TypeError(f"unknown model kind {config['kind']!r}")


def _build_behavior(config: dict, density: Density, build_reference=None) -> PBDE:
    name = config["name"]
    if name == "luce":
        return luce()
    tokens = density.length if isinstance(density, (Autoregressive, CausalLM)) else sequence_lengths
    if name == "length_normalized":
        return length_normalized(tokens)
    build_reference = build_reference or _build_density
    if name == "dpo":
        length = tokens if config.get("length_normalized", False) else None
        return dpo(_real(config, "beta"), build_reference(config["reference"]), length=length)
    if name == "geometric":
        return geometric(_real(config, "alpha"), build_reference(config["reference"]))
    if name == "constant":
        return PBDE(_real(config, "f"), _real(config, "g"))
    raise TypeError(f"unknown behavior {name!r}")


def _build_density(config: dict) -> Density:
    kind = config["type"]
    if kind == "Categorical":
        return Categorical(size=_int(config, "size", 1))
    if kind == "EnergyModel":
        return EnergyModel(
            _real(config, "low"),
            _real(config, "high"),
            hidden=tuple(_int({"hidden": h}, "hidden", 1) for h in config["hidden"]),
            activation=str(config["activation"]),
            grid_size=_int(config, "grid_size", 2, MAX_GRID_SIZE),
        )
    if kind == "TruncatedNormalMixture":
        k = _int(config, "components", 1)
        return TruncatedNormalMixture(
            torch.zeros(k),
            torch.ones(k),
            low=_real(config, "low"),
            high=_real(config, "high"),
            learnable=_flag(config, "learnable"),
        )
    if kind == "Tabulated":
        described = config["support"]
        if "grid" in described:
            grid = described["grid"]
            support: Support = Grid(
                _real(grid, "low"),
                _real(grid, "high"),
                _int(grid, "size", 2),
                dtype=_dtype(grid["dtype"]),
            )
        else:
            support = Support(
                torch.tensor(described["points"], dtype=_dtype(described["points_dtype"])),
                torch.tensor(described["log_weights"], dtype=torch.float64),
            )
        # a normalized placeholder; the saved values replace it
        uniform = -support.log_integral(torch.zeros(len(support), dtype=torch.float64))
        return Tabulated(support, uniform.expand(len(support)).clone())
    if kind == "Autoregressive":
        return Autoregressive(
            _int(config, "vocab_size", 2),
            _int(config, "max_length", 1),
            eos=_int(config, "eos"),
            min_length=_int(config, "min_length", 1),
            embedding_dim=_int(config, "embedding_dim", 1),
            hidden_size=_int(config, "hidden_size", 1),
            num_layers=_int(config, "num_layers", 1, 64),
            dropout=_real(config, "dropout"),
        )
    if kind == "Mixture":
        return Mixture(
            [_build_density(c) for c in config["components"]],
            learn_weights=_flag(config, "learn_weights"),
        )
    raise TypeError(f"unknown density type {kind!r}")


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"unknown dtype {name!r}")
    return dtype


# -- language models: a Hugging Face folder plus pbde.json -----------------------------------

LM_RECORD = "pbde.json"
LM_FORMAT = "pbde-causal-lm"


def _save_causal_lm(model: Annotator, path) -> None:
    """An annotator on a :class:`CausalLM`: the model the Hugging Face way (``save_pretrained``;
    the adapters alone for LoRA), its tokenizer, and ``pbde.json`` recording the behavior and
    where its reference comes from (a model folder, or the base model with the adapters off);
    the reference's weights are never copied into the run."""
    density = model.density
    folder = os.fspath(path)

    def describe_reference(reference, where):
        origin = getattr(reference, "origin", None)
        if origin is None:
            raise TypeError(
                f"pbde.save_model cannot record {where}: it was not loaded from a folder "
                "(CausalLM.from_pretrained) nor is it the base of a LoRA model, so nothing "
                "could rebuild it."
            )
        return dict(origin)

    behavior = _describe_behavior(model.behavior, "model.behavior", describe_reference)
    if density.lora is not None and density.source is None:
        raise TypeError("pbde.save_model needs the base folder of a LoRA model (from_pretrained).")
    record = {
        "format": LM_FORMAT,
        "version": VERSION,
        "behavior": behavior,
        "lora": density.lora,
        "base": density.source if density.lora is not None else None,
        "pad_token_id": density.pad_token_id,
    }
    json.dumps(record)
    os.makedirs(folder, exist_ok=True)
    density.model.save_pretrained(folder)
    if density.tokenizer is not None:
        density.tokenizer.save_pretrained(folder)
    with open(os.path.join(folder, LM_RECORD), "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=2)


def _load_causal_lm(folder: str, map_location) -> Annotator:
    record_path = os.path.join(folder, LM_RECORD)
    if not os.path.exists(record_path):
        raise ValueError(
            f"{folder!r} is a folder without {LM_RECORD}: not a language model saved by pbde "
            "(for a plain Hugging Face folder use pbde.densities.CausalLM.from_pretrained)."
        )
    try:
        with open(record_path, encoding="utf-8") as handle:
            record = json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{record_path!r} is not readable JSON: {error}") from None
    if not isinstance(record, dict) or record.get("format") != LM_FORMAT:
        raise ValueError(f"{record_path!r} is not a pbde language-model record.")
    if record.get("lora"):
        from peft import PeftModel

        density = CausalLM.from_pretrained(_existing(record.get("base"), "base model"))
        base = density.model
        model = PeftModel.from_pretrained(base, folder, is_trainable=True)
        tokenizer = _tokenizer_of(folder) or density.tokenizer
        density = CausalLM(model, pad_token_id=record.get("pad_token_id"), tokenizer=tokenizer)
        density.source, density.lora = record.get("base"), record["lora"]
    else:
        density = CausalLM.from_pretrained(folder, tokenizer=False)
        density.tokenizer = _tokenizer_of(folder)
    density.to(map_location)

    def build_reference(config):
        if config.get("kind") == "adapters-off":
            return density.without_adapters()
        reference = CausalLM.from_pretrained(
            _existing(config.get("path"), "reference model"), tokenizer=False
        )
        if reference.vocab_size != density.vocab_size:
            raise ValueError(
                f"The reference {config.get('path')!r} has a vocabulary of "
                f"{reference.vocab_size} tokens, the model {density.vocab_size}."
            )
        return reference.to(map_location)._freeze()  # loaded for this: no copy

    try:
        behavior = _build_behavior(record["behavior"], density, build_reference)
    except (KeyError, TypeError) as error:
        raise ValueError(f"{record_path!r} is a damaged pbde record: {error}") from None
    model = Annotator(density, behavior)
    model.eval()
    return model


def _existing(path, what: str) -> str:
    if not isinstance(path, str) or not os.path.isdir(path):
        raise ValueError(
            f"The {what} folder {path!r} recorded in {LM_RECORD} does not exist (any more)."
        )
    return path


def _tokenizer_of(folder: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, TypeError):
        return None
