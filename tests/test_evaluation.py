"""The downstream protocol: leave-N-out points, training sets, no leakage, statistics,
reproducibility, and the `evaluate` / `export recbole` commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cli import app
from models.catalogue import Catalogue
from models.data import Dataset, load_dataset, train_part
from models.decoding import DecodeOptions, Regenerator
from models.downstream import DownstreamConfig
from models.errors import DataError
from models.evaluation import (
    METRICS,
    VARIANTS,
    EvalConfig,
    Finished,
    build_training_sets,
    check_bundle,
    decision_breakdown,
    domain_split,
    export_recbole,
    mean_ci,
    paired_bootstrap,
    plan_evaluation,
    point_metric,
    run_evaluation,
    summarize_results,
)
from models.metrics import rank_of_targets
from models.sasrec import SASRec, SASRecConfig

DOMAINS = ("a", "b", "c")
CAT = Catalogue.build({f"{d}{i}": d for d in DOMAINS for i in range(6)}, DOMAINS)  # a: 0-5, b: 6-11, c: 12-17
TINY_DS = DownstreamConfig(epochs=2, patience=2, lr=1e-2, batch_size=16, max_len=16, hidden=16, n_layers=1)


def _dataset(n_users: int = 30, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(0, CAT.n_items, size=int(rng.integers(10, 16))) for _ in range(n_users)]
    return Dataset(CAT, [f"u{u}" for u in range(n_users)], seqs, {"holdout": 2}, "fp", "hand-made")


def _regenerator(seed: int = 0) -> Regenerator:
    torch.manual_seed(seed)
    cfg = SASRecConfig(n_items=CAT.n_items, max_len=16, hidden=16, n_layers=1, n_heads=2, inner=16)
    return Regenerator(CAT, SASRec(cfg), {d: SASRec(cfg) for d in DOMAINS})


# -- points ------------------------------------------------------------------------------


def test_leave_n_out_points_use_the_last_n_positions_and_target_filtered_histories() -> None:
    # a = 0-5; positions 6,7 are valid and 8,9 test for holdout 2
    seq = np.array([0, 6, 1, 12, 2, 7, 3, 13, 4, 5])
    split = domain_split([seq], CAT, "a", holdout=2, max_len=16)
    assert split.test.targets.tolist() == [4, 5]  # both test positions are a-items
    assert [h.tolist() for h in split.test.histories] == [[0, 1, 2, 3], [0, 1, 2, 3, 4]]
    assert split.valid.targets.tolist() == [3]  # position 7 (13) is a c-item: not an a point
    assert split.valid.histories[0].tolist() == [0, 1, 2]
    assert split.test_users.tolist() == [0, 0]
    assert train_part(seq, 2).tolist() == [0, 6, 1, 12, 2, 7]  # train < valid < test in time


def test_histories_are_cut_to_the_models_context() -> None:
    split = domain_split([np.array([0, 1, 2, 3, 4, 5, 0, 1])], CAT, "a", holdout=1, max_len=3)
    assert split.test.histories[0].tolist() == [4, 5, 0]


# -- training sets -------------------------------------------------------------------------


def test_training_sets_follow_their_definitions() -> None:
    ds = _dataset()
    parts = [train_part(s, 2) for s in ds.sequences]
    sets = build_training_sets(parts, CAT, "a", VARIANTS, _regenerator())
    sim = [p[p < 6] for p in parts]
    assert [s.tolist() for s in sets["sim"].sequences] == [s.tolist() for s in sim if len(s) >= 2]
    assert [s.tolist() for s in sets["full"].sequences] == [p.tolist() for p in parts]
    assert sets["full"].mixed and not sets["sim"].mixed
    for v in ("new", "random", "random_matched", "no_adaptation", "no_source_experts", "no_global", "no_local"):
        rows = sets[v].sequences
        assert all((r < 6).all() and len(r) >= 2 for r in rows), v  # target items only
        n_sim = len(sets["sim"].sequences)
        extra = {r.tobytes() for r in rows[n_sim:]}
        assert len(extra) == len(rows) - n_sim, v  # appended rows repeat no row ...
        assert not extra & {r.tobytes() for r in rows[:n_sim]}, v  # ... nor a target row
        assert [r.tolist() for r in rows[: len(sets["sim"].sequences)]] == [s.tolist() for s in sets["sim"].sequences]
        assert all(np.all(np.diff(r) != 0) for r in rows[len(sets["sim"].sequences) :])  # no consecutive repeats
    assert sets["new"].regenerated is not None and len(sets["new"].regenerated) == len(parts)
    assert len(sets["sim"].users) == len(sets["sim"].sequences)
    # the control: every sim row twice, kept although they repeat each other
    sim_rows = [s.tolist() for s in sets["sim"].sequences]
    assert [s.tolist() for s in sets["sim_x2"].sequences] == sim_rows + sim_rows
    assert sets["sim_x2"].users == sets["sim"].users * 2 and not sets["sim_x2"].mixed


def test_new_norepeat_is_new_reassembled_without_repeats_and_decodes_nothing_more() -> None:
    ds = _dataset(n_users=60)
    parts = [train_part(s, 2) for s in ds.sequences]
    regenerator, phases = _regenerator(), []
    sets = build_training_sets(
        parts, CAT, "a", ["new_norepeat", "new"], regenerator, progress=lambda phase, *_: phases.append(phase)
    )
    assert set(phases) == {"regenerate a (taesar)"}  # one decode serves both
    direct = regenerator.regenerate([p.tolist() for p in parts], "a", DecodeOptions(drop_repeats=True))
    assert sets["new_norepeat"].regenerated == direct  # every decision, reason included
    plain = regenerator.regenerate([p.tolist() for p in parts], "a", DecodeOptions())
    assert sets["new"].regenerated == plain
    assert any(d.reason == "repeat" for r in direct for d in r.decisions)  # the rule had work to do


def test_predecoded_rows_stand_in_for_the_plain_decode_and_nothing_else() -> None:
    ds = _dataset(n_users=40)
    parts = [train_part(s, 2) for s in ds.sequences]
    regenerator, variants = _regenerator(), ["new", "random_matched", "no_global", "new_norepeat"]
    fresh = build_training_sets(parts, CAT, "a", variants, regenerator)
    plain = regenerator.regenerate([p.tolist() for p in parts], "a", DecodeOptions())
    phases: list[str] = []
    reused = build_training_sets(
        parts, CAT, "a", variants, regenerator, progress=lambda phase, *_: phases.append(phase), predecoded=plain
    )
    assert set(phases) == {"regenerate a (no_global)"}  # the ablation still decodes; new's decode is not redone
    for v in variants:
        assert reused[v].regenerated == fresh[v].regenerated
        assert [s.tolist() for s in reused[v].sequences] == [s.tolist() for s in fresh[v].sequences], v
    with pytest.raises(ValueError, match="not a decode"):
        build_training_sets(parts[1:], CAT, "a", ["new"], regenerator, predecoded=plain)


def test_random_rows_draw_only_target_items_seen_in_training() -> None:
    parts = [np.array([0, 6, 7, 0, 12, 1]), np.array([6, 0, 13, 1])]  # a-items seen: 0 and 1
    sets = build_training_sets(parts, CAT, "a", ["random"], data_seed=3)
    drawn = np.concatenate(sets["random"].sequences)
    assert set(drawn.tolist()) <= {0, 1}


def test_popularity_drawn_sets_do_not_depend_on_the_other_variants_requested() -> None:
    """`random` and `random_matched` share one stream of draws; asking for either alone,
    or for both in either order, gives the same rows, so a set has one fingerprint."""
    ds = _dataset(n_users=40)
    parts = [train_part(s, 2) for s in ds.sequences]
    regenerator = _regenerator()
    plain = regenerator.regenerate([p.tolist() for p in parts], "a", DecodeOptions())

    def rows(variants: list[str], v: str) -> list[list[int]]:
        sets = build_training_sets(parts, CAT, "a", variants, regenerator, data_seed=5, predecoded=plain)
        return [r.tolist() for r in sets[v].sequences]

    both = rows(["random", "random_matched"], "random_matched")
    assert rows(["random_matched"], "random_matched") == both
    assert rows(["random_matched", "random"], "random_matched") == both
    assert rows(["random_matched", "random"], "random") == rows(["random"], "random")
    assert rows(["random"], "random") != both  # two different sets, not one drawn twice


def test_decoded_variants_need_a_bundle() -> None:
    with pytest.raises(DataError, match="needs a bundle"):
        build_training_sets([np.array([0, 6, 1])], CAT, "a", ["new"])


def _training_sets_of(ds: Dataset, holdout: int) -> dict[str, list[list[int]]]:
    parts = [train_part(s, holdout) for s in ds.sequences]
    sets = build_training_sets(parts, CAT, "a", VARIANTS, _regenerator(), data_seed=1)
    return {v: [r.tolist() for r in s.sequences] for v, s in sets.items()}


def test_no_validation_or_test_target_leaks_into_any_training_set() -> None:
    """Training sets must be a function of the training parts alone: changing every
    valid/test position changes none of them, and items that occur only at held-out
    positions never enter a training set except through a model's replacement choice."""
    holdout = 2
    ds = _dataset()
    before = _training_sets_of(ds, holdout)
    moved = Dataset(
        ds.catalogue,
        ds.user_ids,
        [np.r_[s[: -2 * holdout], (s[-2 * holdout :] + 5) % CAT.n_items] for s in ds.sequences],
        ds.options,
        "fp2",
    )
    assert _training_sets_of(moved, holdout) == before
    # held-out-only sentinels: make item 5 (an a-item) appear only at valid/test positions
    seqs = [np.where(s == 5, 4, s) for s in ds.sequences]
    seqs = [np.r_[s[: -2 * holdout], [5] * (2 * holdout)] for s in seqs]
    sentinel = Dataset(CAT, ds.user_ids, seqs, ds.options, "fp3")
    sets = _training_sets_of(sentinel, holdout)
    for v in ("sim", "full", "random"):
        assert all(5 not in r for r in sets[v]), v
    assert domain_split(seqs, CAT, "a", holdout, 16).test.targets.tolist().count(5) > 0


