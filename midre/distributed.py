"""Data-parallel training under ``torchrun`` (PyTorch DistributedDataParallel).

``torchrun --nproc_per_node=N -m midre.cli train ...`` (or ``... run CONFIG``) starts N processes; each
reads its rank from the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) and
:func:`world` joins the process group (gloo on CPU; gloo for CPU tensors + NCCL for CUDA tensors when a
GPU is present, one GPU per local rank).  Outside torchrun (WORLD_SIZE unset or 1) everything here is a
no-op and training is byte-for-byte the single-process loop.

What changes with N > 1 processes (see docs/distributed.md):

- ``batch_size`` stays the GLOBAL batch: each rank takes ``batch_size / N`` images per step, so the
  learning rate and schedule mean what they meant in one process.
- Sharding (:class:`ShardSampler`): every rank draws the same seeded permutation of the training set
  per epoch (the single-process order), pads it to a multiple of N (DistributedSampler-style) and keeps
  every N-th index from its rank on.  Step k of all ranks together covers exactly the images of step k
  of a one-process run with the same global batch (when N divides the set size).
- Randomness: the eraser streams of erasing defenses, the flips and the global RNG (dropout, ...) of
  each epoch are derived from ``(seed, "rank", r, "of", N)`` -- different on every rank, reproducible
  for a given world size.  Per-image tables (Fixed / Entire Erasing) stay shared by all ranks.
- Gradients are averaged by DDP; BatchNorm is synchronised across ranks on CUDA (SyncBatchNorm, not
  available on CPU: with gloo each rank normalises over its local batch).
- Only rank 0 writes checkpoints, the others wait on a barrier; every rank resumes from the same
  files, so the run directory must be visible to all ranks (one machine, or a shared filesystem).
- Epoch statistics (loss, train accuracy) are summed over ranks.
"""
from __future__ import annotations

import atexit
import datetime as _dt
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import Sampler

from .errors import ArgumentError
from .utils import derive_seed

#: how long ranks > 0 of ``midre run`` may wait for rank 0 between training stages (data loading,
#: priors, attacks of rank 0): the control channel is a separate gloo group with this timeout.
CONTROL_TIMEOUT = _dt.timedelta(days=7)


@dataclass
class World:
    """This process's place in the data-parallel job (rank 0 of 1 outside torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    control: Any = field(default=None, repr=False)   # gloo group for pipeline messages

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def keys(self) -> tuple:
        """Extra keys for :func:`midre.utils.derive_seed`: () in one process (same seeds as without DDP)."""
        return () if self.size == 1 else ("rank", self.rank, "of", self.size)

    # ---------------------------------------------------------------- devices and model
    def device(self, device: torch.device) -> torch.device:
        """A CUDA device becomes this rank's GPU (one GPU per local rank); CPU stays CPU."""
        if self.size > 1 and device.type == "cuda":
            if self.local_rank >= torch.cuda.device_count():
                raise ArgumentError(f"local rank {self.local_rank} needs its own GPU but this machine has "
                                    f"{torch.cuda.device_count()}; start at most that many processes per machine "
                                    "(--nproc_per_node) or train on --device cpu")
            return torch.device("cuda", torch.cuda.current_device())
        return device

    def wrap(self, model: nn.Module, train_model: nn.Module, device: torch.device) -> nn.Module:
        """``train_model`` wrapped in DistributedDataParallel (SyncBatchNorm on CUDA) when N > 1."""
        if self.size == 1:
            return train_model
        if train_model is not model:
            raise ArgumentError("this defense wraps the training loop itself (DP-SGD through Opacus) and cannot run "
                                "under torchrun; train it in one process (plain `midre train`)")
        if device.type == "cuda" and os.environ.get("MIDRE_SYNC_BN", "1") != "0":
            nn.SyncBatchNorm.convert_sync_batchnorm(model)   # in place below the top module
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def rank_streams(self, defense: Any) -> None:
        """Give every rank its own eraser stream: re-derive each defense member's base seed from the rank.

        Called after ``defense.prepare`` (which derives the base seed from the training seed); tables
        that must be shared by all ranks (Fixed / Entire Erasing) were already built from the old seed.
        """
        if self.size == 1:
            return
        for m in defense.members():
            base = getattr(m, "_base_seed", None)
            if isinstance(base, int):
                m._base_seed = derive_seed(base, *self.keys)

    # ---------------------------------------------------------------- data
    def loader_kwargs(self, n: int, batch_size: int, generator: torch.Generator) -> dict[str, Any]:
        """DataLoader arguments: the plain shuffled loader in one process, this rank's shard otherwise."""
        if self.size == 1:
            return {"batch_size": batch_size, "shuffle": True, "generator": generator}
        if batch_size % self.size or batch_size // self.size < 2:
            raise ArgumentError(f"the batch size {batch_size} is the global batch and must split into at least 2 images "
                                f"per process over {self.size} processes; use a multiple of {self.size} of at least "
                                f"{2 * self.size}")
        return {"batch_size": batch_size // self.size, "generator": generator,
                "sampler": ShardSampler(n, self.rank, self.size, generator)}

    # ---------------------------------------------------------------- collectives
    def sum(self, *values: float) -> list[float]:
        """Sum numbers over ranks (epoch statistics); identity in one process."""
        if self.size == 1:
            return list(values)
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, group=self.control)
        return t.tolist()

    def barrier(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            dist.barrier(group=self.control)

    def after_checkpoint(self, epoch: int) -> None:
        """Ranks > 0 wait here until rank 0 has written epoch ``epoch``'s checkpoint."""
        self.barrier()
        _kill_point(epoch)

    def send(self, message: Any) -> None:
        """Rank 0 tells the other ranks what to do next (pipeline stages); no-op in one process."""
        if self.size > 1 and self.is_main:
            import torch.distributed as dist

            dist.broadcast_object_list([message], src=0, group=self.control)

    def receive(self) -> Any:
        """Ranks > 0: the next message of rank 0 (blocks up to CONTROL_TIMEOUT)."""
        import torch.distributed as dist

        box = [None]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]


