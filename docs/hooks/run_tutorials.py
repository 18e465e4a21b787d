"""Execute the jupytext tutorials cell by cell and keep what each code cell printed.

One runner for the site build (``docs/hooks/tutorials.py``), the smoke test
(``tests/test_tutorials.py``) and the committed outputs. A tutorial runs in a fresh Python
process, one code cell after another in one namespace (as ``python docs/tutorials/NAME.py``
would run it), with ``PBDE_SMOKE=1`` at smoke size and without it at full size; each code cell's
standard output, warnings and wall time are recorded.

The committed outputs live in ``docs/tutorials/outputs/NAME.json``: one full-size run (which
also redraws the committed figures in ``docs/images/tutorials/``) and one smoke-size run, each
with the SHA-256 of the tutorial's code cells (editing prose does not make an output stale).
Regenerate them, one tutorial after another, with::

    OMP_NUM_THREADS=1 python -m docs.hooks.run_tutorials                 # every tutorial
    OMP_NUM_THREADS=1 python -m docs.hooks.run_tutorials what_will_dpo_do  # one tutorial
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository
TUTORIALS = ROOT / "docs" / "tutorials"
OUTPUTS = TUTORIALS / "outputs"
FIGURES = TUTORIALS.parent / "images" / "tutorials"
SIZES = ("full", "smoke")


def tutorial_path(name: str | os.PathLike) -> Path:
    """``docs/tutorials/NAME.py`` for a tutorial's name (with or without ``.py``), or a path."""
    if isinstance(name, os.PathLike):
        return Path(name)
    path = TUTORIALS / (name if name.endswith(".py") else f"{name}.py")
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in TUTORIALS.glob("*.py")))
        raise ValueError(f"tutorial must be one of {known}; got {name!r}")
    return path


def read_notebook(path: Path):
    """The tutorial as a jupytext notebook (percent format)."""
    import jupytext

    return jupytext.read(path, fmt="py:percent")


def code_cells(path: Path) -> list[str]:
    """The sources of the tutorial's code cells, in order."""
    return [cell.source for cell in read_notebook(path).cells if cell.cell_type == "code"]


def code_hash(path: Path) -> str:
    """SHA-256 of the code cells: what decides whether a recorded output is still current."""
    return _hash(code_cells(path))


def _hash(cells: list[str]) -> str:
    return hashlib.sha256("\n# %%\n".join(cells).encode()).hexdigest()


