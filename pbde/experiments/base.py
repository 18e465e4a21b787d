"""What every reproduction returns, and how it is written to disk.

An experiment is a plain function ``run(settings, *, progress=None) -> Result``. Its settings are
a dataclass whose defaults are the paper's; ``quick()`` returns the reduced settings used by the
test suite. The command line (``pbde reproduce NAME``), the benchmarks and the docs all call the
same function.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path


@dataclass
class Result:
    """The outcome of one experiment.

    Attributes:
        experiment: its name (as in ``pbde reproduce --list``).
        settings: the settings it ran with (a dataclass).
        metrics: named numbers (``kl_theory_learned``, ``tv_theory_learned``, …); every value a
            float, int, bool or str, or a dict/list of them.
        seconds: wall time of the whole run.
        plot: draws the figure into a given path (PNG); ``None`` if the experiment has no figure.
        data: anything else worth keeping in memory (fitted models, curves); not written to JSON.
    """

    experiment: str
    settings: object
    metrics: dict
    seconds: float
    plot: Callable[[Path], None] | None = None
    data: dict = field(default_factory=dict)

    def report(self) -> dict:
        """The JSON-ready summary: experiment, settings, metrics, seconds."""
        settings = asdict(self.settings) if is_dataclass(self.settings) else dict(self.settings)
        return {
            "experiment": self.experiment,
            "settings": settings,
            "metrics": _jsonable(self.metrics),
            "seconds": self.seconds,
        }

    def save(self, out: Path) -> list[Path]:
        """Write ``<experiment>.json`` (and ``<experiment>.png`` if there is a plot) into ``out``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        written = [out / f"{self.experiment}.json"]
        written[0].write_text(json.dumps(self.report(), indent=2) + "\n")
        if self.plot is not None:
            written.append(out / f"{self.experiment}.png")
            self.plot(written[-1])
        return written


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    number = float(value)  # tensors of one element, numpy scalars
    return number if math.isfinite(number) else str(number)


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
