from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from models import importers
from models.errors import DataError
from models.importers import (
    ML100K_DOMAINS,
    ML100K_GENRE_DOMAINS,
    ML100K_GENRES,
    columns,
    fetch_recbole_wheel,
    files,
    read_interactions,
    read_ml100k_grouplens,
    read_ml100k_recbole,
)

LOG = pd.DataFrame(
    {
        "user_id": ["007", "007", "b", "b"],
        "item_id": ["1", "2", "1", "3"],
        "domain": ["Books", "Music", "Books", "Music"],
        "timestamp": [5, 3, 3, 3],
    }
)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# -- generic logs: happy paths ------------------------------------------------------


def test_csv_keeps_string_ids_row_order_and_integer_times(tmp_path: Path) -> None:
    LOG.to_csv(tmp_path / "log.csv", index=False)
    df = read_interactions(tmp_path / "log.csv")
    assert list(df.columns) == ["user_id", "item_id", "domain", "timestamp"]
    assert df["user_id"].tolist() == ["007", "007", "b", "b"]
    assert df["timestamp"].dtype == "int64"
    pd.testing.assert_frame_equal(df.astype(object), LOG.astype(object))


def test_tsv_txt_sniffing_and_parquet_all_read_the_same_frame(tmp_path: Path) -> None:
    LOG.to_csv(tmp_path / "log.tsv", sep="\t", index=False)
    LOG.to_csv(tmp_path / "log.txt", sep=";", index=False)
    LOG.to_csv(tmp_path / "log.data", sep="|", index=False)
    LOG.to_parquet(tmp_path / "log.parquet")
    LOG.to_parquet(tmp_path / "noext")
    frames = [read_interactions(tmp_path / n) for n in ("log.tsv", "log.txt", "log.data", "log.parquet", "noext")]
    for df in frames[1:]:
        pd.testing.assert_frame_equal(df, frames[0])


def test_compressed_csv_is_read(tmp_path: Path) -> None:
    LOG.to_csv(tmp_path / "log.csv.gz", index=False)
    assert len(read_interactions(tmp_path / "log.csv.gz")) == 4


def test_column_flags_rename_the_input_columns(tmp_path: Path) -> None:
    renamed = LOG.rename(columns={"user_id": "u", "item_id": "i", "domain": "cat", "timestamp": "t"})
    renamed.assign(extra=1).to_csv(tmp_path / "log.csv", index=False)
    df = read_interactions(tmp_path / "log.csv", user_col="u", item_col="i", domain_col="cat", time_col="t")
    assert df["domain"].tolist() == LOG["domain"].tolist()


def test_iso_dates_become_epoch_seconds_and_offsets_are_respected(tmp_path: Path) -> None:
    times = ["1970-01-01T00:00:10", "1970-01-01T01:00:00+01:00", "1970-01-02", "1970-01-01 00:00:01.5Z"]
    LOG.assign(timestamp=times).to_csv(tmp_path / "log.csv", index=False)
    assert read_interactions(tmp_path / "log.csv")["timestamp"].tolist() == [10.0, 0.0, 86400.0, 1.5]


def test_parquet_datetime_column_becomes_epoch_seconds(tmp_path: Path) -> None:
    LOG.assign(timestamp=pd.to_datetime([10, 20, 30, 40], unit="s")).to_parquet(tmp_path / "log.parquet")
    assert read_interactions(tmp_path / "log.parquet")["timestamp"].tolist() == [10.0, 20.0, 30.0, 40.0]


def test_surrounding_spaces_in_ids_and_domains_are_ignored(tmp_path: Path) -> None:
    write(tmp_path / "log.csv", "user_id,item_id,domain,timestamp\n u1 , i1 , Books ,1\nu1,i2,Music,2\n")
    df = read_interactions(tmp_path / "log.csv")
    assert df.iloc[0][["user_id", "item_id", "domain"]].tolist() == ["u1", "i1", "Books"]


# -- generic logs: every user error has a clear message ------------------------------


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.csv: no such file"):
        read_interactions(tmp_path / "nope.csv")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is a directory"):
        read_interactions(tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"log\.csv: the file is empty"):
        read_interactions(write(tmp_path / "log.csv", ""))


