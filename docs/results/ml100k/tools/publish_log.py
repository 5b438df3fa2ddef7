"""Write the committed run log (trainings.jsonl.gz) of a report from its run's log.

A run's `trainings.jsonl` also holds lines the report does not use: trainings of an
earlier decode of the same variant (a bundle pretrained on another CPU can decode a
near-tie the other way, and `--resume` then retrains that cell) and, after a killed
run, trainings of seeds the report does not hold yet. This keeps, for every report row,
the last log line with that row's metrics (the one `--resume` matched last), plus every
line of a seed outside the report, so a later session resumes from them. The gzip is
written without a timestamp, so the same log gives the same bytes. Run from the
repository root:

    python docs/results/ml100k/tools/publish_log.py RUN/trainings.jsonl REPORT_DIR
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path


def _key(row: dict) -> tuple:
    return row["target"], row["backbone"], row["variant"], row["seed"]


def used_lines(log_lines: list[str], report: dict) -> list[str]:
    seeds = set(report["config"]["seeds"])
    rows = {_key(r): r for r in report["results"]}
    logged = [json.loads(line)["row"] for line in log_lines]
    last: dict[tuple, int] = {}
    for i, row in enumerate(logged):
        if row["seed"] in seeds and _key(row) in rows and rows[_key(row)]["metrics"] == row["metrics"]:
            last[_key(row)] = i
    missing = sorted(set(rows) - set(last))
    if missing:
        sys.exit(f"{len(missing)} report rows have no log line, e.g. {missing[0]}")
    chosen = set(last.values())
    return [line for i, line in enumerate(log_lines) if i in chosen or logged[i]["seed"] not in seeds]


def main(log: Path, report_dir: Path) -> None:
    lines = log.read_text(encoding="utf-8").splitlines(keepends=True)
    report = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
    kept = used_lines(lines, report)
    with gzip.GzipFile(report_dir / "trainings.jsonl.gz", "wb", compresslevel=9, mtime=0) as f:
        f.write("".join(kept).encode("utf-8"))
    print(f"{report_dir / 'trainings.jsonl.gz'}: kept {len(kept)} of {len(lines)} lines")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
