"""Print the NDCG@10 tables of docs/results/ml100k.md from a committed report.json.

Two tables per backbone: every variant as mean ± std over seeds with its change against
`sim` (relative change of the mean, paired-bootstrap p), and every variant but `sim` and
`new` as the difference of its seed-averaged metric from `new`'s. The numbers are the
report's own (its `summary`), only formatted, so the doc cannot drift from the report.
Run from the repository root:

    python docs/results/ml100k/tools/tables.py REPORT_DIR [METRIC]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _p(p: float) -> str:
    return f"p={p:.3f}" + ("*" if p < 0.05 else "")


def tables(report: dict, metric: str = "NDCG@10") -> str:
    targets = report["config"]["targets"]
    variants = report["config"]["variants"]
    rows = {(s["backbone"], s["target"], s["variant"]): s for s in report["summary"]}
    out: list[str] = []
    for backbone in report["config"]["backbones"]:
        some = rows[(backbone, targets[0], variants[0])]
        seeds = some["seeds"]
        out.append(f"**{backbone}**, seeds {', '.join(map(str, seeds))}, {metric}\n")
        head = " | ".join(f"{t} ({rows[(backbone, t, variants[0])]['n_test']})" for t in targets)
        out.append(f"| variant | {head} |")
        out.append("|---|" + "---:|" * len(targets))
        for v in variants:
            cells = []
            for t in targets:
                s = rows[(backbone, t, v)]
                cell = f"{s['mean'][metric]:.4f}"
                if len(seeds) > 1:
                    cell += f" ± {s['std'][metric]:.4f}"
                if "vs_sim" in s:
                    c = s["vs_sim"][metric]
                    cell += f" ({c['rel']:+.1%}, {_p(c['p'])})"
                cells.append(cell)
            out.append(f"| {v} | " + " | ".join(cells) + " |")
        others = [v for v in variants if "vs_new" in rows[(backbone, targets[0], v)]]
        if others:
            out.append("")
            out.append("| variant − new | " + " | ".join(targets) + " |")
            out.append("|---|" + "---:|" * len(targets))
            for v in others:
                cells = []
                for t in targets:
                    c = rows[(backbone, t, v)]["vs_new"][metric]
                    cells.append(f"{c['delta']:+.4f} ({_p(c['p'])})")
                out.append(f"| {v} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    report = json.loads((Path(sys.argv[1]) / "report.json").read_text())
    print(tables(report, *sys.argv[2:]))
