"""Data-parallel training through ``torch.distributed`` (launched with ``torchrun``).

When a default process group is initialized with more than one process, :func:`pbde.fit` splits
each batch (or, full batch, the data set) into one disjoint, contiguous slice per process. Each
process computes its *part* of the objective, ``Σ_{i in its slice} loss_i / B`` with ``B`` the
size of the whole batch, so that the parts of all processes sum to the single-process objective
``mean(loss)`` exactly, whatever the slice sizes (B need not be divisible by the number of
processes). :func:`pbde.fit.optimize` sums the parts' values and gradients over the processes
with one ``all_reduce`` per step and dtype, then every process takes the same Adam step, so the
parameters stay identical everywhere. See ``docs/distributed.md``.

Why explicit ``all_reduce`` rather than ``torch.nn.parallel.DistributedDataParallel``: DDP
synchronizes gradients through hooks armed by the wrapped module's ``forward``, but pbde's
objective calls ``model.logits`` (and a regularizer may read ``model.density`` directly), so the
wrapper would have to be bypassed or the models reshaped around ``forward``. DDP also *averages*
gradients (divides the sum by the number of processes), which is the global mean only for
equal-sized slices, and it expects every process to use the same parameters in each step (an
empty slice, or the regularizer counted on one process only, break that). The explicit sum of
pre-weighted parts has none of these limits. What it gives up is DDP's overlap of communication
with the backward pass, which matters for large networks, not for pbde's densities.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch
import torch.distributed as dist

__all__ = ["rank_and_world_size", "is_main_process", "shard_bounds"]


def rank_and_world_size() -> tuple[int, int]:
    """``(rank, world size)`` of the default process group; ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """True on rank 0, and in a run without a process group (the one that writes and reports)."""
    return rank_and_world_size()[0] == 0


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """The slice ``[start, stop)`` of ``n`` items taken by ``rank`` out of ``world_size``:
    contiguous, disjoint, covering ``0..n-1``, sizes differing by at most one (some may be empty
    when ``n < world_size``)."""
    return n * rank // world_size, n * (rank + 1) // world_size


def all_reduce_sum_(tensors: Iterable[torch.Tensor]) -> None:
    """Sum tensors over all processes, in place; one collective per (dtype, device)."""
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for tensor in tensors:
        groups.setdefault((tensor.dtype, tensor.device), []).append(tensor)
    for group in groups.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for t in group:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()


def all_reduce_gradients_(parameters: list[torch.Tensor]) -> None:
    """Sum the gradients of ``parameters`` over all processes (a missing gradient counts as 0,
    so every process joins the same collectives)."""
    for p in parameters:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    all_reduce_sum_([p.grad for p in parameters])


def broadcast_from_main_(tensors: Iterable[torch.Tensor]) -> None:
    """Overwrite ``tensors`` on every process with rank 0's values (like DDP's start)."""
    with torch.no_grad():
        for tensor in tensors:
            dist.broadcast(tensor.data, src=0)


def agree_on_start(step: int, checkpoint) -> None:
    """Check that every process resumes from the same step; raise on all of them otherwise."""
    device = torch.device("cuda", torch.cuda.current_device()) if _uses_nccl() else None
    extremes = torch.tensor([step, -step], dtype=torch.int64, device=device)
    dist.all_reduce(extremes, op=dist.ReduceOp.MAX)
    highest, lowest = int(extremes[0]), -int(extremes[1])
    if highest != lowest:
        raise RuntimeError(
            f"The processes would resume from different steps ({lowest} to {highest}): the "
            f"checkpoint {checkpoint!s} is not the same file for all of them. Put it on a file "
            "system that every node sees."
        )


def _uses_nccl() -> bool:
    return dist.get_backend() == "nccl"


def init_from_environment(device: str | None) -> str | None:
    """Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE``,
    ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), if there is one of two or more
    processes and none is initialized yet: NCCL when training on CUDA (each process on GPU
    ``LOCAL_RANK``), gloo on the CPU.

    Args:
        device: the requested device (``None``, ``"cpu"``, ``"cuda"``...).

    Returns:
        The device this process should train on (``cuda:LOCAL_RANK`` under NCCL), or ``device``
        unchanged when there is no process group to join.
    """
    if not dist.is_available() or dist.is_initialized():
        return device
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return device
    on_cuda = device is not None and torch.device(device).type == "cuda"
    if on_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl")
        return f"cuda:{local_rank}"
    dist.init_process_group("gloo")
    return device


def is_sharded(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a parameter sharded by FSDP2 (a ``DTensor``): its gradients are
    reduced by FSDP itself, not by pbde's ``all_reduce``."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without DTensor
        return False
    return isinstance(tensor, DTensor)


def shard_model_(model: torch.nn.Module) -> int:
    """Shard a Hugging Face model over the processes with FSDP2 (``fully_shard``): each decoder
    layer (the classes the model names in ``_no_split_modules``) and then the whole model, so
    each process holds 1/W of the parameters, gradients and optimizer state, gathering a
    layer's parameters only while it computes.

    FSDP averages gradients over the processes; :func:`pbde.fit.optimize` scales each process's
    part of the objective by W so that the average is the sum of the parts, as without FSDP.

    Returns:
        The number of layers sharded on their own.

    Raises:
        RuntimeError: outside a process group of two or more processes.
    """
    from torch.distributed.fsdp import fully_shard

    if rank_and_world_size()[1] < 2:
        raise RuntimeError("Sharding a model needs a process group of two or more (torchrun).")
    names = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    for layer in layers:
        fully_shard(layer)
    fully_shard(model)
    return len(layers)