def test_header_without_rows(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="header but no rows"):
        read_interactions(write(tmp_path / "log.csv", "user_id,item_id,domain,timestamp\n"))


def test_binary_file_with_unknown_extension_is_unreadable(tmp_path: Path) -> None:
    (tmp_path / "log.bin").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(DataError, match=r"log\.bin: unknown format"):
        read_interactions(tmp_path / "log.bin")


def test_text_without_a_separator_is_reported(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot tell the column separator"):
        read_interactions(write(tmp_path / "log.txt", "just some words\nand more words\n"))


def test_corrupt_parquet_is_reported(tmp_path: Path) -> None:
    (tmp_path / "log.parquet").write_bytes(b"PAR1 this is not really parquet")
    with pytest.raises(DataError, match=r"log\.parquet: cannot read as Parquet"):
        read_interactions(tmp_path / "log.parquet")


def test_missing_columns_lists_missing_present_and_flags(tmp_path: Path) -> None:
    LOG.rename(columns={"item_id": "movie", "domain": "genre"}).to_csv(tmp_path / "log.csv", index=False)
    with pytest.raises(DataError) as info:
        read_interactions(tmp_path / "log.csv")
    msg = str(info.value)
    assert "log.csv" in msg and "'item_id', 'domain'" in msg and "'movie'" in msg and "'genre'" in msg
    assert "--item-col" in msg and "--domain-col" in msg and "--user-col" not in msg
    assert "_col arg" not in msg and msg.endswith("name the right columns with --item-col / --domain-col")
    assert "\n" not in msg


def test_missing_parquet_columns_are_reported_the_same_way(tmp_path: Path) -> None:
    LOG.drop(columns="timestamp").to_parquet(tmp_path / "log.parquet")
    with pytest.raises(DataError, match=r"missing column\(s\) 'timestamp'.*--time-col"):
        read_interactions(tmp_path / "log.parquet")


def test_empty_values_report_count_and_column(tmp_path: Path) -> None:
    write(tmp_path / "log.csv", "user_id,item_id,domain,timestamp\nu,1,A,1\nu,,A,2\nu,  ,B,3\nv,2,B,4\n")
    with pytest.raises(DataError, match=r"log\.csv: 2 row\(s\) have an empty item_id \(first at data row 2\)"):
        read_interactions(tmp_path / "log.csv")


def test_empty_timestamps_are_reported(tmp_path: Path) -> None:
    write(tmp_path / "log.csv", "user_id,item_id,domain,timestamp\nu,1,A,\nu,2,B,5\n")
    with pytest.raises(DataError, match=r"1 row\(s\) have an empty timestamp"):
        read_interactions(tmp_path / "log.csv")


def test_unparseable_timestamp_shows_an_example(tmp_path: Path) -> None:
    LOG.assign(timestamp=["1", "2", "yesterday", "4"]).to_csv(tmp_path / "log.csv", index=False)
    with pytest.raises(DataError, match=r"1 timestamp\(s\) cannot be read .* e\.g\. 'yesterday'"):
        read_interactions(tmp_path / "log.csv")


def test_mixed_numbers_and_dates_are_rejected(tmp_path: Path) -> None:
    LOG.assign(timestamp=["1", "2", "2020-01-01", "4"]).to_csv(tmp_path / "log.csv", index=False)
    with pytest.raises(DataError, match="mixes numbers and dates"):
        read_interactions(tmp_path / "log.csv")


def test_a_single_domain_is_rejected(tmp_path: Path) -> None:
    LOG.assign(domain="Books").to_csv(tmp_path / "log.csv", index=False)
    with pytest.raises(DataError, match=r"found 1 domain\(s\).*needs 2 to 16"):
        read_interactions(tmp_path / "log.csv")


def test_seventeen_domains_are_rejected(tmp_path: Path) -> None:
    pd.DataFrame({"user_id": "u", "item_id": range(17), "domain": [f"d{i}" for i in range(17)], "timestamp": 1}).to_csv(
        tmp_path / "log.csv", index=False
    )
    with pytest.raises(DataError, match=r"found 17 domain\(s\)"):
        read_interactions(tmp_path / "log.csv")


def test_two_options_naming_one_column_are_rejected(tmp_path: Path) -> None:
    LOG.to_csv(tmp_path / "log.csv", index=False)
    with pytest.raises(DataError, match="same column"):
        read_interactions(tmp_path / "log.csv", item_col="user_id")


# -- RecBole wheel download -----------------------------------------------------------


def test_cached_wheel_is_used_without_running_pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheel = tmp_path / "recbole-1.2.1-py3-none-any.whl"
    wheel.write_bytes(b"x")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip ran"))
    assert fetch_recbole_wheel(tmp_path) == wheel


def test_pip_failure_reports_its_last_stderr_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess:
        assert cmd[1:5] == ["-m", "pip", "download", "recbole==1.2.1"] and "--no-deps" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "Looking in indexes\nERROR: No matching distribution\n\n")

    monkeypatch.setattr(subprocess, "run", fake_run)
    with pytest.raises(
        DataError, match=r"pip could not download recbole==1\.2\.1 .*: ERROR: No matching distribution$"
    ):
        fetch_recbole_wheel(tmp_path / "cache")