def machine() -> dict:
    """The machine a run was measured on, in words a reader can compare with their own."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "torch_threads": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
    }


def execute(
    name: str | os.PathLike,
    *,
    size: str,
    figures_dir: str | os.PathLike | None = None,
    timeout: float | None = None,
) -> dict:
    """Run one tutorial in a fresh process and return what each code cell printed.

    Args:
        name: The tutorial (``docs/tutorials/NAME.py``), or the path of a percent-format file.
        size: ``"full"`` or ``"smoke"`` (``PBDE_SMOKE=1``).
        figures_dir: Where the tutorial writes its figures (``PBDE_FIGURES_DIR``); by default the
            tutorial's own default, ``docs/images/tutorials``.
        timeout: Seconds after which the run is stopped (``None``: no limit).

    Returns:
        ``{"size", "code_sha256", "seconds", "machine", "date", "cells"}`` where ``cells`` has
        one ``{"stdout", "warnings", "seconds"}`` per code cell.

    Raises:
        ValueError: ``size`` is not ``"full"`` or ``"smoke"``.
        RuntimeError: a cell raised; the message names the cell and holds the traceback.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}; got {size!r}")
    path = tutorial_path(name)
    cells = code_cells(path)
    digest = _hash(cells)  # of the code that runs, should the file change meanwhile
    env = dict(os.environ, MPLBACKEND="Agg")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.pop("PBDE_SMOKE", None)
    if size == "smoke":
        env["PBDE_SMOKE"] = "1"
    if figures_dir is not None:
        env["PBDE_FIGURES_DIR"] = str(figures_dir)
    with tempfile.TemporaryDirectory(prefix="pbde-tutorial-run-") as folder:
        request, result = Path(folder) / "cells.json", Path(folder) / "result.json"
        request.write_text(json.dumps({"path": str(path), "cells": cells}))
        completed = subprocess.run(
            [sys.executable, __file__, "--cells", str(request), "--result", str(result)],
            env=env,
            cwd=ROOT,  # as in `python docs/tutorials/NAME.py`
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        recorded = json.loads(result.read_text()) if result.is_file() else {"cells": []}
    if figures_dir is not None:  # printed paths read as where a reader's own run writes them
        for cell in recorded["cells"]:
            for written in {str(figures_dir), str(Path(figures_dir).resolve())}:
                cell["stdout"] = cell["stdout"].replace(written, "docs/images/tutorials")
    if completed.returncode != 0 or "error" in recorded:
        where = f"code cell {len(recorded['cells'])} of {len(cells)}"
        raise RuntimeError(
            f"{path.name} failed at {size} size in {where}:\n"
            f"{recorded.get('error', '')}{completed.stdout[-2000:]}{completed.stderr[-4000:]}"
        )
    return {
        "size": size,
        "code_sha256": digest,
        "seconds": round(recorded["seconds"], 1),
        "machine": machine()
        | {"torch_threads": env["OMP_NUM_THREADS"], "load_average": round(os.getloadavg()[0], 1)},
        "date": datetime.date.today().isoformat(),
        "cells": recorded["cells"],
    }


def _run_cells(request: Path, result: Path) -> int:
    """The child process: execute the cells in one namespace and write what they printed."""
    spec = json.loads(request.read_text())
    path = spec["path"]
    sys.path[0] = str(Path(path).parent)  # as when the tutorial is run as a script
    sys.argv = [path]
    namespace = {"__name__": "__main__", "__file__": path}
    recorded: dict = {"cells": []}
    caught: list[str] = []  # the warnings a script run would print, as the filters let them
    warnings.showwarning = lambda message, category, *_, **__: caught.append(
        f"{category.__name__}: {message}"
    )
    began = time.perf_counter()
    for index, source in enumerate(spec["cells"]):
        out = io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stdout(out):
            try:
                exec(compile(source, f"{path} (code cell {index})", "exec"), namespace)
            except BaseException:  # noqa: BLE001 - reported to the parent with its traceback
                recorded["error"] = traceback.format_exc()
        recorded["cells"].append(
            {
                "stdout": out.getvalue(),
                "warnings": caught.copy(),
                "seconds": round(time.perf_counter() - start, 2),
            }
        )
        caught.clear()
        if "error" in recorded:
            break
    recorded["seconds"] = time.perf_counter() - began
    result.write_text(json.dumps(recorded))
    return 1 if "error" in recorded else 0


def output_path(name: str) -> Path:
    """``docs/tutorials/outputs/NAME.json``."""
    return OUTPUTS / f"{tutorial_path(name).stem}.json"


def recorded_runs(name: str) -> dict:
    """The committed runs of a tutorial that are still current, by size (maybe none)."""
    path = output_path(name)
    if not path.is_file():
        return {}
    current = code_hash(tutorial_path(name))
    runs = json.loads(path.read_text())["runs"]
    return {size: run for size, run in runs.items() if run["code_sha256"] == current}


def record(name: str, sizes: tuple[str, ...] = SIZES) -> dict:
    """Run a tutorial at the given sizes and write ``docs/tutorials/outputs/NAME.json``.

    The full-size run writes the committed figures; the smoke-size run writes its figures to a
    temporary folder. A current run of a size not asked for is kept.
    """
    runs = recorded_runs(name)
    for size in sizes:
        if size == "full":
            runs[size] = execute(name, size=size, figures_dir=FIGURES)
        else:
            with tempfile.TemporaryDirectory(prefix="pbde-smoke-figures-") as figures:
                runs[size] = execute(name, size=size, figures_dir=figures)
    OUTPUTS.mkdir(exist_ok=True)
    document = {"tutorial": tutorial_path(name).name, "runs": runs}
    output_path(name).write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n")
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m docs.hooks.run_tutorials",
        description="Run the tutorials cell by cell and record their outputs in "
        "docs/tutorials/outputs/ (the full-size run also redraws docs/images/tutorials/).",
    )
    parser.add_argument("names", nargs="*", help="tutorials to run (default: all of them)")
    parser.add_argument(
        "--size",
        choices=(*SIZES, "both"),
        default="both",
        help="which run to record (default: both, full size first)",
    )
    parser.add_argument("--cells", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cells is not None:
        return _run_cells(args.cells, args.result)
    names = args.names or sorted(p.stem for p in TUTORIALS.glob("*.py"))
    for name in names:
        tutorial_path(name)  # every name checked before the first (slow) run
    sizes = SIZES if args.size == "both" else (args.size,)
    for name in names:
        runs = record(name, sizes)
        took = ", ".join(f"{size} {runs[size]['seconds']:.0f} s" for size in sizes)
        print(f"{name}: {took} -> {os.path.relpath(output_path(name))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
