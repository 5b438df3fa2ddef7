"""The torch device and CPU threads of a process: the one device resolver of training
and of the service's engines (core.engines), with one error type."""

from __future__ import annotations

import torch

from models.distributed import Dist
from models.errors import DeviceError


def resolve_device(name: str, dist: Dist | None = None) -> torch.device:
    """The torch device for "auto", "cpu", "cuda", ... (this process's GPU under `dist`);
    DeviceError for a device this machine does not have."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("device 'cuda' asked for, but torch sees no CUDA device", {"device": name})
    if name == "cuda" and dist is not None:
        return torch.device("cuda", dist.local_rank)
    return torch.device(name)


def set_torch_threads(threads: int) -> None:
    """Set torch's CPU threads; from the process's main thread, before any decoding
    (OpenMP threads read the setting when they start)."""
    torch.set_num_threads(threads)
