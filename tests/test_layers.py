"""The layers point one way (models <- core <- app | workers): the import contracts of
pyproject.toml hold, and what each entry point imports in a fresh interpreter shows it."""

from __future__ import annotations

import inspect
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app.errors import STATUS_BY_CODE
from core import errors as core_errors

ROOT = Path(__file__).resolve().parents[1]
WEB = ("fastapi", "starlette")


def imported_after(code: str) -> list[str]:
    """Top-level modules in sys.modules after running `code` in a fresh interpreter."""
    probe = f"{code}\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def roots(modules: list[str], *names: str) -> list[str]:
    return [m for m in modules if m.split(".")[0] in names]


def test_the_worker_entry_modules_import_neither_the_web_stack_nor_app() -> None:
    # workers.main: `taesar worker`; workers.celery_app: `celery -A workers.celery_app worker`,
    # whose `app` is built on first access together with the task module
    assert roots(imported_after("import workers.main"), *WEB, "app") == []
    worker = imported_after("import workers.celery_app as c\nc.app.loader.import_default_modules()")
    assert "workers.tasks" in worker
    assert roots(worker, *WEB, "app") == []


def test_the_worker_celery_app_is_built_from_settings_on_first_access_not_at_import() -> None:
    code = (
        "import sys, workers.celery_app as c\n"
        "assert c._app is None and 'workers.tasks' not in sys.modules\n"
        "assert c.app is c.app and c.app.conf.task_default_queue == 'layers-probe.chunks'\n"
    )
    env = {**os.environ, "TAESAR_KEY_PREFIX": "layers-probe"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, check=False)
    assert done.returncode == 0, done.stderr


def test_core_imports_neither_torch_nor_the_web_stack() -> None:
    code = "import core, core.engines, core.errors, core.jobstore, core.logging, core.metrics, core.queue"
    assert roots(imported_after(code), "torch", *WEB, "app", "workers") == []


def test_every_domain_error_code_has_an_http_status() -> None:
    classes = [
        c for _, c in inspect.getmembers(core_errors, inspect.isclass) if issubclass(c, core_errors.ServiceError)
    ]
    assert len(classes) > 1
    assert {c.code for c in classes} <= set(STATUS_BY_CODE)


def test_the_import_contracts_hold() -> None:
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if lint is None:
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    done = subprocess.run([lint], capture_output=True, text=True, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
