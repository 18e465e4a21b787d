"""One process of a data-parallel pbde.fit run; tests/test_distributed.py launches it with
``python -m torch.distributed.run --nproc_per_node=2 --standalone distributed_worker.py OUT``.

Every rank fits the cases of :func:`cases`, in float64 then float32, and saves what it got to
``OUT/rank{r}_{dtype}.pt``; the test
compares that with single-process fits of the same cases. Importing this file runs nothing.
"""

from __future__ import annotations

import importlib
import sys

import torch

import pbde
from pbde.densities import Categorical, EnergyModel

fit_module = importlib.import_module("pbde.fit")  # the module (pbde.fit is the function)
N_ITEMS = 5


def categorical_prefs(n: int, seed: int) -> pbde.Preferences:
    generator = torch.Generator().manual_seed(seed)
    truth = pbde.Annotator(Categorical(probs=torch.tensor([0.1, 0.2, 0.3, 0.15, 0.25])))
    xa, xb = pbde.sample_pairs(Categorical(size=N_ITEMS), n, generator=generator)
    return truth.label(xa, xb, generator=generator)


def energy_prefs(n: int, seed: int) -> pbde.Preferences:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(2, n, generator=generator) * 4.0 - 2.0
    y = (x[0] > x[1]).to(torch.get_default_dtype())  # prefers the larger item
    return pbde.Preferences(x[0], x[1], y)


def energy_model(seed: int) -> pbde.Annotator:
    torch.manual_seed(seed)
    return pbde.Annotator(EnergyModel(-2.0, 2.0, hidden=(8, 8), grid_size=65))


def cases(rank: int):
    """(name, model, prefs, fit options) of each case. Rank-dependent model initializations test
    that the run starts from rank 0's parameters."""
    reference = Categorical(probs=torch.tensor([0.3, 0.25, 0.2, 0.15, 0.1]))
    samples = torch.tensor([0, 1, 1, 2, 4])
    return [
        # full batch, 1001 pairs: slices of 500 and 501
        (
            "full_batch",
            pbde.Annotator(Categorical(size=N_ITEMS)),
            categorical_prefs(1001, 0),
            dict(steps=40, lr=0.1),
        ),
        # mini-batches of 33 (16 + 17), DPO, SLiC-HF's hinge with the NLL regularizer
        (
            "mini_batch",
            pbde.Annotator(Categorical(size=N_ITEMS), pbde.dpo(2.0, reference)),
            categorical_prefs(700, 1),
            dict(
                steps=40,
                lr=0.05,
                batch_size=33,
                seed=3,
                loss="hinge",
                delta=0.5,
                regularizer=pbde.nll_regularizer(samples, 0.3),
            ),
        ),
        # a batch of 1 out of 2 processes: rank 1's slice is empty
        (
            "batch_of_one",
            pbde.Annotator(Categorical(size=N_ITEMS)),
            categorical_prefs(50, 2),
            dict(steps=20, lr=0.05, batch_size=1, seed=4),
        ),
        # an MLP whose initialization differs per rank: the run must start from rank 0's
        ("energy", energy_model(seed=rank), energy_prefs(301, 5), dict(steps=15, lr=0.01)),
    ]


def main(out: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank()
    save = fit_module._save_checkpoint
    for dtype in ("float64", "float32"):
        torch.set_default_dtype(getattr(torch, dtype))
        checkpoint_writes = []

        def recording_save(*args, writes=checkpoint_writes):
            writes.append(args[-1])
            save(*args)

        fit_module._save_checkpoint = recording_save
        results = {}
        for name, model, prefs, options in cases(rank):
            result = pbde.fit(
                model,
                prefs,
                progress=False,
                checkpoint=f"{out}/{name}_{dtype}.ckpt",
                checkpoint_every=10,
                **options,
            )
            results[name] = {
                "state": {k: v.clone() for k, v in model.state_dict().items()},
                "losses": result.losses,
            }
        results["checkpoint_writes"] = checkpoint_writes
        torch.save(results, f"{out}/rank{rank}_{dtype}.pt")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
