"""Stage I under torchrun: real launches on CPU (gloo), and the pieces ranks agree through."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
from typer.testing import CliRunner

from cli import app
from models.bundle import read_manifest
from models.data import load_dataset
from models.distributed import Dist, all_sum, broadcast_flag, check_same_data, deal, gather_ranks, shard
from models.errors import DataError
from models.pretrain import TrainConfig, pretrain
from models.sasrec import SASRecConfig
from tests.synthetic import make_log

DOMAINS = ["Bücher & Co", "electronics", "z"]
TINY = ["--hidden", "16", "--layers", "1", "--heads", "1", "--inner", "16", "--max-len", "16", "--batch-size", "16"]
TAESAR = Path(sys.executable).with_name("taesar")
runner = CliRunner()


def invoke(*args: object) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def torchrun(nproc: int, *args: object, entry: Path = TAESAR) -> subprocess.CompletedProcess[str]:
    """`torchrun --standalone --nproc-per-node N --no-python ENTRY ARGS` (standalone picks a free port)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    command += ["--no-python", str(entry), *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=180, check=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not TAESAR.is_file():
        pytest.skip(f"no taesar entry point next to {sys.executable} (pip install -e .)")
    root = tmp_path_factory.mktemp("dist")
    make_log(DOMAINS, n_users=40, seed=3).to_csv(root / "log.csv", index=False)
    code, output = invoke("data", "import", "--interactions", root / "log.csv", "--out", root / "data")
    assert code == 0, output
    return root / "data"


def weights(bundle: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(bundle.glob("*.safetensors"))}


# -- the pieces -------------------------------------------------------------------------


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("n_batches", [0, 1, 2, 5, 7])
def test_every_rank_gets_the_same_number_of_batches_and_together_they_cover_all(world: int, n_batches: int) -> None:
    batches = list(range(n_batches))
    shares = [deal(batches, Dist(r, world, "gloo")) for r in range(world)]
    assert len({len(s) for s in shares}) == 1  # equal optimiser steps, or DDP hangs
    assert len(shares[0]) == -(-n_batches // world)
    assert set().union(*shares) == set(batches)
    assert sum(map(len, shares)) - n_batches < world  # at most world - 1 batches twice


def test_without_a_process_group_nothing_is_split() -> None:
    assert deal([3, 1, 2], None) == [3, 1, 2]
    np.testing.assert_array_equal(shard(4, None), np.arange(4))
    assert deal([3, 1, 2], Dist(0, 1, "gloo")) == [3, 1, 2]
    with pytest.raises(ValueError, match="rank 2"):
        Dist(2, 2, "gloo")


def _group_worker(rank: int, store: str, fingerprints: list[str], out: str) -> None:
    """One rank of a 2-process gloo group: the collectives that keep ranks in step."""
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        dist = Dist(rank, 2, "gloo")
        n = 5  # uneven shards: rank 0 ranks points 0, 2, 4 and rank 1 points 1, 3
        gathered = gather_ranks(shard(n, dist) * 10.0 + rank, n, dist)
        summed = all_sum([rank + 1.0, 0.5], dist)
        flag = broadcast_flag(rank == 0, dist)
        check_same_data(fingerprints[0], dist)  # the same data on both: passes
        try:
            check_same_data(fingerprints[rank], dist)
            error = None
        except DataError as exc:
            error = exc.message
        result = {"gathered": gathered.tolist(), "summed": summed, "flag": flag, "error": error}
        Path(out, f"{rank}.json").write_text(json.dumps(result))
    finally:
        tdist.destroy_process_group()


def test_two_ranks_gather_in_point_order_and_both_refuse_different_data(tmp_path: Path) -> None:
    mp.spawn(_group_worker, args=(str(tmp_path / "store"), ["aaaa1111", "bbbb2222"], str(tmp_path)), nprocs=2)
    results = [json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1)]
    for r, res in enumerate(results):
        assert res["gathered"] == [0.0, 11.0, 20.0, 31.0, 40.0]  # value 10 * point + the rank that ranked it
        assert res["summed"] == [3.0, 1.0] and res["flag"] is True
        assert f"rank {r} has fingerprint {['aaaa1111', 'bbbb2222'][r]}" in res["error"]
        assert f"rank(s) {1 - r} another" in res["error"]


@pytest.mark.parametrize("budget_mb", [1024.0, 0.01])  # 0.01 MB: every batch takes the tiled loss
def test_a_one_rank_group_trains_exactly_what_a_plain_run_trains(data: Path, tmp_path: Path, budget_mb: float) -> None:
    """DDP's averaging over one rank, the dealt batches and the gathered ranks are all exact."""
    ds = load_dataset(data)
    cfg = TrainConfig(epochs=2, adapt_epochs=1, batch_size=16, device="cpu", logits_budget_mb=budget_mb, max_steps=3)
    model = SASRecConfig(n_items=ds.catalogue.n_items, max_len=16, hidden=16, n_layers=1, n_heads=1, inner=16)
    plain = pretrain(ds, cfg, model_config=model)
    tdist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        grouped = pretrain(ds, cfg, model_config=model, dist=Dist(0, 1, "gloo"))
    finally:
        tdist.destroy_process_group()
    for a, b in [(plain.mixed, grouped.mixed), *((plain.experts[d], grouped.experts[d]) for d in DOMAINS)]:
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert (plain.metrics, plain.history, plain.steps) == (grouped.metrics, grouped.history, grouped.steps)
    record = grouped.training
    assert {k: record.pop(k) for k in ("world_size", "backend")} == {"world_size": 1, "backend": "gloo"}
    assert {**plain.training, "timings_s": None} == {**record, "timings_s": None}


# -- real launches ----------------------------------------------------------------------


def test_two_ranks_write_one_bundle_that_records_the_launch_and_decodes(data: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    args = ["--threads", 1, "pretrain", "--data", data, "--out", bundle, "--epochs", 2, "--adapt-epochs", 1]
    done = torchrun(2, *args, "--device", "cpu", *TINY)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("bundle written to") == 1  # rank 0 alone prints
    assert done.stderr.count("] mixed 2/2") == 1  # and draws progress
    code, output = invoke("info", bundle)
    assert code == 0, output
    training = json.loads(output)["training"]
    assert (training["world_size"], training["backend"], training["epochs_run"]) == (2, "gloo", 2)
    assert "steps" not in training  # no --max-steps
    assert read_manifest(bundle)["metrics"]["mixed"]["n"] == len(load_dataset(data).user_ids)  # every point ranked
    out = tmp_path / "z.jsonl"
    code, output = invoke("regenerate", "--bundle", bundle, "--target", "z", "--data", data, "--out", out)
    assert code == 0, output
    assert len(out.read_text().splitlines()) == len(load_dataset(data).user_ids)


def test_one_rank_under_torchrun_gives_the_plain_runs_bundle(data: Path, tmp_path: Path) -> None:
    args = ["pretrain", "--data", data, "--epochs", 3, "--patience", 1, "--adapt-epochs", 2, "--device", "cpu", *TINY]
    code, output = invoke("--threads", 1, *args, "--out", tmp_path / "plain")
    assert code == 0, output
    done = torchrun(1, "--threads", 1, *args, "--out", tmp_path / "one")
    assert done.returncode == 0, done.stdout + done.stderr
    assert weights(tmp_path / "one") == weights(tmp_path / "plain")
    plain, one = read_manifest(tmp_path / "plain"), read_manifest(tmp_path / "one")
    assert (one["training"].pop("world_size"), one["training"].pop("backend")) == (1, "gloo")
    assert not {"world_size", "backend", "steps"} & plain["training"].keys()  # a plain run records what it did
    for m in (plain, one):
        m.pop("created_at")
        m["training"].pop("timings_s")
    assert one == plain  # metrics, history and checksums included


def test_ranks_given_different_data_each_end_with_one_error_line(data: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    make_log(DOMAINS, n_users=30, seed=4).to_csv(tmp_path / "log.csv", index=False)
    assert invoke("data", "import", "--interactions", tmp_path / "log.csv", "--out", other)[0] == 0
    entry = tmp_path / "by_rank.sh"  # torchrun gives every rank the same arguments: pick --data by rank
    entry.write_text(
        f'#!/bin/sh\nif [ "$LOCAL_RANK" = 0 ]; then d="{data}"; else d="{other}"; fi\n'
        f'exec "{TAESAR}" --threads 1 pretrain --data "$d" --out "{tmp_path / "b"}" --epochs 1 --device cpu '
        + " ".join(TINY)
        + "\n"
    )
    entry.chmod(0o755)
    done = torchrun(2, entry=entry)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert sorted(e.split(" has fingerprint")[0][-6:] for e in errors) == ["rank 0", "rank 1"], done.stderr
    assert all("give every rank the same --data" in e for e in errors)
    # torchrun stops the other rank once one has failed, so it may report a SIGTERM for it
    assert done.returncode != 0 and "exitcode  : 2" in done.stderr
    assert done.stderr.count("Traceback") == 1  # torchrun's report of its failed children; none from a rank
    assert not (tmp_path / "b").exists()


def test_pipeline_pretrains_on_every_rank_and_regenerates_on_rank_zero(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    done = torchrun(
        2, "--threads", 1, "pipeline", "--data", data, "--out", run, "--targets", "z", "--epochs", 3,
        "--adapt-epochs", 3, "--max-steps", 2, "--device", "cpu", "--no-evaluate",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rank 1 of 2: pipeline pretrained; rank 0 regenerates and evaluates; exiting" in done.stderr
    assert done.stdout.count("run written to") == 1
    training = read_manifest(run / "bundle")["training"]
    assert (training["world_size"], training["max_steps"]) == (2, 2)
    # the pipeline trains with the paper's batch of 128: 40 users make one batch, dealt to
    # both ranks, one step an epoch; the cap of 2 steps ends each phase after 2 epochs
    assert training["steps"] == {"mixed": 2, **{f"expert:{d}": 2 for d in DOMAINS}}
    assert training["epochs_run"] == len(training["history"]) == 2
    assert json.loads((run / "summary.json").read_text())["targets"]["z"]["sequences"] == 40


def test_evaluate_under_torchrun_runs_once_on_rank_zero(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "eval"
    done = torchrun(
        2, "--threads", 1, "evaluate", "--data", data, "--out", run, "--target", "z", "--variants", "sim",
        "--epochs", 1, "--device", "cpu",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rank 1 of 2: evaluate runs on rank 0 only; exiting" in done.stderr
    assert len((run / "trainings.jsonl").read_text().splitlines()) == 1
