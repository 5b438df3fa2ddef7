"""Bundles: round trip, and every way a bundle on disk can be broken is named clearly."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from models import bundle as bundle_mod
from models.bundle import FORMAT_VERSION, load_bundle, read_manifest, save_bundle
from models.catalogue import Catalogue
from models.errors import BundleError
from models.sasrec import SASRec, SASRecConfig

DOMAINS = ("Böcher", "home & garden/../x", "電影")  # names that must never become file names


@pytest.fixture(scope="module")
def parts() -> dict:
    cat = Catalogue.build({f"{d}-{i}": name for d, name in enumerate(DOMAINS) for i in range(5)}, DOMAINS)
    cfg = SASRecConfig(n_items=cat.n_items, max_len=8, hidden=16, n_layers=1, n_heads=2, inner=16)
    torch.manual_seed(0)
    mixed = SASRec(cfg)
    experts = {d: SASRec(cfg) for d in DOMAINS}  # distinct random weights per model
    return {
        "catalogue": cat,
        "model_config": cfg,
        "mixed": mixed,
        "experts": experts,
        "data_fingerprint": "abc123",
        "metrics": {"mixed": {"NDCG@10": 0.5, "n": 3}},
        "training": {"seed": 1, "epochs_run": 2},
    }


@pytest.fixture
def saved(tmp_path: Path, parts: dict) -> Path:
    return save_bundle(tmp_path / "bundle", **parts)


def _edit_manifest(path: Path, edit: Callable[[dict], object]) -> None:
    file = path / "manifest.json"
    manifest = json.loads(file.read_text())
    edit(manifest)
    file.write_text(json.dumps(manifest))


@torch.inference_mode()
def test_round_trip_gives_identical_outputs(saved: Path, parts: dict) -> None:
    b = load_bundle(saved)
    assert b.catalogue == parts["catalogue"] and b.config == parts["model_config"]
    tokens = torch.tensor([[1, 4, 9, 2, 0, 0]])
    for original, loaded in [(parts["mixed"], b.mixed), *((parts["experts"][d], b.experts[d]) for d in DOMAINS)]:
        assert not loaded.training
        torch.testing.assert_close(loaded(tokens), original.eval()(tokens), rtol=0, atol=0)


def test_files_are_named_by_domain_index_and_listed_with_checksums(saved: Path) -> None:
    names = sorted(p.name for p in saved.iterdir())
    assert names == [
        "expert_00.safetensors",
        "expert_01.safetensors",
        "expert_02.safetensors",
        "manifest.json",
        "mixed.safetensors",
    ]
    manifest = read_manifest(saved)
    assert manifest["format"] == "taesar-bundle" and manifest["format_version"] == FORMAT_VERSION
    assert manifest["files"]["experts"][DOMAINS[2]]["file"] == "expert_02.safetensors"
    entry = manifest["files"]["mixed"]
    assert len(entry["sha256"]) == 64 and entry["bytes"] == (saved / "mixed.safetensors").stat().st_size
    assert manifest["training"] == {"seed": 1, "epochs_run": 2} and manifest["data_fingerprint"] == "abc123"


def test_read_manifest_needs_no_weights(saved: Path) -> None:
    (saved / "mixed.safetensors").unlink()
    assert read_manifest(saved)["catalogue"]["domains"] == list(DOMAINS)


def test_a_flipped_byte_in_a_weight_file_is_detected_and_named(saved: Path) -> None:
    file = saved / "expert_01.safetensors"
    data = bytearray(file.read_bytes())
    data[-5] ^= 0x01
    file.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"checksum mismatch for expert_01\.safetensors"):
        load_bundle(saved)


def test_a_missing_weight_file_is_named(saved: Path) -> None:
    (saved / "expert_02.safetensors").unlink()
    with pytest.raises(BundleError, match=r"expert_02\.safetensors is missing"):
        load_bundle(saved)


def test_a_newer_format_version_is_refused(saved: Path) -> None:
    _edit_manifest(saved, lambda m: m.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(BundleError, match="newer"):
        read_manifest(saved)


def test_a_tampered_shape_in_the_manifest_is_detected(saved: Path) -> None:
    _edit_manifest(saved, lambda m: m["model_config"].update(hidden=32, inner=32))
    with pytest.raises(BundleError, match=r"mixed\.safetensors does not match .*shape"):
        load_bundle(saved)


def test_a_tampered_catalogue_size_is_detected(saved: Path) -> None:
    def drop_item(m: dict) -> None:
        m["catalogue"]["item_ids"].pop()
        m["catalogue"]["offsets"][-1] -= 1

    _edit_manifest(saved, drop_item)
    with pytest.raises(BundleError, match="n_items"):
        load_bundle(saved)


def test_a_file_entry_cannot_point_outside_the_bundle(saved: Path) -> None:
    _edit_manifest(saved, lambda m: m["files"]["mixed"].update(file="../mixed.safetensors"))
    with pytest.raises(BundleError, match="malformed file entry"):
        load_bundle(saved)


def test_missing_folder_and_non_bundle_folder_are_explained(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nope")
    (tmp_path / "other").mkdir()
    with pytest.raises(BundleError, match="not a bundle"):
        load_bundle(tmp_path / "other")
    (tmp_path / "other" / "manifest.json").write_text('{"format": "something-else"}')
    with pytest.raises(BundleError, match="not a taesar bundle"):
        read_manifest(tmp_path / "other")


def test_saving_replaces_an_old_bundle_but_never_a_foreign_folder(tmp_path: Path, parts: dict) -> None:
    path = save_bundle(tmp_path / "b", **parts)
    save_bundle(path, **{**parts, "data_fingerprint": "new"})
    assert read_manifest(path)["data_fingerprint"] == "new"
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(BundleError, match="not a bundle"):
        save_bundle(foreign, **parts)
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "mine"]  # no temp folders left


def test_a_crash_while_writing_leaves_no_bundle(tmp_path: Path, parts: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    real = bundle_mod._write_weights
    calls = iter(range(100))

    def failing(folder: Path, name: str, model: SASRec) -> dict:
        if next(calls) == 2:
            raise OSError("disk full")
        return real(folder, name, model)

    monkeypatch.setattr(bundle_mod, "_write_weights", failing)
    with pytest.raises(OSError, match="disk full"):
        save_bundle(tmp_path / "b", **parts)
    assert list(tmp_path.iterdir()) == []


def test_experts_must_cover_exactly_the_catalogue_domains(tmp_path: Path, parts: dict) -> None:
    experts = dict(parts["experts"])
    experts.pop(DOMAINS[0])
    with pytest.raises(BundleError, match="exactly the catalogue's domains"):
        save_bundle(tmp_path / "b", **{**parts, "experts": experts})


def test_an_invalid_model_config_in_the_manifest_is_a_bundle_error(saved: Path) -> None:
    _edit_manifest(saved, lambda m: m["model_config"].update(hidden="16"))
    with pytest.raises(BundleError, match="invalid model_config"):
        load_bundle(saved)


def test_non_finite_metrics_are_stored_as_null(tmp_path: Path, parts: dict) -> None:
    path = save_bundle(tmp_path / "b", **{**parts, "training": {"history": [{"loss": float("nan")}]}})
    assert read_manifest(path)["training"] == {"history": [{"loss": None}]}
