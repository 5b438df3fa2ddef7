"""Item titles (and genres) end to end in the models layer: importers -> prepare ->
dataset folder -> bundle -> output lines, never touching a fingerprint or a decision."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.bundle import load_bundle, read_manifest, read_samples
from models.catalogue import Catalogue
from models.data import PrepConfig, load_dataset, prepare, save_dataset
from models.decoding import Decision, Regenerated
from models.errors import CatalogueError, DataError
from models.importers import (
    ML100K_DOMAINS,
    ML100K_GENRES,
    read_interactions,
    read_ml100k_grouplens,
    read_ml100k_recbole,
)
from models.output import to_output_line
from models.pretrain import sample_users
from models.tally import Tally
from models.titles import FRAME_ATTR, ItemInfo, fold

CAT = Catalogue.build({"b1": "books", "b2": "books", "e1": "elec", "e2": "elec"})
INFO = ItemInfo.build({"b1": " Dune ", "b2": "Dune Messiah", "e1": "Kettle, The", "zz": "not in the catalogue"})


# -- ItemInfo and the catalogue ------------------------------------------------------------


def test_item_info_cleans_ids_titles_and_genres() -> None:
    info = ItemInfo.build(
        {" 1 ": "  Toy   Story ", 2: "", "3": None, "4": float("nan")}, {"1": "Comedy", "2": ["A", "A", " ", "B"]}
    )
    assert info.titles == {"1": "Toy Story"}
    assert info.genres == {"1": ("Comedy",), "2": ("A", "B")}
    assert ItemInfo.build({"x": "t" * 10_000}).titles["x"] == "t" * 500


def test_titles_are_found_ignoring_case_accents_and_spacing() -> None:
    info = ItemInfo.build({"1": "Café  Society", "2": "The Café", "3": "Cafeteria", "4": "Other"})
    assert fold("  CAFÉ  society ") == "cafe society"
    assert info.find_title("cafe society") == ["1"]
    assert info.match_titles("café") == (["1", "3"], ["2"])
    assert info.match_titles("   ") == ([], [])


def test_info_takes_no_part_in_equality_or_fingerprint_and_is_restricted_to_the_items() -> None:
    titled = CAT.with_info(INFO)
    assert titled == CAT and titled.fingerprint() == CAT.fingerprint()
    assert titled.info is not None and "zz" not in titled.info.titles
    assert titled.title("b1") == "Dune" and titled.title("e2") is None and CAT.title("b1") is None
    assert CAT.with_info(ItemInfo.build({"zz": "x"})).info is None


def test_catalogue_dict_round_trip_keeps_titles_and_reads_dicts_without_them() -> None:
    titled = CAT.with_info(ItemInfo.build({"b1": "Dune"}, {"b1": ["SF"]}))
    d = titled.to_dict()
    assert d["titles"] == {"b1": "Dune"} and d["genres"] == {"b1": ["SF"]}
    back = Catalogue.from_dict(json.loads(json.dumps(d)))
    assert back.info == titled.info and back == titled
    plain = CAT.to_dict()
    assert set(plain) == {"domains", "item_ids", "offsets"}
    assert Catalogue.from_dict(plain).info is None
    with pytest.raises(CatalogueError, match="titles"):
        Catalogue.from_dict({**plain, "titles": ["not", "a", "mapping"]})


# -- importers -----------------------------------------------------------------------------


def _log(tmp_path: Path) -> pd.DataFrame:
    rows = [
        {"u": f"u{u}", "i": f" i{i} ", "d": "AB"[i % 2], "t": u * 10 + i, "name": None if u == 0 else f"Title {i}, The"}
        for u in range(5)
        for i in range(6)
    ]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("suffix", [".csv", ".tsv.gz", ".parquet"])
def test_import_keeps_the_first_non_blank_title_of_each_item(tmp_path: Path, suffix: str) -> None:
    log, path = _log(tmp_path), tmp_path / f"log{suffix}"
    if suffix == ".parquet":
        log.to_parquet(path)
    else:
        log.to_csv(path, sep="," if suffix == ".csv" else "\t", index=False)
    df = read_interactions(path, user_col="u", item_col="i", domain_col="d", time_col="t", title_col="name")
    assert df.attrs[FRAME_ATTR]["titles"] == {f"i{i}": f"Title {i}, The" for i in range(6)}
    without = read_interactions(path, user_col="u", item_col="i", domain_col="d", time_col="t")
    assert FRAME_ATTR not in without.attrs
    pd.testing.assert_frame_equal(df, without)


def test_a_missing_or_doubled_title_column_is_named(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    _log(tmp_path).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"missing column\(s\) 'title'.*--title-col"):
        read_interactions(path, user_col="u", item_col="i", domain_col="d", time_col="t", title_col="title")
    with pytest.raises(DataError, match="two of the column options name the same column"):
        read_interactions(path, user_col="u", item_col="i", domain_col="d", time_col="t", title_col="i")


ITEMS = [("1", "Toy Story", "1995", "Animation Children's Comedy"), ("2", "Heat", "", "Action Crime Thriller")]


def test_movielens_titles_and_genres_from_either_source(tmp_path: Path) -> None:
    wheel = tmp_path / "r.whl"
    item = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    item += "".join("\t".join(row) + "\n" for row in ITEMS)
    inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t1\t3\t5\n1\t2\t3\t6\n"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("recbole/dataset_example/ml-100k/ml-100k.inter", inter)
        zf.writestr("recbole/dataset_example/ml-100k/ml-100k.item", item)
    info = read_ml100k_recbole(wheel, min_domain_items=0).attrs[FRAME_ATTR]
    assert info["titles"] == {"1": "Toy Story (1995)", "2": "Heat"}
    assert info["genres"] == {"1": ["Animation", "Children's", "Comedy"], "2": ["Action", "Crime", "Thriller"]}

    folder = tmp_path / "gl"
    folder.mkdir()
    (folder / "u.data").write_text("1\t1\t3\t5\n1\t2\t3\t6\n")
    flags = [["1" if g in row[3].split() else "0" for g in ML100K_GENRES] for row in ITEMS]
    lines = [
        "|".join([ITEMS[k][0], t, "", "", "http://x", *flags[k]]) for k, t in enumerate(["Toy Story (1995)", "Héat"])
    ]
    (folder / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    info = read_ml100k_grouplens(folder, min_domain_items=0).attrs[FRAME_ATTR]
    assert info["titles"] == {"1": "Toy Story (1995)", "2": "Héat"}
    assert info["genres"]["2"] == ["Action", "Crime", "Thriller"]


# -- prepare and the dataset folder --------------------------------------------------------


def _frame_with_titles() -> pd.DataFrame:
    from tests.synthetic import make_log

    df = make_log(["A", "B"], n_users=12, seed=3)
    df.attrs[FRAME_ATTR] = {"titles": {i: f"Film {i}" for i in df["item_id"].unique()} | {"gone": "x"}}
    return df


def test_prepare_keeps_titles_of_the_catalogue_items_and_the_same_fingerprint(tmp_path: Path) -> None:
    df = _frame_with_titles()
    titled = prepare(df, PrepConfig(max_len=8), source="t")
    df_plain = df.copy()
    df_plain.attrs = {}
    plain = prepare(df_plain, PrepConfig(max_len=8), source="t")
    assert plain.catalogue.info is None and titled.catalogue.info is not None
    assert set(titled.catalogue.info.titles) == set(titled.catalogue.item_ids)
    assert titled.fingerprint == plain.fingerprint
    back = load_dataset(save_dataset(titled, tmp_path / "ds"))
    assert back.catalogue.info == titled.catalogue.info and back.fingerprint == titled.fingerprint


def test_real_ml100k_keeps_titles_and_its_fingerprint(real_wheel: Path) -> None:
    ds = prepare(read_ml100k_recbole(real_wheel), PrepConfig(), domains=list(ML100K_DOMAINS), source="ml-100k")
    assert ds.fingerprint.startswith("068888a2169d")
    assert ds.catalogue.title("50") == "Star Wars (1977)"
    assert len(ds.catalogue.info.titles) == ds.catalogue.n_items


# -- bundles and output lines --------------------------------------------------------------


def test_bundle_carries_titles_and_samples_and_loads_without_them(tiny_bundle: Path, tmp_path: Path) -> None:
    import shutil

    manifest = read_manifest(tiny_bundle)
    samples = read_samples(manifest)
    assert 2 <= len(samples) <= 100 and all(len(items) >= 2 for _, items in samples)
    copy = tmp_path / "old"
    shutil.copytree(tiny_bundle, copy)
    old = {k: v for k, v in manifest.items() if k != "samples"}
    old["catalogue"] = {k: old["catalogue"][k] for k in ("domains", "item_ids", "offsets")}
    (copy / "manifest.json").write_text(json.dumps(old))
    b = load_bundle(copy)
    assert b.catalogue.info is None and read_samples(b.manifest) == []
    assert read_samples({"samples": {"users": ["a"], "items": "nope"}}) == []


def test_sample_users_are_training_parts_spread_over_the_users(tiny_data: Path) -> None:
    ds = load_dataset(tiny_data)
    picked = sample_users(ds, holdout=1, n=5)
    assert len(picked) == 5 and picked[0][0] == ds.user_ids[0]
    by_user = dict(zip(ds.user_ids, ds.sequences, strict=True))
    for user, items in picked:
        assert items == [ds.catalogue.external(int(i)) for i in np.asarray(by_user[user])[:-2]]
    assert len(sample_users(ds, holdout=1, n=10_000)) == len(ds.user_ids)


def _result() -> Regenerated:
    b1, b2, e1, e2 = (CAT.dense(i) for i in ("b1", "b2", "e1", "e2"))
    books, elec = CAT.domain_index("books"), CAT.domain_index("elec")
    decisions = [
        Decision(0, e1, elec, "discard", None, "no_context"),
        Decision(1, b1, books, "keep", None, None),
        Decision(2, "ghost", None, "discard", None, "unknown_item"),
        Decision(3, e2, elec, "replace", b2, None, {"global": [[b2, 1.5], [e1, 0.5]], "local": [[b2, 2.0]]}),
    ]
    return Regenerated([b1, b2], decisions, Tally(kept=1, replaced=1, discarded=2))


def test_output_lines_carry_titles_only_when_asked_and_known() -> None:
    titled = CAT.with_info(INFO)
    assert "titles" not in to_output_line(_result(), titled, "books", "u1")
    assert "titles" not in to_output_line(_result(), CAT, "books", "u1", titles=True)
    line = to_output_line(_result(), titled, "books", "u1", titles=True)
    # e1 (a decision and a candidate), b1, b2 (replacement, candidate); e2 and ghost have none
    assert line["titles"] == {"e1": "Kettle, The", "b1": "Dune", "b2": "Dune Messiah"}
    assert {k: v for k, v in line.items() if k != "titles"} == to_output_line(_result(), CAT, "books", "u1")


# -- the CLI ---------------------------------------------------------------------------------


def test_cli_imports_titles_and_regenerate_includes_them_when_asked(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli import app
    from tests.synthetic import make_log

    log = make_log(["A", "B"], n_users=16, seed=5)
    log["name"] = "Film " + log["item_id"]
    log.to_csv(tmp_path / "log.csv", index=False)
    runner = CliRunner()

    def invoke(*args: object) -> str:
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        return result.output

    invoke("data", "import", "--interactions", tmp_path / "log.csv", "--out", tmp_path / "data", "--title-col", "name")
    ds = load_dataset(tmp_path / "data")
    assert ds.catalogue.title(ds.catalogue.item_ids[0]) == f"Film {ds.catalogue.item_ids[0]}"
    invoke("pretrain", "--data", tmp_path / "data", "--out", tmp_path / "b", "--epochs", 1, "--adapt-epochs", 1,
           "--hidden", 16, "--inner", 16, "--layers", 1)  # fmt: skip
    assert read_manifest(tmp_path / "b")["catalogue"]["titles"] == ds.catalogue.info.titles
    for flag in ([], ["--include-titles"]):
        out = tmp_path / f"out{len(flag)}.jsonl"
        invoke(
            "regenerate", "--bundle", tmp_path / "b", "--target", "A", "--data", tmp_path / "data", "--out", out, *flag
        )
        lines = [json.loads(x) for x in out.read_text().splitlines()]
        assert all(("titles" in line) == bool(flag) for line in lines)
    titles = lines[0]["titles"]
    assert titles and all(title == f"Film {item}" for item, title in titles.items())
    assert {d["item"] for d in lines[0]["decisions"]} <= set(titles)
