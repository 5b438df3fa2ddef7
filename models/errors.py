"""Domain exceptions for caller mistakes; `app/` maps each to one HTTP error code."""

from __future__ import annotations


class TaesarError(Exception):
    """Base class of every error a caller can cause. `code` is stable for the API."""

    code = "taesar_error"

    def __init__(self, message: str, details: dict | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class DataError(TaesarError):
    """A bad input file or a bad option for preparing data."""

    code = "bad_data"


class CatalogueError(TaesarError):
    """An inconsistent catalogue (duplicate item, empty domain, ...)."""

    code = "bad_catalogue"


class UnknownItemError(TaesarError):
    code = "unknown_item"


class UnknownDomainError(TaesarError):
    code = "unknown_domain"


class BundleError(TaesarError):
    """A missing, corrupt or incompatible model bundle."""

    code = "bad_bundle"


class ConfigError(TaesarError):
    """A setting or option that cannot work with this model (e.g. a memory budget too
    small for its catalogue)."""

    code = "bad_config"


class DeviceError(ConfigError):
    """A device that this machine does not have (e.g. cuda without a CUDA device)."""
