"""Reading and validating preference files against Arrow's own readers on the same file.

Writes ``--rows`` comparisons (integer items ``xa``, ``xb`` in [0, 1000), labels ``y`` in {0, 1})
as JSON Lines, CSV and Parquet into a temporary folder (nothing is written into the repository),
then times, alternating in one process, each ``pbde.io.read_preferences`` against the Arrow reader
alone (``pyarrow.json.read_json``, ``pyarrow.csv.read_csv``, ``pyarrow.parquet.read_table``).
Times are the median of ``--repeats`` reads. Peak memory is measured for each contender in a fresh
subprocess that imports the same modules (pyarrow, torch, pbde), resets its resident-set high-water
mark (``/proc/self/clear_refs``), reads the file once and reports its peak resident set size
(``VmHWM``; ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` where the mark cannot be reset) minus the
resident set size before the read: the memory the read itself needed at its peak, Arrow's pool,
numpy and torch included (Linux).

Usage:
    python benchmarks/bench_io.py [--rows 1000000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ARROW_READERS = {
    "jsonl": ("pyarrow.json", "read_json"),
    "csv": ("pyarrow.csv", "read_csv"),
    "parquet": ("pyarrow.parquet", "read_table"),
}


def _resident_mib() -> float:
    """The current resident set size (Linux), in MiB."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_of_one_read(contender: str, fmt: str, path: str) -> None:
    """Child process: read ``path`` once, print the peak resident memory the read added (MiB)."""
    import importlib

    import pyarrow  # noqa: F401
    import torch  # noqa: F401

    import pbde.io

    if contender == "pbde":
        read = pbde.io.read_preferences
    else:
        module, name = ARROW_READERS[fmt]
        read = getattr(importlib.import_module(module), name)
    before = _resident_mib()
    try:  # reset the high-water mark so that the imports' peak does not count
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass
    out = read(path)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 2**10
    del out
    print(max(0.0, peak - before))


def measure_peak(contender: str, fmt: str, path: str) -> float:
    command = [sys.executable, __file__, "--peak-of", contender, fmt, path]
    return float(subprocess.run(command, check=True, capture_output=True, text=True).stdout)


def write_files(folder: str, n: int) -> dict[str, str]:
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    table = pa.table(
        {
            "xa": rng.integers(0, 1000, n),
            "xb": rng.integers(0, 1000, n),
            "y": rng.integers(0, 2, n),
        }
    )
    paths = {fmt: os.path.join(folder, f"prefs.{fmt}") for fmt in ("jsonl", "csv", "parquet")}
    with open(paths["jsonl"], "w") as handle:
        columns = [table.column(k).to_numpy() for k in ("xa", "xb", "y")]
        for start in range(0, n, 100_000):
            parts = [c[start : start + 100_000].tolist() for c in columns]
            handle.writelines(
                f'{{"xa": {a}, "xb": {b}, "y": {y}}}\n' for a, b, y in zip(*parts, strict=True)
            )
    pacsv.write_csv(table, paths["csv"])
    pq.write_table(table, paths["parquet"])
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10**6)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--peak-of", nargs=3, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.peak_of:
        peak_of_one_read(*args.peak_of)
        return

    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.json as pj
    import pyarrow.parquet as pq
    import torch

    import pbde.io

    torch.set_num_threads(1)
    folder = tempfile.mkdtemp()
    paths = write_files(folder, args.rows)
    contenders = {
        "jsonl": (lambda p: pj.read_json(p), "pyarrow.json.read_json"),
        "csv": (lambda p: pacsv.read_csv(p), "pyarrow.csv.read_csv"),
        "parquet": (lambda p: pq.read_table(p), "pyarrow.parquet.read_table"),
    }
    print(f"{args.rows} rows, median of {args.repeats} alternating reads; pyarrow {pa.__version__}")
    header = f"{'format':8} {'size MiB':>8} {'arrow s':>8} {'pbde s':>8} {'ratio':>6} "
    print(header + f"{'pbde peak MiB':>14} {'arrow peak MiB':>15}   (arrow reader)")
    for fmt, path in paths.items():
        arrow_read, arrow_name = contenders[fmt]
        pbde_read = lambda p: pbde.io.read_preferences(p)  # noqa: E731
        arrow_read(path), pbde_read(path)  # warm the page cache and the imports
        times = {"arrow": [], "pbde": []}
        for _ in range(args.repeats):
            for name, read in (("arrow", arrow_read), ("pbde", pbde_read)):
                start = time.perf_counter()
                out = read(path)
                times[name].append(time.perf_counter() - start)
                del out
        assert len(pbde_read(path).prefs) == args.rows
        peaks = {name: measure_peak(name, fmt, path) for name in ("arrow", "pbde")}
        arrow_s, pbde_s = (statistics.median(times[k]) for k in ("arrow", "pbde"))
        size = os.path.getsize(path) / 2**20
        print(
            f"{fmt:8} {size:8.1f} {arrow_s:8.3f} {pbde_s:8.3f} {pbde_s / arrow_s:6.2f} "
            f"{peaks['pbde']:14.1f} {peaks['arrow']:15.1f}   ({arrow_name})"
        )


if __name__ == "__main__":
    main()
