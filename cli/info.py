"""`taesar info`: what a bundle holds, from its manifest alone."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from cli.common import user_errors


@user_errors
def info(bundle: Annotated[Path, typer.Argument(help="bundle folder")]) -> None:
    """Print a bundle's domains, sizes, hyper-parameters and validation metrics (no weights loaded)."""
    from models.bundle import read_manifest

    manifest = read_manifest(bundle)
    json.dump(manifest_summary(manifest), sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


def manifest_summary(manifest: dict) -> dict:
    cat = manifest["catalogue"]
    sizes = {d: b - a for d, a, b in zip(cat["domains"], cat["offsets"], cat["offsets"][1:], strict=False)}
    return {
        "format_version": manifest["format_version"],
        "domains": sizes,
        "model_config": manifest["model_config"],
        "training": manifest.get("training", {}),
        "metrics": manifest.get("metrics", {}),
        "data_fingerprint": manifest.get("data_fingerprint"),
    }
