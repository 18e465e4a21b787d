"""Reproductions of the papers' experiments: ``pbde reproduce NAME``.

Each experiment is a function returning a :class:`~pbde.experiments.base.Result` (metrics,
settings, wall time, a plot); :func:`run` runs one by name with the paper's settings, the quick
settings of the test suite (``quick=True``) or the faster recipe (``fast=True``); :func:`redraw`
draws a figure again from the JSON report a run wrote, without running anything.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import replace
from pathlib import Path

from pbde.experiments.base import Result

# name -> (module, whether the module's run takes the name, one-line description)
_REGISTRY = {
    "reward": ("sweeps", True, "Fig. 1/7: a reward model recovers p* (e^r ∝ p*)"),
    "dpo-wellspecified": ("sweeps", True, "Fig. 2: DPO annotator and DPO model → p*"),
    "dpo": ("sweeps", True, "Fig. 3: DPO under a Luce annotator → π_pre·p*^(1/β), β ∈ {1, 4, 16}"),
    "geometric": ("sweeps", True, "Fig. 8: geometric behavior → π_pre^(1−α)·p*^α"),
    "slic": ("sweeps", True, "Fig. 9: SLiC-HF-direct, δ × λ sweep (no closed form)"),
    "ipo": ("sweeps", True, "Fig. 10: IPO, τ ∈ {0.1, 0.5, 1}, against its population optimum"),
    "misspecification": ("misspecification", False, "Figs. 4-5: two annotators, one model"),
    "ipo-bandit": ("ipo_bandit", False, "Azar et al. §5.4: DPO goes greedy, IPO does not"),
    "mixture": (
        "mixture",
        False,
        "Fig. 11 / A.4: a latent-annotator mixture (Pyro) recovers both annotators without IDs",
    ),
    "length-bias": (
        "length_bias",
        False,
        "Table 2: Luce (eq. 9) vs length-normalized (eq. 26) preferences by sentence length",
    ),
    "lm-mixture": (
        "lm_mixture",
        False,
        "Fig. 6: LM adapted on annotator-mixture (eq. 27) vs density-mixture (eq. 28) data",
    ),
    "lm-mixture-latent": (
        "lm_latent",
        False,
        "a latent-annotator mixture (Pyro) on eq. 27 sequence data, without and with annotator IDs",
    ),
    "lm-theory": (
        "lm_theory",
        False,
        "Exact optima on all sequences up to a length: DPO (β ∈ {0.5, 1, 4}), IPO and the "
        "length-normalized rule fitted on a tiny GPT-2, each next to its optimum",
    ),
    "online": (
        "online",
        False,
        "Dumoulin §6 / Xiong et al.: KL to the optimum vs annotator queries (static / "
        "on-policy / active)",
    ),
}


def names() -> list[str]:
    """The experiments ``pbde reproduce`` knows, in the order ``all`` runs them."""
    return list(_REGISTRY)


def describe(name: str) -> str:
    """One line saying what the experiment reproduces."""
    return _entry(name)[2]


def settings_for(name: str, *, quick: bool = False, fast: bool = False, **overrides):
    """The settings an experiment runs with: the paper's, ``quick`` or ``fast``; ``overrides``
    (e.g. ``seed=1``) replace fields that the settings have, ``None`` values are ignored."""
    if quick and fast:
        raise ValueError("Give at most one of 'quick' and 'fast'.")
    module = _module(name)
    arguments = (name,) if _entry(name)[1] else ()
    if quick:
        settings = module.quick(*arguments)
    else:
        settings = module.fast(*arguments) if fast else module.Settings()
    changes = {k: v for k, v in overrides.items() if v is not None and hasattr(settings, k)}
    return replace(settings, **changes)


def run(name: str, settings=None, *, progress: bool | None = None) -> Result:
    """Run one experiment (settings: see :func:`settings_for`; default the paper's)."""
    module_name, takes_name, _ = _entry(name)
    module = _module(name)
    settings = settings if settings is not None else module.Settings()
    if takes_name:
        return module.run(name, settings, progress=progress)
    return module.run(settings, progress=progress)


def redraw(report: str | Path, out: str | Path | None = None) -> Path:
    """Draw an experiment's figure again from the JSON report a run wrote (``NAME.json`` of
    ``pbde reproduce NAME --out DIR``, or :meth:`Result.save`), without running anything.

    Args:
        report: the JSON file.
        out: the folder to write ``NAME.png`` into (created if needed); default: the folder of
            ``report``.

    Returns:
        The path of the PNG.

    Raises:
        ValueError: if ``report`` is not a report of a known experiment, or lacks the numbers the
            figure is drawn from (reports of runs made before they were saved with it); the
            message names the file.
    """
    source = Path(report)
    try:
        content = json.loads(source.read_text())
    except FileNotFoundError:
        raise ValueError(f"'report' must be an existing JSON file. Got {str(source)!r}.") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{str(source)!r} is not a JSON file: {error}.") from None
    if not isinstance(content, dict) or not isinstance(content.get("experiment"), str):
        raise ValueError(
            f"{str(source)!r} is not a report of 'pbde reproduce': it has no 'experiment' name."
        )
    name = content["experiment"]
    if name not in _REGISTRY:
        raise ValueError(
            f"{str(source)!r} is the report of an unknown experiment {name!r}. "
            f"Known: {', '.join(_REGISTRY)}."
        )
    draw = getattr(_module(name), "draw", None)
    if draw is None:
        raise ValueError(f"The figure of {name!r} cannot be drawn from its report "
                         f"({str(source)!r}); run the experiment again.")  # fmt: skip
    folder = Path(out) if out is not None else source.parent
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}.png"
    try:
        draw(content, target)
    except (KeyError, TypeError, IndexError) as error:
        raise ValueError(
            f"{str(source)!r} lacks the numbers the figure of {name!r} is drawn from "
            f"({type(error).__name__}: {error}); reports written before figures were saved "
            f"with them cannot be redrawn: run the experiment again."
        ) from None
    return target


def register(name: str, module: str, description: str, *, takes_name: bool = False) -> None:
    """Add an experiment: ``module`` (under ``pbde.experiments``) has ``Settings``, ``quick()``,
    ``fast()`` and ``run(settings, *, progress)``."""
    _REGISTRY[name] = (module, takes_name, description)


def _entry(name: str):
    if name not in _REGISTRY:
        raise ValueError(f"Unknown experiment {name!r}. Known: {', '.join(_REGISTRY)}.")
    return _REGISTRY[name]


def _module(name: str):
    return importlib.import_module(f"pbde.experiments.{_entry(name)[0]}")


__all__ = ["Result", "names", "describe", "settings_for", "run", "redraw", "register"]