class ShardSampler(Sampler[int]):
    """DistributedSampler-style seeded sharding over the single-process order.

    Every rank draws ``torch.randperm(n, generator)`` (the generator is re-seeded by the trainer every
    epoch, so all ranks draw the same permutation), pads it by repetition to a multiple of ``size`` and
    keeps indices ``rank, rank + size, ...``.
    """

    def __init__(self, n: int, rank: int, size: int, generator: torch.Generator):
        self.n, self.rank, self.size, self.generator = n, rank, size, generator
        self.per_rank = math.ceil(n / size)

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator[int]:
        perm = torch.randperm(self.n, generator=self.generator).tolist()
        total = self.per_rank * self.size
        perm = (perm * math.ceil(total / self.n))[:total]
        return iter(perm[self.rank:total:self.size])


_WORLD: World | None = None


def world() -> World:
    """This process's :class:`World`; the first call under torchrun joins the process group."""
    global _WORLD
    if _WORLD is None:
        _WORLD = _join()
    return _WORLD


def _join() -> World:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():     # a caller set up the group: adopt it
        size, rank = dist.get_world_size(), dist.get_rank()
    else:
        try:
            size = int(os.environ.get("WORLD_SIZE", "1") or 1)
            rank = int(os.environ.get("RANK", "0") or 0)
        except ValueError:
            raise ArgumentError("WORLD_SIZE / RANK are not integers; start midre with torchrun or unset them") from None
        if size <= 1:
            return World()
        if not dist.is_available():
            raise ArgumentError("this PyTorch build has no torch.distributed; run midre in one process")
        if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
            raise ArgumentError("WORLD_SIZE > 1 but MASTER_ADDR / MASTER_PORT are unset; start midre with "
                                "`torchrun --nproc_per_node=N -m midre.cli ...`")
    local = int(os.environ.get("LOCAL_RANK", rank) or 0)
    use_cuda = torch.cuda.is_available() and os.environ.get("MIDRE_DDP_BACKEND", "") != "gloo"
    if use_cuda:
        torch.cuda.set_device(local % torch.cuda.device_count())
    if not dist.is_initialized():
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if use_cuda else "gloo")
        atexit.register(_leave)
    control = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
    return World(rank=rank, size=size, local_rank=local, control=control)


def _leave() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _kill_point(epoch: int) -> None:
    """Test hook: ``MIDRE_DDP_KILL_AFTER_EPOCH=<e>`` SIGKILLs every rank right after epoch e's checkpoint
    (used by tests/test_distributed.py to check kill + resume; unset in normal use)."""
    at = os.environ.get("MIDRE_DDP_KILL_AFTER_EPOCH")
    if at and int(at) == epoch:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
