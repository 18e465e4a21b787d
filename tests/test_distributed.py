"""Data-parallel pbde.fit under torchrun (2 CPU processes, gloo) gives the single-process result.

The worker (tests/distributed_worker.py) fits four cases on 2 processes: full batch with slices
of unequal size (500 + 501 pairs), mini-batches of an odd size with DPO, the hinge loss and a
regularizer, a batch of one pair (one process gets nothing), and an MLP density whose
initialization differs per process. Each case is fitted here again in one process.

Tolerance. The two runs do the same arithmetic except the order of one sum (per-pair losses and
their gradients summed per slice, then across the 2 processes, vs summed at once), so they differ
by rounding only, amplified over 15-40 Adam steps. Measured worst parameter difference: 3e-16
(float64) and 1.8e-7 (float32); the tolerances are 1e-10 and 1e-5. Averaging the two slice
means instead (wrong for unequal slices) moved the parameters by 1e-4 (full batch, MLP) to 3e-2
(mini-batches) when tried, failing both tolerances, as would a step that skipped the gradient
sum.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pbde
import pbde.cli
from pbde.distributed import shard_bounds

WORKER = Path(__file__).with_name("distributed_worker.py")
TOLERANCE = {"float64": 1e-10, "float32": 1e-5}


def load_worker():
    spec = importlib.util.spec_from_file_location("distributed_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def launch(out: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
        str(WORKER), str(out),
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """dtype -> (output folder, what each rank saved); one torchrun launch for the module."""
    out = tmp_path_factory.mktemp("torchrun")
    launch(out)

    def get(dtype):
        ranks = [torch.load(out / f"rank{r}_{dtype}.pt", weights_only=True) for r in range(2)]
        return out, ranks

    return get


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_two_processes_give_the_single_process_fit(launched, dtype):
    _, ranks = launched(dtype)
    torch.set_default_dtype(getattr(torch, dtype))
    worker = load_worker()
    for name, model, prefs, options in worker.cases(rank=0):
        single = pbde.fit(model, prefs, progress=False, **options)
        for rank, results in enumerate(ranks):
            got = results[name]
            for key, value in model.state_dict().items():
                assert got["state"][key].dtype == value.dtype
                difference = float((got["state"][key] - value).abs().max())
                assert difference <= TOLERANCE[dtype], (name, rank, key, difference)
            # the recorded objective is the global one (the sum of the parts), on every rank
            assert torch.allclose(got["losses"], single.losses, rtol=0, atol=TOLERANCE[dtype])
    # only rank 0 writes checkpoints: every 10 steps and at the end of each case
    assert ranks[1]["checkpoint_writes"] == []
    assert ranks[0]["checkpoint_writes"] == [10, 20, 30, 40, 10, 20, 30, 40, 10, 20, 10, 15]


def test_the_checkpoints_of_a_distributed_run_resume_in_one_process(launched):
    """The file rank 0 wrote is a complete checkpoint: a single-process run given it resumes at
    the end and returns the parameters the distributed run ended with."""
    torch.set_default_dtype(torch.float64)
    out, ranks = launched("float64")
    worker = load_worker()
    name, model, prefs, options = worker.cases(rank=0)[0]
    result = pbde.fit(
        model, prefs, progress=False, checkpoint=out / f"{name}_float64.ckpt", **options
    )
    assert torch.equal(
        model.state_dict()["density.logits"], ranks[0][name]["state"]["density.logits"]
    )
    assert torch.equal(result.losses, ranks[0][name]["losses"])


@pytest.mark.parametrize(("n", "world_size"), [(1001, 2), (33, 2), (1, 2), (10, 3), (7, 7), (2, 5)])
def test_shard_bounds_partition_the_items(n, world_size):
    bounds = [shard_bounds(n, r, world_size) for r in range(world_size)]
    covered = [i for start, stop in bounds for i in range(start, stop)]
    assert covered == list(range(n))  # disjoint, in order, nothing left out
    sizes = [stop - start for start, stop in bounds]
    assert max(sizes) - min(sizes) <= 1


def test_pbde_fit_command_under_torchrun(tmp_path):
    """`torchrun -m pbde fit` joins the process group (gloo), writes the outputs once (rank 0),
    and gives the single-process command's model (float32, tolerance 1e-5 as above)."""
    worker = load_worker()
    pbde.io.write_preferences(worker.categorical_prefs(999, 7), tmp_path / "prefs.jsonl")
    options = ["fit", str(tmp_path / "prefs.jsonl"), "--density", "categorical", "--items", "5",
               "--steps", "30", "--lr", "0.1", "--batch-size", "101", "--no-progress"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
    done = subprocess.run(
        [*launcher, "-m", "pbde", *options, "--out", str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("wrote") == 1  # rank 0 only
    assert pbde.cli.main([*options, "--out", str(tmp_path / "one")]) == 0
    reports = [json.loads((tmp_path / name / "report.json").read_text()) for name in ("two", "one")]
    assert [r["processes"] for r in reports] == [2, 1]
    two, one = (pbde.load_model(tmp_path / name / "model.pt") for name in ("two", "one"))
    difference = float((two.density.logits - one.density.logits).detach().abs().max())
    assert difference <= TOLERANCE["float32"]
    assert reports[0]["final_loss"] == pytest.approx(reports[1]["final_loss"], abs=1e-6)
