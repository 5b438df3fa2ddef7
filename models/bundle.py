"""Model bundles: one folder with a JSON manifest and one safetensors file per model.

    bundle/
      manifest.json          format, catalogue (with item titles, when known), model config,
                             training, metrics, checksums, and optionally sample users
      mixed.safetensors
      expert_00.safetensors  one per domain, named by domain *index* (names may be any unicode)

Loading trusts nothing it reads: every weight file's sha256 is checked against the
manifest before it is parsed, files are parsed with safetensors only (no pickle),
and tensor names and shapes must match the model the manifest's config builds.
Writing goes to a temporary sibling folder that is renamed into place at the end,
so a crash never leaves a half-written bundle behind.

Optional manifest fields (`samples`, the catalogue's `titles` and `genres`) keep
format version 1: a reader that does not know them ignores them, and a bundle without
them loads as before.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from models.catalogue import Catalogue
from models.errors import BundleError, CatalogueError
from models.sasrec import SASRec, SASRecConfig

FORMAT = "taesar-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\.safetensors$")


@dataclass
class Bundle:
    catalogue: Catalogue
    config: SASRecConfig
    mixed: SASRec
    experts: dict[str, SASRec]
    manifest: dict[str, Any]
    path: Path


# -- writing -------------------------------------------------------------------------


def _weights_blob(model: SASRec) -> bytes:
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    return save_safetensors(tensors)


def _write_durable(file: Path, data: bytes) -> None:
    # fsync before the final rename, so after a power loss the renamed folder is complete
    with file.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _write_weights(folder: Path, name: str, model: SASRec) -> dict[str, Any]:
    blob = _weights_blob(model)
    _write_durable(folder / name, blob)
    return {"file": name, "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}


def _check_models(catalogue: Catalogue, config: SASRecConfig, experts: Mapping[str, SASRec]) -> None:
    if config.n_items != catalogue.n_items:
        raise BundleError(f"model config has {config.n_items} items but the catalogue has {catalogue.n_items}")
    if set(experts) != set(catalogue.domains):
        raise BundleError(
            "experts must be given for exactly the catalogue's domains",
            {
                "missing": sorted(set(catalogue.domains) - set(experts)),
                "extra": sorted(set(experts) - set(catalogue.domains)),
            },
        )


def save_bundle(
    path: str | Path,
    *,
    catalogue: Catalogue,
    model_config: SASRecConfig,
    mixed: SASRec,
    experts: Mapping[str, SASRec],
    data_fingerprint: str,
    metrics: dict,
    training: dict,
    samples: list[tuple[str, list[str]]] | None = None,
) -> Path:
    """Write a bundle folder atomically and return its path.

    An existing bundle at `path` is replaced; any other existing, non-empty folder
    is refused rather than deleted. `samples`, (user id, external item ids) pairs, are
    stored for people exploring the model (the service's web page).
    """
    path = Path(path)
    _check_models(catalogue, model_config, experts)
    _refuse_foreign_folder(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; workers may run as another user
        files = {"mixed": _write_weights(tmp, "mixed.safetensors", mixed), "experts": {}}
        for k, domain in enumerate(catalogue.domains):
            files["experts"][domain] = _write_weights(tmp, f"expert_{k:02d}.safetensors", experts[domain])
        manifest = _manifest(catalogue, model_config, data_fingerprint, metrics, training, files)
        if samples:
            manifest["samples"] = {"users": [u for u, _ in samples], "items": [list(i) for _, i in samples]}
        text = json.dumps(manifest, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
        _write_durable(tmp / MANIFEST, text.encode("utf-8"))
        _swap_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _manifest(
    catalogue: Catalogue, config: SASRecConfig, fingerprint: str, metrics: dict, training: dict, files: dict
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "catalogue": catalogue.to_dict(),
        "model_config": config.to_dict(),
        "training": _json_safe(training),
        "data_fingerprint": fingerprint,
        "metrics": _json_safe(metrics),
        "files": files,
    }


def _json_safe(value: Any) -> Any:
    """Non-finite floats (a diverged loss) become null: strict JSON has no NaN."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _refuse_foreign_folder(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise BundleError(f"{path} exists and is not a folder", {"path": str(path)})
    if path.is_dir() and any(path.iterdir()) and not (path / MANIFEST).is_file():
        raise BundleError(f"{path} exists and is not a bundle; refusing to overwrite it", {"path": str(path)})


def _swap_into_place(tmp: Path, path: Path) -> None:
    """Rename tmp to path; an old bundle is moved aside first and removed only afterwards."""
    old = None
    if path.exists():
        old = tmp.with_name(tmp.name.removesuffix(".tmp") + ".old")
        path.rename(old)
    try:
        tmp.rename(path)
    except BaseException:
        if old is not None:
            old.rename(path)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# -- reading -------------------------------------------------------------------------


def read_samples(manifest: Mapping[str, Any]) -> list[tuple[str, list[str]]]:
    """The sample users a manifest stores, as (user id, item ids); [] without (or with
    malformed) samples: they are a convenience, never a reason to refuse a bundle."""
    samples = manifest.get("samples")
    if not isinstance(samples, Mapping):
        return []
    users, items = samples.get("users"), samples.get("items")
    if not isinstance(users, list) or not isinstance(items, list) or len(users) != len(items):
        return []
    if not all(isinstance(s, list) for s in items):
        return []
    return [(str(u), [str(i) for i in s]) for u, s in zip(users, items, strict=True)]


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of a bundle, checked for format and version; loads no weights."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"bundle folder {path} does not exist", {"path": str(path)})
    file = path / MANIFEST
    if not file.is_file():
        raise BundleError(f"{path} is not a bundle: {MANIFEST} is missing", {"path": str(path)})
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{file} is not valid JSON: {exc}", {"path": str(file)}) from None
    _check_format(manifest, file)
    return manifest


def _check_format(manifest: Any, file: Path) -> None:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{file} is not a taesar bundle manifest", {"path": str(file)})
    version = manifest.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise BundleError(f"{file}: invalid format_version {version!r}", {"path": str(file)})
    if version > FORMAT_VERSION:
        raise BundleError(
            f"bundle format version {version} is newer than this software supports ({FORMAT_VERSION}); "
            "upgrade taesar-service to load it",
            {"path": str(file), "format_version": version, "supported": FORMAT_VERSION},
        )


def load_bundle(path: str | Path, device: str | torch.device = "cpu") -> Bundle:
    """Load and verify a bundle; models are returned in eval mode on `device`."""
    path = Path(path)
    manifest = read_manifest(path)
    catalogue, config = _parse_header(manifest, path)
    files = manifest.get("files")
    if not isinstance(files, dict) or not isinstance(files.get("experts"), dict):
        raise BundleError(f"{path / MANIFEST}: 'files' is missing or malformed", {"path": str(path)})
    if set(files["experts"]) != set(catalogue.domains):
        raise BundleError(f"{path / MANIFEST}: experts do not match the catalogue's domains", {"path": str(path)})
    mixed = _load_model(path, files.get("mixed"), config, device)
    experts = {d: _load_model(path, files["experts"][d], config, device) for d in catalogue.domains}
    return Bundle(catalogue, config, mixed, experts, manifest, path)


def _parse_header(manifest: dict, path: Path) -> tuple[Catalogue, SASRecConfig]:
    try:
        catalogue = Catalogue.from_dict(manifest["catalogue"])
        config = SASRecConfig.from_dict(manifest["model_config"])
    except CatalogueError as exc:
        raise BundleError(f"{path / MANIFEST}: bad catalogue: {exc.message}", {"path": str(path)}) from None
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{path / MANIFEST}: missing or malformed field {exc}", {"path": str(path)}) from None
    _check_config(config, path)
    if config.n_items != catalogue.n_items:
        raise BundleError(
            f"{path / MANIFEST}: model_config.n_items={config.n_items} but the catalogue has {catalogue.n_items}",
            {"path": str(path)},
        )
    return catalogue, config


def _check_config(config: SASRecConfig, path: Path) -> None:
    sizes = {k: v for k, v in config.to_dict().items() if k != "dropout"}
    bad = [k for k, v in sizes.items() if not isinstance(v, int) or isinstance(v, bool) or v < 1]
    if bad or not isinstance(config.dropout, (int, float)) or not 0 <= config.dropout < 1:
        raise BundleError(f"{path / MANIFEST}: invalid model_config values {bad or ['dropout']}", {"path": str(path)})


def _read_verified(folder: Path, entry: Any) -> tuple[str, bytes]:
    """Bytes of one weight file, after its name and sha256 are checked against the manifest."""
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or not _SAFE_NAME.match(entry["file"]):
        raise BundleError(f"{folder / MANIFEST}: malformed file entry {entry!r}", {"path": str(folder)})
    name = entry["file"]
    file = folder / name
    if not file.is_file():
        raise BundleError(f"weight file {name} is missing from bundle {folder}", {"path": str(file)})
    blob = file.read_bytes()  # read once: the bytes we hash are the bytes we parse
    if hashlib.sha256(blob).hexdigest() != entry.get("sha256"):
        raise BundleError(
            f"checksum mismatch for {name} in bundle {folder}: the file is corrupt or was modified",
            {"path": str(file)},
        )
    return name, blob


def _load_model(folder: Path, entry: Any, config: SASRecConfig, device: str | torch.device) -> SASRec:
    name, blob = _read_verified(folder, entry)
    try:
        tensors = load_safetensors(blob)
    except (SafetensorError, ValueError) as exc:
        raise BundleError(f"{name} is not a valid safetensors file: {exc}", {"path": str(folder / name)}) from None
    model = SASRec(config)
    _check_shapes(name, tensors, model.state_dict(), folder)
    model.load_state_dict(tensors, strict=True)
    return model.to(device).eval()


def _check_shapes(name: str, got: Mapping[str, torch.Tensor], want: Mapping[str, torch.Tensor], folder: Path) -> None:
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing or extra:
        raise BundleError(
            f"{name} does not match the manifest's model config: missing tensors {missing}, unexpected {extra}",
            {"path": str(folder / name), "missing": missing, "unexpected": extra},
        )
    wrong = {k: (list(got[k].shape), list(want[k].shape)) for k in want if got[k].shape != want[k].shape}
    if wrong:
        k, (have, need) = next(iter(wrong.items()))
        raise BundleError(
            f"{name} does not match the manifest's model config: {k} has shape {have}, config needs {need}"
            + (f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""),
            {"path": str(folder / name), "mismatched": {k: {"file": a, "config": b} for k, (a, b) in wrong.items()}},
        )