def test_downloaded_wheel_is_returned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess:
        (Path(cmd[-1]) / "recbole-1.2.1-py3-none-any.whl").write_bytes(b"x")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    assert fetch_recbole_wheel(tmp_path / "c").name == "recbole-1.2.1-py3-none-any.whl"


# -- MovieLens-100K in both formats ---------------------------------------------------

# (item, title, genres): multi-genre items, one without genres, one "unknown"
ITEMS = [
    ("1", 'Toy "Story" (1995)', ["Animation", "Children's", "Comedy"]),
    ("2", "GoldenEye (1995)", ["Action", "Adventure", "Thriller"]),
    ("3", "Four Rooms (1995)", ["Thriller"]),
    ("4", "Get Shorty (1995)", ["Action", "Comedy", "Drama"]),
    ("5", "Café (1996)", []),
    ("6", "unknown", ["unknown"]),
    ("7", "Romantic Comedy (1997)", ["Comedy", "Romance"]),
]
RATINGS = [("196", "1", "3", "881250949"), ("186", "2", "3", "881250949"), ("196", "3", "1", "878887116")]
RATINGS += [("22", item, "4", str(880000000 + int(item))) for item, _, _ in ITEMS]


def write_recbole_wheel(path: Path) -> Path:
    inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    inter += "".join("\t".join(r) + "\n" for r in RATINGS)
    item = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    item += "".join(f"{i}\t{t}\t1995\t{' '.join(g)}\n" for i, t, g in ITEMS)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("recbole/dataset_example/ml-100k/ml-100k.inter", inter)
        zf.writestr("recbole/dataset_example/ml-100k/ml-100k.item", item)
    return path


def write_grouplens(folder: Path) -> Path:
    folder.mkdir()
    (folder / "u.data").write_text("".join("\t".join(r) + "\n" for r in RATINGS))
    rows = [
        "|".join([i, t, "01-Jan-1995", "", "http://x"] + ["1" if g in gs else "0" for g in ML100K_GENRES])
        for i, t, gs in ITEMS
    ]
    (folder / "u.item").write_bytes(("\n".join(rows) + "\n").encode("latin-1"))
    return folder


def test_recbole_and_grouplens_files_give_the_same_frame(tmp_path: Path) -> None:
    a = read_ml100k_recbole(write_recbole_wheel(tmp_path / "r.whl"), min_domain_items=0)
    b = read_ml100k_grouplens(write_grouplens(tmp_path / "ml-100k"), min_domain_items=0)
    pd.testing.assert_frame_equal(a, b)
    assert a["user_id"].tolist() == [r[0] for r in RATINGS]  # file order kept


