"""A copy of the session's tiny bundle whose catalogue has item titles and genres.

Titles take no part in training or decoding (models/titles.py), so writing them into a
copy of the manifest gives the bundle that training on a titled log would have given,
without training again. One title holds markup, for the page to show as text.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

HOSTILE_TITLE = '<img src=x onerror="document.body.dataset.hacked=1"> & <b>co</b>'


def titled_bundle(bundle: Path, dest: Path) -> Path:
    """Copy `bundle` to `dest`, giving every item a title ("Böcher film 3") and a genre;
    the second item's title is HOSTILE_TITLE."""
    shutil.copytree(bundle, dest)
    file = dest / "manifest.json"
    manifest = json.loads(file.read_text(encoding="utf-8"))
    cat = manifest["catalogue"]
    titles, genres = {}, {}
    for k, domain in enumerate(cat["domains"]):
        for item in cat["item_ids"][cat["offsets"][k] : cat["offsets"][k + 1]]:
            titles[item] = f"{domain} film {item}"
            genres[item] = [f"genre {k}"]
    titles[cat["item_ids"][1]] = HOSTILE_TITLE
    cat["titles"], cat["genres"] = titles, genres
    file.write_text(json.dumps(manifest, ensure_ascii=False), encoding="utf-8")
    return dest


def titled_model_dir(bundle: Path, root: Path, name: str = "tiny") -> Path:
    """A TAESAR_MODEL_DIR holding a titled copy of `bundle` under `name`."""
    titled_bundle(bundle, root / "models" / name)
    return root / "models"
