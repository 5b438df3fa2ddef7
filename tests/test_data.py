from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.catalogue import Catalogue
from models.data import (
    Dataset,
    PrepConfig,
    domain_eval_points,
    domain_train_sequences,
    eval_points,
    load_dataset,
    prepare,
    save_dataset,
    summarize,
    train_part,
)
from models.errors import DataError
from models.importers import read_interactions, read_ml100k_recbole

NO_FILTERS = PrepConfig(require_all_domains=False, k_core=1, max_len=1000, holdout=1)


def frame(rows: list[tuple[str, str, str, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "item_id", "domain", "timestamp"])


def user_log(user: str, items: list[tuple[str, str]], t0: int = 0) -> list[tuple[str, str, str, float]]:
    """(item, domain) pairs at increasing times."""
    return [(user, i, d, t0 + k) for k, (i, d) in enumerate(items)]


def external(ds: Dataset, user: str) -> list[str]:
    seq = ds.sequences[ds.user_ids.index(user)]
    return [ds.catalogue.external(int(i)) for i in seq]


# -- configuration --------------------------------------------------------------------


@pytest.mark.parametrize("kw", [{"k_core": 0}, {"max_len": 1}, {"holdout": 0}])
def test_bad_prep_options_are_data_errors(kw: dict) -> None:
    with pytest.raises(DataError):
        PrepConfig(**kw)


# -- filters ----------------------------------------------------------------------------


def test_k_core_is_per_domain_and_iterates_until_stable() -> None:
    # 2-core: a3 has one rating and goes; u3 is then left with one A item, so its a1 row
    # goes too, while its two B rows stay (the k-core is per domain, not per user).
    rows = user_log("u1", [("a1", "A"), ("a2", "A"), ("b1", "B"), ("b2", "B")])
    rows += user_log("u2", [("a1", "A"), ("a2", "A"), ("b1", "B"), ("b2", "B")])
    rows += user_log("u3", [("a1", "A"), ("a3", "A"), ("b1", "B"), ("b2", "B")])
    cfg = PrepConfig(require_all_domains=False, k_core=2, holdout=1)
    ds = prepare(frame(rows), cfg)
    assert ds.stats["filtered"] == {"rows": 10, "users": 3, "items": 4}
    assert "a3" not in ds.catalogue.item_ids
    assert ds.user_ids == ["u1", "u2"]  # u3's [b1, b2] is too short to split


def test_k_core_cascades_through_items_and_users() -> None:
    # x2 has one rater and goes; u2 is left with one A item, so its x1 row goes; x1 is
    # then rated once and goes from u1 too.
    rows = user_log("u1", [("x1", "A"), ("y1", "A"), ("y2", "A"), ("b1", "B"), ("b2", "B")])
    rows += user_log("u2", [("x1", "A"), ("x2", "A"), ("b1", "B"), ("b2", "B")])
    rows += user_log("u4", [("y1", "A"), ("y2", "A"), ("b1", "B"), ("b2", "B")])
    ds = prepare(frame(rows), PrepConfig(require_all_domains=False, k_core=2))
    assert "x1" not in ds.catalogue.item_ids and "x2" not in ds.catalogue.item_ids
    assert external(ds, "u1") == ["y1", "y2", "b1", "b2"]
    assert ds.stats["filtered"]["rows"] == 4 + 2 + 4


def test_k_core_one_disables_the_filter() -> None:
    rows = user_log("u1", [("a1", "A"), ("b1", "B"), ("a2", "A"), ("b2", "B")])
    ds = prepare(frame(rows), NO_FILTERS)
    assert ds.catalogue.n_items == 4


def test_users_missing_a_domain_are_dropped_only_when_required() -> None:
    rows = user_log("both", [("a1", "A"), ("b1", "B"), ("a2", "A"), ("b2", "B")])
    rows += user_log("only_a", [("a1", "A"), ("a2", "A"), ("a3", "A"), ("a4", "A")])
    cfg = PrepConfig(require_all_domains=True, k_core=1)
    assert prepare(frame(rows), cfg).user_ids == ["both"]
    assert prepare(frame(rows), NO_FILTERS).user_ids == ["both", "only_a"]


def test_all_domain_rule_and_k_core_hold_together_at_the_end() -> None:
    # u2's single C item fails 2-core; then u2 is no longer in every domain and leaves,
    # which takes a2 below 2 raters, so u1 loses a2 and keeps the rest.
    rows = user_log("u1", [("a1", "A"), ("a2", "A"), ("a3", "A"), ("b1", "B"), ("b2", "B"), ("c1", "C"), ("c2", "C")])
    rows += user_log("u2", [("a2", "A"), ("a1", "A"), ("b1", "B"), ("b2", "B"), ("c3", "C")])
    rows += user_log("u3", [("a1", "A"), ("a3", "A"), ("b1", "B"), ("b2", "B"), ("c1", "C"), ("c2", "C")])
    ds = prepare(frame(rows), PrepConfig(k_core=2))
    assert ds.user_ids == ["u1", "u3"]
    assert "a2" not in ds.catalogue.item_ids and "c3" not in ds.catalogue.item_ids


def test_max_len_keeps_the_last_items() -> None:
    rows = user_log("u", [(f"i{k}", "AB"[k % 2]) for k in range(10)])
    ds = prepare(frame(rows), PrepConfig(require_all_domains=False, k_core=1, max_len=4))
    assert external(ds, "u") == ["i6", "i7", "i8", "i9"]


def test_sequences_are_chronological_and_ties_keep_input_order() -> None:
    rows = [("u", "late", "A", 9.0), ("u", "tie1", "B", 5.0), ("u", "early", "A", 1.0), ("u", "tie2", "A", 5.0)]
    rows += [("u", "tie3", "B", 5.0)]
    ds = prepare(frame(rows), NO_FILTERS)
    assert external(ds, "u") == ["early", "tie1", "tie2", "tie3", "late"]


def test_short_users_and_their_orphan_items_are_dropped() -> None:
    rows = user_log("long", [("a1", "A"), ("b1", "B"), ("a2", "A"), ("b2", "B")])
    rows += user_log("short", [("a9", "A"), ("b1", "B"), ("a1", "A")])  # 3 < 2*1+2
    ds = prepare(frame(rows), NO_FILTERS)
    assert ds.user_ids == ["long"] and "a9" not in ds.catalogue.item_ids
    rows += user_log("five", [("a1", "A"), ("b1", "B"), ("a2", "A"), ("b2", "B"), ("a3", "A")])
    cfg2 = PrepConfig(require_all_domains=False, k_core=1, holdout=2)  # needs 6
    with pytest.raises(DataError, match="no interactions left"):
        prepare(frame(rows), cfg2)


def test_users_are_in_natural_id_order_and_items_grouped_by_domain() -> None:
    rows = []
    for u in ["10", "2", "x", "1"]:
        rows += user_log(u, [("b1", "B"), ("a1", "A"), ("b2", "B"), ("a2", "A")])
    ds = prepare(frame(rows), NO_FILTERS)
    assert ds.user_ids == ["1", "2", "10", "x"]
    assert ds.catalogue.domains == ("A", "B") and ds.catalogue.item_ids == ("a1", "a2", "b1", "b2")
    assert all(s.dtype == np.int64 for s in ds.sequences)


def test_domain_order_can_be_given() -> None:
    rows = user_log("u", [("b1", "B"), ("a1", "A"), ("b2", "B"), ("a2", "A")])
    ds = prepare(frame(rows), NO_FILTERS, domains=["B", "A"])
    assert ds.catalogue.domains == ("B", "A") and ds.catalogue.domain_range("B") == (0, 2)


def test_domain_emptied_by_filtering_is_reported_with_counts() -> None:
    rows = user_log("u", [("b1", "B"), ("a1", "A"), ("b2", "B"), ("a2", "A")])
    with pytest.raises(DataError, match=r"domain\(s\) \['C'\] have no interactions left.*'A': 2, 'B': 2, 'C': 0"):
        prepare(frame(rows), NO_FILTERS, domains=["A", "B", "C"])


def test_domain_missing_from_the_given_order_is_reported() -> None:
    rows = user_log("u", [("b1", "B"), ("a1", "A"), ("c1", "C"), ("a2", "A")])
    with pytest.raises(DataError, match=r"domain\(s\) \['C'\] that the domain order"):
        prepare(frame(rows), NO_FILTERS, domains=["A", "B"])


def test_item_in_two_domains_is_reported() -> None:
    rows = user_log("u", [("b1", "B"), ("a1", "A"), ("a1", "B"), ("a2", "A")])
    with pytest.raises(DataError, match=r"1 item\(s\) appear in more than one domain.*'a1': \['A', 'B'\]"):
        prepare(frame(rows), NO_FILTERS)


def test_non_numeric_timestamps_are_rejected() -> None:
    rows = user_log("u", [("b1", "B"), ("a1", "A")])
    with pytest.raises(DataError, match="timestamp must be numeric"):
        prepare(frame(rows).astype({"timestamp": str}), NO_FILTERS)


@pytest.mark.parametrize("k", [2, 16])
def test_any_number_of_domains_from_2_to_16_works(k: int) -> None:
    names = [f"dom {j} ü" for j in range(k)]
    rows = []
    for u in range(3):
        rows += user_log(f"u{u}", [(f"i{j}-{r}", names[j]) for r in range(3) for j in range(k)], t0=u)
    ds = prepare(frame(rows), PrepConfig(k_core=3), domains=names)
    assert ds.catalogue.domains == tuple(names) and len(ds.user_ids) == 3
    assert all(ds.catalogue.domain_size(d) == 3 for d in names)


def test_fingerprint_is_deterministic_and_depends_on_options() -> None:
    rows = user_log("u", [("b1", "B"), ("a1", "A"), ("b2", "B"), ("a2", "A"), ("a3", "A")])
    a, b = prepare(frame(rows), NO_FILTERS), prepare(frame(rows[::-1]).iloc[::-1], NO_FILTERS)
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 64
    c = prepare(frame(rows), PrepConfig(require_all_domains=False, k_core=1, max_len=999))
    assert c.fingerprint != a.fingerprint


# -- splits ----------------------------------------------------------------------------

SEQ = np.arange(10, 18, dtype=np.int64)  # 8 items in time order: 10 .. 17


def test_leave_one_out_train_valid_test() -> None:
    assert train_part(SEQ).tolist() == [10, 11, 12, 13, 14, 15]
    (valid,) = eval_points([SEQ], "valid")
    (test,) = eval_points([SEQ], "test")
    assert (valid.history.tolist(), valid.target) == ([10, 11, 12, 13, 14, 15], 16)
    assert (test.history.tolist(), test.target) == ([10, 11, 12, 13, 14, 15, 16], 17)


def test_leave_two_out_splits_are_ordered_and_disjoint() -> None:
    train = train_part(SEQ, holdout=2)
    valid = eval_points([SEQ], "valid", holdout=2)
    test = eval_points([SEQ], "test", holdout=2)
    assert train.tolist() == [10, 11, 12, 13]
    assert [p.target for p in valid] == [14, 15] and [p.target for p in test] == [16, 17]
    assert [p.history.tolist() for p in test] == [SEQ[:6].tolist(), SEQ[:7].tolist()]
    assert max(train) < min(p.target for p in valid) < max(p.target for p in valid) < min(p.target for p in test)


def test_unknown_split_is_rejected() -> None:
    with pytest.raises(DataError, match="unknown split"):
        eval_points([SEQ], "train")  # type: ignore[arg-type]


CAT = Catalogue.build({"a1": "A", "a2": "A", "a3": "A", "b1": "B", "b2": "B"}, domains=["A", "B"])
A1, A2, A3, B1, B2 = (CAT.dense(i) for i in ("a1", "a2", "a3", "b1", "b2"))


def test_domain_points_filter_history_to_the_target_domain() -> None:
    seqs = [
        np.array([A1, B1, A2, B2, A3], dtype=np.int64),  # test target A3, valid target B2
        np.array([B1, B2, A1, B1, A2], dtype=np.int64),  # test A2 with A history [A1]
        np.array([B1, B2, B1, A1], dtype=np.int64),  # test A1 but no earlier A item: skipped
    ]
    test_a = domain_eval_points(seqs, CAT, "A", "test")
    assert [(p.user, p.history.tolist(), p.target) for p in test_a] == [(0, [A1, A2], A3), (1, [A1], A2)]
    valid_b = domain_eval_points(seqs, CAT, "B", "valid")
    assert [(p.user, p.history.tolist(), p.target) for p in valid_b] == [
        (0, [B1], B2),
        (1, [B1, B2], B1),
        (2, [B1, B2], B1),
    ]


def test_domain_train_sequences_need_two_items() -> None:
    seqs = [np.array([A1, B1, A2, B2, A3, B1], dtype=np.int64), np.array([A1, B1, B2, A2], dtype=np.int64)]
    assert [s.tolist() for s in domain_train_sequences(seqs, CAT, "A")] == [[A1, A2]]
    assert [s.tolist() for s in domain_train_sequences(seqs, CAT, "B")] == [[B1, B2]]


# -- storage ---------------------------------------------------------------------------


@pytest.fixture
def small() -> Dataset:
    rows = user_log("u1", [("a1", "A"), ("b1", "B"), ("a2", "A"), ("b2", "B")])
    rows += user_log("u2", [("b2", "B"), ("a2", "A"), ("b1", "B"), ("a1", "A"), ("a3", "A")])
    return prepare(frame(rows), NO_FILTERS, source="hand-made")


def assert_same(a: Dataset, b: Dataset) -> None:
    assert a.catalogue == b.catalogue and a.user_ids == b.user_ids and a.options == b.options
    assert a.fingerprint == b.fingerprint and a.source == b.source
    assert [s.tolist() for s in a.sequences] == [s.tolist() for s in b.sequences]
    assert all(s.dtype == np.int64 for s in b.sequences)


def test_save_load_round_trip(small: Dataset, tmp_path: Path) -> None:
    out = save_dataset(small, tmp_path / "ds")
    assert_same(small, load_dataset(out))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "taesar-dataset" and manifest["version"] == 1
    assert (manifest["n_users"], manifest["n_interactions"]) == (2, 9)
    assert manifest["domains"] == {"A": {"items": 3, "interactions": 5}, "B": {"items": 2, "interactions": 4}}
    assert not list(out.glob("*.pkl")) and not list(out.glob("*.pickle"))


def test_flipped_byte_in_a_data_file_is_detected(small: Dataset, tmp_path: Path) -> None:
    out = save_dataset(small, tmp_path / "ds")
    data = bytearray((out / "sequences.parquet").read_bytes())
    data[len(data) // 2] ^= 0x01
    (out / "sequences.parquet").write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"checksum mismatch in sequences\.parquet"):
        load_dataset(out)


def test_load_reports_missing_folder_and_manifest(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such dataset folder"):
        load_dataset(tmp_path / "nothing")
    with pytest.raises(DataError, match=r"no manifest\.json"):
        load_dataset(tmp_path)


@pytest.mark.parametrize(
    ("change", "message"),
    [({"format": "taesar-bundle"}, "not a taesar-dataset manifest"), ({"version": 2}, "format version 2")],
)
def test_load_rejects_foreign_or_newer_manifests(small: Dataset, tmp_path: Path, change: dict, message: str) -> None:
    out = save_dataset(small, tmp_path / "ds")
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, **change}))
    with pytest.raises(DataError, match=message):
        load_dataset(out)


