"""A real uvicorn server on a free port, in a thread, for tests that need real HTTP
(the SDK end to end, headless Chromium on /docs); and a real Celery worker process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def live_server(app: Any, *, startup_timeout: float = 120.0) -> Iterator[str]:
    """Serve `app` on 127.0.0.1 and yield its base URL; the lifespan runs as in production."""
    # bind first and hand uvicorn the socket: no window in which another process takes the port
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("uvicorn exited during start-up (see the log above)")
        if time.monotonic() > deadline:
            raise TimeoutError(f"uvicorn did not start within {startup_timeout}s")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@contextmanager
def celery_worker(env: Mapping[str, str], queue: str) -> Iterator[subprocess.Popen[bytes]]:
    """`celery -A workers.celery_app worker --pool solo` on `queue`, stopped with a warm shutdown."""
    cmd = [
        sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker",
        "--pool", "solo", "-Q", queue, "--loglevel", "WARNING",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env})
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def catalogue_sample(bundle: Path) -> tuple[str, list[str]]:
    """A target domain of `bundle` and a history of two items of every domain, interleaved,
    so that keep, replace and discard all get a chance."""
    catalogue = json.loads((bundle / "manifest.json").read_text())["catalogue"]
    domains, ids, offsets = catalogue["domains"], catalogue["item_ids"], catalogue["offsets"]
    return domains[1], [ids[offsets[k] + j] for j in (0, 1) for k in range(len(domains))]
