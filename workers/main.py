"""`taesar worker`: start a Celery worker on the chunk queue.

One process per GPU is the intended deployment: `--pool solo` runs tasks in the main
process, so the models are loaded once, CUDA is initialised in the process that uses
it, and nothing forks after that. Place a worker on a GPU with CUDA_VISIBLE_DEVICES
and start one worker per GPU (or `docker compose up --scale worker=N`).

`concurrency > 1` switches to the prefork pool: N child processes, each loading its
own copy of the models after the fork (workers.loading never touches torch in the
parent). That is for CPU-only machines; on a GPU it would put N model copies and N
CUDA contexts on one device.
"""

from __future__ import annotations

import sys


def worker_argv(concurrency: int = 1, loglevel: str = "INFO", queues: str | None = None) -> list[str]:
    """The `celery worker` arguments for these options (separate so tests can check them)."""
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    argv = ["worker", f"--loglevel={loglevel}", "--without-gossip", "--without-mingle", "--without-heartbeat"]
    # solo runs tasks in the main process; without --concurrency=1 Celery's banner
    # would report its default, the CPU count
    argv += ["--pool=solo" if concurrency == 1 else "--pool=prefork", f"--concurrency={concurrency}"]
    if queues:  # default: the queue the API sends to (workers.celery_app.queue_name)
        argv += [f"--queues={queues}"]
    return argv


def worker_command(concurrency: int = 1, loglevel: str = "INFO", queues: str | None = None) -> None:
    """Run a worker in this process until it is stopped (SIGTERM: warm shutdown)."""
    from workers.celery_app import app

    app.worker_main(worker_argv(concurrency, loglevel, queues))


if __name__ == "__main__":  # python -m workers.main [concurrency]
    worker_command(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