def test_a_bundle_that_saw_held_out_positions_is_refused() -> None:
    ds = _dataset()
    with pytest.raises(DataError, match="holdout 1"):
        check_bundle({"data_fingerprint": "fp", "training": {"holdout": 1}}, ds, holdout=2)
    with pytest.raises(DataError, match="fingerprints"):
        check_bundle({"data_fingerprint": "other", "training": {"holdout": 2}}, ds, holdout=2)
    check_bundle({"data_fingerprint": "fp", "training": {"holdout": 3}}, ds, holdout=2)


# -- statistics ------------------------------------------------------------------------------


def test_per_point_metrics_on_hand_computed_rankings_with_ties_and_unrankable_items() -> None:
    scores = torch.tensor(
        [
            [0.9, 0.5, 0.5, 0.1],  # target 2 ties with 1: rank 2
            [0.1, 0.2, 0.3, 0.4],  # target 0 is last: rank 4
            [0.0, float("-inf"), 1.0, 2.0],  # target 1 cannot be ranked: miss
        ]
    )
    ranks = rank_of_targets(scores, torch.tensor([2, 0, 1]))
    np.testing.assert_array_equal(ranks, [2.0, 4.0, np.inf])
    np.testing.assert_allclose(point_metric(ranks, "HR@10"), [1, 1, 0])
    np.testing.assert_allclose(point_metric(ranks, "NDCG@20"), [1 / np.log2(3), 1 / np.log2(5), 0])
    np.testing.assert_allclose(point_metric(ranks, "MRR@10"), [0.5, 0.25, 0])
    np.testing.assert_allclose(point_metric(ranks, "HR@3"), [1, 0, 0])


