"""Writes an evaluation (models/evaluation/) as report.json, report.md and PNG figures.

    report.json   the data: protocol, per-target info, flat `results`, `summary`
    ranks.npz     every test rank per (target, backbone, variant, seed), for re-analysis
    report.md     metric tables (mean ± std over seeds, 95% CI, change vs sim, paired
                  bootstrap p), test-set sizes with a flag under the minimum, figures
    figures/      metrics.png, decisions.png, data_<k>.png (paper Figure 5 statistics)

Plots use matplotlib's Agg backend, so no display is needed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from models.evaluation import METRICS, Evaluation

__all__ = ["render_markdown", "write_report"]

_SHOWN = ("HR@10", "NDCG@10")  # the metrics the comparison table tests


def write_report(evaluation: Evaluation, out_dir: str | Path, *, extra: dict[str, Any] | None = None) -> list[Path]:
    """Write every file; returns their paths. `extra` is merged into report.json (e.g. the command)."""
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    report = {**evaluation.report, **(extra or {})}
    figures = _figures(report, out / "figures")
    report["figures"] = [str(p.relative_to(out)) for p in figures]
    paths = [out / "report.json", out / "ranks.npz", out / "report.md"]
    paths[0].write_text(json.dumps(_json_safe(report), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    np.savez_compressed(paths[1], **{"|".join(map(str, k)): v for k, v in evaluation.ranks.items()})
    paths[2].write_text(render_markdown(report), encoding="utf-8")
    return paths + figures


def _json_safe(value: Any) -> Any:
    """NaN/inf are not JSON: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


# -- markdown -------------------------------------------------------------------------------


