"""The settings a command runs with, read the way the service reads them.

One path for every setting that has a flag: the service's Settings class reads the
TAESAR_* environment variables (and a .env file), and a flag given on the command line
replaces its variable. So a flag beats TAESAR_*, which beats the default:

    --device            TAESAR_DEVICE             auto
    --threads           TAESAR_TORCH_THREADS      torch's choice
    --memory-budget-mb  TAESAR_MEMORY_BUDGET_MB   auto
    --batch-size        TAESAR_DECODE_BATCH_SIZE  256 (regenerate)
    --model-dir         TAESAR_MODEL_DIR          models_store (serve, worker)
    --redis-url         TAESAR_REDIS_URL          redis://127.0.0.1:6379/0 (serve, worker)

Like the service, a command refuses a bad TAESAR_* value of any setting, with one
error line naming it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from models.errors import ConfigError

if TYPE_CHECKING:
    from pydantic import ValidationError

    from core.settings import Settings

# Settings field -> the flag that sets it
FLAGS = {
    "device": "--device",
    "torch_threads": "--threads",
    "memory_budget_mb": "--memory-budget-mb",
    "decode_batch_size": "--batch-size",
    "model_dir": "--model-dir",
    "redis_url": "--redis-url",
}


def env_name(field: str) -> str:
    from core.settings import Settings  # pydantic: imported when a command runs, not for --help

    return f"{Settings.model_config.get('env_prefix', '')}{field}".upper()


@dataclass(frozen=True)
class GlobalOptions:
    """The options given before the command (`taesar --threads 1 pretrain ...`)."""

    threads: int | None = None

    @classmethod
    def of(cls, ctx: Any) -> GlobalOptions:
        """Those of the run a command's typer.Context belongs to (kept in its obj)."""
        obj = getattr(ctx, "obj", None)
        return obj if isinstance(obj, cls) else cls()


def load_settings(**flags: Any) -> Settings:
    """Settings from TAESAR_* (and .env), each flag that is not None in place of its
    variable. The CLI takes any positive --memory-budget-mb (a decode checks it against
    the catalogue), where the service asks for 16 or more: that flag's value is set after
    validation, and masks the variable during it."""
    from pydantic import ValidationError

    from core.settings import Settings

    unknown = flags.keys() - FLAGS.keys()
    if unknown:
        raise TypeError(f"no flag for the settings {sorted(unknown)}")
    given = {name: value for name, value in flags.items() if value is not None}
    budget = given.get("memory_budget_mb")
    if budget is not None:
        given["memory_budget_mb"] = "auto"
    try:
        settings = Settings(**given)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, given.keys())) from None
    return settings if budget is None else settings.model_copy(update={"memory_budget_mb": budget})


def _describe(exc: ValidationError, from_flags: Any) -> str:
    problems = []
    for e in exc.errors():
        field = str(e["loc"][0]) if e["loc"] else ""
        source = FLAGS[field] if field in from_flags else env_name(field)
        problems.append(f"{source}: {e['msg']}")
    return "; ".join(problems)


def source_of(field: str, value: Any, from_flag: bool) -> str:
    """`--device cuda` or `TAESAR_DEVICE=cuda`: where a value came from, for messages."""
    return f"{FLAGS[field]} {value}" if from_flag else f"{env_name(field)}={value}"


@dataclass(frozen=True)
class EngineOptions:
    """How a command that loads models runs them: the flags as given (None: not given)."""

    device: str | None = None
    memory_budget_mb: str | None = None
    batch_size: int | None = None
    threads: int | None = None


@dataclass(frozen=True)
class Runtime:
    """The resolved settings of a command that runs models."""

    device_choice: str  # auto | cpu | cuda, as asked (bundles record it)
    device: str  # cpu | cuda
    memory_budget_mb: float | str  # "auto" or MB
    batch_size: int  # decode batch size


def runtime(options: EngineOptions = EngineOptions()) -> Runtime:
    """Settings for a command that runs models; sets torch's CPU threads when one of
    --threads and TAESAR_TORCH_THREADS asks for a number."""
    from core.engines import apply_torch_threads

    settings = load_settings(
        torch_threads=options.threads,
        device=options.device,
        memory_budget_mb=None if options.memory_budget_mb is None else budget_value(options.memory_budget_mb),
        decode_batch_size=options.batch_size,
    )
    apply_torch_threads(settings)
    return Runtime(
        device_choice=settings.device,
        device=resolve_device_name(settings.device, from_flag=options.device is not None),
        memory_budget_mb=settings.memory_budget_mb,
        batch_size=settings.decode_batch_size,
    )


def budget_value(value: str) -> float | str:
    return value if value == "auto" else float(value)


def resolve_device_name(choice: str, *, from_flag: bool) -> str:
    """cpu or cuda, by the one device resolver of training and the service (models.device)."""
    from models.device import resolve_device
    from models.errors import DeviceError

    try:
        return resolve_device(choice).type
    except DeviceError as exc:
        raise DeviceError(f"{exc.message} ({source_of('device', choice, from_flag)})", exc.details) from None


def export_for_service(**flags: Any) -> Settings:
    """Check the flags with every TAESAR_* value, then put the given ones into this
    process's environment, which the service reads (core.settings.get_settings) and its
    processes inherit (uvicorn workers, Celery children, one worker per GPU)."""
    settings = load_settings(**flags)
    for field, value in flags.items():
        if value is not None:
            os.environ[env_name(field)] = str(value)
    return settings