def test_bootstrap_ci_covers_the_mean_and_repeats() -> None:
    x = np.random.default_rng(0).random(400)
    lo, hi = mean_ci(x, 1000, seed=1)
    assert lo < x.mean() < hi and hi - lo < 0.1
    assert mean_ci(x, 1000, seed=1) == (lo, hi)


def test_paired_bootstrap_detects_a_consistent_gain_and_not_an_identical_one() -> None:
    rng = np.random.default_rng(0)
    base = rng.random(600)
    better = paired_bootstrap(base + 0.05 + 0.01 * rng.standard_normal(600), base, 1000)
    assert better["p"] < 0.01 and better["ci95"][0] > 0
    same = paired_bootstrap(base, base, 1000)
    assert same["delta"] == 0.0 and same["p"] == 1.0


def _row(variant: str, seed: int, ndcg: float, n_test: int = 3) -> dict:
    return {"target": "a", "backbone": "sasrec", "variant": variant, "seed": seed, "n_test": n_test,
            "metrics": {m: ndcg for m in METRICS}}  # fmt: skip


def test_summary_reports_mean_std_relative_change_and_flags_small_test_sets() -> None:
    rows = [_row("sim", 0, 0.2), _row("sim", 1, 0.4), _row("new", 0, 0.3), _row("new", 1, 0.6)]
    ranks = {("a", "sasrec", r["variant"], r["seed"]): np.array([1.0, 2.0, np.inf]) for r in rows}
    out = {e["variant"]: e for e in summarize_results(rows, ranks, n_boot=200, min_test_points=500)}
    assert out["sim"]["mean"]["NDCG@10"] == pytest.approx(0.3)
    assert out["new"]["std"]["HR@10"] == pytest.approx(np.std([0.3, 0.6], ddof=1))
    assert out["new"]["vs_sim"]["NDCG@10"]["rel"] == pytest.approx(0.5)
    assert out["new"]["small_test_set"] and "vs_sim" not in out["sim"]
    # an ablation is compared with sim and with new, on the seeds it shares with each
    rows += [_row("no_local", 1, 0.45)]
    ranks[("a", "sasrec", "no_local", 1)] = np.array([1.0, 3.0, np.inf])
    out = {e["variant"]: e for e in summarize_results(rows, ranks, n_boot=200, min_test_points=500)}
    assert out["no_local"]["vs_new"]["NDCG@10"]["rel"] == pytest.approx(0.45 / 0.45 - 1)
    assert out["no_local"]["vs_sim"]["NDCG@10"]["rel"] == pytest.approx(0.5)
    assert out["no_local"]["vs_new"]["NDCG@10"]["delta"] < 0  # rank 3 instead of 2 on point 2
    assert "vs_new" not in out["new"] and "vs_new" not in out["sim"]


