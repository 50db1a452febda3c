"""Data-parallel DreamerV3 with ``torch.distributed``: one learner per process (torchrun).

Each rank steps its own envs into its own replay and samples its own batches (its envs and
draws are seeded ``seed + rank``); every update averages the gradients, the loss (for the
finite check) and the return normaliser's new statistics over the ranks in one
``all_reduce``, so every rank applies the same step and the weights stay identical, bit for
bit. Rank 0's initial weights are broadcast at construction. Only rank 0 logs and writes
checkpoints. The effective batch is ``batch_size x world size``.

Launch::

    torchrun --nproc_per_node 2 train.py      # train.py builds DreamerV3 and calls learn()

:func:`setup` starts the process group from torchrun's environment (``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``...) with ``gloo`` on CPU and ``nccl`` on CUDA, unless the script started one
already. Every rank must run the same number of updates at the same moments: give each the
same ``n_envs``, ``learning_starts`` and ``total_timesteps`` (counted per rank).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["all_average", "broadcast_module", "per_rank", "rank", "setup", "world_size"]


def active() -> bool:
    """True inside a process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of ranks (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def per_rank(seed: int | None, tensorboard_log: str | None,
             verbose: int) -> tuple[int, int | None, str | None, int]:
    """``(rank, seed, tensorboard_log, verbose)`` for this process.

    Rank 0 keeps its settings; every other rank gets its own seed (``seed + rank``, so its envs
    and replay draws differ) and neither logs nor prints.
    """
    r = rank()
    if not r:
        return r, seed, tensorboard_log, verbose
    return r, None if seed is None else seed + r, None, 0


def setup(device: torch.device | str = "auto") -> torch.device | str:
    """Start the process group when launched by torchrun; returns the device for this rank.

    Without torchrun's ``WORLD_SIZE`` > 1 (and no group started by the script) nothing
    happens and ``device`` comes back unchanged. On CUDA each rank takes ``cuda:LOCAL_RANK``
    when ``device`` is ``"auto"`` or ``"cuda"``.
    """
    if not dist.is_available():
        return device
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if not dist.is_initialized() and launched:
        cuda = torch.cuda.is_available() and str(device) in ("auto", "cuda")
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    if active() and torch.cuda.is_available() and str(device) in ("auto", "cuda"):
        local = int(os.environ.get("LOCAL_RANK", rank()))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return device


@torch.no_grad()
def broadcast_module(module: nn.Module) -> None:
    """Give every rank rank 0's parameters and buffers (no-op without a group)."""
    if not active():
        return
    for tensor in [*module.parameters(), *module.buffers()]:
        dist.broadcast(tensor.data, src=0)


@torch.no_grad()
def all_gather_cat(tensors: list[Tensor]) -> list[Tensor]:
    """Each tensor of every rank, concatenated along its last axis (no-op without a group).

    The same shapes on every rank (one config); every rank gets the same concatenation, in rank
    order.
    """
    if not active():
        return tensors
    out = []
    for t in tensors:
        parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, t.detach().contiguous())
        out.append(torch.cat(parts, -1))
    return out


@torch.no_grad()
def all_average(tensors: list[Tensor]) -> list[Tensor]:
    """The mean of each tensor over the ranks, in one ``all_reduce`` (no-op without a group).

    Every rank gets the same bits: the sum is reduced once and divided identically.
    """
    if not active():
        return tensors
    flat = torch.cat([t.detach().reshape(-1).to(torch.float32) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    out, start = [], 0
    for t in tensors:
        n = t.numel()
        out.append(flat[start:start + n].view(t.shape).to(t.dtype))
        start += n
    return out
