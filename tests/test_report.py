"""Report: Figure-5 statistics on hand-made data, and the files a report consists of."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.evaluation import METRICS, Evaluation, summarize_results, target_data_stats
from models.report import render_markdown, write_report


def test_figure5_statistics_on_hand_made_data() -> None:
    # span [10, 20): 10 items; item 10 is the most popular in the original data
    original = [np.array([10, 10, 11]), np.array([10, 12, 13, 14])]
    regenerated = [np.array([15, 16]), np.array([10, 17, 18, 19, 15])]
    stats = target_data_stats(original, regenerated, (10, 20))
    o, r = stats["original"], stats["regenerated"]
    assert o["frequency_by_rank"][:3] == [3, 1, 1] and len(o["frequency_by_rank"]) == 10
    # groups by original popularity: top 10% = {10}, mid 40% = {11, 12, 13, 14}, tail = the rest
    assert o["share"] == pytest.approx({"top10": 3 / 7, "mid40": 4 / 7, "tail50": 0.0})
    assert r["share"] == pytest.approx({"top10": 1 / 7, "mid40": 0.0, "tail50": 6 / 7})
    assert o["lengths"] == [0, 0, 0, 1, 1] and r["mean_length"] == pytest.approx(3.5)
    assert (o["items_covered"], r["items_covered"]) == (5, 6)


def _evaluation(n_test: int) -> Evaluation:
    rng = np.random.default_rng(0)
    results, ranks = [], {}
    for variant, shift in (("sim", 0.0), ("full", -0.5), ("new", 1.0)):
        for seed in (0, 1):
            r = np.maximum(1.0, np.round(rng.exponential(12.0, n_test) - shift))
            r[:3] = np.inf  # some unrankable targets
            ranks[("drama", "sasrec", variant, seed)] = r
            from models.metrics import summarize

            m = summarize(r, (10, 20))
            results.append(
                {"target": "drama", "backbone": "sasrec", "variant": variant, "seed": seed, "n_test": n_test,
                 "metrics": {k: m[k] for k in METRICS}}
            )  # fmt: skip
    stats = target_data_stats([np.array([0, 1, 2])], [np.array([0, 3])], (0, 4))
    report = {
        "data": {"source": "hand", "fingerprint": "f" * 64, "users": 10},
        "protocol": {"holdout": 3, "require_all_domains": False, "min_test_points": 500, "n_boot": 200,
                     "selection": "validation NDCG@10", "metrics": list(METRICS)},
        "config": {"targets": ["drama"], "backbones": ["sasrec"], "variants": ["sim", "full", "new"],
                   "seeds": [0, 1], "downstream": {}},
        "targets": {"drama": {"n_valid": n_test, "n_test": n_test, "n_items": 4, "small_test_set": n_test < 500,
                              "train_rows": {"sim": 5, "full": 9, "new": 12},
                              "decisions": {"new": {"comedy": {"replaced": 6, "discarded:global_not_target": 2}}},
                              "data_stats": stats}},
        "results": results,
        "summary": summarize_results(results, ranks, n_boot=200),
    }  # fmt: skip
    return Evaluation(report, ranks)


def test_write_report_writes_json_markdown_ranks_and_png_figures(tmp_path: Path) -> None:
    paths = write_report(_evaluation(120), tmp_path, extra={"command": "taesar evaluate ..."})
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["command"] == "taesar evaluate ..."
    assert len(report["results"]) == 6
    assert all(list(r["metrics"]) == list(METRICS) for r in report["results"])
    pngs = [p for p in paths if p.suffix == ".png"]
    assert {p.name for p in pngs} == {"metrics.png", "decisions.png", "data_00.png"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert set(np.load(tmp_path / "ranks.npz").files) == {
        f"drama|sasrec|{v}|{s}" for v in ("sim", "full", "new") for s in (0, 1)
    }
    md = (tmp_path / "report.md").read_text()
    assert "drama / sasrec (n_test = 120) ⚠ small test set" in md
    assert "![metrics](figures/metrics.png)" in md
    assert "| comedy | 8 | 6 (75%) | 2 (25%) |" in md


def test_markdown_shows_mean_std_change_vs_sim_and_paired_p(tmp_path: Path) -> None:
    ev = _evaluation(600)
    md = render_markdown(ev.report)
    new = next(e for e in ev.report["summary"] if e["variant"] == "new")
    sim = next(e for e in ev.report["summary"] if e["variant"] == "sim")
    rel = (new["mean"]["NDCG@10"] - sim["mean"]["NDCG@10"]) / sim["mean"]["NDCG@10"]
    assert f"{100 * rel:+.1f}%" in md
    assert f"{new['mean']['HR@10']:.4f} ± {new['std']['HR@10']:.4f}" in md
    assert f"{new['vs_sim']['NDCG@10']['p']:.3f}" in md
    # every other variant is also tested against new, in its own table
    full = next(e for e in ev.report["summary"] if e["variant"] == "full")
    vs = full["vs_new"]["NDCG@10"]
    assert "| variant | HR@10 vs new | p | NDCG@10 vs new | p |" in md
    assert f"{100 * vs['rel']:+.1f}% (Δ {vs['delta']:+.4f})" in md and vs["delta"] < 0
    assert "vs_new" not in new and "vs_new" not in sim
    assert "small test set" not in md