def test_genre_priority_puts_each_item_in_one_domain(tmp_path: Path) -> None:
    df = read_ml100k_recbole(write_recbole_wheel(tmp_path / "r.whl"), min_domain_items=0)
    domain = df.drop_duplicates("item_id").set_index("item_id")["domain"].to_dict()
    assert domain == {
        "1": "comedy",
        "2": "thriller",  # Thriller outranks Action/Adventure
        "3": "thriller",
        "4": "action",  # Action outranks Comedy and Drama
        "5": "drama",  # no genre
        "6": "drama",  # "unknown"
        "7": "comedy",
    }


def test_genre_mapping_covers_every_genre_once() -> None:
    genres = [g for gs in ML100K_GENRE_DOMAINS.values() for g in gs]
    assert sorted(genres) == sorted(ML100K_GENRES) and len(set(genres)) == len(genres)
    assert len(ML100K_DOMAINS) == 4


def test_too_few_items_in_a_domain_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="fewer than 150 items"):
        read_ml100k_recbole(write_recbole_wheel(tmp_path / "r.whl"))


def test_wheel_without_ml100k_files_is_reported(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "w.whl", "w") as zf:
        zf.writestr("other.txt", "x")
    with pytest.raises(DataError, match=r"has no recbole/dataset_example/ml-100k/ml-100k\.inter"):
        read_ml100k_recbole(tmp_path / "w.whl")