def test_summary_counts_per_domain(small: Dataset) -> None:
    s = summarize(small)
    assert (s["users"], s["items"], s["interactions"], s["mean_length"]) == (2, 5, 9, 4.5)
    assert s["domains"]["A"] == {"items": 3, "interactions": 5}


# -- end to end --------------------------------------------------------------------------


def test_odd_domain_names_work_from_file_to_saved_dataset(tmp_path: Path) -> None:
    names = ["Böcher", "home & garden", "x"]
    rows = []
    for u in range(4):
        rows += user_log(f"user {u}", [(f"{names[j][:2]}-{r}", names[j]) for r in range(3) for j in range(3)], t0=u)
    frame(rows).to_csv(tmp_path / "log.tsv", sep="\t", index=False)
    ds = prepare(read_interactions(tmp_path / "log.tsv"), PrepConfig(max_len=6), source="log.tsv")
    assert ds.catalogue.domains == tuple(sorted(names))
    assert all(len(s) == 6 for s in ds.sequences)
    back = load_dataset(save_dataset(ds, tmp_path / "dataset ü"))
    assert_same(ds, back)
    assert summarize(back)["domains"]["home & garden"] == {"items": 2, "interactions": 8}  # round 0 cut


def test_real_ml100k_prepares_into_four_domains_of_at_least_150_items(real_wheel: Path) -> None:
    ds = prepare(read_ml100k_recbole(real_wheel), PrepConfig(), source="ml-100k")
    assert ds.catalogue.n_domains == 4
    assert all(ds.catalogue.domain_size(d) >= 150 for d in ds.catalogue.domains)
    assert all(4 <= len(s) <= 128 for s in ds.sequences)


