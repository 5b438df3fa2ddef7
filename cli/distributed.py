"""Commands under torchrun: this process's rank, its process group, and what the other
ranks do while rank 0 writes or works alone."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cli.common import err
from models.errors import TaesarError


def launch() -> tuple[int, int] | None:
    """(rank, world size) when torchrun started this process, else None."""
    import torch.distributed as tdist

    if not tdist.is_torchelastic_launched():
        return None
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])


@contextmanager
def process_group(device: str) -> Iterator[Any]:
    """The Dist of this rank with its process group up (gloo on CPU, NCCL on this rank's
    GPU), destroyed on the way out; None for a plain run, which starts nothing. device is
    the resolved cpu or cuda."""
    import torch
    import torch.distributed as tdist

    from models.distributed import Dist

    started = launch()
    if started is None:
        yield None
        return
    rank, world = started
    local = int(os.environ.get("LOCAL_RANK", "0"))
    on_gpu = device == "cuda"
    if on_gpu:
        if local >= torch.cuda.device_count():
            raise TaesarError(
                f"local rank {local} has no GPU: this node has {torch.cuda.device_count()}; "
                "give torchrun --nproc-per-node at most that many"
            )
        torch.cuda.set_device(local)
    dist = Dist(rank, world, "nccl" if on_gpu else "gloo", local)
    tdist.init_process_group(dist.backend, rank=rank, world_size=world, device_id=dist.comm_device if on_gpu else None)
    try:
        yield dist
    finally:
        tdist.destroy_process_group()


def write_on_rank_zero(result: Any, bundle: Path, ds: Any, dist: Any) -> Path:
    """Rank 0 writes the bundle; the other ranks wait until it has, and fail with it if it
    could not, rather than return as if a bundle were there."""
    from models.distributed import broadcast_flag

    if dist is None:
        return result.save(bundle, ds)
    failure: Exception | None = None
    if dist.rank == 0:
        try:
            result.save(bundle, ds)
        except Exception as exc:  # every kind: the others are waiting for the outcome
            failure = exc
    written = broadcast_flag(failure is None, dist)
    if failure is not None:
        raise failure
    if not written:
        raise TaesarError(f"rank 0 could not write the bundle {bundle} (its error line says why)")
    return bundle


def other_rank_exits(command: str, started: tuple[int, int] | None, why: str) -> bool:
    """True (after one line on stderr) when this is a torchrun rank other than 0."""
    if started is None or started[0] == 0:
        return False
    err.print(f"rank {started[0]} of {started[1]}: {command} {why}; exiting", highlight=False)
    return True
