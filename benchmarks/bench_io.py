"""Reading and validating preference files: rows/s and peak memory, Parquet vs JSON Lines.

Writes 10^6 comparisons (numeric items, soft labels, integer annotator ids) with
``pbde.io.write_preferences``, then reads each file with ``pbde.io.read_preferences`` in a fresh
subprocess (so peak memory is that of the read alone). Peak memory is the process's maximum
resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) minus the one measured after
imports and a warm-up read of a 20-row file, just before the timed reads. For scale, the final
tensors of 10^6 numeric rows (xa, xb, y in float32, annotator ids in int64) take 19 MiB.

Usage:
    python benchmarks/bench_io.py [--rows 1000000] [--repeats 3] [--formats parquet jsonl]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time


def rss_kib() -> int:
    """Current resident set size of this process in KiB (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def child(path: str, repeats: int) -> None:
    """Runs in the subprocess: read ``path`` ``repeats`` times, print timings and memory."""
    import torch

    import pbde

    torch.set_num_threads(1)
    # import everything the read imports lazily (pyarrow), so the peak is the read's
    folder = tempfile.mkdtemp()
    tiny = os.path.join(folder, "tiny" + os.path.splitext(path)[1])
    pbde.io.write_preferences(
        pbde.Preferences(torch.zeros(20), torch.ones(20), torch.ones(20), torch.zeros(20).long()),
        tiny,
    )
    pbde.io.read_preferences(tiny)
    base = rss_kib()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = pbde.io.read_preferences(path)
        times.append(time.perf_counter() - start)
        n = len(result.prefs)
        del result
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"rows": n, "times": times, "base_kib": base, "peak_kib": peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--formats", nargs="+", default=["parquet", "jsonl"])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.repeats)
        return

    import torch

    import pbde

    generator = torch.Generator().manual_seed(0)
    n = args.rows
    prefs = pbde.Preferences(
        torch.randn(n, generator=generator),
        torch.randn(n, generator=generator),
        torch.rand(n, generator=generator),
        torch.randint(0, 100, (n,), generator=generator),
    )
    print(f"python {platform.python_version()}, torch {torch.__version__}, {os.cpu_count()} CPUs")
    print(f"{n} rows: numeric items, soft labels, integer annotator ids")
    print(
        "| format | file size | read+validate s (min / median) | rows/s (best) | peak RSS (above pre-read RSS) |"
    )
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for fmt in args.formats:
            path = os.path.join(folder, f"prefs.{fmt}")
            pbde.io.write_preferences(prefs, path)
            size = os.path.getsize(path) / 2**20
            out = subprocess.run(
                [sys.executable, __file__, "--child", path, "--repeats", str(args.repeats)],
                check=True,
                capture_output=True,
                text=True,
            )
            report = json.loads(out.stdout.strip().splitlines()[-1])
            assert report["rows"] == n
            best, median = min(report["times"]), statistics.median(report["times"])
            extra = (report["peak_kib"] - report["base_kib"]) / 1024
            print(
                f"| {fmt} | {size:.1f} MiB | {best:.2f} / {median:.2f} | {n / best:,.0f} | "
                f"{report['peak_kib'] / 1024:.0f} MiB ({extra:.0f} MiB) |"
            )


if __name__ == "__main__":
    main()
