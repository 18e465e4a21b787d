"""Reading and validating preference files against Arrow's own readers on the same file.

Writes ``--rows`` comparisons (integer items ``xa``, ``xb`` in [0, 1000), labels ``y`` in {0, 1})
as JSON Lines, CSV and Parquet into a temporary folder (nothing is written into the repository),
then times, alternating in one process, each ``pbde.io.read_preferences`` against the Arrow reader
alone (``pyarrow.json.read_json``, ``pyarrow.csv.read_csv``, ``pyarrow.parquet.read_table``).
Times are the median of ``--repeats`` reads. Peak memory is measured in a separate, untimed read:
the peak of Python and numpy allocations (``tracemalloc``) plus the peak of Arrow's memory pool
(``pyarrow.default_memory_pool().max_memory()`` growth, which only grows).

Usage:
    python benchmarks/bench_io.py [--rows 1000000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import tracemalloc


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
    args = parser.parse_args()

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
        peaks = {}
        for name, read in (("arrow", arrow_read), ("pbde", pbde_read)):
            pool = pa.default_memory_pool()
            before = pool.max_memory()
            tracemalloc.start()
            out = read(path)
            python_peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            peaks[name] = (python_peak + max(0, pool.max_memory() - before)) / 2**20
            del out
        arrow_s, pbde_s = (statistics.median(times[k]) for k in ("arrow", "pbde"))
        size = os.path.getsize(path) / 2**20
        print(
            f"{fmt:8} {size:8.1f} {arrow_s:8.3f} {pbde_s:8.3f} {pbde_s / arrow_s:6.2f} "
            f"{peaks['pbde']:14.1f} {peaks['arrow']:15.1f}   ({arrow_name})"
        )


if __name__ == "__main__":
    main()