def test_non_zip_wheel_is_reported(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a wheel"):
        read_ml100k_recbole(write(tmp_path / "w.whl", "hello"))


def test_grouplens_folder_without_files_is_reported(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"u\.data: no such file"):
        read_ml100k_grouplens(tmp_path)


def test_ratings_of_unknown_items_are_reported(tmp_path: Path) -> None:
    folder = write_grouplens(tmp_path / "ml")
    with (folder / "u.data").open("a") as fh:
        fh.write("1\t999\t5\t1\n")
    with pytest.raises(DataError, match=r"1 rating.* missing from the item file, e\.g\. 999"):
        read_ml100k_grouplens(folder, min_domain_items=0)


def test_real_ml100k_wheel_has_expected_counts_and_four_big_domains(real_wheel: Path) -> None:
    df = read_ml100k_recbole(real_wheel)
    assert (len(df), df["user_id"].nunique(), df["item_id"].nunique()) == (100000, 943, 1682)
    items = df.drop_duplicates("item_id")["domain"].value_counts()
    assert set(items.index) == set(ML100K_DOMAINS) and items.min() >= 150
    assert (df.groupby("item_id")["domain"].nunique() == 1).all()


# -- large logs: columnar frames, read block by block, within a memory bound -----------

# ids a careless reader mangles: leading zeros, a number and its text twins, unicode, spaces,
# a separator inside a value; " pad " and "pad" are one item once stripped
ODD = pd.DataFrame(
    {
        "user_id": ["007", "7", "007", "日本", "7", "u 1", "10", "2", "日本", "10"],
        "item_id": ["007", "7", "1.0", " pad ", "a,b", "007", "pad", "é", "7", "1.0"],
        "domain": ["Bü", "Bü", "Bü", "♪ x", "♪ x", "Bü", "♪ x", "♪ x", "Bü", "Bü"],
        "timestamp": [5, 3, 3, 9, 1, 2, 2, 2, 4, 4],
    }
)


def stripped(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(**{c: df[c].str.strip() for c in ("user_id", "item_id", "domain")})


def write_log(df: pd.DataFrame, path: Path) -> Path:
    if path.suffix in (".parquet", ".pq"):
        df.to_parquet(path)
    else:
        df.to_csv(path, sep="\t" if path.suffix == ".tsv" else ",", index=False)
    return path


@pytest.mark.parametrize("name", ["log.csv", "log.tsv", "log.parquet", "log.csv.gz"])
def test_ids_come_back_as_categoricals_of_strings_with_no_object_column(tmp_path: Path, name: str) -> None:
    df = read_interactions(write_log(ODD, tmp_path / name))
    expected = stripped(ODD)
    assert not any(pd.api.types.is_object_dtype(dtype) for dtype in df.dtypes)
    for col in ("user_id", "item_id", "domain"):
        assert isinstance(df[col].dtype, pd.CategoricalDtype)
        assert df[col].array.codes.dtype.kind == "i"
        # each distinct id once, as text, in order of first appearance (as pd.factorize numbers them)
        assert list(df[col].cat.categories) == list(pd.unique(expected[col]))
        assert all(isinstance(c, str) for c in df[col].cat.categories)
    assert df["timestamp"].dtype == "int64"
    pd.testing.assert_frame_equal(df.astype(object), expected.astype(object))


def test_movielens_frames_are_columnar_too(tmp_path: Path) -> None:
    df = read_ml100k_recbole(write_recbole_wheel(tmp_path / "r.whl"), min_domain_items=0)
    assert all(isinstance(df[c].dtype, pd.CategoricalDtype) for c in ("user_id", "item_id", "domain"))
    assert df["timestamp"].dtype == "int64"


@pytest.fixture
def tiny_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """About one line per text block, a few rows per Parquet batch, dictionaries merged often,
    and a row estimate far too low, so columns grow in many segments."""
    monkeypatch.setattr(files, "_TEXT_BLOCK_BYTES", 8)
    monkeypatch.setattr(files, "_BATCH_ROWS", 3)
    monkeypatch.setattr(columns, "_MIN_SEGMENT_ROWS", 3)
    monkeypatch.setattr(columns, "_MERGE_VALUES", 4)
    monkeypatch.setattr(columns, "_MERGE_ROWS", 5)
    monkeypatch.setattr(files, "_estimate_text_rows", lambda path: 1)


@pytest.mark.parametrize("name", ["log.csv", "log.parquet"])
def test_reading_in_many_blocks_gives_the_same_frame(tmp_path: Path, name: str, request: pytest.FixtureRequest) -> None:
    from tests.synthetic import make_log

    log = pd.concat([make_log(["A", "B", "C"], n_users=30, seed=2), ODD.assign(domain="D")], ignore_index=True)
    path = write_log(log, tmp_path / name)
    whole = read_interactions(path)
    request.getfixturevalue("tiny_blocks")
    pd.testing.assert_frame_equal(read_interactions(path), whole)


# what one whole-file read gives (the timestamps of LOG's four rows); blocks must not change it
WHOLE_COLUMN_TIMES = [
    (["1", "2", "3", "4.5"], [1.0, 2.0, 3.0, 4.5]),  # a float anywhere makes every value float
    ([" 1", "2", "3", "4"], [1, 2, 3, 4]),  # padded integers are integers
    (["+5", "6", "7", "8"], [5.0, 6.0, 7.0, 8.0]),  # Arrow reads "+5" as a float only
    (["2020", "2021", "2020-06-01", "2021-01-01T10:00:00"], [1577836800.0, 1609459200.0, 1590969600.0, 1609495200.0]),
    (["2020-01-01T00:00:00.5", "2020-01-01 00:00:01", "2020-01-02", "2020-01-01T00:00:00+01:00"],
     [1577836800.5, 1577836801.0, 1577923200.0, 1577833200.0]),
]  # fmt: skip
WHOLE_COLUMN_ERRORS = [
    (["1", "2", "3", "2020-01-01"], r"1 timestamp\(s\) mixes numbers and dates, e\.g\. '2020-01-01'"),
    (["1", "2", "x", "y"], r"2 timestamp\(s\) cannot be read as a number or an ISO-8601 date, e\.g\. 'x'"),
    (["1", "2", "3", ""], r"1 row\(s\) have an empty timestamp \(first at data row 4\)"),
    (["1", "2", "3", "  "], r"1 row\(s\) have an empty timestamp \(first at data row 4\)"),
    (["1.5", "2", "nan", "4"], r"1 row\(s\) have an empty timestamp \(first at data row 3\)"),
    (["true", "false", "True", "0"], "timestamp column holds booleans"),
]


@pytest.mark.parametrize("blocks", ["whole", "tiny"])
@pytest.mark.parametrize(("times", "expected"), WHOLE_COLUMN_TIMES)
def test_time_values_follow_the_whole_column(
    tmp_path: Path, request: pytest.FixtureRequest, blocks: str, times: list[str], expected: list
) -> None:
    if blocks == "tiny":
        request.getfixturevalue("tiny_blocks")
    ts = read_interactions(write_log(LOG.assign(timestamp=times), tmp_path / "log.csv"))["timestamp"]
    assert ts.tolist() == expected and ts.dtype == ("int64" if isinstance(expected[0], int) else "float64")


@pytest.mark.parametrize("blocks", ["whole", "tiny"])
@pytest.mark.parametrize(("times", "message"), WHOLE_COLUMN_ERRORS)
def test_time_errors_follow_the_whole_column(
    tmp_path: Path, request: pytest.FixtureRequest, blocks: str, times: list[str], message: str
) -> None:
    if blocks == "tiny":
        request.getfixturevalue("tiny_blocks")
    with pytest.raises(DataError, match=message):
        read_interactions(write_log(LOG.assign(timestamp=times), tmp_path / "log.csv"))


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_any_line_ending_reads_the_same_in_many_blocks(tmp_path: Path, newline: str, tiny_blocks: None) -> None:
    text = newline.join(["user_id,item_id,domain,timestamp", "007,1,Books,5", "007,2,Music,3", "b,1,Books,3"]) + newline
    (tmp_path / "log.csv").write_bytes(text.encode())
    df = read_interactions(tmp_path / "log.csv")
    assert df["user_id"].tolist() == ["007", "007", "b"] and df["timestamp"].tolist() == [5, 3, 3]


def test_empty_ids_in_a_later_block_report_the_global_row(tmp_path: Path, tiny_blocks: None) -> None:
    rows = "".join(f"u{k},{k},{'AB'[k % 2]},{k}\n" for k in range(20)) + "u9,,A,99\n"
    with pytest.raises(DataError, match=r"1 row\(s\) have an empty item_id \(first at data row 21\)"):
        read_interactions(write(tmp_path / "log.csv", "user_id,item_id,domain,timestamp\n" + rows))


@pytest.mark.parametrize("name", ["log.csv", "log.csv.gz"])
def test_the_row_count_of_a_text_log_is_estimated_from_a_sample(tmp_path: Path, name: str) -> None:
    n = 90_000  # over the 1 MiB sample
    big = pd.DataFrame(
        {"user_id": [f"u{k % 997}" for k in range(n)], "item_id": range(n), "domain": "A", "timestamp": 1}
    )
    path = write_log(big, tmp_path / name)
    assert abs(files._estimate_text_rows(path) - n) < 0.1 * n
    assert files._estimate_text_rows(write_log(LOG, tmp_path / "small.csv")) == len(LOG)


@pytest.mark.parametrize("name", ["log.csv", "log.parquet"])
def test_a_log_too_large_for_the_memory_is_refused_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    path = write_log(LOG, tmp_path / name)
    need = importers.IMPORT_WORK_BYTES + importers.IMPORT_BYTES_PER_ROW * len(LOG)
    monkeypatch.setattr(files, "_available_memory", lambda: need - 1)
    monkeypatch.setattr(files, "_frame", lambda *a, **k: pytest.fail("the log was read"))
    with pytest.raises(DataError) as info:
        read_interactions(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: about 4 interactions need about 160 MiB of memory to import")
    assert "(50 bytes each + 160 MiB) but 160 MiB is available" in msg
    assert msg.endswith("split the log by user into parts that fit, or use a machine with more memory")
    assert info.value.details == {"rows": 4, "need_bytes": need, "available_bytes": need - 1}


def test_a_log_that_fits_is_not_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    need = importers.IMPORT_WORK_BYTES + importers.IMPORT_BYTES_PER_ROW * len(LOG)
    monkeypatch.setattr(files, "_available_memory", lambda: need)
    assert len(read_interactions(write_log(LOG, tmp_path / "log.csv"))) == 4


def test_the_cli_refuses_a_too_large_log_with_one_error_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from cli import app

    monkeypatch.setattr(files, "_available_memory", lambda: 2**20)
    log = write_log(LOG, tmp_path / "log.csv")
    result = CliRunner().invoke(app, ["data", "import", "--interactions", str(log), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.output.startswith("error:") and "split the log by user" in result.output
    assert result.output.count("\n") == 1 and not (tmp_path / "out").exists()