def render_markdown(report: dict[str, Any]) -> str:
    proto, cfg = report["protocol"], report["config"]
    lines = [
        "# Downstream evaluation",
        "",
        f"Data: {report['data']['source']} ({report['data']['users']} users, "
        f"fingerprint `{report['data']['fingerprint'][:12]}`). Protocol: leave-{proto['holdout']}-out, "
        f"users in every domain required: {proto['require_all_domains']}; model selection on "
        f"{proto['selection']}; full ranking over the target's items.",
        f"Backbones {', '.join(cfg['backbones'])}; seeds {cfg['seeds']}; downstream config "
        f"`{json.dumps(cfg['downstream'])}`. Wall time {report.get('wall_time_s', '?')} s.",
        "",
        "Cells are mean ± std over seeds. `CI95` is a percentile bootstrap over test points of the "
        "seed-averaged metric; `p` is a paired bootstrap over test points against `sim` (and, in "
        "the last table, against `new`) "
        f"({proto['n_boot']} resamples). Test sets under {proto['min_test_points']} points are flagged ⚠: "
        "differences there are rarely resolvable.",
        "",
    ]
    lines += _test_set_table(report)
    for target in cfg["targets"]:
        for backbone in cfg["backbones"]:
            lines += _metric_tables(report, target, backbone)
    lines += _decision_section(report)
    lines += _data_section(report)
    if report.get("figures"):
        lines += ["## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in report["figures"]] + [""]
    return "\n".join(lines)


def _test_set_table(report: dict[str, Any]) -> list[str]:
    min_n = report["protocol"]["min_test_points"]
    lines = ["## Test sets", "", "| target | items | valid points | test points | training rows per variant |"]
    lines.append("|---|---:|---:|---:|---|")
    for t, info in report["targets"].items():
        flag = " ⚠" if info["n_test"] < min_n else ""
        rows = ", ".join(f"{v} {n}" for v, n in info["train_rows"].items())
        lines.append(f"| {t} | {info['n_items']} | {info['n_valid']} | {info['n_test']}{flag} | {rows} |")
    return [*lines, ""]


def _metric_tables(report: dict[str, Any], target: str, backbone: str) -> list[str]:
    entries = [e for e in report["summary"] if e["target"] == target and e["backbone"] == backbone]
    if not entries:
        return []
    flag = " ⚠ small test set" if entries[0]["small_test_set"] else ""
    lines = [f"## {target} / {backbone} (n_test = {entries[0]['n_test']}){flag}", ""]
    lines.append("| variant | " + " | ".join(METRICS) + " |")
    lines.append("|---|" + "---:|" * len(METRICS))
    for e in entries:
        cells = [f"{e['mean'][m]:.4f} ± {e['std'][m]:.4f}" for m in METRICS]
        lines.append(f"| {e['variant']} | " + " | ".join(cells) + " |")
    lines += ["", "| variant | " + " | ".join(f"{m} CI95 | {m} vs sim | p" for m in _SHOWN) + " |"]
    lines.append("|---|" + "---:|---:|---:|" * len(_SHOWN))
    for e in entries:
        cells = []
        for m in _SHOWN:
            lo, hi = e["ci95"][m]
            vs = e.get("vs_sim", {}).get(m)
            change = f"{_pct(vs['rel'])} (Δ {vs['delta']:+.4f})" if vs else "—"
            cells += [f"[{lo:.4f}, {hi:.4f}]", change, _p(vs["p"]) if vs else "—"]
        lines.append(f"| {e['variant']} | " + " | ".join(cells) + " |")
    against_new = [e for e in entries if e.get("vs_new")]
    if against_new:  # ablations and controls against the whole method
        lines += ["", "| variant | " + " | ".join(f"{m} vs new | p" for m in _SHOWN) + " |"]
        lines.append("|---|" + "---:|---:|" * len(_SHOWN))
        for e in against_new:
            cells = []
            for m in _SHOWN:
                vs = e["vs_new"][m]
                cells += [f"{_pct(vs['rel'])} (Δ {vs['delta']:+.4f})", _p(vs["p"])]
            lines.append(f"| {e['variant']} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _pct(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:+.1f}%"


def _p(p: float | None) -> str:
    if p is None or not math.isfinite(p):
        return "n/a"
    return f"{p:.3f}" + (" *" if p < 0.05 else "")


def _decision_section(report: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for t, info in report["targets"].items():
        for variant, per_source in info.get("decisions", {}).items():
            if not lines:
                lines = ["## Decisions per source domain", ""]
            reasons = sorted({k for row in per_source.values() for k in row if k != "replaced"})
            lines.append(f"Target **{t}**, decoding of `{variant}`:")
            lines += ["", "| source | items | replaced | " + " | ".join(reasons) + " |"]
            lines.append("|---|---:|---:|" + "---:|" * len(reasons))
            for src, row in per_source.items():
                total = sum(row.values())
                cells = [f"{row.get(r, 0)} ({row.get(r, 0) / total:.0%})" for r in ("replaced", *reasons)]
                lines.append(f"| {src} | {total} | " + " | ".join(cells) + " |")
            lines.append("")
    return lines


def _data_section(report: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for t, info in report["targets"].items():
        stats = info.get("data_stats")
        if not stats:
            continue
        if not lines:
            lines = [
                "## Original vs regenerated target data (paper Figure 5)",
                "",
                "Item groups by popularity in the original target rows.",
                "",
                "| target | data | rows | interactions | items covered | top 10% | mid 40% | tail 50% | mean length |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|",
            ]
        for name, s in stats.items():
            sh = s["share"]
            lines.append(
                f"| {t} | {name} | {s['rows']} | {s['interactions']} | {s['items_covered']} | "
                f"{sh['top10']:.1%} | {sh['mid40']:.1%} | {sh['tail50']:.1%} | {s['mean_length']:.1f} |"
            )
    return [*lines, ""] if lines else []


# -- figures --------------------------------------------------------------------------------


def _figures(report: dict[str, Any], folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    paths = [_metrics_figure(report, folder / "metrics.png")]
    if any(info.get("decisions") for info in report["targets"].values()):
        paths.append(_decisions_figure(report, folder / "decisions.png"))
    for k, (t, info) in enumerate(report["targets"].items()):
        if info.get("data_stats"):
            paths.append(_data_figure(t, info["data_stats"], folder / f"data_{k:02d}.png"))
    return paths


def _metrics_figure(report: dict[str, Any], path: Path, metric: str = "NDCG@10") -> Path:
    import matplotlib.pyplot as plt

    targets, backbones = report["config"]["targets"], report["config"]["backbones"]
    variants = report["config"]["variants"]
    fig, axes = plt.subplots(1, len(backbones), figsize=(1.2 + 1.6 * len(targets) * len(backbones), 3.6), squeeze=False)
    width = 0.8 / len(variants)
    by_key = {(e["target"], e["backbone"], e["variant"]): e for e in report["summary"]}
    for ax, backbone in zip(axes[0], backbones, strict=True):
        for j, v in enumerate(variants):
            es = [by_key.get((t, backbone, v)) for t in targets]
            means = [e["mean"][metric] if e else np.nan for e in es]
            err = np.array(
                [
                    [e["mean"][metric] - e["ci95"][metric][0], e["ci95"][metric][1] - e["mean"][metric]]
                    if e
                    else [0, 0]
                    for e in es
                ]
            ).T
            ax.bar(np.arange(len(targets)) + j * width, means, width, yerr=err, capsize=2, label=v)
        ax.set_xticks(np.arange(len(targets)) + 0.4 - width / 2, targets)
        ax.set_title(f"{backbone}: test {metric} (95% CI)")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)


def _decisions_figure(report: dict[str, Any], path: Path) -> Path:
    import matplotlib.pyplot as plt

    items = [(t, info["decisions"]) for t, info in report["targets"].items() if info.get("decisions")]
    fig, axes = plt.subplots(1, len(items), figsize=(4 * len(items), 3.4), squeeze=False)
    for ax, (t, per_variant) in zip(axes[0], items, strict=True):
        variant = "new" if "new" in per_variant else next(iter(per_variant))
        per_source = per_variant[variant]
        keys = sorted({k for row in per_source.values() for k in row}, key=lambda k: (k != "replaced", k))
        sources = list(per_source)
        bottom = np.zeros(len(sources))
        for key in keys:
            totals = np.array([sum(per_source[s].values()) for s in sources], dtype=float)
            share = np.array([per_source[s].get(key, 0) for s in sources]) / np.maximum(totals, 1)
            ax.bar(sources, share, bottom=bottom, label=key)
            bottom += share
        ax.set_title(f"target {t} ({variant})")
        ax.set_ylabel("share of source items")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)


def _data_figure(target: str, stats: dict[str, Any], path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(12, 3.4))
    for name, s in stats.items():
        freq = np.asarray(s["frequency_by_rank"], dtype=float)
        a.plot(np.arange(1, len(freq) + 1), np.where(freq > 0, freq, np.nan), label=name)
        lengths = np.asarray(s["lengths"], dtype=float)
        c.plot(np.arange(len(lengths)), lengths / max(lengths.sum(), 1), label=name)
    a.set_yscale("log")
    a.set(title=f"{target}: item frequency by rank", xlabel="item rank", ylabel="interactions")
    groups = ("top10", "mid40", "tail50")
    names = list(stats)
    for j, name in enumerate(names):
        b.bar(np.arange(3) + j * 0.4, [stats[name]["share"][g] for g in groups], 0.4, label=name)
    b.set_xticks(np.arange(3) + 0.2, ["top 10%", "mid 40%", "tail 50%"])
    b.set(title="interaction share by item group", ylabel="share")
    c.set(title="sequence length distribution", xlabel="length", ylabel="share of rows")
    for ax in (a, b, c):
        ax.legend(fontsize=7)
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
