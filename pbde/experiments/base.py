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
        figure: the numbers the figure is drawn from (curves, histograms, heat maps), written to
            the JSON under ``"figure"`` so that :func:`pbde.experiments.redraw` can draw it again
            without re-running the experiment.
        draw: ``draw(report, path)`` draws the figure from a report (:meth:`report`, or the
            JSON file read back); where it is given, ``plot`` draws with it from
            :meth:`report`, so a figure drawn now and one redrawn later are the same.
    """

    experiment: str
    settings: object
    metrics: dict
    seconds: float
    plot: Callable[[Path], None] | None = None
    data: dict = field(default_factory=dict)
    figure: dict | None = None
    draw: Callable[[dict, Path], None] | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.draw is not None:  # plot draws from the report, as a redraw from the JSON does
            draw = self.draw
            self.plot = lambda path: draw(self.report(), Path(path))

    def report(self) -> dict:
        """The JSON-ready summary: experiment, settings, metrics, seconds, and ``figure`` (the
        numbers the figure is drawn from) where the experiment keeps them."""
        settings = asdict(self.settings) if is_dataclass(self.settings) else dict(self.settings)
        report = {
            "experiment": self.experiment,
            "settings": settings,
            "metrics": _jsonable(self.metrics),
            "seconds": self.seconds,
        }
        if self.figure is not None:
            report["figure"] = _jsonable(self.figure)
        return report

    def save(self, out: Path) -> list[Path]:
        """Write ``<experiment>.json`` (and ``<experiment>.png`` if there is a plot) into ``out``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        written = [out / f"{self.experiment}.json"]
        written[0].write_text(report_text(self.report()))
        if self.plot is not None:
            written.append(out / f"{self.experiment}.png")
            self.plot(written[-1])
        return written


def report_text(report: dict) -> str:
    """A report as JSON text: indented, except the ``figure``'s numbers, one line (a figure's
    curves are thousands of numbers)."""
    head = {k: v for k, v in report.items() if k != "figure"}
    text = json.dumps(head, indent=2)
    if "figure" in report:
        text = text[:-2] + ',\n  "figure": ' + json.dumps(report["figure"]) + "\n}"
    return text + "\n"


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


#: the width, in inches, and resolution of the figures: 990 px, the width of the docs' content
#: column, so that the figures are shown at (nearly) their own size and 10-point text reads
PAGE_WIDTH, DPI = 9.0, 110


def page_style():
    """The figures' text sizes (at least 10 points) as a matplotlib ``rc_context``; draw inside
    ``with page_style():``."""
    plt = pyplot()
    return plt.rc_context(
        {"font.size": 10.5, "axes.titlesize": 11, "axes.labelsize": 10.5, "legend.fontsize": 10,
         "xtick.labelsize": 10, "ytick.labelsize": 10, "figure.titlesize": 12,
         "legend.frameon": False, "savefig.dpi": DPI}
    )  # fmt: skip


def rounded(values, digits: int = 4) -> list[float]:
    """A curve for the JSON: floats to ``digits`` significant digits (what a figure can show)."""
    return [float(f"{float(v):.{digits}g}") for v in values]