# -- large logs: the same dataset from any frame; codes, not objects, per interaction -----


def odd_log(seed: int) -> pd.DataFrame:
    """A generated log with ids that are easy to mangle: "000" next to "0" in one domain (equal
    natural keys), numbers next to text, unicode, surrounding spaces, repeated rows (time ties)."""
    from tests.synthetic import make_log

    log = make_log(["Bü", "♪ x", "z"], n_users=40, seed=seed)
    user = log["user_id"].str[1:].astype(int)
    log["user_id"] = np.where(
        user % 5 == 4, " 用户" + user.astype(str) + " ", np.where(user % 2, user.astype(str), "0" + user.astype(str))
    )
    dom, n = log["item_id"].str.split("-", expand=True).to_numpy().T
    half = (n.astype(int) // 2).astype(str)
    log["item_id"] = np.where(dom == "0", np.where(n.astype(int) % 2, "00" + half, half), dom + "·" + n)
    return pd.concat([log, log.iloc[::7]], ignore_index=True)  # the copies tie with their originals


def as_text(log: pd.DataFrame) -> pd.DataFrame:
    return log.assign(**{c: log[c].str.strip().astype(object) for c in ("user_id", "item_id", "domain")})


def assert_same_dataset(a: Dataset, b: Dataset) -> None:
    assert a.fingerprint == b.fingerprint and a.user_ids == b.user_ids and a.catalogue == b.catalogue
    assert [s.tolist() for s in a.sequences] == [s.tolist() for s in b.sequences] and a.stats == b.stats


@pytest.mark.parametrize("seed", [0, 1])
def test_files_and_frames_of_any_dtype_give_the_same_dataset(tmp_path: Path, seed: int) -> None:
    raw = odd_log(seed)
    text = as_text(raw)  # object columns of str: the pd.factorize(astype(str)) path
    reference = prepare(text, PrepConfig(max_len=20))
    assert {"000", "0"} <= set(reference.catalogue.item_ids) and any("用户" in u for u in reference.user_ids)
    raw.to_csv(tmp_path / "log.csv", index=False)
    raw.to_parquet(tmp_path / "log.parquet")
    sorted_categories = text.astype({c: "category" for c in ("user_id", "item_id", "domain")})
    numbers = text.assign(user_id=[int(u) if u.isdigit() and u[0] != "0" else u for u in text["user_id"]])
    frames = [
        read_interactions(tmp_path / "log.csv"),
        read_interactions(tmp_path / "log.parquet"),
        sorted_categories,  # categories not in order of first appearance
        numbers.astype({"user_id": "category"}),  # categories 7 and "7" would both be the text "7"
    ]
    for df in frames:
        assert_same_dataset(prepare(df, PrepConfig(max_len=20)), reference)


@pytest.mark.parametrize("seed", range(4))
def test_a_categorical_is_factorized_like_its_text(seed: int) -> None:
    from models.data.prepare import _factorize

    rng = np.random.default_rng(seed)
    pool = np.array(["007", "7", 7, "ü", "a", 3.0, "3.0", "3", " 3"], dtype=object)
    values = pool[rng.integers(len(pool), size=60)]
    codes, uniques = pd.factorize(pd.Series(values).astype(str))
    shuffled = pd.Categorical(values, categories=rng.permutation(pd.unique(values)))
    for col in (pd.Series(values).astype("category"), pd.Series(shuffled)):
        got, ids = _factorize(col)
        assert got.dtype == np.int32 and got.tolist() == codes.tolist() and ids.tolist() == list(uniques)


def test_preparation_works_on_small_integer_codes(tmp_path: Path) -> None:
    from models.data.prepare import _encode

    odd_log(0).to_csv(tmp_path / "log.csv", index=False)
    log = _encode(read_interactions(tmp_path / "log.csv"), None)
    assert (log.user.dtype, log.item.dtype, log.domain.dtype, log.time.dtype) == (np.int32, np.int32, np.int8, np.int64)
    assert len(log.users) == log.counts()["users"] and all(isinstance(u, str) for u in log.users)


def test_sequences_are_views_of_one_array_after_prepare_and_load(small: Dataset, tmp_path: Path) -> None:
    for ds in (small, load_dataset(save_dataset(small, tmp_path / "ds"))):
        assert len({id(s.base) for s in ds.sequences}) == 1 and all(s.base is not None for s in ds.sequences)


def test_sequences_are_written_and_read_one_row_group_at_a_time(
    small: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow.parquet as pq

    from models.data import storage

    monkeypatch.setattr(storage, "_ROW_GROUP_USERS", 1)
    out = save_dataset(small, tmp_path / "ds")
    assert pq.ParquetFile(out / "sequences.parquet").metadata.num_row_groups == 2
    assert_same(small, load_dataset(out))
    # a file of one row group of all users (what pq.write_table gives) reads the same
    pq.write_table(storage._sequence_table(small.user_ids, small.sequences), tmp_path / "one.parquet")
    ids, seqs = storage._read_sequences(tmp_path / "one.parquet")
    assert ids == small.user_ids and [s.tolist() for s in seqs] == [s.tolist() for s in small.sequences]
