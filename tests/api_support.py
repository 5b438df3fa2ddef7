"""Helpers for the API tests: a model folder holding the session's tiny bundle, an
in-process client that runs the app's lifespan (bundle loading, Redis client), and
readers of a live server's metrics and of the figures a test prints."""

from __future__ import annotations

import re
import shutil
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from app.main import create_app
from core.settings import Settings

REDIS_URL = "redis://127.0.0.1:6379/0"


def delete_prefix(prefix: str, url: str = REDIS_URL) -> None:
    """Delete this test's keys (everything under `prefix:`) and nothing else: the Redis is shared."""
    import redis

    r = redis.Redis.from_url(url)
    keys = list(r.scan_iter(f"{prefix}:*", count=1000))
    for start in range(0, len(keys), 1000):
        r.delete(*keys[start : start + 1000])
    r.close()


def model_dir_with(bundle: Path, root: Path, name: str = "tiny") -> Path:
    """A TAESAR_MODEL_DIR holding a copy of `bundle` under `name`."""
    folder = root / "models"
    shutil.copytree(bundle, folder / name)
    return folder


def closed_port_url() -> str:
    """A Redis URL nothing listens on (the port was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


def settings_for(model_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "model_dir": model_dir,
        "redis_url": REDIS_URL,
        "key_prefix": f"test-api-{uuid.uuid4().hex[:8]}",
        "device": "cpu",
        "api_keys": [],
        "cors_origins": [],
        "log_level": "WARNING",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@asynccontextmanager
async def api_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=30) as client:
            yield client


def metric_total(url: str, name: str, **labels: str) -> float:
    """The sum of metric `name` on the server at `url` over the series carrying these labels."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{name}(?:\{{([^}}]*)\}})? (\S+)$", line)
        if m and all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
            total += float(m.group(2))
    return total


def print_figures(name: str, **figures: float) -> None:
    """The figures a test measured, printed for `pytest -s` (docs/reliability.md quotes them)."""
    print(f"\n[{name}] " + ", ".join(f"{k}={v:.3g}" for k, v in figures.items()))
