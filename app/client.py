"""Re-exports the Python SDK, `taesar_client` (the `taesar-client` distribution in
`sdk/`), so `from app.client import TaesarClient` works wherever `make setup` installed
the service. The service itself never imports it."""

from __future__ import annotations

try:
    from taesar_client import *  # noqa: F403
    from taesar_client import __all__  # noqa: F401
except ModuleNotFoundError as exc:
    if exc.name != "taesar_client":
        raise
    raise ModuleNotFoundError("app.client re-exports the SDK: install it with `pip install ./sdk`") from exc
