"""`taesar worker`: start a Celery worker on the chunk queue.

One process per GPU is the intended deployment: `--pool solo` runs tasks in the main
process, so the models are loaded once, CUDA is initialised in the process that uses
it, and nothing forks after that. Place a worker on a GPU with CUDA_VISIBLE_DEVICES,
or let `taesar worker --gpus 0,1,...` start and supervise one such process per GPU.

`concurrency > 1` switches to the prefork pool: N child processes, each loading its
own copy of the models after the fork (workers.loading never touches torch in the
parent). That is for CPU-only machines; on a GPU it would put N model copies and N
CUDA contexts on one device.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType


def worker_argv(concurrency: int = 1, loglevel: str = "INFO", queues: str | None = None) -> list[str]:
    """The `celery worker` arguments for these options (separate so tests can check them)."""
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    argv = ["worker", f"--loglevel={loglevel}", "--without-gossip", "--without-mingle", "--without-heartbeat"]
    # solo runs tasks in the main process; without --concurrency=1 Celery's banner
    # would report its default, the CPU count
    argv += ["--pool=solo" if concurrency == 1 else "--pool=prefork", f"--concurrency={concurrency}"]
    if queues:  # default: the queue the API sends to (core.queue.queue_name)
        argv += [f"--queues={queues}"]
    return argv


def worker_command(concurrency: int = 1, loglevel: str = "INFO", queues: str | None = None) -> None:
    """Run a worker in this process until it is stopped (SIGTERM: warm shutdown)."""
    from workers import celery_app

    celery_app.app.worker_main(worker_argv(concurrency, loglevel, queues))


# -- one solo worker per GPU -------------------------------------------------------------


@dataclass(frozen=True)
class WorkerProcess:
    """How to start one child worker: its label in messages, argv and extra environment."""

    label: str
    argv: list[str]
    env: dict[str, str]


# what CUDA_VISIBLE_DEVICES takes (indices, GPU-/MIG- UUIDs) and a Celery node name can hold
_GPU_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_./:-]*")


def parse_gpus(text: str) -> list[str]:
    """'0,1,3' -> ['0', '1', '3']: CUDA_VISIBLE_DEVICES values, each listed once."""
    gpus = [g.strip() for g in text.split(",")]
    if not any(gpus):
        raise ValueError("give at least one GPU id, e.g. 0,1")
    bad = [g for g in gpus if not _GPU_ID.fullmatch(g)]
    if bad:
        raise ValueError(f"{bad[0]!r} is not a GPU index or UUID")
    if len(set(gpus)) != len(gpus):
        raise ValueError(f"a GPU is listed twice in {text!r}")
    return gpus


def gpu_workers(gpus: Sequence[str], loglevel: str = "INFO", queues: str | None = None) -> list[WorkerProcess]:
    """One solo worker per GPU, each seeing only its GPU and with its own Celery node name
    (two nodes of one name on a host would shadow each other in `celery inspect`)."""
    base = [sys.executable, "-m", "celery", "-A", "workers.celery_app", *worker_argv(1, loglevel, queues)]
    return [WorkerProcess(f"GPU {g}", [*base, "-n", f"gpu{g}@%h"], {"CUDA_VISIBLE_DEVICES": g}) for g in gpus]


Children = Sequence[tuple[WorkerProcess, subprocess.Popen]]


def supervise(children: Sequence[WorkerProcess], *, poll_s: float = 0.5) -> int:
    """Run the children until one exits or this process gets SIGTERM/SIGINT, then stop the
    rest (SIGTERM: Celery's warm shutdown; a second signal kills them).

    Returns 0 when stopped by a signal and every child exited cleanly, else 1: a worker
    that exits on its own leaves its GPU unserved, so the whole group fails loudly and a
    process manager can restart it.
    """
    signals: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        signals.append(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    procs: list[tuple[WorkerProcess, subprocess.Popen]] = []
    try:
        for child in children:
            # own session: a terminal's Ctrl-C reaches only this supervisor, which then
            # stops every child the same way
            proc = subprocess.Popen(child.argv, env={**os.environ, **child.env}, start_new_session=True)
            procs.append((child, proc))
            _say(f"worker on {child.label}: pid {proc.pid}")
        exited_alone = _wait_for_first_exit(procs, signals, poll_s)
        codes = _stop_all(procs, signals, poll_s)
    finally:
        for _, proc in procs:  # children still alive here only after an unexpected error
            if proc.poll() is None:
                proc.kill()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 1 if exited_alone or any(codes) else 0


def _wait_for_first_exit(procs: Children, signals: list[int], poll_s: float) -> bool:
    """Block until a signal arrives (False) or a child exits on its own (True)."""
    while not signals:
        for child, proc in procs:
            if proc.poll() is not None:
                _say(f"worker on {child.label} exited with code {proc.returncode}; stopping the others")
                return True
        time.sleep(poll_s)
    return False


def _stop_all(procs: Children, signals: list[int], poll_s: float) -> list[int]:
    asked = len(signals)
    for _, proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    while any(proc.poll() is None for _, proc in procs):
        if len(signals) > asked:  # asked again: do not wait for running chunks (acks are late)
            for _, proc in procs:
                if proc.poll() is None:
                    proc.kill()
        time.sleep(poll_s)
    return [proc.returncode for _, proc in procs]


def _say(message: str) -> None:
    print(f"taesar worker: {message}", file=sys.stderr, flush=True)


def gpu_worker_command(gpus: Sequence[str], loglevel: str = "INFO", queues: str | None = None) -> int:
    """Start one solo worker per GPU and supervise them; the exit code of the group."""
    return supervise(gpu_workers(gpus, loglevel, queues))


if __name__ == "__main__":  # python -m workers.main [concurrency]
    worker_command(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