# -- the whole run ---------------------------------------------------------------------------


def test_run_evaluation_repeats_exactly_with_the_same_seeds() -> None:
    ds = _dataset(n_users=24)
    cfg = EvalConfig(
        targets=("a",), variants=("sim", "full", "new"), seeds=(0,), holdout=2, downstream=TINY_DS, n_boot=200
    )
    a = run_evaluation(ds, cfg, _regenerator())
    b = run_evaluation(ds, cfg, _regenerator())
    for ra, rb in zip(a.report["results"], b.report["results"], strict=True):
        assert {**ra, "seconds": 0} == {**rb, "seconds": 0}
    assert a.report["summary"] == b.report["summary"]
    row = a.report["results"][0]
    assert set(row) >= {"target", "backbone", "variant", "seed", "metrics"}
    assert list(row["metrics"]) == list(METRICS)
    assert a.report["targets"]["a"]["n_test"] == row["n_test"]


def test_parallel_jobs_give_the_numbers_of_a_serial_run(one_torch_thread: None) -> None:
    """--jobs N runs each training in a spawned process with 1 thread: same rows, in the
    same order, as one process with 1 thread, whatever order the processes finish in."""
    ds = _dataset(n_users=24)
    base = {
        "targets": ("a", "b"),
        "backbones": ("sasrec", "gru4rec"),
        "variants": ("sim", "full", "new"),
        "seeds": (0, 1),
        "holdout": 2,
        "downstream": TINY_DS,
        "n_boot": 200,
    }
    serial = run_evaluation(ds, EvalConfig(**base), _regenerator())  # type: ignore[arg-type]
    parallel = run_evaluation(ds, EvalConfig(**base, jobs=2, job_threads=1), _regenerator())  # type: ignore[arg-type]
    assert len(serial.report["results"]) == 2 * 2 * 3 * 2
    for rs, rp in zip(serial.report["results"], parallel.report["results"], strict=True):
        assert {**rs, "seconds": 0} == {**rp, "seconds": 0}
    assert serial.report["summary"] == parallel.report["summary"]
    for key, ranks in serial.ranks.items():
        np.testing.assert_array_equal(ranks, parallel.ranks[key])
    assert parallel.report["config"]["jobs"] == 2 and parallel.report["config"]["job_threads"] == 1
    # the thread count the fingerprints used, so that a report alone can rebuild its log
    assert parallel.report["config"]["threads"] == 1
    assert serial.report["config"]["threads"] == torch.get_num_threads()
    with pytest.raises(DataError, match="jobs"):
        EvalConfig(targets=("a",), jobs=0)


