"""Stage I on several processes: what each rank trains and validates, and how ranks agree.

A run launched by torchrun has one process ("rank") per device. The CLI reads the launch
from the environment, starts the process group and passes a `Dist` here; models/ never
reads the environment.

- Training rows: every rank draws the same length-bucketed batch list from the same seed
  and takes every world_size-th batch (round robin), so a rank trains 1/world_size of the
  rows and the global batch is world_size x batch_size rows. DDP all-reduces gradients
  once per optimiser step, so every rank must step equally often or the others hang: the
  list is wrapped around to a multiple of world_size, i.e. at most world_size - 1 batches
  train twice in an epoch (different ones each epoch, the list being shuffled). Dropping
  them instead would skip up to (world_size - 1) batches of rows every epoch, a large
  share of a small data set; DDP's Join would average the extra steps' gradients with
  zeros from the ranks that ran out.
- Validation: rank r ranks points r, r + W, r + 2W, ...; the ranks are all-gathered back
  into the original order, so every rank computes the same metrics from the same float64
  ranks and takes the same early-stopping decision.
- Data: before any training the ranks all-gather a digest of their dataset fingerprint;
  a mismatch raises the same DataError on every rank.

Collectives move tensors only (nothing is pickled): on CPU through gloo, on CUDA through
NCCL on the rank's own device.

The most recent collective's work handle stays referenced from Python (`_hold`). A gloo
worker thread otherwise may drop the last reference to a finished work, and with it the
tensors Python created, after the main thread has begun shutting the interpreter down;
freeing those tensors then needs the GIL and aborts the process ("terminate called
without an active exception"). destroy_process_group does not prevent it because DDP
leaves references to the group behind, so its worker threads are never joined. Without
the reference about one two-rank run in fifteen aborted on a 2-core machine.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as tdist

from models.errors import DataError

__all__ = ["Dist", "all_sum", "broadcast_flag", "check_same_data", "deal", "gather_ranks", "rank_seed", "shard"]

T = TypeVar("T")
_held: list[Any] = []  # the latest collective's work: see the module docstring


@dataclass(frozen=True)
class Dist:
    """This process's place in an initialised process group."""

    rank: int
    world_size: int
    backend: str  # "gloo" (CPU) | "nccl" (CUDA)
    local_rank: int = 0  # index of this rank's CUDA device on its node

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside a world of {self.world_size}")
        if self.backend not in ("gloo", "nccl"):
            raise ValueError(f"backend must be gloo or nccl, got {self.backend!r}")

    @property
    def comm_device(self) -> torch.device:
        """Where tensors must live for this backend's collectives."""
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")


def _hold(work: Any) -> None:
    """Wait for a collective and keep its work referenced until the next one replaces it."""
    work.wait()
    _held[:] = [work]


def deal(batches: Sequence[T], dist: Dist | None) -> list[T]:
    """This rank's share of an epoch's batches: round robin over the list wrapped around to
    a multiple of world_size, so every rank gets ceil(len / world_size) of them."""
    if dist is None or dist.world_size == 1:
        return list(batches)
    if not batches:
        return []
    per_rank = -(-len(batches) // dist.world_size)
    wrapped = [batches[i % len(batches)] for i in range(per_rank * dist.world_size)]
    return wrapped[dist.rank :: dist.world_size]


def shard(n: int, dist: Dist | None) -> np.ndarray:
    """Indices of the n evaluation points this rank ranks: rank, rank + W, ..."""
    if dist is None:
        return np.arange(n)
    return np.arange(dist.rank, n, dist.world_size)


def gather_ranks(mine: np.ndarray, n: int, dist: Dist | None) -> np.ndarray:
    """All ranks' shard(n) results (float64) put back in point order, on every rank."""
    if dist is None:
        return mine
    width = -(-n // dist.world_size)  # the largest shard
    local = torch.zeros(width, dtype=torch.float64, device=dist.comm_device)  # (width,)
    local[: len(mine)] = torch.as_tensor(mine, dtype=torch.float64)
    parts = [torch.empty_like(local) for _ in range(dist.world_size)]
    _hold(tdist.all_gather(parts, local, async_op=True))
    out = np.empty(n, dtype=np.float64)
    for r, part in enumerate(parts):
        idx = np.arange(r, n, dist.world_size)
        out[idx] = part[: len(idx)].cpu().numpy()
    return out


def all_sum(values: Sequence[float], dist: Dist | None) -> list[float]:
    """Element-wise sum over ranks, in float64 (exact for one rank)."""
    if dist is None:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=dist.comm_device)
    _hold(tdist.all_reduce(t, async_op=True))
    return t.tolist()


def broadcast_flag(flag: bool, dist: Dist) -> bool:
    """Rank 0's flag on every rank; the collective doubles as a barrier."""
    t = torch.tensor([int(flag)], dtype=torch.int32, device=dist.comm_device)
    _hold(tdist.broadcast(t, src=0, async_op=True))
    return bool(t.item())


def check_same_data(fingerprint: str, dist: Dist | None) -> None:
    """Raise DataError on every rank unless all ranks were given the same dataset."""
    if dist is None:
        return
    digest = hashlib.sha256(fingerprint.encode("utf-8")).digest()
    local = torch.tensor(list(digest), dtype=torch.uint8, device=dist.comm_device)  # (32,)
    parts = [torch.empty_like(local) for _ in range(dist.world_size)]
    _hold(tdist.all_gather(parts, local, async_op=True))
    others = [r for r, p in enumerate(parts) if not torch.equal(p, local)]
    if others:
        raise DataError(
            f"ranks were given different datasets: rank {dist.rank} has fingerprint {fingerprint[:12]} and "
            f"rank(s) {', '.join(map(str, others))} another; give every rank the same --data"
        )


def rank_seed(entropy: Sequence[int], dist: Dist | None) -> int:
    """A torch seed for dropout: the single-process one on rank 0, its own on every other
    rank, so ranks whose batches have equal shapes do not draw equal dropout masks."""
    extra = [dist.rank] if dist is not None and dist.rank > 0 else []
    return int(np.random.SeedSequence([*entropy, *extra]).generate_state(1)[0])
