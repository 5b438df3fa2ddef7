"""Dataset folders: a catalogue, the sequences as Parquet (written and read one row group
at a time) and a checksummed manifest written last."""

from __future__ import annotations

import hashlib
import json
from itertools import pairwise
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from models.catalogue import Catalogue
from models.data.prepare import Dataset, fingerprint
from models.errors import CatalogueError, DataError

FORMAT = "taesar-dataset"
VERSION = 1
_FILES = {"catalogue": "catalogue.json", "sequences": "sequences.parquet"}
_USERS_PER_PASS = 1 << 16  # users whose items _counts copies at a time
_ROW_GROUP_USERS = 1 << 16  # users per row group of sequences.parquet: what one write copies
_SEQUENCE_SCHEMA = pa.schema({"user_id": pa.string(), "items": pa.large_list(pa.int64())})


def save_dataset(ds: Dataset, out_dir: str | Path) -> Path:
    """Write the dataset folder; the manifest goes last, so a half-written folder is not a dataset."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)
    (out / _FILES["catalogue"]).write_text(json.dumps(ds.catalogue.to_dict(), ensure_ascii=False), encoding="utf-8")
    _write_sequences(ds, out / _FILES["sequences"])
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "source": ds.source,
        "options": ds.options,
        **_counts(ds),
        "stats": ds.stats,
        "fingerprint": ds.fingerprint,
        "files": {name: _sha256(out / name) for name in _FILES.values()},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
    return out


def _write_sequences(ds: Dataset, path: Path) -> None:
    # one row group at a time, so only one group's items are copied into Arrow
    tables = (
        _sequence_table(ds.user_ids[a : a + _ROW_GROUP_USERS], ds.sequences[a : a + _ROW_GROUP_USERS])
        for a in range(0, max(len(ds.sequences), 1), _ROW_GROUP_USERS)
    )
    with pq.ParquetWriter(path, _SEQUENCE_SCHEMA) as writer:
        for table in tables:
            writer.write_table(table)


def _sequence_table(user_ids: list[str], sequences: list[np.ndarray]) -> pa.Table:
    offsets = np.r_[0, np.cumsum([len(s) for s in sequences])].astype(np.int64)
    values = np.concatenate(sequences).astype(np.int64) if sequences else np.zeros(0, np.int64)
    items = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values))
    return pa.table({"user_id": pa.array(user_ids, pa.string()), "items": items})


def _counts(ds: Dataset) -> dict:
    cat = ds.catalogue
    per_dom = np.zeros(cat.n_domains, dtype=np.int64)
    n = 0
    for start in range(0, len(ds.sequences), _USERS_PER_PASS):  # bounded copies, not one of every item
        flat = np.concatenate(ds.sequences[start : start + _USERS_PER_PASS])
        per_dom += np.bincount(cat.item_domain[flat], minlength=cat.n_domains)
        n += len(flat)
    return {
        "n_users": len(ds.user_ids),
        "n_items": cat.n_items,
        "n_interactions": n,
        "domains": {
            d: {"items": cat.domain_size(k), "interactions": int(per_dom[k])} for k, d in enumerate(cat.domains)
        },
    }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_dataset(path: str | Path) -> Dataset:
    folder = Path(path)
    manifest = _read_manifest(folder)
    for name, digest in manifest["files"].items():
        if not (folder / name).is_file():
            raise DataError(f"{folder}: dataset file {name} is missing")
        if _sha256(folder / name) != digest:
            raise DataError(f"{folder}: checksum mismatch in {name}; the file changed since it was saved")
    try:
        catalogue = Catalogue.from_dict(json.loads((folder / _FILES["catalogue"]).read_text(encoding="utf-8")))
    except CatalogueError as exc:
        raise DataError(f"{folder}: bad catalogue: {exc.message}") from exc
    user_ids, sequences = _read_sequences(folder / _FILES["sequences"])
    ds = Dataset(catalogue, user_ids, sequences, manifest["options"], manifest["fingerprint"], manifest["source"])
    ds.stats = manifest.get("stats", {})
    if fingerprint(catalogue, user_ids, sequences, ds.options) != ds.fingerprint:
        raise DataError(f"{folder}: the data does not match the manifest's fingerprint")
    return ds


def _read_manifest(folder: Path) -> dict:
    if not folder.is_dir():
        raise DataError(f"{folder}: no such dataset folder")
    file = folder / "manifest.json"
    if not file.is_file():
        raise DataError(f"{folder}: no manifest.json; not a prepared dataset (or an interrupted save)")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{file}: not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{folder}: manifest.json is not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise DataError(f"{folder}: dataset format version {manifest.get('version')}; this code reads {VERSION}")
    missing = [k for k in ("files", "options", "fingerprint", "source") if k not in manifest]
    if missing or set(manifest["files"]) != set(_FILES.values()):
        raise DataError(f"{folder}: manifest.json is incomplete (missing {missing or 'file entries'})")
    return manifest


def _read_sequences(path: Path) -> tuple[list[str], list[np.ndarray]]:
    """Every user's items as views of one int64 array, filled one row group at a time."""
    user_ids: list[str] = []
    bounds: list[np.ndarray] = []  # per row group: offsets of its users into `values`
    with pq.ParquetFile(path) as pf:
        meta = pf.metadata
        groups = range(meta.num_row_groups)
        leaf = next(c for c in range(meta.num_columns) if meta.schema.column(c).path.startswith("items."))
        # the leaf count bounds the items (an empty list counts one); unwritten pages cost nothing
        values = np.empty(sum(meta.row_group(g).column(leaf).num_values for g in groups), np.int64)
        pos = 0
        for g in groups:
            table = pf.read_row_group(g, columns=["user_id", "items"])
            items = table.column("items").combine_chunks()
            offsets = items.offsets.to_numpy()
            part = items.values.to_numpy()[offsets[0] : offsets[-1]]
            values[pos : pos + len(part)] = part
            bounds.append(offsets - offsets[0] + pos)
            pos += len(part)
            user_ids += table.column("user_id").to_pylist()
    pa.default_memory_pool().release_unused()
    sequences = [values[a:b] for offsets in bounds for a, b in pairwise(offsets.tolist())]
    return user_ids, sequences


def summarize(ds: Dataset) -> dict:
    """Users, items, interactions and per-domain counts of a dataset, as `taesar data` prints them."""
    lengths = np.array([len(s) for s in ds.sequences])
    counts = _counts(ds)
    return {
        "source": ds.source,
        "users": counts["n_users"],
        "items": counts["n_items"],
        "interactions": counts["n_interactions"],
        "mean_length": float(lengths.mean()) if len(lengths) else 0.0,
        "domains": counts["domains"],
        "fingerprint": ds.fingerprint,
    }