def test_finished_trainings_are_reused_only_when_their_fingerprint_matches(one_torch_thread: None) -> None:
    ds = _dataset(n_users=24)
    cfg = EvalConfig(targets=("a",), variants=("sim", "new"), seeds=(0, 1), holdout=2, downstream=TINY_DS, n_boot=200)
    log: list[Finished] = []
    full = run_evaluation(ds, cfg, _regenerator(), on_result=log.append)
    assert len(log) == 4
    # planning alone (no training) names the same trainings, in report order
    plan = plan_evaluation(ds, cfg, _regenerator())
    by_key = {(d.row["variant"], d.row["seed"]): d.fingerprint for d in log}
    assert plan.fingerprints == [by_key[t.tset.variant, t.seed] for t in plan.tasks]
    assert [(t.tset.variant, t.seed) for t in plan.tasks] == [(r["variant"], r["seed"]) for r in full.report["results"]]
    again: list[Finished] = []
    half = {d.fingerprint: d for d in log[:2]}
    resumed = run_evaluation(ds, cfg, _regenerator(), on_result=again.append, finished=half)
    assert len(again) == 2 and {d.fingerprint for d in again} == {d.fingerprint for d in log[2:]}
    assert resumed.report["reused_trainings"] == 2
    assert resumed.report["results"][:2] == full.report["results"][:2]  # reused rows keep even their seconds
    for a, b in zip(resumed.report["results"], full.report["results"], strict=True):
        assert {**a, "seconds": 0} == {**b, "seconds": 0}
    for key, ranks in full.ranks.items():
        np.testing.assert_array_equal(ranks, resumed.ranks[key])
    # another decoding (other expert weights) changes `new`'s rows: only `sim` is reused
    other: list[Finished] = []
    run_evaluation(ds, cfg, _regenerator(seed=1), on_result=other.append, finished={d.fingerprint: d for d in log})
    assert sorted(d.row["variant"] for d in other) == ["new", "new"]
    # another training config: nothing is reused
    longer = EvalConfig(**{**cfg.__dict__, "downstream": DownstreamConfig(**{**TINY_DS.__dict__, "epochs": 3})})
    fresh: list[Finished] = []
    run_evaluation(ds, longer, _regenerator(), on_result=fresh.append, finished={d.fingerprint: d for d in log})
    assert len(fresh) == 4
    # JSON round trip keeps misses (+inf) and rows
    d = Finished(log[0].fingerprint, log[0].row, np.array([1.0, np.inf, 3.5]))
    back = Finished.from_json(json.loads(json.dumps(d.to_json())))
    assert back.row == d.row and back.fingerprint == d.fingerprint
    np.testing.assert_array_equal(back.ranks, d.ranks)


def test_unknown_variants_and_backbones_are_refused() -> None:
    with pytest.raises(DataError, match="unknown variant"):
        EvalConfig(targets=("a",), variants=("sim", "bogus"))
    with pytest.raises(DataError, match="unknown backbone"):
        EvalConfig(targets=("a",), backbones=("bert",))


def test_decision_breakdown_counts_source_items_only() -> None:
    ds = _dataset(n_users=5)
    parts = [train_part(s, 2) for s in ds.sequences]
    regen = _regenerator().regenerate([p.tolist() for p in parts], "a")
    counts = decision_breakdown(regen, CAT, "a")
    assert set(counts) <= {"b", "c"}
    n_source = sum(int((p >= 6).sum()) for p in parts)
    assert sum(sum(row.values()) for row in counts.values()) == n_source


# -- commands --------------------------------------------------------------------------------

runner = CliRunner()


def test_export_recbole_writes_every_training_set_with_shared_valid_and_test(tmp_path: Path) -> None:
    ds = _dataset()
    written = export_recbole(ds, "a", ["sim", "new"], tmp_path, holdout=2, regenerator=_regenerator())
    sim_train = (tmp_path / "a-sim" / "a-sim.train.inter").read_text().splitlines()
    assert sim_train[0] == "user_id:token\titem_id_list:token_seq\titem_id:token"
    sets = build_training_sets([train_part(s, 2) for s in ds.sequences], CAT, "a", ["sim"])
    assert written["sim"]["train"] == sum(len(s) - 1 for s in sets["sim"].sequences)  # one row per step
    for split in ("valid", "test"):
        a = (tmp_path / "a-sim" / f"a-sim.{split}.inter").read_text()
        assert a == (tmp_path / "a-new" / f"a-new.{split}.inter").read_text()
    assert written["sim"]["test"] == len(domain_split(ds.sequences, CAT, "a", 2, 128).test.targets)


def test_evaluate_and_export_commands_write_their_files(tiny_data: Path, tiny_bundle: Path, tmp_path: Path) -> None:
    target = load_dataset(tiny_data).catalogue.domains[0]
    args = ["--data", tiny_data, "--target", target, "--bundle", tiny_bundle]
    result = runner.invoke(app, ["evaluate", *map(str, args), "--out", str(tmp_path / "ev"), "--epochs", "1",
                                 "--variants", "sim,new", "--backbones", "gru4rec", "--device", "cpu"])  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert {(r["variant"], r["backbone"]) for r in report["results"]} == {("sim", "gru4rec"), ("new", "gru4rec")}
    assert (tmp_path / "ev" / "report.md").is_file() and report["figures"]
    result = runner.invoke(
        app, ["export", "recbole", *map(str, args), "--out", str(tmp_path / "rb"), "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "rb").glob("*/*.inter"))) == 4 * 3


def test_evaluate_refuses_a_holdout_the_bundle_was_not_trained_for(
    tiny_data: Path, tiny_bundle: Path, tmp_path: Path
) -> None:
    args = [
        "evaluate",
        "--data",
        tiny_data,
        "--target",
        "x",
        "--bundle",
        tiny_bundle,
        "--out",
        tmp_path,
        "--holdout",
        3,
    ]
    result = runner.invoke(app, list(map(str, args)))
    assert result.exit_code == 2 and "trained with holdout 1" in result.output
